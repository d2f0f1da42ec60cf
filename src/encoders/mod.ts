/**
 * Encoders: a timm-exact vision transformer with the RETFound, VisionFM and
 * UrFound recipes, and a Hugging Face-exact BERT with cross-attention in
 * every layer. Parameter names are the weight files' names, so loading is a
 * lookup and export is its inverse.
 *
 * @example
 * ```ts
 * import { setupBackend, tensorflow as tf } from "@retfiner/retfiner/backend";
 * import { createVit, vitFeatures, vitPreset } from "@retfiner/retfiner/encoders";
 * await setupBackend();
 * const model = createVit(vitPreset("visionfm", { depth: 2 }));
 * const feats = tf.tidy(() => vitFeatures(model, tf.zeros([1, 3, 224, 224]), "concat"));
 * // VisionFM's probing feature is [CLS ‖ mean of the patch tokens]: twice the width, 2 · 768.
 * if (feats.shape.join() !== "1,1536") throw new Error(`${feats.shape}`);
 * ```
 * @module
 */
export {
  createVit,
  type CreateVitOptions,
  featureDim,
  gridSize,
  IMAGENET_MEAN,
  IMAGENET_STD,
  imagesTensor,
  patchEmbed,
  refineTokenDim,
  resizePosEmbed,
  sincosPosEmbed,
  type TokenMode,
  VISIONFM_MEAN,
  VISIONFM_STD,
  vitBlock,
  vitBlocks,
  type VitConfig,
  type VitFamily,
  vitFeatures,
  vitFinalNorm,
  type VitForwardOptions,
  type VitModel,
  vitRefineTokens,
} from "./vit.ts";
export {
  BERT_BASE_CROSSATTN,
  type BertConfig,
  bertConfigFromJson,
  bertConfigToJson,
  bertEncode,
  type BertForwardOptions,
  type BertInputs,
  type BertModel,
  bertParamShapes,
  clsToken,
  createBert,
  type CrossKeyValues,
  crossKeyValues,
  extendedAttentionMask,
  mlmLogits,
} from "./bert.ts";
export {
  bertPreset,
  type BertPresetName,
  familyStats,
  inferVitConfig,
  validateVitConfig,
  VIT_PRESETS,
  vitArchFromName,
  vitPreset,
  type VitPresetName,
} from "./presets.ts";
export {
  bertStateDictForExport,
  type FamilyDecision,
  familyFromPath,
  formatLoadReport,
  loadBert,
  type LoadBertOptions,
  type LoadedBert,
  type LoadedVit,
  type LoadOptions,
  type LoadReport,
  loadStateDict,
  loadVit,
  type LoadVitOptions,
  stateDict,
  stateDictSize,
  vitFamilyOf,
} from "./load.ts";
export { countParams, disposeParams, gelu, layerNorm, linear, type Params } from "./layers.ts";
