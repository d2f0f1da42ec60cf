/**
 * One RetFiner forward pass over a batch of image-report pairs, producing
 * the four objectives (method notes §1.5): `MLM + GM + ITC + ITM`, each with
 * weight 1 by default. Objectives with weight 0 are not computed at all
 * (the ablation switch).
 * @module
 */
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import { bertEncode, clsToken, crossKeyValues } from "../encoders/bert.ts";
import { imagesTensor, vitRefineTokens } from "../encoders/vit.ts";
import { causalPaddingMask, GM_PROB, IGNORE_INDEX, maskTokens, MLM_PROB } from "../losses/masker.ts";
import {
  type HardNegativeRngs,
  itcLoss,
  itcLossSharded,
  itmLoss,
  maskedTokenLoss,
  sampleHardNegatives,
  sampleHardNegativesOnDevice,
  sampleHardNegativesSharded,
} from "../losses/objectives.ts";
import { gatherRowsWithGrad, type RowShard, shardOffset } from "../losses/gather.ts";
import { type RandomSource, Rng, SampleStreams } from "../util/rng.ts";
import { RefineError } from "../util/errors.ts";
import type { RetfinerModel } from "../model/model.ts";

/** The four objectives. */
export const OBJECTIVES = ["itc", "itm", "mlm", "gm"] as const;

/** One of the four objectives. */
export type Objective = typeof OBJECTIVES[number];

/** Weight per objective (the authors: all 1). */
export type LossWeights = Record<Objective, number>;

/** All four objectives with weight 1. */
export const ALL_LOSSES: LossWeights = { itc: 1, itm: 1, mlm: 1, gm: 1 };

/** A batch of pairs, ready for the model. */
export interface PairBatch {
  /** Preprocessed images `[B, 3, S, S]`. */
  images: Float32Array;
  /** Token ids `[B, L]`. */
  inputIds: Int32Array;
  /** Padding mask `[B, L]`. */
  attentionMask: Int32Array;
  /** B. */
  size: number;
  /** L. */
  length: number;
  /**
   * Each row's sample index in the step's global batch (default 0..B−1): the key of its random streams when
   * {@link retfinerLosses} is given {@link SampleStreams}.
   */
  samples?: readonly number[];
}

/**
 * The global batch a {@link PairBatch} is one rank's shard of (`--global-negatives`): ITC scores this rank's rows
 * against every rank's features, ITM draws negatives from the whole world batch, and MLM/GM divide by the positions
 * masked in the whole batch, so that the ranks' losses add up to one process's at the global batch.
 */
export interface GlobalBatch {
  /** The ranks and the rows each holds (this rank's rows are the {@link PairBatch}). */
  shard: RowShard;
  /** Token ids of the whole global batch `[B_global, L]` (every rank has every report's tokens). */
  inputIds: Int32Array;
  /** Padding masks of the whole global batch `[B_global, L]`. */
  attentionMask: Int32Array;
  /** Each global row's sample index in the step (keys of its random streams). */
  samples: readonly number[];
}

/** Where a pass's random draws come from: the legacy per-batch streams, or per-sample ones. */
interface Draws {
  drop(purpose: string, samples: readonly number[]): RandomSource;
  negatives(samples: readonly number[]): Rng | HardNegativeRngs;
  mask(purpose: string, samples: readonly number[]): RandomSource;
}

/** One generator for the batch, forked per purpose in the order the passes run (the draws before per-sample ones). */
function batchDraws(rng: Rng): Draws {
  const drop = rng.fork("drop");
  return { drop: () => drop, negatives: () => rng.fork("negatives"), mask: (purpose) => rng.fork(purpose) };
}

/** One generator per sample and purpose ({@link SampleStreams}). */
function sampleDraws(streams: SampleStreams): Draws {
  return {
    drop: (purpose, samples) => streams.rows(samples, `${purpose}/dropout`),
    negatives: (samples) => ({
      image: streams.rows(samples, "itm/negative-image"),
      text: streams.rows(samples, "itm/negative-text"),
    }),
    mask: (purpose, samples) => streams.rows(samples, `${purpose}/mask`),
  };
}

/** Losses of one pass: the weighted total and each computed term. */
export interface StepLosses {
  /** Weighted sum. */
  total: Tensor;
  /** Each computed term. */
  terms: Partial<Record<Objective, Tensor>>;
}

/**
 * Computes the objectives for one batch. `rng` drives drop-path, dropout,
 * token masking and negative sampling (one generator per step keeps a run
 * reproducible and resumable). Call inside `tf.variableGrads` to train.
 *
 * With {@link SampleStreams}, every row draws from its own streams keyed by its sample index (`batch.samples`):
 * drop-path (`vit/dropout`), the text pass's dropout (`text/dropout`), the hard-negative draws
 * (`itm/negative-image`, `itm/negative-text`), ITM's dropout on the positive pair and the two negative pairs
 * (`itm/positive/dropout`, `itm/negative-image/dropout`, `itm/negative-text/dropout`), and MLM's and GM's token
 * masks and dropout (`mlm/mask`, `mlm/dropout`, `gm/mask`, `gm/dropout`). A sample then draws the same whatever
 * micro-batch or rank computes it. With one {@link Rng}, the batch draws from forks of it in row-major order.
 * @param model the RetFiner model
 * @param batch images `[B, 3, S, S]`, token ids and padding mask `[B, L]`
 * @param weights each objective's weight (ITC, ITM, MLM, GM; 0 skips it, method notes §1.5)
 * @param rng the step's generator, or its per-sample streams
 * @param training training mode (drop-path, dropout) or evaluation
 * @param global when `batch` is this rank's shard of a global batch (`--global-negatives`): the global batch. ITC
 *   gathers every rank's features with gradient (open_clip's `gather_with_grad`), ITM draws negatives from the whole
 *   world batch (BLIP under DDP), and each term is this rank's share of the global mean; summed over ranks, losses and
 *   gradients are one process's at the global batch. Needs per-sample streams and a backend that reads synchronously
 *   (CPU).
 * @returns the weighted total (a scalar) and each computed term (this rank's shares with `global`)
 * @throws {RefineError} when a row has nothing to mask, the batch is too small for ITM negatives, or similarities are
 *  not finite; `global` with one generator or on WebGPU
 * @throws {EncoderError} for images or tokens of the wrong shape
 */
export function retfinerLosses(
  model: RetfinerModel,
  batch: PairBatch,
  weights: LossWeights,
  rng: Rng | SampleStreams,
  training: boolean,
  global?: GlobalBatch,
): StepLosses {
  const { vit, bert, heads, tokenizer } = model;
  const B = batch.size;
  const L = batch.length;
  const S = vit.config.imgSize;
  const rows = batch.samples ?? Array.from({ length: B }, (_, i) => i);
  if (rows.length !== B) throw new RefineError(`${rows.length} sample indices for a batch of ${B}`);
  if (global && !(rng instanceof SampleStreams)) {
    throw new RefineError("a batch sharded across ranks needs per-sample random streams (SampleStreams)");
  }
  if (global && tf.getBackend() === "webgpu") {
    throw new RefineError("global negatives gather features inside the step, which needs a CPU backend");
  }
  const draws = rng instanceof Rng ? batchDraws(rng) : sampleDraws(rng);
  const opts = (purpose: string) => ({ training, rng: draws.drop(purpose, rows) });
  // ITM's 3B rows: the positive pairs, the pairs with a negative image, the pairs with a negative text.
  const itmOpts = () => {
    const parts = ["itm/positive", "itm/negative-image", "itm/negative-text"].map((p) => draws.drop(p, rows));
    return { training, rng: parts[0] instanceof Rng ? parts[0] : parts.flatMap((p) => p as readonly Rng[]) };
  };
  const images = imagesTensor(batch.images, B, S);
  const ids = tf.tensor(batch.inputIds, [B, L], "int32");
  const mask = tf.tensor(batch.attentionMask, [B, L], "int32");
  // Image tokens the text encoder cross-attends to (RETFound: after norm and proj, §1.2).
  const imageTokens = vitRefineTokens(vit, images, opts("vit"));
  // Every layer's cross-attention keys and values of these images, projected once for ITM, MLM and GM (they attend
  // to the same images; projecting per pass did it five times: ITM's 3B rows, then MLM, then GM).
  const crossKV = weights.itm > 0 || weights.mlm > 0 || weights.gm > 0 ? crossKeyValues(bert, imageTokens) : undefined;
  const terms: Partial<Record<Objective, Tensor>> = {};
  const offset = global ? shardOffset(global.shard.counts, global.shard.world.rank) : 0;
  const globalRows = global ? global.samples.length : B;
  if (weights.itc > 0 || weights.itm > 0) {
    // Text-only pass (no cross-attention) for the contrastive features.
    const textCls = clsToken(bertEncode(bert, { inputIds: ids, attentionMask: mask }, opts("text")));
    const imageCls = tf.reshape(tf.slice(imageTokens, [0, 0, 0], [B, 1, imageTokens.shape[2] as number]), [B, -1]);
    if (global) {
      const gather = { rows: (x: Tensor) => gatherRowsWithGrad(x, global.shard), offset, total: globalRows };
      const { loss, simI2T, simT2I } = itcLossSharded(heads, imageCls, textCls, gather);
      if (weights.itc > 0) terms.itc = loss;
      if (weights.itm > 0) {
        const negatives = sampleHardNegativesSharded(
          simI2T.dataSync() as Float32Array,
          simT2I.dataSync() as Float32Array,
          B,
          offset,
          globalRows,
          draws.negatives(rows) as HardNegativeRngs,
        );
        const candidates = {
          textIds: tf.tensor(global.inputIds, [globalRows, L], "int32"),
          textMask: tf.tensor(global.attentionMask, [globalRows, L], "int32"),
          imageTokens: gatherRowsWithGrad(imageTokens, global.shard), // BLIP: all_gather_with_grad(image_embeds)
          denominator: 3 * globalRows,
        };
        terms.itm = itmLoss(bert, heads, ids, mask, imageTokens, negatives, itmOpts(), candidates);
      }
    } else {
      const { loss, simI2T } = itcLoss(heads, imageCls, textCls);
      if (weights.itc > 0) terms.itc = loss;
      if (weights.itm > 0) {
        // Deviation (README): the authors recompute the text pass and similarities inside ITM; we reuse ITC's.
        // The CPU reads the similarities and draws there (refusing non-finite ones by name); a backend that cannot
        // read synchronously (WebGPU) draws the same negatives on the device, with no read-back inside the step.
        const negRngs = draws.negatives(rows);
        const negatives = tf.getBackend() === "webgpu"
          ? sampleHardNegativesOnDevice(simI2T, B, negRngs)
          : sampleHardNegatives(simI2T.dataSync() as Float32Array, B, negRngs);
        terms.itm = itmLoss(bert, heads, ids, mask, crossKV!, negatives, itmOpts());
      }
    }
  }
  const masker = { maskId: tokenizer.maskId, randomRange: tokenizer.randomTokenRange, padId: tokenizer.padId };
  // Token masks: with a global batch, every rank masks every row (the same draws: keyed by sample), for the count of
  // masked positions in the whole batch, and keeps its own rows.
  const masked = (purpose: "mlm" | "gm", prob: number) => {
    const src = global ?? { inputIds: batch.inputIds, samples: rows };
    const m = maskTokens(src.inputIds, globalRows, L, { ...masker, prob, rng: draws.mask(purpose, src.samples) });
    const inBatch = m.labels.reduce((n, l) => n + (l !== IGNORE_INDEX ? 1 : 0), 0);
    return {
      inputIds: tf.tensor(m.inputIds.subarray(offset * L, (offset + B) * L), [B, L], "int32"),
      labels: m.labels.subarray(offset * L, (offset + B) * L),
      inBatch: global ? inBatch : undefined,
    };
  };
  if (weights.mlm > 0) {
    const m = masked("mlm", MLM_PROB);
    terms.mlm = maskedTokenLoss(bert, m.inputIds, m.labels, mask, crossKV!, opts("mlm"), m.inBatch);
  }
  if (weights.gm > 0) {
    const m = masked("gm", GM_PROB);
    const causal = tf.tensor(causalPaddingMask(batch.attentionMask, B, L), [B, L, L]);
    terms.gm = maskedTokenLoss(bert, m.inputIds, m.labels, causal, crossKV!, opts("gm"), m.inBatch);
  }
  let total: Tensor = tf.scalar(0);
  for (const k of OBJECTIVES) if (terms[k]) total = tf.add(total, tf.mul(terms[k]!, weights[k]));
  return { total, terms };
}
