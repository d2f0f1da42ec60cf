/**
 * The four RetFiner objectives, as the authors compute them (method notes §1.5):
 * ITC, ITM with hard negatives, image-conditioned MLM, and GM.
 * All tensor functions are pure and meant to run inside `tf.variableGrads`.
 * @module
 */
import { firstNonFinite } from "../util/finite.ts";
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import { fusedCrossEntropy } from "../backend/fused.ts";
import {
  bertEncode,
  type BertForwardOptions,
  type BertInputs,
  type BertModel,
  clsToken,
  type CrossKeyValues,
  mlmLogits,
} from "../encoders/bert.ts";
import { linearP, type Params } from "../encoders/layers.ts";
import { RefineError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";
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
 * @param denominator what the sum over the N rows is divided by (default N, the mean). A data-parallel rank holding
 *   N of a global batch's rows passes the global row count, so that the ranks' losses add up to the global mean.
 * @returns the mean loss (sum / denominator), a scalar
 */
export function crossEntropy(logits: Tensor, targets: Int32Array, labelSmoothing = 0, denominator?: number): Tensor {
  return tf.tidy(() =>
    tf.div(tf.sum(fusedCrossEntropy(logits, targets, labelSmoothing)), denominator ?? logits.shape[0])
  );
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

/** What {@link itcLossSharded} returns: this rank's share of the loss and its rows of the similarities. */
export interface ShardedItcResult {
  /** This rank's rows' share of `(CE(sim_i2t) + CE(sim_t2i)) / 2` (the ranks' shares add up to the global loss). */
  loss: Tensor;
  /** This rank's images against every rank's texts, `[B_local, B_global]`, divided by τ. */
  simI2T: Tensor;
  /** This rank's texts against every rank's images, `[B_local, B_global]`, divided by τ. */
  simT2I: Tensor;
}

/**
 * {@link itcLoss} over a global batch sharded across data-parallel ranks, as open_clip's `ClipLoss` with
 * `local_loss=True, gather_with_grad=True`: the projected, normalised features of every rank are gathered
 * (`gather`, open_clip's `gather_features` / `torch.distributed.nn.all_gather`: the backward pass sums the gradient
 * of the gathered features across ranks and keeps this rank's rows), and this rank's rows are scored against all of
 * them. Unlike open_clip, each rank's cross-entropy sums are divided by the global batch size, so that the ranks'
 * losses (and gradients) add up to exactly what one process computes at the global batch — the labels, the label
 * smoothing over B_global classes and τ are the same.
 * @param heads the model's heads (`contra_head_v`, `contra_head_t`)
 * @param imageCls this rank's image CLS features `[B_local, visionWidth]`
 * @param textCls this rank's text CLS features `[B_local, textWidth]`
 * @param gather `rows` gathers `[B_local, E]` rows of every rank into `[B_global, E]` in rank order, with gradient
 *   (see `gatherRowsWithGrad`), called for the image features and then the text features; `offset` is this rank's
 *   first row in the global batch, `total` the global batch B_global
 * @param options τ (default 0.07) and label smoothing (default 0.1), docs/method.md §1.5
 * @returns this rank's share of the loss and its similarity rows `[B_local, B_global]` for negative sampling
 */
export function itcLossSharded(
  heads: Params,
  imageCls: Tensor,
  textCls: Tensor,
  gather: { rows: (x: Tensor) => Tensor; offset: number; total: number },
  options: { temperature?: number; labelSmoothing?: number } = {},
): ShardedItcResult {
  const tau = options.temperature ?? ITC_TEMPERATURE;
  const eps = options.labelSmoothing ?? ITC_LABEL_SMOOTHING;
  const img = l2normalize(linearP(heads, "contra_head_v", imageCls));
  const txt = l2normalize(linearP(heads, "contra_head_t", textCls));
  const allImg = gather.rows(img);
  const allTxt = gather.rows(txt);
  const simI2T = tf.div(tf.matMul(img, allTxt, false, true), tau);
  const simT2I = tf.div(tf.matMul(txt, allImg, false, true), tau);
  const B = imageCls.shape[0];
  const targets = Int32Array.from({ length: B }, (_, i) => gather.offset + i);
  const loss = tf.div(
    tf.add(crossEntropy(simI2T, targets, eps, gather.total), crossEntropy(simT2I, targets, eps, gather.total)),
    2,
  );
  return { loss, simI2T, simT2I };
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

/** Per-row generators of the hard-negative draws (see `SampleStreams`): row b draws only from its own. */
export interface HardNegativeRngs {
  /** For text b, the generator of its negative image's draw. */
  image: readonly Rng[];
  /** For image b, the generator of its negative text's draw. */
  text: readonly Rng[];
}

/**
 * `softmax(row) + 1e-4` per row of `[rows, cols]` similarities (read transposed when `transpose`, square only), with
 * each row's own column `self + r` set to 0 (`fill_diagonal_(0)`).
 */
function softmaxRows(sim: Float32Array, rows: number, cols: number, transpose: boolean, self = 0): Float64Array {
  const w = new Float64Array(rows * cols);
  const at = (r: number, c: number) => transpose ? sim[c * rows + r] : sim[r * cols + c];
  for (let r = 0; r < rows; r++) {
    let max = -Infinity;
    for (let c = 0; c < cols; c++) max = Math.max(max, at(r, c));
    let sum = 0;
    for (let c = 0; c < cols; c++) sum += w[r * cols + c] = Math.exp(at(r, c) - max);
    for (let c = 0; c < cols; c++) w[r * cols + c] = w[r * cols + c] / sum + 1e-4;
    w[r * cols + self + r] = 0; // fill_diagonal_(0)
  }
  return w;
}

function refuseNonFinite(sim: Float32Array, cols: number, what: string): void {
  const i = firstNonFinite(sim);
  if (i >= 0) {
    throw new RefineError(
      `ITM negative sampling: ${what} similarity [${Math.floor(i / cols)}, ${i % cols}] is ${sim[i]} ` +
        "(the image or text features are non-finite)",
    );
  }
}

/**
 * The sampling weights `softmax(sim, dim=1) + 1e-4` with a zero diagonal, row-major `[B, B]`.
 * @param simI2T image-to-text similarities, row-major `[batch, batch]`
 * @param batch B
 * @returns the sampling weights of texts per image (`i2t`) and of images per text (`t2i`), each `[B, B]`
 */
export function hardNegativeWeights(simI2T: Float32Array, batch: number): { i2t: Float64Array; t2i: Float64Array } {
  // sim_t2i = sim_i2tᵀ
  return { i2t: softmaxRows(simI2T, batch, batch, false), t2i: softmaxRows(simI2T, batch, batch, true) };
}

/**
 * Samples hard negatives like the authors (§1.5): weights = softmax(sim, dim=1)
 * + 1e-4 with the diagonal zeroed; a negative image per text from `weights_t2i`
 * and a negative text per image from `weights_i2t` (`torch.multinomial`).
 *
 * @param simI2T Image-to-text similarities, row-major `[batch, batch]`.
 * @param batch The batch size B.
 * @param rng The generator of the draws: one (images per text first, then texts per image), or one per row.
 * @returns One negative image per text and one negative text per image.
 * @throws {RefineError} The batch has fewer than 2 pairs, or a similarity is NaN or infinite (the features have
 *   diverged; `torch.multinomial` refuses such weights too).
 */
export function sampleHardNegatives(simI2T: Float32Array, batch: number, rng: Rng | HardNegativeRngs): HardNegatives {
  if (batch < 2) throw new RefineError("ITM needs a batch of at least 2 pairs to draw negatives");
  if (simI2T.length !== batch * batch) {
    throw new RefineError(`ITM negative sampling: ${simI2T.length} similarities for a batch of ${batch}`);
  }
  refuseNonFinite(simI2T, batch, "image-text");
  const { i2t: wI2T, t2i: wT2I } = hardNegativeWeights(simI2T, batch);
  const negImage: number[] = [];
  const negText: number[] = [];
  const draw = (which: "image" | "text", b: number) => rng instanceof Rng ? rng : rng[which][b];
  for (let b = 0; b < batch; b++) {
    negImage.push(draw("image", b).categorical(wT2I.subarray(b * batch, (b + 1) * batch)));
  }
  for (let b = 0; b < batch; b++) negText.push(draw("text", b).categorical(wI2T.subarray(b * batch, (b + 1) * batch)));
  return { negImage, negText };
}

/**
 * {@link sampleHardNegatives} for this rank's rows of a global batch sharded across data-parallel ranks, as BLIP's
 * `blip_pretrain.py` does under DDP: the candidates are the whole world batch (this rank's rows scored against the
 * gathered features of every rank, from {@link itcLossSharded}), the weights are the same softmax + 1e-4 with each
 * row's own pair zeroed, and each row draws from its own generator, so the negatives are those one process draws for
 * these rows at the global batch.
 * @param simI2T this rank's images against every text, row-major `[rows, total]`
 * @param simT2I this rank's texts against every image, row-major `[rows, total]`
 * @param rows this rank's rows (B_local)
 * @param offset this rank's first row in the global batch
 * @param total the global batch (B_global, at least 2)
 * @param rngs per-row generators of the draws (`rows` of each)
 * @returns for each of this rank's texts a negative image, and for each of its images a negative text, as global
 *   indices in [0, total)
 * @throws {RefineError} a global batch under 2 pairs, similarities of the wrong size, or a non-finite similarity
 */
export function sampleHardNegativesSharded(
  simI2T: Float32Array,
  simT2I: Float32Array,
  rows: number,
  offset: number,
  total: number,
  rngs: HardNegativeRngs,
): HardNegatives {
  if (total < 2) throw new RefineError("ITM needs a batch of at least 2 pairs to draw negatives");
  if (simI2T.length !== rows * total || simT2I.length !== rows * total) {
    throw new RefineError(
      `ITM negative sampling: ${simI2T.length} and ${simT2I.length} similarities for ${rows} rows of ${total}`,
    );
  }
  refuseNonFinite(simI2T, total, "image-text (this rank's rows)");
  refuseNonFinite(simT2I, total, "text-image (this rank's rows)");
  const wI2T = softmaxRows(simI2T, rows, total, false, offset);
  const wT2I = softmaxRows(simT2I, rows, total, false, offset);
  const negImage: number[] = [];
  const negText: number[] = [];
  for (let b = 0; b < rows; b++) negImage.push(rngs.image[b].categorical(wT2I.subarray(b * total, (b + 1) * total)));
  for (let b = 0; b < rows; b++) negText.push(rngs.text[b].categorical(wI2T.subarray(b * total, (b + 1) * total)));
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
 * @param rng the generator of the draws: one, or one per row (as {@link sampleHardNegatives})
 * @returns `[B]` int32 index tensors
 * @throws {RefineError} when the batch has fewer than 2 pairs
 */
export function sampleHardNegativesOnDevice(
  simI2T: Tensor,
  batch: number,
  rng: Rng | HardNegativeRngs,
): DeviceHardNegatives {
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
  const u = (which: "image" | "text") =>
    Float32Array.from({ length: batch }, (_, b) => (rng instanceof Rng ? rng : rng[which][b]).uniform());
  const uImage = u("image");
  const uText = u("text");
  return { negImage: draw(true, uImage), negText: draw(false, uText) };
}

/**
 * Where ITM's negatives come from when the batch is sharded across data-parallel ranks (BLIP under DDP): the whole
 * world batch. `imageTokens` are every rank's image tokens, gathered with gradient (BLIP's
 * `all_gather_with_grad(image_embeds)`); the texts are every rank's ids and masks (integers, no gradient).
 */
export interface ItmCandidates {
  /** Token ids of the global batch `[B_global, L]`. */
  textIds: Tensor;
  /** Padding masks of the global batch `[B_global, L]`. */
  textMask: Tensor;
  /** Image tokens of the global batch `[B_global, 1+N, W]` (gathered with gradient). */
  imageTokens: Tensor;
  /** What the sum of the 3·B_local cross-entropies is divided by: 3·B_global. */
  denominator: number;
}

/**
 * Image-text matching over 3B pairs: (text_b, image_b) → 1, (text_b, image_negImage[b]) → 0,
 * (text_negText[b], image_b) → 0; the cross-attending BERT's CLS → `itm_head` → 2-way CE.
 * @param bert the cross-attending text encoder
 * @param heads the model's heads (`itm_head`)
 * @param textIds token ids `[B, L]`
 * @param textMask padding mask `[B, L]`
 * @param imageTokens the refinement tokens `[B, 1+N, W]`, or their cross-attention keys and values from
 *   `crossKeyValues` (shared with the other passes: the pairs with a negative image gather theirs, the others use
 *   them as they are, instead of projecting 3B images; not with `candidates`)
 * @param negatives from {@link sampleHardNegatives} (indices into this batch), or from
 *   {@link sampleHardNegativesSharded} (indices into `candidates`)
 * @param options training mode (dropout) and its generator (one per row: the B positive pairs, then the B pairs with
 *   a negative image, then the B with a negative text)
 * @param candidates where negatives come from when the batch is one rank's shard of a global batch (default: this
 *   batch, the mean over its 3B pairs)
 * @returns the mean 2-way cross-entropy over the 3B pairs (a rank's share of the global mean with `candidates`), a
 *   scalar
 */
export function itmLoss(
  bert: BertModel,
  heads: Params,
  textIds: Tensor,
  textMask: Tensor,
  imageTokens: Tensor | CrossKeyValues,
  negatives: HardNegatives | DeviceHardNegatives,
  options: BertForwardOptions = {},
  candidates?: ItmCandidates,
): Tensor {
  const B = textIds.shape[0];
  const indices = (x: number[] | Tensor) => (Array.isArray(x) ? Int32Array.from(x) : x);
  const negText = indices(negatives.negText);
  const pool = candidates ?? { textIds, textMask };
  const texts = tf.concat([textIds, textIds, tf.gather(pool.textIds, negText)], 0);
  const masks = tf.concat([textMask, textMask, tf.gather(pool.textMask, negText)], 0);
  const negImage = indices(negatives.negImage);
  let images: Pick<BertInputs, "encoderHiddenStates" | "crossKeyValues" | "imageRows">;
  if (imageTokens instanceof tf.Tensor) {
    const poolImages = candidates?.imageTokens ?? imageTokens;
    images = { encoderHiddenStates: tf.concat([imageTokens, tf.gather(poolImages, negImage), imageTokens], 0) };
  } else {
    if (candidates) {
      throw new RefineError("ITM over a sharded batch needs the image tokens, not shared keys and values");
    }
    // Rows 0…B−1 and 2B…3B−1 attend to their own images: the shared keys and values serve them without a copy.
    const own = Int32Array.from({ length: B }, (_, i) => i);
    const imageRows = negImage instanceof Int32Array
      ? Int32Array.from([...own, ...negImage, ...own])
      : tf.concat([tf.tensor1d(own, "int32"), tf.cast(negImage, "int32"), tf.tensor1d(own, "int32")], 0);
    images = { crossKeyValues: imageTokens, imageRows };
  }
  const cls = clsToken(bertEncode(bert, { inputIds: texts, attentionMask: masks, ...images }, options));
  const labels = new Int32Array(3 * B);
  labels.fill(1, 0, B);
  return crossEntropy(itmHead(heads, cls), labels, 0, candidates?.denominator);
}

/**
 * Masked-token loss shared by MLM and GM: the cross-attending BERT on masked
 * ids, the MLM head at the masked positions only (labels ≠ −100), mean CE.
 * `attentionMask` is `[B, L]` (MLM, bidirectional) or `[B, L, L]` (GM, causal).
 * @param bert the cross-attending text encoder with its MLM head
 * @param maskedIds masked token ids `[B, L]` (from `maskTokens`)
 * @param labels original ids at masked positions, −100 elsewhere, row-major `[B, L]`
 * @param attentionMask `[B, L]` (MLM) or `[B, L, L]` (GM, from `causalPaddingMask`)
 * @param imageTokens the refinement tokens `[B, 1+N, W]`, or their cross-attention keys and values from
 *   `crossKeyValues` (shared with the other passes)
 * @param options training mode (dropout) and its generator
 * @param maskedInBatch what the sum of the cross-entropies is divided by (default: the positions masked here). A
 *   data-parallel rank holding part of a global batch passes the positions masked in the whole global batch, so that
 *   the ranks' losses add up to the global mean.
 * @returns the mean cross-entropy over the masked positions, a scalar
 * @throws {RefineError} when no position is masked
 */
export function maskedTokenLoss(
  bert: BertModel,
  maskedIds: Tensor,
  labels: Int32Array,
  attentionMask: Tensor,
  imageTokens: Tensor | CrossKeyValues,
  options: BertForwardOptions = {},
  maskedInBatch?: number,
): Tensor {
  const images = imageTokens instanceof tf.Tensor
    ? { encoderHiddenStates: imageTokens }
    : { crossKeyValues: imageTokens };
  const seq = bertEncode(bert, { inputIds: maskedIds, attentionMask, ...images }, options);
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
  return crossEntropy(mlmLogits(bert, hidden), Int32Array.from(targets), 0, maskedInBatch);
}
