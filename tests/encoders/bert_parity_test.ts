/** BERT parity with Hugging Face BertForMaskedLM (+ cross-attention in every layer), via PyTorch fixtures. */
import { assert, assertEquals, maxAbsDiff } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { scoped } from "../_tf.ts";
import { readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import { bertEncode, crossKeyValues, loadBert, mlmLogits } from "../../src/encoders/mod.ts";
import { EncoderError } from "../../src/util/errors.ts";
import { Rng } from "../../src/util/rng.ts";
import { assertThrows } from "../_assert.ts";

await setupBackend({ log: null });
const dir = new URL("../fixtures/encoders/", import.meta.url).pathname;
const e = readSafetensors(`${dir}bert_expected.safetensors`).tensors;
const f = (k: string) => toFloat32(e.get(k)!);
const ids = tf.tensor(f("input_ids"), [2, 8], "int32");
const mask = tf.tensor(f("attention_mask"), [2, 8], "int32");
const causal = tf.tensor(f("causal_mask"), [2, 8, 8], "int32");
const image = tf.tensor(f("image_tokens"), [2, 5, 32]);
const TOL = 1e-4;

async function check(label: string, actual: tf.Tensor, key: string) {
  assertEquals(actual.shape, e.get(key)!.shape, label);
  const d = maxAbsDiff(await actual.data(), f(key));
  assert(d <= TOL, `${label}: max |diff| ${d} > ${TOL}`);
}

Deno.test("BERT with cross-attention matches PyTorch: text-only, multimodal, causal (GM) mask, MLM head", async () => {
  const { model, mapped, newlyInitialised } = loadBert(
    `${dir}bert_tiny_pytorch_model.bin`,
    `${dir}bert_tiny_config.json`,
  );
  assertEquals(newlyInitialised, []);
  assert(mapped.dropped.some((d) => d.startsWith("bert.embeddings.position_ids")));
  assert(mapped.dropped.some((d) => d.startsWith("cls.predictions.decoder.weight")), "decoder weight is tied");
  await scoped(async () => {
    await check("text-only", bertEncode(model, { inputIds: ids, attentionMask: mask }), "text_only");
    const multi = bertEncode(model, { inputIds: ids, attentionMask: mask, encoderHiddenStates: image });
    await check("multimodal", multi, "multimodal");
    await check(
      "gm causal",
      bertEncode(model, { inputIds: ids, attentionMask: causal, encoderHiddenStates: image }),
      "gm",
    );
    await check("mlm logits", mlmLogits(model, multi), "mlm_logits");
  });
});

Deno.test("cross-attention keys and values projected once and gathered per pass: PyTorch's outputs, the same gradients", async () => {
  const { model } = loadBert(`${dir}bert_tiny_pytorch_model.bin`, `${dir}bert_tiny_config.json`);
  await scoped(async () => {
    const shared = bertEncode(model, {
      inputIds: ids,
      attentionMask: mask,
      crossKeyValues: crossKeyValues(model, image),
    });
    await check("multimodal, shared keys and values", shared, "multimodal");
    // Rows that attend to other images (ITM's negatives): gathering projected keys and values equals projecting the
    // gathered tokens, in value and in the gradients w.r.t. the images and every weight.
    const rows = Int32Array.from([1, 0, 1, 1]);
    const ids4 = tf.concat([ids, ids], 0), mask4 = tf.concat([mask, mask], 0);
    const weights = [...model.params.values()].filter((v) => v.trainable) as tf.Variable[];
    const project = (img: tf.Tensor) =>
      bertEncode(model, { inputIds: ids4, attentionMask: mask4, encoderHiddenStates: tf.gather(img, rows) });
    const gather = (img: tf.Tensor) =>
      bertEncode(model, {
        inputIds: ids4,
        attentionMask: mask4,
        crossKeyValues: crossKeyValues(model, img),
        imageRows: rows,
      });
    const w = tf.randomNormal([4, 8, 32], 0, 1, "float32", 5);
    const grads = (f: (img: tf.Tensor) => tf.Tensor) => {
      const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(f(image), w)) as tf.Scalar, weights);
      const dImage = tf.grad((img: tf.Tensor) => tf.sum(tf.mul(f(img), w)))(image);
      return { value, grads, dImage };
    };
    const a = grads(project), b = grads(gather);
    assert(Math.abs((await a.value.data())[0] - (await b.value.data())[0]) < 1e-4, "value");
    assert(maxAbsDiff(await a.dImage.data(), await b.dImage.data()) < 1e-5, "gradient w.r.t. the image tokens");
    const keyGrad = Object.keys(a.grads).find((k) => k.includes("crossattention.self.key.weight"))!;
    assert(keyGrad, "the cross-attention key weight has a gradient");
    for (const k of Object.keys(a.grads)) {
      const d = maxAbsDiff(await a.grads[k].data(), await b.grads[k].data());
      assert(d < 1e-5, `gradient of ${k}: max |diff| ${d}`);
    }
    // Training mode: rows 1–2 attend to images 0, 1 in order (the shared keys serve them as they are), rows 0 and 3
    // gather; per-row dropout generators must follow their rows through that split, so the outputs agree.
    const train = (inputs: Parameters<typeof bertEncode>[1]) =>
      bertEncode(model, inputs, { training: true, rng: [0, 1, 2, 3].map((r) => new Rng(100 + r)) });
    const d = maxAbsDiff(
      await train({ inputIds: ids4, attentionMask: mask4, encoderHiddenStates: tf.gather(image, rows) }).data(),
      await train({
        inputIds: ids4,
        attentionMask: mask4,
        crossKeyValues: crossKeyValues(model, image),
        imageRows: rows,
      })
        .data(),
    );
    assert(d < 1e-5, `training mode: max |diff| ${d}`);
  });
});

Deno.test("plain BERT (no cross-attention weights): cross-attention initialised N(0, 0.02), text path unchanged", async () => {
  const { model, mapped, newlyInitialised } = loadBert(
    `${dir}bert_tiny_plain_pytorch_model.bin`,
    `${dir}bert_tiny_config.json`,
  );
  assertEquals(newlyInitialised.length, 2 * 10); // 2 layers × (query, key, value, output.dense, LayerNorm) × (weight, bias)
  assert(mapped.dropped.some((d) => d.startsWith("cls.seq_relationship")));
  const q = Array.from(
    (await model.params.get("bert.encoder.layer.0.crossattention.self.query.weight")!.data()) as Float32Array,
  );
  const mean = q.reduce((a, b) => a + b, 0) / q.length;
  const std = Math.sqrt(q.reduce((a, b) => a + (b - mean) ** 2, 0) / q.length);
  assert(Math.abs(std - 0.02) < 0.004 && Math.abs(mean) < 0.004, `std ${std} mean ${mean}`);
  assertEquals(
    [...(await model.params.get("bert.encoder.layer.1.crossattention.output.LayerNorm.weight")!.data())].every((v) =>
      v === 1
    ),
    true,
  );
  assertEquals(
    [...(await model.params.get("bert.encoder.layer.1.crossattention.self.key.bias")!.data())].every((v) => v === 0),
    true,
  );
  await scoped(async () =>
    await check(
      "text-only (no cross-attention used)",
      bertEncode(model, { inputIds: ids, attentionMask: mask }),
      "text_only",
    )
  );
});

Deno.test("BERT rejects image tokens of the wrong width and over-long inputs, naming the shapes", () => {
  const { model } = loadBert(`${dir}bert_tiny_pytorch_model.bin`, `${dir}bert_tiny_config.json`);
  assertThrows(
    () => bertEncode(model, { inputIds: ids, attentionMask: mask, encoderHiddenStates: tf.zeros([2, 5, 16]) }),
    /\[2, N, 32\].*\[2,5,16\]/,
    EncoderError,
  );
  assertThrows(
    () => bertEncode(model, { inputIds: tf.zeros([1, 41], "int32"), attentionMask: tf.ones([1, 41]) }),
    /41 exceeds max_position_embeddings 40/,
    EncoderError,
  );
});
