import { assert, assertEquals, assertRejects } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { loadVit, stateDict } from "../../src/encoders/mod.ts";
import { refinementSpec } from "../../src/dataset/mod.ts";
import { loadImageBatch } from "../../src/dataset/batches.ts";
import { ALL_LOSSES, OBJECTIVES, type PairBatch, refine, retfinerLosses } from "../../src/refine/mod.ts";
import { modelParams } from "../../src/model/mod.ts";
import { RefineError } from "../../src/util/errors.ts";
import { Rng } from "../../src/util/rng.ts";
import { tinyModel, tinyPairs } from "./_tiny.ts";

await setupBackend({ log: null });

async function fixedBatch(model: Awaited<ReturnType<typeof tinyModel>>): Promise<PairBatch> {
  const pairs = (await tinyPairs()).filter((p) => p.split === "train").slice(0, 12);
  const c = model.vit.config;
  const imgs = await loadImageBatch(pairs.map((p) => p.image), pairs.map((_, i) => i), refinementSpec(c.imgSize, c));
  const tok = model.tokenizer.encodeBatch(pairs.map((p) => p.report));
  return {
    images: imgs.data,
    inputIds: tok.inputIds,
    attentionMask: tok.attentionMask,
    size: pairs.length,
    length: tok.length,
  };
}

function evalTerms(model: Awaited<ReturnType<typeof tinyModel>>, batch: PairBatch): Record<string, number> {
  return tf.tidy(() => {
    const { terms } = retfinerLosses(model, batch, ALL_LOSSES, new Rng(123), false);
    return Object.fromEntries(Object.entries(terms).map(([k, t]) => [k, t!.dataSync()[0]]));
  });
}

Deno.test("a short refinement on tiny synthetic pairs reduces every loss term", async () => {
  const model = await tinyModel(0);
  const batch = await fixedBatch(model);
  const before = evalTerms(model, batch);
  const runDir = await Deno.makeTempDir();
  const result = await refine({
    model,
    pairs: await tinyPairs(),
    runDir,
    batchSize: 12,
    epochs: 25,
    patience: 100,
    optimizer: { lr: 1e-3 },
    seed: 1,
  });
  const after = evalTerms(model, batch);
  for (const k of OBJECTIVES) assert(after[k] < before[k], `${k}: ${before[k].toFixed(4)} -> ${after[k].toFixed(4)}`);
  assertEquals(result.loop.history.length, 25);
  assert((await Deno.readTextFile(`${runDir}/log.jsonl`)).split("\n").filter(Boolean).length > 25);
  // The exported backbone loads back into the project's ViT.
  const back = loadVit(result.backbone.safetensors);
  assertEquals(back.model.config.family, "retfound");
  assertEquals(back.model.config.projDim, 32);
  const sd = await stateDict(model.vit.params);
  for (const [name, t] of await stateDict(back.model.params)) {
    assertEquals(Array.from(t.data as Float32Array), Array.from(sd.get(name)!.data as Float32Array), name);
  }
  for (const f of ["text_encoder.safetensors", "heads.safetensors", "tokenizer.json", "best.ckpt.safetensors"]) {
    await Deno.stat(`${runDir}/${f}`);
  }
});

Deno.test("removing objectives (ablation) skips them entirely", async () => {
  const model = await tinyModel(0);
  const batch = await fixedBatch(model);
  const terms = tf.tidy(() =>
    Object.keys(retfinerLosses(model, batch, { itc: 1, itm: 0, mlm: 1, gm: 0 }, new Rng(1), false).terms)
  );
  assertEquals(terms.sort(), ["itc", "mlm"]);
});

Deno.test("a non-finite loss stops with the step and term named, and applies no update", async () => {
  const model = await tinyModel(0);
  const runDir = await Deno.makeTempDir();
  model.heads.get("contra_head_v.weight")!.assign(tf.fill([32, 32], NaN));
  const before = Array.from(model.vit.params.get("cls_token")!.dataSync());
  const pairs = await tinyPairs();
  await assertRejects(
    () =>
      refine({
        model,
        pairs,
        runDir,
        batchSize: 12,
        epochs: 1,
        optimizer: { lr: 1e-4 },
        losses: { itc: 1, itm: 0, mlm: 0, gm: 0 },
      }),
    /^refinement stopped at step 1 \(epoch 1, batch 1 of 2, learning rate 0\.0001\): non-finite ITC loss \(NaN\)\. No update was applied and nothing was saved\. No checkpoint has been written yet/,
    RefineError,
  );
  assertEquals(Array.from(model.vit.params.get("cls_token")!.dataSync()), before);
});

Deno.test("refinement leaks no tensors across steps", async () => {
  const model = await tinyModel(0);
  const runDir = await Deno.makeTempDir();
  const pairs = await tinyPairs();
  await refine({ model, pairs, runDir, batchSize: 8, epochs: 1, maxSteps: 1 });
  const start = tf.memory().numTensors;
  await refine({ model, pairs, runDir: await Deno.makeTempDir(), batchSize: 8, epochs: 2 });
  assertEquals(tf.memory().numTensors, start);
  // Gradient accumulation over micro-batches, and a step stopped by the non-finite guard, leak nothing either.
  await refine({ model, pairs, runDir: await Deno.makeTempDir(), batchSize: 8, accumulate: 2, epochs: 1 });
  assertEquals(tf.memory().numTensors, start);
  await assertRejects(
    () =>
      refine({ model, pairs, runDir: Deno.makeTempDirSync(), batchSize: 8, accumulate: 2, optimizer: { lr: 1e39 } }),
    /^refinement stopped at step 1 /,
    RefineError,
  );
  assertEquals(tf.memory().numTensors, start);
  void modelParams;
});
