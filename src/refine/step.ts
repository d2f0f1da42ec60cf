/**
 * One RetFiner forward pass over a batch of image-report pairs, producing
 * the four objectives (method notes §1.5): `MLM + GM + ITC + ITM`, each with
 * weight 1 by default. Objectives with weight 0 are not computed at all
 * (the ablation switch).
 * @module
 */
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import { bertEncode, clsToken } from "../encoders/bert.ts";
import { imagesTensor, vitRefineTokens } from "../encoders/vit.ts";
import { causalPaddingMask, GM_PROB, maskTokens, MLM_PROB } from "../losses/masker.ts";
import {
  itcLoss,
  itmLoss,
  maskedTokenLoss,
  sampleHardNegatives,
  sampleHardNegativesOnDevice,
} from "../losses/objectives.ts";
import type { Rng } from "../util/rng.ts";
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
 * @param model the RetFiner model
 * @param batch images `[B, 3, S, S]`, token ids and padding mask `[B, L]`
 * @param weights each objective's weight (ITC, ITM, MLM, GM; 0 skips it, method notes §1.5)
 * @param rng the step's generator
 * @param training training mode (drop-path, dropout) or evaluation
 * @returns the weighted total (a scalar) and each computed term
 * @throws {RefineError} when a row has nothing to mask, the batch is too small for ITM negatives, or similarities are
 *  not finite
 * @throws {EncoderError} for images or tokens of the wrong shape
 */
export function retfinerLosses(
  model: RetfinerModel,
  batch: PairBatch,
  weights: LossWeights,
  rng: Rng,
  training: boolean,
): StepLosses {
  const { vit, bert, heads, tokenizer } = model;
  const B = batch.size;
  const L = batch.length;
  const S = vit.config.imgSize;
  const dropRng = rng.fork("drop");
  const opts = { training, rng: dropRng };
  const images = imagesTensor(batch.images, B, S);
  const ids = tf.tensor(batch.inputIds, [B, L], "int32");
  const mask = tf.tensor(batch.attentionMask, [B, L], "int32");
  // Image tokens the text encoder cross-attends to (RETFound: after norm and proj, §1.2).
  const imageTokens = vitRefineTokens(vit, images, opts);
  const terms: Partial<Record<Objective, Tensor>> = {};
  if (weights.itc > 0 || weights.itm > 0) {
    // Text-only pass (no cross-attention) for the contrastive features.
    const textCls = clsToken(bertEncode(bert, { inputIds: ids, attentionMask: mask }, opts));
    const imageCls = tf.reshape(tf.slice(imageTokens, [0, 0, 0], [B, 1, imageTokens.shape[2] as number]), [B, -1]);
    const { loss, simI2T } = itcLoss(heads, imageCls, textCls);
    if (weights.itc > 0) terms.itc = loss;
    if (weights.itm > 0) {
      // Deviation (README): the authors recompute the text pass and similarities inside ITM; we reuse ITC's.
      // The CPU reads the similarities and draws there (refusing non-finite ones by name); a backend that cannot
      // read synchronously (WebGPU) draws the same negatives on the device, with no read-back inside the step.
      const negatives = tf.getBackend() === "webgpu"
        ? sampleHardNegativesOnDevice(simI2T, B, rng.fork("negatives"))
        : sampleHardNegatives(simI2T.dataSync() as Float32Array, B, rng.fork("negatives"));
      terms.itm = itmLoss(bert, heads, ids, mask, imageTokens, negatives, opts);
    }
  }
  const masker = { maskId: tokenizer.maskId, randomRange: tokenizer.randomTokenRange, padId: tokenizer.padId };
  if (weights.mlm > 0) {
    const m = maskTokens(batch.inputIds, B, L, { ...masker, prob: MLM_PROB, rng: rng.fork("mlm") });
    terms.mlm = maskedTokenLoss(bert, tf.tensor(m.inputIds, [B, L], "int32"), m.labels, mask, imageTokens, opts);
  }
  if (weights.gm > 0) {
    const m = maskTokens(batch.inputIds, B, L, { ...masker, prob: GM_PROB, rng: rng.fork("gm") });
    const causal = tf.tensor(causalPaddingMask(batch.attentionMask, B, L), [B, L, L]);
    terms.gm = maskedTokenLoss(bert, tf.tensor(m.inputIds, [B, L], "int32"), m.labels, causal, imageTokens, opts);
  }
  let total: Tensor = tf.scalar(0);
  for (const k of OBJECTIVES) if (terms[k]) total = tf.add(total, tf.mul(terms[k]!, weights[k]));
  return { total, terms };
}
