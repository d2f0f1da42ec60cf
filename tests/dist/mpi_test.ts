/**
 * Data-parallel refinement over MPI (`mpiexec -n 2`, MPICH): the collectives, a two-rank run equal to one process
 * with the same global batch and accumulation, resume under MPI, and a failing rank ending the job. Runs where
 * `mpiexec` exists (CI installs MPICH); without MPI the package runs as one process and these are skipped.
 */
import { assert, assertEquals } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import { SINGLE_PROCESS, worldSizeFromEnv } from "../../src/dist/mpi.ts";
import { refine } from "../../src/refine/mod.ts";
import { tinyModel, tinyPairs } from "../refine/_tiny.ts";

const driver = new URL("./_rank_driver.ts", import.meta.url).pathname;
const hasMpiexec = await new Deno.Command("mpiexec", { args: ["--version"], stdout: "null", stderr: "null" }).output()
  .then((o) => o.success).catch(() => false);
if (!hasMpiexec && Deno.env.get("CI")) throw new Error("CI has no mpiexec: .ci/run installs MPICH");
const ignore = !hasMpiexec;

async function mpiexec(ranks: number, args: string[], timeoutMs = 240_000) {
  const out = await new Deno.Command("timeout", {
    args: [`${timeoutMs / 1000}`, "mpiexec", "-n", `${ranks}`, Deno.execPath(), "run", "-A", driver, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

function exported(dir: string): Map<string, Float32Array> {
  const name = dir.split("/").filter(Boolean).pop();
  const t = readSafetensors(`${dir}/best-model_${name}_retfound_bscan.safetensors`).tensors;
  return new Map([...t].map(([k, v]) => [k, toFloat32(v)]));
}

function maxRelDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  assertEquals([...a.keys()].sort(), [...b.keys()].sort());
  let worst = 0;
  for (const [k, x] of a) {
    const y = b.get(k)!;
    let d = 0;
    let s = 0;
    for (let i = 0; i < x.length; i++) {
      d = Math.max(d, Math.abs(x[i] - y[i]));
      s = Math.max(s, Math.abs(y[i]));
    }
    worst = Math.max(worst, d / Math.max(s, 1e-12));
  }
  return worst;
}

Deno.test("without mpiexec the package is one process and loads no MPI library", () => {
  assertEquals(worldSizeFromEnv(), Deno.env.get("PMI_SIZE") ? Number(Deno.env.get("PMI_SIZE")) : 1);
  assertEquals([SINGLE_PROCESS.rank, SINGLE_PROCESS.size], [0, 1]);
});

Deno.test(
  "MPI collectives over two ranks: allreduce (float32, float64), allgather, broadcast",
  { ignore },
  async () => {
    const r = await mpiexec(2, ["collectives"]);
    assertEquals(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l)).sort((a, b) => a.rank - b.rank);
    assertEquals(lines.length, 2);
    for (const l of lines) {
      assertEquals(l.size, 2);
      assertEquals(l.f, [3, 20]);
      assert(Math.abs(l.d[0] - 0.3) < 1e-15, String(l.d));
      assertEquals(l.g, [0, 0, 1, -1]); // rank 0 sent -0, which JSON writes as 0
      assertEquals(l.b, [7, 8]);
    }
  },
);

Deno.test(
  "two ranks refine exactly as one process with the same global batch and accumulation",
  { ignore },
  async () => {
    const root = await Deno.makeTempDir();
    const r = await mpiexec(2, ["refine", `${root}/mpi`, "-"]);
    assertEquals(r.code, 0, r.stderr);
    await setupBackend({ log: null, backend: "cpu-onnx" });
    await refine({
      model: await tinyModel(0),
      pairs: await tinyPairs(),
      runDir: `${root}/single`,
      batchSize: 8,
      accumulate: 2,
      epochs: 3,
      patience: 100,
      checkpointEvery: 2,
      optimizer: { lr: 1e-3 },
      seed: 1,
      collective: SINGLE_PROCESS,
      onNotice: () => {},
    });
    // Same micro-batches, negatives and random draws; gradients summed in one float32 buffer: equal to rounding.
    const d = maxRelDiff(exported(`${root}/mpi`), exported(`${root}/single`));
    assert(d <= 1e-6, `two ranks vs one process: max relative difference ${d}`);
    const log = (dir: string) => Deno.readTextFile(`${dir}/log.jsonl`);
    assertEquals((await log(`${root}/mpi`)).split("\n").length, (await log(`${root}/single`)).split("\n").length);
  },
);

Deno.test(
  "resume under MPI: interrupted after 4 steps and resumed equals the uninterrupted two-rank run",
  { ignore },
  async () => {
    const root = await Deno.makeTempDir();
    const whole = await mpiexec(2, ["refine", `${root}/whole`, "-"]);
    assertEquals(whole.code, 0, whole.stderr);
    const first = await mpiexec(2, ["refine", `${root}/cut`, "4"]);
    assertEquals(first.code, 0, first.stderr);
    const rest = await mpiexec(2, ["refine", `${root}/cut`, "-", "resume"]);
    assertEquals(rest.code, 0, rest.stderr);
    assertEquals(maxRelDiff(exported(`${root}/cut`), exported(`${root}/whole`)), 0);
  },
);

Deno.test("a rank that fails ends the whole job with an error, not a hang", { ignore }, async () => {
  const t0 = performance.now();
  const r = await mpiexec(2, ["fail"], 60_000);
  assert(r.code !== 0 && r.code !== 124, `exit ${r.code} (124 = timed out: a hang)`);
  assert(r.stderr.includes("rank 1: simulated failure"), r.stderr);
  assert(performance.now() - t0 < 50_000, "ended well before the 60 s the surviving rank would wait");
});

Deno.test("mpiexec -n 2 deno task refine --pairs --max-steps 3 exports what one process with --accumulate 2 does", {
  ignore,
}, async () => {
  const root = await Deno.makeTempDir();
  const cli = new URL("../../src/cli/refine.ts", import.meta.url).pathname;
  const pairs = new URL("../../data/synth-tiny/pairs/pairs.csv", import.meta.url).pathname;
  const args = (
    out: string,
  ) => ["--pairs", pairs, "--batch", "8", "--max-steps", "3", "--backend", "cpu-onnx", "--out", out];
  const two = await new Deno.Command("timeout", {
    args: ["240", "mpiexec", "-n", "2", Deno.execPath(), "run", "-A", cli, ...args(`${root}/two`)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err2 = new TextDecoder().decode(two.stderr);
  assertEquals(two.code, 0, err2);
  assert(err2.includes("data parallel: 2 ranks over MPI"), err2);
  assert(err2.includes("accumulate 1 raised to a multiple of the ranks"), err2);
  const one = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, ...args(`${root}/one`), "--accumulate", "2"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(one.code, 0, new TextDecoder().decode(one.stderr));
  assertEquals(maxRelDiff(exported(`${root}/two`), exported(`${root}/one`)), 0);
});
