/** ViT parity with PyTorch (timm 0.4.12 math) on checkpoints in each model's release layout. */
import { assert, assertAllClose, assertEquals, maxAbsDiff } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { scoped } from "../_tf.ts";
import { readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import { loadVit, resizePosEmbed, vitBlocks, vitFeatures, vitRefineTokens } from "../../src/encoders/mod.ts";

await setupBackend({ log: null });
const dir = new URL("../fixtures/encoders/", import.meta.url).pathname;
const expected = readSafetensors(`${dir}vit_expected.safetensors`).tensors;
const get = (k: string) => toFloat32(expected.get(k)!);
const images = tf.tensor(get("images"), [2, 3, 224, 224]);
const TOL = 1e-4;
/** A dropped-key entry without its container and wrapper prefixes (entries name the key as it is in the file). */
const bare = (d: string) => d.replace(/^(model\.|teacher\.|backbone\.)+/, "");

async function check(label: string, actual: tf.Tensor, key: string) {
  const want = expected.get(key)!;
  assertEquals(actual.shape, want.shape, `${label} shape`);
  const d = maxAbsDiff(await actual.data(), toFloat32(want));
  assert(d <= TOL, `${label}: max |diff| ${d} > ${TOL}`);
}

Deno.test("RETFound release layout: loads, drops decoder/head, matches PyTorch on all, refine (proj) and concat", async () => {
  const { model, mapped, newlyInitialised } = loadVit(`${dir}retfound_tiny.pth`, {
    numHeads: 4,
    overrides: { projDim: 48 },
  });
  assertEquals(mapped.layout, "retfound");
  assertEquals(model.config.family, "retfound");
  assertEquals(model.config.embedDim, 64);
  assertEquals(model.config.depth, 2);
  assertEquals(newlyInitialised, ["proj.weight", "proj.bias"]);
  for (
    const k of [
      "mask_token",
      "decoder_embed.weight",
      "decoder_pos_embed",
      "decoder_pred.weight",
      "head.weight",
      "optimizer",
      "args",
    ]
  ) {
    assert(mapped.dropped.some((d) => bare(d).startsWith(k)), `${k} should be dropped: ${mapped.dropped}`);
  }
  // The projection is new in the authors' code; give it the reference's values to compare.
  model.params.get("proj.weight")!.assign(tf.tensor(get("retfound.proj.weight"), [48, 64]));
  model.params.get("proj.bias")!.assign(tf.tensor(get("retfound.proj.bias"), [48]));
  await scoped(async () => {
    await check("blocks", vitBlocks(model, images), "retfound.blocks");
    await check("all", vitFeatures(model, images, "all"), "retfound.all");
    const cls = vitFeatures(model, images, "cls");
    const all = vitFeatures(model, images, "all");
    assertEquals(cls.shape, [2, 64]);
    assertAllClose(
      await cls.data(),
      await tf.reshape(tf.slice(all, [0, 0, 0], [2, 1, 64]), [2, 64]).data(),
      0,
      "cls is token 0",
    );
    await check("refine tokens", vitRefineTokens(model, images), "retfound.refine");
    await check("concat", vitFeatures(model, images, "concat"), "retfound.concat");
  });
});

Deno.test("VisionFM release layout: teacher/backbone, drops DINO head and masked_embed, matches PyTorch", async () => {
  const { model, mapped, newlyInitialised } = loadVit(`${dir}visionfm_tiny.pth`, { numHeads: 4 });
  assertEquals(mapped.layout, "visionfm");
  assertEquals(model.config.family, "visionfm");
  assertEquals(model.config.projDim, null);
  assertEquals(newlyInitialised, []);
  assert(mapped.dropped.some((d) => bare(d).startsWith("masked_embed")), mapped.dropped.join("; "));
  assert(mapped.dropped.some((d) => d.startsWith("student")), mapped.dropped.join("; "));
  await scoped(async () => {
    await check("all", vitFeatures(model, images, "all"), "visionfm.all");
    await check("refine tokens", vitRefineTokens(model, images), "visionfm.all");
    await check("concat (CLS first)", vitFeatures(model, images, "concat"), "visionfm.concat");
  });
});

Deno.test("UrFound release layout: drops text branch and decoder, tokens before the final norm", async () => {
  const { model, mapped } = loadVit(`${dir}urfound_tiny.pth`, { numHeads: 4 });
  assertEquals(mapped.layout, "urfound");
  assertEquals(model.config.family, "urfound");
  for (const k of ["bert_encoder.", "bert_mlp.", "decoder_embed", "mask_token"]) {
    assert(mapped.dropped.some((d) => bare(d).startsWith(k)), `${k} should be dropped`);
  }
  await scoped(async () => {
    await check("all", vitFeatures(model, images, "all"), "urfound.all");
    await check("refine tokens", vitRefineTokens(model, images), "urfound.all");
    await check("concat", vitFeatures(model, images, "concat"), "urfound.concat");
  });
});

Deno.test("position embeddings interpolate like PyTorch bicubic (align_corners=False)", async () => {
  const pe = toFloat32(readSafetensors(`${dir}vit_expected.safetensors`).tensors.get("pos_embed.resized7")!);
  const { model } = loadVit(`${dir}retfound_tiny.pth`, { numHeads: 4, overrides: { projDim: 48 } });
  const original = (await model.params.get("pos_embed")!.data()) as Float32Array;
  assertAllClose(resizePosEmbed(original, 64, 14, 7), pe, 1e-5, "14→7");
  assertAllClose(resizePosEmbed(original, 64, 14, 20), get("pos_embed.resized20"), 1e-5, "14→20");
  const small = loadVit(`${dir}retfound_tiny.pth`, { imgSize: 112, numHeads: 4 }).model;
  assertEquals(small.params.get("pos_embed")!.shape, [1, 50, 64]);
  assertAllClose(await small.params.get("pos_embed")!.data(), pe, 1e-5, "loaded at 112");
});
