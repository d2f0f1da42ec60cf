/**
 * Refinement (method notes §1.6–1.7): training the RetFiner model
 * (`@retfiner/retfiner/model`) — AdamW exactly as PyTorch's, the objectives'
 * step, and the training loop with early stopping and resumable atomic
 * checkpoints. The model, its factory and its export are the model module's.
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
  type AdamWHyper,
  adamwMoments,
  type AdamWState,
  adamwStep,
  adamwStepAsync,
  createAdamWState,
  disposeAdamWState,
  type LrScale,
  type LrSchedule,
  scheduledLr,
} from "../optim/adamw.ts";
export {
  ALL_LOSSES,
  type GlobalBatch,
  type LossWeights,
  type Objective,
  OBJECTIVES,
  type PairBatch,
  retfinerLosses,
  type StepLosses,
} from "./step.ts";
export { loadCheckpoint, type LoopState, saveCheckpoint } from "./checkpoint.ts";
export {
  BEST_CHECKPOINT,
  LAST_CHECKPOINT,
  refine,
  refineLrScale,
  type RefineOptions,
  type RefineResult,
  refineSettings,
} from "./trainer.ts";
