/**
 * The library side of the thin CLIs (issue 18 item 3): refineOnPairs (what `deno task refine --pairs` runs),
 * findTaskDirs (the one task discovery) and probeTasks (the one probing loop).
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { readProbeDataset } from "../../src/dataset/mod.ts";
import { findTaskDirs, probeModel, refineOnPairs } from "../../src/experiment/mod.ts";
import { loadVision } from "../../src/model/mod.ts";
import { probeTask, probeTasks } from "../../src/probe/mod.ts";
import { DatasetError } from "../../src/util/errors.ts";
import { SYNTH_TINY } from "../refine/_tiny.ts";
import { tinyFiles } from "./_tiny_files.ts";

await setupBackend({ log: null });

/** The tiny benchmark's pairs with absolute image paths, plus one row whose image is missing (manifest line 34). */
async function pairsWithOneBadRow(dir: string): Promise<{ path: string; train: number; val: number }> {
  // The split counts of data/synth-tiny/pairs/pairs.csv, counted with Python's csv module (reports hold quoted commas).
  const lines = (await Deno.readTextFile(`${SYNTH_TINY}pairs/pairs.csv`)).trim().split("\n");
  const rows = lines.slice(1).map((l) => `${SYNTH_TINY}pairs/${l}`);
  const path = join(dir, "pairs.csv");
  await Deno.writeTextFile(
    path,
    [lines[0], ...rows, `${dir}/missing.png,od: no drusen.,P99,OD,train,normal`].join("\n") + "\n",
  );
  return { path, train: 24, val: 8 };
}

Deno.test("refineOnPairs: skipped rows listed and written, pairs counted, refined, exported; probes before and after", async () => {
  const f = await tinyFiles("retfound");
  const dir = await Deno.makeTempDir();
  const m = await pairsWithOneBadRow(dir);
  const runDir = join(dir, "run");
  // Without skipBad the bad row is an error naming the manifest line, before anything is trained.
  await assertRejects(
    () => refineOnPairs({ pairs: m.path, runDir, family: "retfound", text: f.text, refine: { maxSteps: 1 } }),
    /pairs\.csv:34: .*missing\.png/,
    DatasetError,
  );
  const events: string[] = [];
  const r = await refineOnPairs({
    pairs: m.path,
    manifest: { skipBad: true },
    runDir,
    family: "visionfm", // the vision decision below overrides it, as the CLI's --weights does
    vision: () => ({ vit: loadVision("retfound", f.vision), family: "retfound" }),
    weights: f.vision,
    text: f.text,
    benchmark: SYNTH_TINY,
    probe: { seeds: [0] },
    refine: { batchSize: 4, epochs: 1, maxSteps: 2 },
    log: (l) => events.push(l),
    onRefined: (res) => events.push(`refined ${res.loop.step}`),
  });
  assertEquals(r.skipped.length, 1);
  assertEquals(events[0], `skipped ${r.skipped[0].origin}: ${r.skipped[0].reason}`);
  assertEquals(events[1], `pairs: ${m.train} train, ${m.val} val; 1 rows skipped`);
  assertEquals(events[2], "refined 2");
  const tsv = (await Deno.readTextFile(join(runDir, "skipped_rows.tsv"))).trim().split("\n");
  assertEquals(tsv.length, 2);
  assert(tsv[1].startsWith(`${m.path}:34\t`), tsv[1]);
  assertEquals(r.records.length, m.train + m.val);
  assertEquals(r.refinement.loop.step, 2);
  await Deno.stat(r.refinement.backbone.safetensors);
  const p = r.probe!;
  assertEquals([p.baseline.name, p.refined.name], ["baseline", "refined"]);
  assertEquals(p.baseline.tasks.length, 7);
  assertEquals(p.refined.tasks.map((t) => t.seeds.map((s) => s.seed)), p.baseline.tasks.map(() => [0]));
  await Deno.stat(p.files.markdown);
  // The refined probe is the exported backbone's: probing the file gives the same numbers.
  assertEquals(p.refined.tasks[0].task, "amd_vs_normal");
  const again = await probeModel(
    loadVision("retfound", r.refinement.backbone.safetensors),
    "again",
    [await readProbeDataset(`${SYNTH_TINY}tasks/amd_vs_normal`)],
    { seeds: [0] },
  );
  assertEquals(again.tasks[0].seeds[0].metrics, p.refined.tasks[0].seeds[0].metrics);
});

Deno.test("refineOnPairs without a benchmark refines and exports only (no probe)", async () => {
  const f = await tinyFiles("retfound");
  const dir = await Deno.makeTempDir();
  const m = await pairsWithOneBadRow(dir);
  const r = await refineOnPairs({
    pairs: m.path,
    manifest: { skipBad: true },
    runDir: join(dir, "run"),
    family: "retfound",
    vision: () => ({ vit: loadVision("retfound", f.vision), family: "retfound" }),
    text: f.text,
    refine: { batchSize: 4, epochs: 1, maxSteps: 1 },
  });
  assertEquals(r.probe, undefined);
  assertEquals(r.refinement.loop.step, 1);
});

Deno.test("findTaskDirs: the given tasks and a benchmark's tasks/*, sorted; nothing given is empty", async () => {
  const all = await findTaskDirs({ benchmark: SYNTH_TINY });
  assertEquals(all.length, 7);
  assertEquals(all, [...all].sort());
  assert(all.every((d) => d.startsWith(join(SYNTH_TINY, "tasks"))), all.join(", "));
  const mixed = await findTaskDirs({ tasks: ["/zz/last", "/aa/first"], benchmark: SYNTH_TINY });
  assertEquals(mixed[0], "/aa/first");
  assertEquals(mixed.at(-1), "/zz/last");
  assertEquals(mixed.length, 9);
  assertEquals(await findTaskDirs({}), []);
});

Deno.test("probeTasks: one probeTask per dataset, in the order given, with the same options", async () => {
  const f = await tinyFiles("retfound");
  const vit = loadVision("retfound", f.vision);
  const a = await readProbeDataset(`${SYNTH_TINY}tasks/normal_drusen_cnv`);
  const b = await readProbeDataset(`${SYNTH_TINY}tasks/amd_vs_normal`);
  const opts = { seeds: [3], mode: "fast" as const, hyper: { maxEpochs: 5 } };
  const both = await probeTasks(vit, [a, b], opts);
  assertEquals(both.map((t) => t.task), [a.name, b.name]);
  const one = await probeTask(vit, b, opts);
  assertEquals(both[1].seeds, one.seeds);
  assert(both[1].seeds[0].epochs <= 5, "hyper reaches every task");
});
