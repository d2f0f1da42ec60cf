/** The bench's scaling section: its ratios, thread speed-ups and growth factors, as table and as JSON rows. */
import { assert, assertEquals } from "../_assert.ts";
import { formatScaling, scalingJson, type ScalingReport, type ScalingRow } from "../../bench/scaling.ts";

const side = (seconds: number, peak_rss_mib: number) => ({ seconds, peak_rss_mib });
const row = (
  group: ScalingRow["group"],
  label: string,
  threads: number,
  units: number,
  ours: ScalingRow["ours"],
  torch: ScalingRow["torch"],
  notes: string[] = [],
): ScalingRow => ({ group, label, threads, units, unit: group === "encode" ? "image" : "pair", ours, torch, notes });

const report: ScalingReport = {
  backend: "cpu-onnx",
  quick: false,
  rows: [
    row("threads", "step b8, 1 thread", 1, 8, side(60, 9000), side(54, 6000)),
    row("threads", "step b8, 2 threads", 2, 8, side(40, 9000), side(30, 6000)),
    row("batch", "step b4", 2, 4, side(20, 5000), side(16, 4000)),
    row("batch", "step b8", 2, 8, side(40, 9000), side(30, 6000)),
    row("batch", "step b32", 2, 32, null, side(130, 14000), ["ours: not run, projected 25.0 GiB > 20.0 GiB free"]),
    row("encode", "encode 8", 2, 8, side(2, 1024), side(3, 2048)),
    row("encode", "encode 64", 2, 64, side(16, 1024), side(24, 2048)),
  ],
  notes: ["load average 0.50 at the start"],
};

Deno.test("the scaling table gives each ratio, the 1 → 2 thread speed-ups and the growth with work", () => {
  const t = formatScaling(report);
  assert(/step b8, 1 thread\s+60\.0\s+54\.0\s+0\.90x\s+8\.8 GiB\s+5\.9 GiB\s+1\.50x/.test(t), t);
  assert(t.includes("speed-up 1 → 2 threads: ours 1.50x, PyTorch 1.80x"), t);
  assert(/step b32\s+n\/a\s+130\.0\s+n\/a\s+n\/a\s+13\.7 GiB\s+n\/a/.test(t), t);
  assert(t.includes("note: ours: not run, projected"), t);
  assert(t.includes("time for work ×1 ×2 ×8: ours ×1.00 ×2.00 n/a, PyTorch ×1.00 ×1.88 ×8.13"), t);
  assert(t.includes("s per image: ours 0.250 → 0.250, PyTorch 0.375 → 0.375"), t);
  assertEquals(t.split("\n").at(-1), "  note: load average 0.50 at the start");
});

Deno.test("each scaling row is one flat JSON object with its ratios", () => {
  const two = scalingJson(report.rows, report.rows[1], "cpu-onnx");
  assertEquals(two.speed_vs_torch, 0.75);
  assertEquals(two.rss_vs_torch, 1.5);
  assertEquals(two.ours_speedup_vs_1_thread, 1.5);
  assertEquals(two.torch_speedup_vs_1_thread, 1.8);
  const big = scalingJson(report.rows, report.rows[4], "cpu-onnx");
  assertEquals(big.ours_s, null);
  assertEquals(big.speed_vs_torch, null);
  assertEquals(big.work_vs_first, 8);
  assertEquals(big.torch_time_vs_first, 130 / 16);
  assertEquals((big.notes as string[]).length, 1);
  JSON.parse(JSON.stringify(big));
});

Deno.test("thread rows compare with PyTorch's faster setting too (OpenBLAS at 1 thread) where it was run", () => {
  const standin: ScalingRow = {
    ...row("standin", "stand-ins b16, 2 threads", 2, 16, side(0.3, 600), side(0.9, 470)),
    torchOneBlas: side(0.27, 470),
  };
  const rows = [row("standin", "stand-ins b16, 1 thread", 1, 16, side(0.33, 600), side(0.33, 470)), standin];
  const t = formatScaling({ backend: "cpu-onnx", quick: false, rows, notes: [] });
  assert(t.includes("PyTorch with OpenBLAS at 1 thread: 0.270 s; against PyTorch's faster setting ours 0.90x"), t);
  const j = scalingJson(rows, standin, "cpu-onnx");
  assertEquals(j.speed_vs_torch, 0.9 / 0.3);
  assertEquals(j.torch_openblas1_s, 0.27);
  assertEquals(j.speed_vs_torch_best, 0.27 / 0.3);
  assertEquals(scalingJson(rows, rows[0], "cpu-onnx").speed_vs_torch_best, undefined, "not run at 1 thread");
});
