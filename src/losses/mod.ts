/**
 * RetFiner's objectives (method notes §1.5): image-text contrastive (ITC),
 * image-text matching with hard negatives (ITM), image-conditioned masked
 * language modelling (MLM) and generative modelling (GM), and the token
 * masker. The heads they use are the model's (`@retfiner/retfiner/model`).
 *
 * @example
 * ```ts
 * import { maskTokens, MLM_PROB } from "@retfiner/retfiner/losses";
 * import { Rng } from "@retfiner/retfiner";
 * const ids = Int32Array.from([101, 2023, 2003, 102, 0, 0]);
 * const { inputIds, labels } = maskTokens(ids, 1, 6, { prob: MLM_PROB, maskId: 103, randomRange: [106, 30521], rng: new Rng(0) });
 * // [CLS] and padding are never masked; at least one token is; labels are the original ids there, −100 elsewhere.
 * if (labels[0] !== -100 || labels[4] !== -100 || labels[5] !== -100) throw new Error("[CLS] or padding masked");
 * const masked = [1, 2, 3].filter((j) => labels[j] !== -100);
 * if (masked.length === 0 || masked.some((j) => labels[j] !== ids[j])) throw new Error(`${inputIds} ${labels}`);
 * ```
 * @module
 */
export {
  causalPaddingMask,
  GM_PROB,
  IGNORE_INDEX,
  type MaskedTokens,
  type MaskOptions,
  maskTokens,
  MLM_PROB,
} from "./masker.ts";
export {
  crossEntropy,
  type DeviceHardNegatives,
  type HardNegativeRngs,
  type HardNegatives,
  hardNegativeWeights,
  ITC_LABEL_SMOOTHING,
  ITC_TEMPERATURE,
  itcLoss,
  itcLossSharded,
  type ItcResult,
  type ItmCandidates,
  itmLoss,
  l2normalize,
  maskedTokenLoss,
  sampleHardNegatives,
  sampleHardNegativesOnDevice,
  sampleHardNegativesSharded,
  type ShardedItcResult,
} from "./objectives.ts";
export { gatherRowsWithGrad, type RowShard, shardCounts, shardOffset } from "./gather.ts";
export { type RandomSource, rowRng, SampleStreams } from "../util/rng.ts";
