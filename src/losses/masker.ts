/**
 * The authors' `TokenMasker` (method notes §1.5), with a seeded generator:
 * candidates are positions j ≥ 1 (never `[CLS]`) whose id is not `[PAD]` (0);
 * each is selected with probability p, and a row with nothing selected is
 * re-drawn until something is. Selected tokens become `[MASK]` (80 %), a
 * uniformly random id from the configured range (10 %) or stay (10 %); the
 * label is the original id, −100 elsewhere. Draw order follows the authors'
 * loops: all rows' selections first, then replacements in row-major order.
 * @module
 */
import { type RandomSource, rowRng } from "../util/rng.ts";
import { RefineError } from "../util/errors.ts";

/** Ignore index of the cross-entropy (PyTorch's default). */
export const IGNORE_INDEX: number = -100;

/** Masking probabilities the authors use: 15 % for MLM, 60 % for GM. */
export const MLM_PROB = 0.15;
/** GM's masking probability. */
export const GM_PROB = 0.6;

/** Options of {@link maskTokens}. */
export interface MaskOptions {
  /** Selection probability per candidate token. */
  prob: number;
  /** `[MASK]` id. */
  maskId: number;
  /** Inclusive range of random replacement ids (bert-base-uncased: [106, 30521]). */
  randomRange: [number, number];
  /** `[PAD]` id (0, as the authors hard-code). */
  padId?: number;
  /**
   * Generator of every draw: one for the batch (the authors' order: every row's selection, then the replacements in
   * row-major order), or one per row (row i's selection, then its replacements, from `rng[i]`; see `SampleStreams`).
   */
  rng: RandomSource;
}

/** Masked ids and labels, row-major `[batch, length]`. */
export interface MaskedTokens {
  /** Input ids with masked positions replaced. */
  inputIds: Int32Array;
  /** Original ids at masked positions, −100 elsewhere. */
  labels: Int32Array;
}

/**
 * Masks a `[batch, length]` id matrix.
 * @param ids token ids, row-major `[batch, length]`, `[CLS]` at position 0
 * @param batch the rows B
 * @param length the columns L
 * @param options the selection probability (MLM 0.15, GM 0.6), the `[MASK]` id, the random-id range and the generator
 * @returns the masked ids and the labels (original id at masked positions, −100 elsewhere), both `[batch, length]`
 * @throws {RefineError} when a row has no maskable token (only `[CLS]` and padding)
 * @throws {RangeError} per-row generators fewer than the rows
 */
export function maskTokens(ids: Int32Array, batch: number, length: number, options: MaskOptions): MaskedTokens {
  const pad = options.padId ?? 0;
  const { rng, prob, maskId } = options;
  const [lo, hi] = options.randomRange;
  const selected = new Uint8Array(batch * length);
  for (let i = 0; i < batch; i++) {
    const row = i * length;
    let candidates = 0;
    for (let j = 1; j < length; j++) if (ids[row + j] !== pad) candidates++;
    if (candidates === 0) {
      throw new RefineError(`token masker: row ${i} has no maskable token (only [CLS] and padding)`);
    }
    let any = false;
    while (!any) {
      for (let j = 1; j < length; j++) {
        if (ids[row + j] !== pad && rowRng(rng, i).uniform() < prob) {
          selected[row + j] = 1;
          any = true;
        }
      }
    }
  }
  const inputIds = ids.slice();
  const labels = new Int32Array(batch * length).fill(IGNORE_INDEX);
  for (let k = 0; k < batch * length; k++) {
    if (!selected[k]) continue;
    const r = rowRng(rng, Math.floor(k / length));
    const p = r.uniform();
    if (p < 0.8) inputIds[k] = maskId;
    else if (p < 0.9) inputIds[k] = lo + r.int(hi - lo + 1);
    labels[k] = ids[k];
  }
  return { inputIds, labels };
}

/**
 * GM's attention mask (§1.5): the padding mask expanded to `[B, L, L]` and made lower-triangular.
 * @param attentionMask the padding mask, row-major `[batch, length]`, 1 = token
 * @param batch the rows B
 * @param length the columns L
 * @returns `[batch, length, length]`: entry (b, i, j) is the padding mask at j when j ≤ i, else 0
 */
export function causalPaddingMask(attentionMask: Int32Array, batch: number, length: number): Float32Array {
  const out = new Float32Array(batch * length * length);
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < length; i++) {
      for (let j = 0; j <= i; j++) out[(b * length + i) * length + j] = attentionMask[b * length + j];
    }
  }
  return out;
}
