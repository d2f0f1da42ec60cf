import { assert, assertEquals } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { readImageFolderDataset } from "../../src/dataset/mod.ts";
import { createVit, vitPreset } from "../../src/encoders/mod.ts";
import { compareModels, type ModelResults, probeTask, terminalTable, writeProbeReport } from "../../src/probe/mod.ts";
import { Rng } from "../../src/util/rng.ts";

await setupBackend({ log: null });
const tasks = new URL("../../data/synth-tiny/tasks/", import.meta.url).pathname;
const vit = (seed: number) =>
  createVit(vitPreset("urfound", { imgSize: 32, patchSize: 8, embedDim: 32, depth: 1, numHeads: 2 }), {
    rng: new Rng(seed),
  });

Deno.test("fast-mode probe on two tiny tasks, compared, with CSV, JSON, Markdown, HTML and PNG outputs", async () => {
  const ds = [
    await readImageFolderDataset(`${tasks}amd_vs_normal`),
    await readImageFolderDataset(`${tasks}normal_amd_dme`),
  ];
  const a: ModelResults = { name: "baseline", tasks: [] };
  const b: ModelResults = { name: "refined", tasks: [] };
  for (const d of ds) {
    a.tasks.push(await probeTask(vit(1), d, { seeds: [0, 1], hyper: { maxEpochs: 45 } }));
    b.tasks.push(await probeTask(vit(2), d, { seeds: [0, 1], hyper: { maxEpochs: 45 } }));
  }
  const r = a.tasks[0];
  assertEquals(r.sizes, { train: 12, val: 6, test: 6 });
  assertEquals(r.seeds.length, 2);
  assert(r.seeds.every((s) => s.epochs <= 45 && s.metrics.bacc >= 0 && s.metrics.bacc <= 1));
  // Deterministic: the same seed gives the same result.
  const again = await probeTask(vit(1), ds[0], { seeds: [0], hyper: { maxEpochs: 45 } });
  assertEquals(again.seeds[0].metrics, r.seeds[0].metrics);
  const dir = await Deno.makeTempDir();
  const { files, comparison } = await writeProbeReport(dir, { baseline: a, refined: b });
  assertEquals(comparison!.overall.bacc.test!.n <= 4, true);
  const csv = (await Deno.readTextFile(files.csv)).trim().split("\n");
  assertEquals(csv.length, 1 + 2 * 2 * 2);
  assert(csv[0].startsWith("model,task,seed,bacc,auroc,ap,f1,mcc"));
  const md = await Deno.readTextFile(files.markdown);
  assert(md.includes("| baseline |") && md.includes("Wilcoxon"));
  const png = await Deno.readFile(files.png!);
  assertEquals(Array.from(png.subarray(1, 4)), [0x50, 0x4e, 0x47]);
  const html = await Deno.readTextFile(files.html!);
  assert(html.length > 1_000_000 && html.includes("Plotly.newPlot"), "plotly inlined");
  assert(terminalTable(compareModels(a, b)).includes("amd_vs_normal"));
});

Deno.test("faithful mode recomputes augmented training features each epoch", async () => {
  const d = await readImageFolderDataset(`${tasks}amd_vs_normal`);
  const fast = await probeTask(vit(1), d, { seeds: [0], hyper: { maxEpochs: 3 } });
  const faithful = await probeTask(vit(1), d, { seeds: [0], mode: "faithful", hyper: { maxEpochs: 3 } });
  assertEquals(faithful.seeds[0].epochs, 3);
  assert(faithful.featureSeconds > fast.featureSeconds, "per-epoch features cost more");
});
