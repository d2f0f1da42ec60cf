/**
 * The four RetFiner objectives, as the authors compute them (method notes §1.5):
 * ITC, ITM with hard negatives, image-conditioned MLM, and GM.
 * All tensor functions are pure and meant to run inside `tf.variableGrads`.
 * @module
 */
import { firstNonFinite } from "../util/finite.ts";
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import { bertEncode, type BertForwardOptions, type BertModel, clsToken, mlmLogits } from "../encoders/bert.ts";
import { linearP, type Params } from "../encoders/layers.ts";
import { RefineError } from "../util/errors.ts";
import type { Rng } from "../util/rng.ts";
import { itmHead } from "../model/heads.ts";
import { IGNORE_INDEX } from "./masker.ts";

/** τ = 0.07: the authors' temperature is effectively fixed (§1.5). */
export const ITC_TEMPERATURE = 0.07;
/** Label smoothing of the ITC cross-entropy. */
export const ITC_LABEL_SMOOTHING = 0.1;

/**
 * PyTorch's `F.cross_entropy(logits, targets, label_smoothing=ε)` averaged over
 * rows: (1−ε)·NLL(target) + ε·mean over classes of −log p.
 * @param logits `[N, C]`
 * @param targets N class indices in [0, C)
 * @param labelSmoothing ε in [0, 1) (the authors' ITC: 0.1)
 * @returns the mean loss, a scalar
 */
export function crossEntropy(logits: Tensor, targets: Int32Array, labelSmoothing = 0): Tensor {
  return tf.tidy(() => {
    const [n, c] = logits.shape;
    const logp = tf.logSoftmax(logits);
    const onehot = tf.oneHot(tf.tensor1d(targets, "int32"), c);
    const nll = tf.neg(tf.sum(tf.mul(logp, onehot), 1));
    if (labelSmoothing === 0) return tf.div(tf.sum(nll), n);
    const smooth = tf.neg(tf.mean(logp, 1));
    return tf.div(tf.sum(tf.add(tf.mul(nll, 1 - labelSmoothing), tf.mul(smooth, labelSmoothing))), n);
  });
}

/** What {@link itcLoss} returns. */
export interface ItcResult {
  /** `(CE(sim_i2t) + CE(sim_t2i)) / 2`. */
  loss: Tensor;
  /** `img · txtᵀ / τ`, `[B, B]`, for hard-negative sampling. */
  simI2T: Tensor;
}

/**
 * Image-text contrastive loss: CLS features through the bias-free heads,
 * L2-normalised, similarities / τ, symmetric label-smoothed cross-entropy
 * with in-batch negatives.
 * @param heads the model's heads (`contra_head_v`, `contra_head_t`)
 * @param imageCls image CLS features `[B, visionWidth]`
 * @param textCls text CLS features `[B, textWidth]`
 * @param options τ (default 0.07) and label smoothing (default 0.1), docs/method.md §1.5
 * @returns the scalar loss and the similarities `[B, B]` for negative sampling
 */
export function itcLoss(
  heads: Params,
  imageCls: Tensor,
  textCls: Tensor,
  options: { temperature?: number; labelSmoothing?: number } = {},
): ItcResult {
  const tau = options.temperature ?? ITC_TEMPERATURE;
  const eps = options.labelSmoothing ?? ITC_LABEL_SMOOTHING;
  const img = l2normalize(linearP(heads, "contra_head_v", imageCls));
  const txt = l2normalize(linearP(heads, "contra_head_t", textCls));
  const simI2T = tf.div(tf.matMul(img, txt, false, true), tau);
  const simT2I = tf.transpose(simI2T);
  const B = imageCls.shape[0];
  const targets = Int32Array.from({ length: B }, (_, i) => i);
  const loss = tf.div(tf.add(crossEntropy(simI2T, targets, eps), crossEntropy(simT2I, targets, eps)), 2);
  return { loss, simI2T };
}

/**
 * `x / max(‖x‖₂, 1e-12)` per row (`F.normalize(dim=-1)`).
 * @param x `[N, D]`
 * @returns each row divided by its L2 norm (at least 1e-12), `[N, D]`
 */
export function l2normalize(x: Tensor): Tensor {
  return tf.div(x, tf.maximum(tf.norm(x, 2, -1, true), 1e-12));
}

/** Hard negatives drawn on the CPU: one image index and one text index per row. */
export interface HardNegatives {
  /** For text b, the index of its negative image. */
  negImage: number[];
  /** For image b, the index of its negative text. */
  negText: number[];
}

/** Hard negatives drawn on the device ({@link sampleHardNegativesOnDevice}): `[B]` int32 index tensors. */
export interface DeviceHardNegatives {
  /** For text b, the index of its negative image. */
  negImage: Tensor;
  /** For image b, the index of its negative text. */
  negText: Tensor;
}

function softmaxRows(sim: Float32Array, B: number, transpose: boolean): Float64Array {
  const w = new Float64Array(B * B);
  for (let r = 0; r < B; r++) {
    let max = -Infinity;
    for (let c = 0; c < B; c++) max = Math.max(max, transpose ? sim[c * B + r] : sim[r * B + c]);
    let sum = 0;
    for (let c = 0; c < B; c++) sum += w[r * B + c] = Math.exp((transpose ? sim[c * B + r] : sim[r * B + c]) - max);
    for (let c = 0; c < B; c++) w[r * B + c] = w[r * B + c] / sum + 1e-4;
    w[r * B + r] = 0; // fill_diagonal_(0)
  }
  return w;
}

/**
 * The sampling weights `softmax(sim, dim=1) + 1e-4` with a zero diagonal, row-major `[B, B]`.
 * @param simI2T image-to-text similarities, row-major `[batch, batch]`
 * @param batch B
 * @returns the sampling weights of texts per image (`i2t`) and of images per text (`t2i`), each `[B, B]`
 */
export function hardNegativeWeights(simI2T: Float32Array, batch: number): { i2t: Float64Array; t2i: Float64Array } {
  return { i2t: softmaxRows(simI2T, batch, false), t2i: softmaxRows(simI2T, batch, true) }; // sim_t2i = sim_i2tᵀ
}

/**
 * Samples hard negatives like the authors (§1.5): weights = softmax(sim, dim=1)
 * + 1e-4 with the diagonal zeroed; a negative image per text from `weights_t2i`
 * and a negative text per image from `weights_i2t` (`torch.multinomial`).
 *
 * @param simI2T Image-to-text similarities, row-major `[batch, batch]`.
 * @param batch The batch size B.
 * @param rng The generator of the draws.
 * @returns One negative image per text and one negative text per image.
 * @throws {RefineError} The batch has fewer than 2 pairs, or a similarity is NaN or infinite (the features have
 *   diverged; `torch.multinomial` refuses such weights too).
 */
export function sampleHardNegatives(simI2T: Float32Array, batch: number, rng: Rng): HardNegatives {
  if (batch < 2) throw new RefineError("ITM needs a batch of at least 2 pairs to draw negatives");
  if (simI2T.length !== batch * batch) {
    throw new RefineError(`ITM negative sampling: ${simI2T.length} similarities for a batch of ${batch}`);
  }
  const i = firstNonFinite(simI2T);
  if (i >= 0) {
    throw new RefineError(
      `ITM negative sampling: image-text similarity [${Math.floor(i / batch)}, ${i % batch}] is ${simI2T[i]} ` +
        "(the image or text features are non-finite)",
    );
  }
  const { i2t: wI2T, t2i: wT2I } = hardNegativeWeights(simI2T, batch);
  const negImage: number[] = [];
  const negText: number[] = [];
  for (let b = 0; b < batch; b++) negImage.push(rng.categorical(wT2I.subarray(b * batch, (b + 1) * batch)));
  for (let b = 0; b < batch; b++) negText.push(rng.categorical(wI2T.subarray(b * batch, (b + 1) * batch)));
  return { negImage, negText };
}

/**
 * Runs `f` with tfjs's gradient tape off, as `torch.no_grad()`: what it computes is not differentiated through
 * (tfjs has no stop-gradient op; its engine records a node only while `gradientDepth > 0`).
 */
function withoutGradientTape<T>(f: () => T): T {
  const state = (tf.engine() as unknown as { state: { gradientDepth: number } }).state;
  const depth = state.gradientDepth;
  state.gradientDepth = 0;
  try {
    return f();
  } finally {
    state.gradientDepth = depth;
  }
}

/**
 * {@link sampleHardNegatives} without reading the similarities back: the same weights (softmax rows + 1e-4, zero
 * diagonal) and the same draws, by inverse CDF on the device (index = the number of cumulative weights ≤ u·total),
 * with `u` taken from `rng` in the same order (images per text first, then texts per image). So a backend that cannot
 * read tensors synchronously (WebGPU under Deno) picks the negatives the CPU path would, up to float32 rounding at
 * a boundary between two candidates. Non-finite similarities are not refused here (no read-back); they make the
 * loss non-finite, which the optimiser refuses.
 * @param simI2T image-to-text similarities `[B, B]`
 * @param batch B (at least 2)
 * @param rng the generator of the draws
 * @returns `[B]` int32 index tensors
 * @throws {RefineError} when the batch has fewer than 2 pairs
 */
export function sampleHardNegativesOnDevice(simI2T: Tensor, batch: number, rng: Rng): DeviceHardNegatives {
  if (batch < 2) throw new RefineError("ITM needs a batch of at least 2 pairs to draw negatives");
  // torch.no_grad(): the draws are computed off the gradient tape, so the indices do not connect the ITM loss
  // back to the similarities.
  const draw = (transpose: boolean, u: Float32Array) =>
    withoutGradientTape(() =>
      tf.tidy(() => {
        const sim = transpose ? tf.transpose(simI2T) : simI2T; // sim_t2i = sim_i2tᵀ
        const offDiagonal = tf.sub(1, tf.eye(batch));
        const w = tf.mul(tf.add(tf.softmax(sim, -1), 1e-4), offDiagonal);
        const cdf = tf.cumsum(w, 1);
        const r = tf.mul(tf.tensor(u, [batch, 1]), tf.slice(cdf, [0, batch - 1], [batch, 1]));
        const idx = tf.sum(tf.cast(tf.lessEqual(cdf, r), "int32"), 1);
        return tf.minimum(idx, tf.scalar(batch - 1, "int32")) as Tensor;
      })
    );
  const uImage = Float32Array.from({ length: batch }, () => rng.uniform());
  const uText = Float32Array.from({ length: batch }, () => rng.uniform());
  return { negImage: draw(true, uImage), negText: draw(false, uText) };
}

/**
 * Image-text matching over 3B pairs: (text_b, image_b) → 1, (text_b, image_negImage[b]) → 0,
 * (text_negText[b], image_b) → 0; the cross-attending BERT's CLS → `itm_head` → 2-way CE.
 * @param bert the cross-attending text encoder
 * @param heads the model's heads (`itm_head`)
 * @param textIds token ids `[B, L]`
 * @param textMask padding mask `[B, L]`
 * @param imageTokens the refinement tokens `[B, 1+N, W]`
 * @param negatives from {@link sampleHardNegatives}
 * @param options training mode (dropout) and its generator
 * @returns the mean 2-way cross-entropy over the 3B pairs, a scalar
 */
export function itmLoss(
  bert: BertModel,
  heads: Params,
  textIds: Tensor,
  textMask: Tensor,
  imageTokens: Tensor,
  negatives: HardNegatives | DeviceHardNegatives,
  options: BertForwardOptions = {},
): Tensor {
  const B = textIds.shape[0];
  const indices = (x: number[] | Tensor) => (Array.isArray(x) ? Int32Array.from(x) : x);
  const negText = indices(negatives.negText);
  const texts = tf.concat([textIds, textIds, tf.gather(textIds, negText)], 0);
  const masks = tf.concat([textMask, textMask, tf.gather(textMask, negText)], 0);
  const images = tf.concat([imageTokens, tf.gather(imageTokens, indices(negatives.negImage)), imageTokens], 0);
  const cls = clsToken(
    bertEncode(bert, { inputIds: texts, attentionMask: masks, encoderHiddenStates: images }, options),
  );
  const labels = new Int32Array(3 * B);
  labels.fill(1, 0, B);
  return crossEntropy(itmHead(heads, cls), labels);
}

/**
 * Masked-token loss shared by MLM and GM: the cross-attending BERT on masked
 * ids, the MLM head at the masked positions only (labels ≠ −100), mean CE.
 * `attentionMask` is `[B, L]` (MLM, bidirectional) or `[B, L, L]` (GM, causal).
 * @param bert the cross-attending text encoder with its MLM head
 * @param maskedIds masked token ids `[B, L]` (from `maskTokens`)
 * @param labels original ids at masked positions, −100 elsewhere, row-major `[B, L]`
 * @param attentionMask `[B, L]` (MLM) or `[B, L, L]` (GM, from `causalPaddingMask`)
 * @param imageTokens the refinement tokens `[B, 1+N, W]`
 * @param options training mode (dropout) and its generator
 * @returns the mean cross-entropy over the masked positions, a scalar
 * @throws {RefineError} when no position is masked
 */
export function maskedTokenLoss(
  bert: BertModel,
  maskedIds: Tensor,
  labels: Int32Array,
  attentionMask: Tensor,
  imageTokens: Tensor,
  options: BertForwardOptions = {},
): Tensor {
  const seq = bertEncode(bert, { inputIds: maskedIds, attentionMask, encoderHiddenStates: imageTokens }, options);
  const H = seq.shape[2] as number;
  const positions: number[] = [];
  const targets: number[] = [];
  labels.forEach((l, k) => {
    if (l !== IGNORE_INDEX) {
      positions.push(k);
      targets.push(l);
    }
  });
  if (positions.length === 0) throw new RefineError("masked-token loss: no position is masked");
  // Computing logits only where labels are set gives the same mean CE as the authors' full-sequence loss.
  const hidden = tf.gather(tf.reshape(seq, [-1, H]), Int32Array.from(positions));
  return crossEntropy(mlmLogits(bert, hidden), Int32Array.from(targets));
}
