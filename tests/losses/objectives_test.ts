/** Each objective against PyTorch on fixed inputs (masks and negatives given explicitly). */
import { assert, assertAllClose, assertAlmostEquals, assertEquals, assertThrows } from "../_assert.ts";
import { RefineError } from "../../src/util/errors.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import { crossKeyValues, loadBert } from "../../src/encoders/mod.ts";
import { makeParam, type Params } from "../../src/encoders/layers.ts";
import {
  causalPaddingMask,
  crossEntropy,
  hardNegativeWeights,
  itcLoss,
  itmLoss,
  maskedTokenLoss,
  sampleHardNegatives,
  sampleHardNegativesOnDevice,
} from "../../src/losses/mod.ts";
import { Rng } from "../../src/util/rng.ts";

await setupBackend({ log: null });
const fx = new URL("../fixtures/", import.meta.url).pathname;
const e = readSafetensors(`${fx}losses/expected.safetensors`).tensors;
const f = (k: string) => toFloat32(e.get(k)!);
const t = (k: string, dtype: "float32" | "int32" = "float32") => tf.tensor(f(k), e.get(k)!.shape, dtype);
const bert = loadBert(`${fx}encoders/bert_tiny_pytorch_model.bin`, `${fx}encoders/bert_tiny_config.json`).model;

function params(entries: [string, string][]): Params {
  const p: Params = new Map();
  for (const [name, key] of entries) makeParam(p, "losstest", name, f(key), e.get(key)!.shape);
  return p;
}

Deno.test("ITC matches PyTorch: bias-free heads, L2 norm, τ = 0.07, label smoothing 0.1", async () => {
  const heads = params([["contra_head_v.weight", "itc.contra_head_v.weight"], [
    "contra_head_t.weight",
    "itc.contra_head_t.weight",
  ]]);
  const { loss, simI2T } = itcLoss(heads, t("itc.image_cls"), t("itc.text_cls"));
  assertAlmostEquals((await loss.data())[0], f("itc.loss")[0], 1e-5, "itc loss");
  assertAllClose(await simI2T.data(), f("itc.sim_i2t"), 1e-4, "similarities");
});

Deno.test("hard-negative weights match softmax + 1e-4 with a zero diagonal; sampling follows them", () => {
  const sim = f("itc.sim_i2t");
  const w = hardNegativeWeights(sim, 6);
  assertAllClose(w.i2t, f("itc.weights_i2t"), 1e-6, "weights_i2t");
  assertAllClose(w.t2i, f("itc.weights_t2i"), 1e-6, "weights_t2i");
  // Empirical frequencies of 20k draws follow the normalised weights; never the positive itself.
  const rng = new Rng(1);
  const counts = new Array(36).fill(0);
  for (let k = 0; k < 20000; k++) {
    const { negImage } = sampleHardNegatives(sim, 6, rng);
    negImage.forEach((j, b) => counts[b * 6 + j]++);
  }
  for (let b = 0; b < 6; b++) {
    assertEquals(counts[b * 6 + b], 0, `row ${b} drew its own image`);
    const row = Array.from(w.t2i.subarray(b * 6, b * 6 + 6));
    const total = row.reduce((x, y) => x + y, 0);
    row.forEach((wj, j) => assert(Math.abs(counts[b * 6 + j] / 20000 - wj / total) < 0.015, `row ${b} col ${j}`));
  }
});

Deno.test("hard-negative sampling refuses non-finite similarities with a typed error naming the entry", () => {
  for (const bad of [NaN, Infinity, -Infinity]) {
    const sim = f("itc.sim_i2t").slice();
    sim[1 * 6 + 4] = bad;
    assertThrows(
      () => sampleHardNegatives(sim, 6, new Rng(1)),
      new RegExp(`similarity \\[1, 4\\] is ${bad}`),
      RefineError,
    );
  }
  assertThrows(() => sampleHardNegatives(new Float32Array(35), 6, new Rng(1)), /35 similarities/, RefineError);
});

Deno.test("ITM matches PyTorch over 3B pairs with the given negatives", async () => {
  const heads = params([
    ["itm_head.0.weight", "itm.itm_head.0.weight"],
    ["itm_head.0.bias", "itm.itm_head.0.bias"],
    ["itm_head.2.weight", "itm.itm_head.2.weight"],
    ["itm_head.2.bias", "itm.itm_head.2.bias"],
    ["itm_head.3.weight", "itm.itm_head.3.weight"],
    ["itm_head.3.bias", "itm.itm_head.3.bias"],
  ]);
  const loss = itmLoss(
    bert,
    heads,
    t("itm.input_ids", "int32"),
    t("itm.attention_mask", "int32"),
    t("itm.image_tokens"),
    {
      negImage: Array.from(f("itm.neg_image")),
      negText: Array.from(f("itm.neg_text")),
    },
  );
  assertAlmostEquals((await loss.data())[0], f("itm.loss")[0], 1e-5, "itm loss");
  // The refinement step projects the images' cross-attention keys and values once and gathers ITM's 3B rows.
  const shared = itmLoss(
    bert,
    heads,
    t("itm.input_ids", "int32"),
    t("itm.attention_mask", "int32"),
    crossKeyValues(bert, t("itm.image_tokens")),
    { negImage: Array.from(f("itm.neg_image")), negText: Array.from(f("itm.neg_text")) },
  );
  assertAlmostEquals((await shared.data())[0], f("itm.loss")[0], 1e-5, "itm loss, shared keys and values");
});

Deno.test("MLM (bidirectional) and GM (causal mask) match PyTorch on fixed masked ids", async () => {
  const labels = Int32Array.from(f("mlm.labels"));
  const masked = t("mlm.masked_ids", "int32");
  const mlm = maskedTokenLoss(bert, masked, labels, t("itm.attention_mask", "int32"), t("itm.image_tokens"));
  assertAlmostEquals((await mlm.data())[0], f("mlm.loss")[0], 1e-5, "mlm loss");
  const causal = causalPaddingMask(Int32Array.from(f("itm.attention_mask")), 3, 8);
  assertAllClose(causal, f("gm.causal_mask"), 0, "causal mask");
  const gm = maskedTokenLoss(bert, masked, labels, tf.tensor(causal, [3, 8, 8]), t("itm.image_tokens"));
  assertAlmostEquals((await gm.data())[0], f("gm.loss")[0], 1e-5, "gm loss");
  const kv = crossKeyValues(bert, t("itm.image_tokens"));
  const mlmShared = maskedTokenLoss(bert, masked, labels, t("itm.attention_mask", "int32"), kv);
  assertAlmostEquals((await mlmShared.data())[0], f("mlm.loss")[0], 1e-5, "mlm loss, shared keys and values");
  const gmShared = maskedTokenLoss(bert, masked, labels, tf.tensor(causal, [3, 8, 8]), kv);
  assertAlmostEquals((await gmShared.data())[0], f("gm.loss")[0], 1e-5, "gm loss, shared keys and values");
});

Deno.test("cross-entropy with label smoothing equals PyTorch's definition", async () => {
  const logits = tf.tensor([[2, 0.5, -1], [0, 0, 3]]);
  const lp = [[2, 0.5, -1], [0, 0, 3]].map((r) => {
    const m = Math.log(r.reduce((s, v) => s + Math.exp(v), 0));
    return r.map((v) => v - m);
  });
  const want = ((0.9 * -lp[0][0] + 0.1 * -(lp[0][0] + lp[0][1] + lp[0][2]) / 3) +
    (0.9 * -lp[1][2] + 0.1 * -(lp[1][0] + lp[1][1] + lp[1][2]) / 3)) / 2;
  assertAlmostEquals((await crossEntropy(logits, Int32Array.from([0, 2]), 0.1).data())[0], want, 1e-6);
});

Deno.test("hard negatives drawn on the device (no read-back) are the CPU sampler's, draw for draw", async () => {
  for (const B of [2, 5, 16]) {
    const rngSim = new Rng(B, "sim");
    const sim = Float32Array.from({ length: B * B }, () => 14 * rngSim.normal());
    const cpu = sampleHardNegatives(sim, B, new Rng(7, "neg"));
    const before = tf.memory().numTensors;
    const simT = tf.tensor(sim, [B, B]);
    const dev = sampleHardNegativesOnDevice(simT, B, new Rng(7, "neg"));
    assertEquals(Array.from(await dev.negImage.data()), cpu.negImage, `B=${B} images`);
    assertEquals(Array.from(await dev.negText.data()), cpu.negText, `B=${B} texts`);
    tf.dispose([simT, dev.negImage, dev.negText]);
    assertEquals(tf.memory().numTensors, before, "no tensor left behind");
    for (let b = 0; b < B; b++) assert(cpu.negImage[b] !== b && cpu.negText[b] !== b, "never the positive");
  }
});
