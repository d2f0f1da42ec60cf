/**
 * Refinement (method notes §1.6–1.7): the RetFiner model, AdamW exactly as
 * PyTorch's, the training loop with early stopping and resumable atomic
 * checkpoints, and the export of the refined backbone.
 *
 * @example
 * ```ts
 * import { refine } from "@retfiner/retfiner/refine";
 * // const { backbone } = await refine({ model, pairs, runDir: "runs/my-run", batchSize: 32, epochs: 5 });
 * ```
 * @module
 */
export {
  ADAMW_DEFAULTS,
  type AdamWConfig,
  type AdamWState,
  adamwStep,
  createAdamWState,
  type LrSchedule,
  scheduledLr,
} from "./adamw.ts";
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
export {
  ALL_LOSSES,
  type LossWeights,
  type Objective,
  OBJECTIVES,
  type PairBatch,
  retfinerLosses,
  type StepLosses,
} from "./step.ts";
export {
  backboneFileNames,
  exportBackbone,
  exportTextSide,
  loadCheckpoint,
  type LoopState,
  saveCheckpoint,
} from "./checkpoint.ts";
export { BEST_CHECKPOINT, LAST_CHECKPOINT, refine, type RefineOptions, type RefineResult } from "./trainer.ts";
export { type BuildOptions, buildRetfinerModel, checkTextFiles, readBertConfig } from "./factory.ts";
