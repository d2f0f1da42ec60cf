/** BERT parity with Hugging Face BertForMaskedLM (+ cross-attention in every layer), via PyTorch fixtures. */
import { assert, assertEquals, maxAbsDiff } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { scoped } from "../_tf.ts";
import { readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import { bertEncode, loadBert, mlmLogits } from "../../src/encoders/mod.ts";
import { EncoderError } from "../../src/util/errors.ts";
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
