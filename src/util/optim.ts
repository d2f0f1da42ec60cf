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
  const stepSize = lr / (1 - Math.pow(h.beta1, t));
  const sqrtBc2 = Math.sqrt(1 - Math.pow(h.beta2, t));
  const decay = 1 - lr * h.weightDecay;
  const { beta1, beta2, eps } = h;
  for (let i = 0; i < w.length; i++) {
    const gi = g[i];
    w[i] *= decay;
    const mi = (m[i] = beta1 * m[i] + (1 - beta1) * gi);
    const vi = (v[i] = beta2 * v[i] + (1 - beta2) * gi * gi);
    w[i] -= (stepSize * mi) / (Math.sqrt(vi) / sqrtBc2 + eps);
  }
}
