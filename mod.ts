/**
 * retfiner: refine retinal OCT foundation models (RETFound, UrFound,
 * VisionFM) with clinical text, as in RetFiner (Fecso et al., MICCAI 2025),
 * and measure what the refinement buys by linear probing.
 *
 * The package is split into modules that can be imported on their own:
 * `backend`, `io`, `dataset`, `encoders`, `model`, `losses`, `refine`, `probe`,
 * `experiment` and `zeroshot`.
 * This root module re-exports their public API.
 *
 * @example
 * ```ts ignore
 * import { loadVit, setupBackend } from "@retfiner/retfiner";
 * await setupBackend();
 * const { model, mapped } = loadVit("RETFound_oct_weights.pth");
 * console.log(mapped.layout, model.config.embedDim);
 * ```
 * @module
 */
export * from "./src/backend/mod.ts";
export * from "./src/io/mod.ts";
export * from "./src/dataset/mod.ts";
export * from "./src/encoders/mod.ts";
export * from "./src/model/mod.ts";
export * from "./src/losses/mod.ts";
export * from "./src/refine/mod.ts";
export * from "./src/probe/mod.ts";
export * from "./src/experiment/mod.ts";
export * from "./src/zeroshot/mod.ts";
export * from "./src/dist/mod.ts";
export * from "./src/params.ts";
export {
  BackendError,
  CheckpointError,
  DatasetError,
  EncoderError,
  MpiError,
  OptimizerError,
  ProbeError,
  RefineError,
  RetfinerError,
  UsageError,
} from "./src/util/errors.ts";
export { Rng, type RngState } from "./src/util/rng.ts";
export { type Progress, type ProgressCallback } from "./src/util/progress.ts";
