/** Full-size configurations: parameter counts and output shapes (no real weights needed). */
import { assertEquals } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import {
  BERT_BASE_CROSSATTN,
  bertParamShapes,
  countParams,
  createBert,
  createVit,
  disposeParams,
  vitFeatures,
  vitPreset,
  vitRefineTokens,
} from "../../src/encoders/mod.ts";

await setupBackend({ log: null });

Deno.test("ViT-L/16 (RETFound) and ViT-B/16 (VisionFM, UrFound) parameter counts match timm", () => {
  // timm: vit_large_patch16_224 has 304,326,632 parameters with its 1000-class head (1,025,000); without: 303,301,632.
  const large = createVit(vitPreset("retfound"), { init: "zeros" });
  assertEquals(countParams(large.params), 303_301_632 + 1024 * 768 + 768); // + RETFound's proj 1024→768
  disposeParams(large.params);
  // vit_base_patch16_224: 86,567,656 with head (769,000) → 85,798,656.
  for (const name of ["visionfm", "urfound"] as const) {
    const base = createVit(vitPreset(name), { init: "zeros" });
    assertEquals(countParams(base.params), 85_798_656, name);
    disposeParams(base.params);
  }
});

Deno.test("BERT-base with cross-attention in all 12 layers has the expected parameter count", () => {
  // bert-base-uncased BertModel: 109,482,240 incl. pooler (590,592); cross-attention adds 2,363,904 per layer;
  // the MLM head adds transform dense + LayerNorm (592,128) and the 30,522 output bias (decoder tied).
  const n = bertParamShapes(BERT_BASE_CROSSATTN).reduce((s, [, shape]) => s + shape.reduce((a, b) => a * b, 1), 0);
  assertEquals(n, 109_482_240 - 590_592 + 12 * 2_363_904 + 592_128 + 30_522);
  const small = createBert({ ...BERT_BASE_CROSSATTN, numHiddenLayers: 1 }, { init: "zeros" });
  assertEquals(countParams(small.params), 109_482_240 - 590_592 - 11 * 7_087_872 + 2_363_904 + 592_128 + 30_522);
  disposeParams(small.params);
});

Deno.test("ViT-B/16 output shapes per family and mode at 224", () => {
  for (const family of ["retfound", "visionfm", "urfound"] as const) {
    const config = family === "retfound"
      ? vitPreset("retfound", { embedDim: 64, depth: 1, numHeads: 4, projDim: 48 })
      : vitPreset(family, { embedDim: 64, depth: 1, numHeads: 4 });
    const m = createVit(config);
    tf.tidy(() => {
      const x = tf.zeros([2, 3, 224, 224]);
      assertEquals(vitFeatures(m, x, "all").shape, [2, 197, 64]);
      assertEquals(vitFeatures(m, x, "cls").shape, [2, 64]);
      assertEquals(vitFeatures(m, x, "concat").shape, [2, 128]);
      assertEquals(vitRefineTokens(m, x).shape, [2, 197, family === "retfound" ? 48 : 64]);
    });
    disposeParams(m.params);
  }
});
