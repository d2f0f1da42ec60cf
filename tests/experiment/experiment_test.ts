import { assert, assertEquals } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { runAblation, runExperiment } from "../../src/experiment/mod.ts";
import { SYNTH_TINY } from "../refine/_tiny.ts";
import { tinyFiles } from "./_tiny_files.ts";

await setupBackend({ log: null });

Deno.test("end to end on the tiny benchmark: probe, refine, probe, compare, report", async () => {
  const f = await tinyFiles("retfound");
  const runDir = await Deno.makeTempDir();
  const lines: string[] = [];
  const r = await runExperiment({
    family: "retfound",
    runDir,
    weights: f.vision,
    text: f.text,
    benchmark: SYNTH_TINY,
    tasks: ["amd_vs_normal", "normal_drusen_cnv"],
    probe: { seeds: [0, 1], maxEpochs: 42 },
    refine: { batchSize: 8, epochs: 2 },
    log: (l) => lines.push(l),
  });
  assertEquals(r.baseline.tasks.map((t) => t.task), ["amd_vs_normal", "normal_drusen_cnv"]);
  assertEquals(r.refinement.loop.history.length, 2);
  assert(Number.isFinite(r.comparison.overall.bacc.delta));
  assertEquals(r.comparison.overall.bacc.test!.n <= 4, true);
  for (
    const p of [
      r.files.markdown,
      r.files.html!,
      r.files.png!,
      r.files.csv,
      r.refinement.backbone.pth,
      `${runDir}/timing.json`,
    ]
  ) await Deno.stat(p);
  assert(lines.some((l) => l.startsWith("refinement:")), lines.join("\n"));
  // Beyond the paper: zero-shot and retrieval before and after, in the report.
  assertEquals(r.zeroShot.after.tasks.length, 2);
  assertEquals(r.zeroShot.before.retrieval.n, 8);
  const md = await Deno.readTextFile(r.files.markdown);
  assert(md.includes("zero-shot BAcc before") && md.includes("image → report"), "zero-shot section in the report");
});

Deno.test("ablation: one baseline, five refinements (all, then each objective removed), one table", async () => {
  const f = await tinyFiles("urfound");
  const runDir = await Deno.makeTempDir();
  const { rows, markdown } = await runAblation({
    family: "urfound",
    runDir,
    weights: f.vision,
    text: f.text,
    benchmark: SYNTH_TINY,
    tasks: ["amd_vs_normal"],
    probe: { seeds: [0], maxEpochs: 40 },
    refine: { batchSize: 12, epochs: 1 },
  });
  assertEquals(rows.map((r) => r.label), ["all", "− ITC", "− ITM", "− MLM", "− GM"]);
  assertEquals(rows[2].losses, { itc: 1, itm: 0, mlm: 1, gm: 1 });
  assert(markdown.includes("| − GM |"));
  await Deno.stat(`${runDir}/ablation.md`);
});
