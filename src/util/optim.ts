/**
 * The AdamW update on plain arrays, as `torch.optim.AdamW` computes it:
 * decoupled decay first, then the bias-corrected step with ε added after
 * dividing √v by √(1−β₂ᵗ). Shared by refinement and linear probing.
 * @module
 */
import type { OptimizerParams } from "../params.ts";

/**
 * AdamW hyper-parameters without the learning rate (β₁, β₂, ε, decoupled weight decay): the fields of
 * `OptimizerParams` in src/params.ts, the one place they are defined.
 */
export type AdamWHyper = Omit<OptimizerParams, "lr">;

/**
 * The per-step factors of {@link adamwRange}: `[stepSize, sqrtBc2, decay, beta1, beta2, eps]` with
 * `stepSize = lr / (1 − β₁ᵗ)`, `sqrtBc2 = √(1 − β₂ᵗ)` and `decay = 1 − lr · weightDecay`.
 * @param t the step, 1-based
 * @param lr the learning rate
 * @param h the other hyper-parameters
 * @returns the six factors
 */
export function adamwFactors(t: number, lr: number, h: AdamWHyper): number[] {
  return [
    lr / (1 - Math.pow(h.beta1, t)),
    Math.sqrt(1 - Math.pow(h.beta2, t)),
    1 - lr * h.weightDecay,
    h.beta1,
    h.beta2,
    h.eps,
  ];
}

/**
 * The update of elements `[lo, hi)` in place, with the factors of {@link adamwFactors} (the cpu backend's thread
 * pool runs ranges of one parameter on several cores; any split gives the same bits).
 * @param w weights, updated
 * @param g gradient
 * @param m first moments, updated
 * @param v second moments, updated
 * @param f the step's factors
 * @param lo first element
 * @param hi end of the range
 */
export function adamwRange(
  w: Float32Array,
  g: ArrayLike<number>,
  m: Float32Array,
  v: Float32Array,
  f: ArrayLike<number>,
  lo: number,
  hi: number,
): void {
  const stepSize = f[0], sqrtBc2 = f[1], decay = f[2], beta1 = f[3], beta2 = f[4], eps = f[5];
  for (let i = lo; i < hi; i++) {
    const gi = g[i];
    w[i] *= decay;
    const mi = (m[i] = beta1 * m[i] + (1 - beta1) * gi);
    const vi = (v[i] = beta2 * v[i] + (1 - beta2) * gi * gi);
    w[i] -= (stepSize * mi) / (Math.sqrt(vi) / sqrtBc2 + eps);
  }
}

/** Updates `w` in place from gradient `g`, moments `m`/`v`, at step `t` (1-based) and rate `lr`. */
export function adamwUpdate(
  w: Float32Array,
  g: ArrayLike<number>,
  m: Float32Array,
  v: Float32Array,
  t: number,
  lr: number,
  h: AdamWHyper,
): void {
  adamwRange(w, g, m, v, adamwFactors(t, lr, h), 0, w.length);
}
