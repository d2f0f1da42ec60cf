import { assert, assertAlmostEquals, assertEquals, assertRejects } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { loadGreyImage, readImageFolderDataset, refinementSpec } from "../../src/dataset/mod.ts";
import { loadImageBatch } from "../../src/dataset/batches.ts";
import sharp from "sharp";
import { refine } from "../../src/refine/mod.ts";
import {
  attentionOverlayPng,
  attentionPeak,
  classEmbeddings,
  crossAttentionMaps,
  recallAtK,
  retrieval,
  SYNTH_CLASS_PROMPTS,
  zeroShotTask,
  zeroShotTasks,
} from "../../src/zeroshot/mod.ts";
import { UsageError } from "../../src/util/errors.ts";
import { loadRun } from "../../src/model/mod.ts";
import { SYNTH_TINY, tinyModel, tinyPairs } from "../refine/_tiny.ts";

await setupBackend({ log: null });
const runDir = await Deno.makeTempDir();
const trained = await tinyModel(0);
await refine({ model: trained, pairs: await tinyPairs(), runDir, batchSize: 12, epochs: 1 });

Deno.test("recall@K and median rank from a similarity matrix", () => {
  // Query 0's match ranks 1st, query 1's 3rd, query 2's 2nd.
  const sim = Float64Array.from([
    0.9,
    0.1,
    0.2,
    0.8,
    0.1,
    0.5,
    0.1,
    0.9,
    0.3,
  ]);
  const r = recallAtK(sim, 3);
  assertEquals([r.r1, r.r5], [1 / 3, 1]);
  assertEquals(r.medianRank, 2);
});

Deno.test("a saved run reloads (backbone, text encoder, heads, tokenizer) with identical weights", () => {
  const run = loadRun(runDir);
  for (const [k, v] of trained.heads) {
    assertEquals(Array.from(run.heads.get(k)!.dataSync()), Array.from(v.dataSync()), k);
  }
  const w = "bert.encoder.layer.1.crossattention.self.query.weight";
  assertEquals(Array.from(run.bert.params.get(w)!.dataSync()), Array.from(trained.bert.params.get(w)!.dataSync()));
});

Deno.test("zero-shot classification and retrieval run on a saved run and give valid metrics", async () => {
  const run = loadRun(runDir);
  const ds = await readImageFolderDataset(`${SYNTH_TINY}tasks/normal_amd_dme`);
  const e = await classEmbeddings(run, ds.classes, SYNTH_CLASS_PROMPTS);
  const E = e.length / 3;
  for (let k = 0; k < 3; k++) {
    assertAlmostEquals(Math.hypot(...e.subarray(k * E, (k + 1) * E)), 1, 1e-5, "class embeddings are unit vectors");
  }
  const z = await zeroShotTask(run, ds);
  assert(z.metrics.bacc >= 0 && z.metrics.bacc <= 1 && Number.isFinite(z.metrics.auroc));
  const pairs = (await tinyPairs()).filter((p) => p.split === "val");
  const r = await retrieval(run, pairs, { itmRerank: 3 });
  assertEquals(r.n, 8);
  for (const x of [r.imageToText, r.textToImage, r.imageToTextItm!]) {
    assert(x.r1 <= x.r5 && x.r5 <= x.r10 && x.medianRank >= 1 && x.medianRank <= 8);
  }
});

Deno.test("zeroShotTasks: one zeroShotTask per task in order, paths read with `read`; a path without read is refused", async () => {
  const run = loadRun(runDir);
  const a = `${SYNTH_TINY}tasks/normal_amd_dme`;
  const b = await readImageFolderDataset(`${SYNTH_TINY}tasks/amd_vs_normal`);
  const read: string[] = [];
  const both = await zeroShotTasks(run, [a, b], SYNTH_CLASS_PROMPTS, {
    read: (p) => (read.push(p), readImageFolderDataset(p)),
  });
  assertEquals(read, [a]);
  assertEquals(both.map((r) => r.task), ["normal_amd_dme", "amd_vs_normal"]);
  assertEquals(both[1], await zeroShotTask(run, b));
  assertEquals(both[0], await zeroShotTask(run, await readImageFolderDataset(a)));
  await assertRejects(() => zeroShotTasks(run, [a]), /normal_amd_dme is a path; pass options\.read/, UsageError);
});

Deno.test("cross-attention maps: one distribution over patches per report token, rendered as an overlay", async () => {
  const run = loadRun(runDir);
  const [p] = await tinyPairs();
  const c = run.vit.config;
  const b = await loadImageBatch([p.image], [0], refinementSpec(c.imgSize, c));
  const { tokens, maps, grid } = await crossAttentionMaps(
    run,
    tf.tensor(b.data, [1, 3, c.imgSize, c.imgSize]),
    p.report,
  );
  assertEquals(grid, 4);
  assertEquals(maps.length, tokens.length * 16);
  for (let t = 0; t < tokens.length; t++) {
    const s = maps.subarray(t * 16, (t + 1) * 16).reduce((a, v) => a + v, 0);
    assert(s > 0 && s <= 1 + 1e-5, `token ${t} mass ${s}`);
  }
  const png = await attentionOverlayPng(await loadGreyImage(p.image), maps.subarray(16, 32), grid, 64);
  assertEquals(Array.from(png.subarray(1, 4)), [0x50, 0x4e, 0x47]);
});

Deno.test("attention overlays are stretched min-to-max, and attentionPeak says how peaked the map is", async () => {
  const grid = 4;
  // A near-uniform map with one slightly stronger patch (row 1, column 2).
  const map = new Float32Array(grid * grid).fill(1 / 16 - 0.001 / 15);
  map[1 * grid + 2] = 1 / 16 + 0.001;
  const peak = attentionPeak(map);
  assert(peak > 1 && peak < 1.02, `peak ${peak}`);
  assertEquals(attentionPeak(new Float32Array([0, 0, 1, 0])), 4);
  const image = { width: 64, height: 64, data: new Float32Array(64 * 64).fill(0.5) };
  const png = await attentionOverlayPng(image, map, grid, 64);
  const { data } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
  const px = (x: number, y: number) => Array.from(data.subarray(3 * (y * 64 + x), 3 * (y * 64 + x) + 3));
  // Centre of the strong patch: full heat (red-yellow, blue suppressed); a far corner: the grey scan untouched.
  const hot = px(2 * 16 + 8, 1 * 16 + 8);
  const cold = px(0, 63);
  assert(hot[0] > 200 && hot[2] < 80, `hot pixel ${hot}`);
  assertEquals(cold, [128, 128, 128]);
});
