/** The bench's data-parallel section: the step with micro-batches, and the scaling table's ratios. */
import { assert, assertEquals, assertThrows } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { formatMpiScaling, type MpiScaling } from "../../bench/mpi_bench.ts";
import { REFINE_STANDIN_B16, type RefineBenchConfig, refineStepWork } from "../../bench/refine_step.ts";

const TINY: RefineBenchConfig = {
  name: "tiny",
  dim: 32,
  depth: 1,
  heads: 2,
  img: 32,
  text_width: 32,
  text_layers: 1,
  text_heads: 2,
  vocab: 40,
  batch: 4,
};

Deno.test("the bench step accumulates micro-batches and refuses a batch it cannot share out", async () => {
  await setupBackend({ backend: "cpu", log: null });
  const work = refineStepWork(TINY, { micro: 2 });
  await work.step();
  await work.step();
  work.dispose();
  assertThrows(() => refineStepWork(TINY, { micro: 3 }), /does not share out/);
  assertThrows(
    () => refineStepWork(TINY, { micro: 4, collective: { size: 2, rank: 0 } as never }),
    /over 2 rank\(s\)/,
  );
});

Deno.test("the scaling table gives each speed-up and ours against PyTorch", () => {
  const m: MpiScaling = {
    config: REFINE_STANDIN_B16,
    micro: 8,
    steps: 3,
    backend: "cpu-onnx",
    rows: [
      { label: "1 process × 1 thread", ranks: 1, threads: 1, ours: 1.0, torch: 2.0 },
      { label: "1 process × 2 threads", ranks: 1, threads: 2, ours: 0.8, torch: 1.2 },
      { label: "2 ranks × 1 thread", ranks: 2, threads: 1, ours: 0.5, torch: null },
    ],
    notes: ["a note"],
  };
  const t = formatMpiScaling(m);
  assert(t.includes("global batch 16 = 2 micro-batches of 8"), t);
  assert(/1 process × 1 thread\s+1\.000 s\s+2\.000 s\s+2\.00x/.test(t), t);
  assert(t.includes("1 process × 2 threads → 2 ranks: ours 1.60x, PyTorch n/a"), t);
  assert(t.includes("1 thread → 2 ranks:              ours 2.00x"), t);
  assertEquals(t.split("\n").at(-1), "  note: a note");
});
