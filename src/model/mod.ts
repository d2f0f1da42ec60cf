/**
 * The RetFiner model (method notes §1.2–1.5, §1.7): a vision encoder of any of
 * the three families, the BERT text/multimodal encoder that cross-attends to
 * its tokens, the ITC/ITM heads and the tokenizer; one factory that builds it
 * from weight files or stand-ins; and the export of a refined model with its
 * inverse, {@link loadRun}. Training it is `refine`'s.
 *
 * @example
 * ```ts
 * import { setupBackend } from "@retfiner/retfiner/backend";
 * import { buildModel, loadVision } from "@retfiner/retfiner/model";
 * await setupBackend({ log: null });
 * // The RETFound-like stand-in shipped in data/models/, with the text stand-in.
 * const model = buildModel(loadVision("retfound"));
 * // RETFound's refinement tokens go through a projection to the BERT's width before cross-attention (§1.2).
 * if (model.vit.config.family !== "retfound" || model.bert.config.addCrossAttention !== true) throw new Error();
 * ```
 * @module
 */
export {
  addedTokens,
  assembleModel,
  checkVocabulary,
  CONTRA_DIM,
  createTextEncoder,
  modelParams,
  type RetfinerModel,
  type TextSources,
} from "./model.ts";
export { createHeads, type HeadsConfig, itmHead } from "./heads.ts";
export {
  buildModel,
  type BuildOptions,
  buildRetfinerModel,
  checkTextFiles,
  loadVision,
  readBertConfig,
  resolveTextFiles,
  type WeightLoading,
} from "./factory.ts";
export { backboneFileNames, exportBackbone, exportTextSide, loadRun, type LoadRunOptions } from "./export.ts";
export { STANDIN_DIR, standinPath, TEXT_STANDIN } from "./paths.ts";
