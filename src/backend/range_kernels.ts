/**
 * The `cpu` backend's elementwise and row-wise kernels as functions of an index range, so that
 * {@link https://jsr.io/@retfiner/retfiner/doc/backend | the thread pool} (`threads.ts`) can share one call out
 * over cores: the calling thread runs one range and each worker another, over the same memory.
 *
 * Every kernel writes each output element from one range only and reads inputs in the same order as a serial loop
 * would, so a result is the same to the last bit whatever the number of threads. Reductions that cross ranges
 * (LayerNorm's γ and β gradients, sums over rows) are split over *columns*, each column summed over all rows in row
 * order, for the same reason.
 *
 * Kernels take `(arrays, scalars, lo, hi)`: typed arrays (inputs and outputs, in the order each kernel documents),
 * numbers, and the range `[lo, hi)` of rows, columns or elements it runs. Scalars that are sizes are cast with `| 0`:
 * a worker reads them from a Float64Array, and a double loop bound keeps V8 from compiling integer indexing.
 * @module
 */

import { adamwRange } from "../util/optim.ts";

/** A kernel over the range `[lo, hi)`. */
export type RangeKernel = (a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number) => void;

const f32 = (a: readonly ArrayBufferView[], i: number) => a[i] as Float32Array;

/** Mean and 1/√(biased variance + eps) of `X[o, o + d)`, in float64, into `out[at]` and `out[at + 1]`. */
function rowMoments(X: Float32Array, o: number, d: number, eps: number, out: Float64Array, at: number): void {
  let mean = 0;
  for (let i = 0; i < d; i++) mean += X[o + i];
  mean /= d;
  let v = 0;
  for (let i = 0; i < d; i++) {
    const c = X[o + i] - mean;
    v += c * c;
  }
  out[at] = mean;
  out[at + 1] = 1 / Math.sqrt(v / d + eps);
}

/**
 * LayerNorm forward over rows: arrays `[X, Y, gamma?, beta?]` (gamma, beta: length-0 arrays when absent), scalars
 * `[d, eps]`; `Y = (X − mean) / √(var + eps) · gamma + beta` per row of `d` values, in float64 like PyTorch's CPU
 * kernel accumulates.
 */
function layerNorm(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), Y = f32(a, 1), G = f32(a, 2), Bv = f32(a, 3);
  const d = s[0] | 0, eps = s[1];
  const hasG = G.length > 0, hasB = Bv.length > 0;
  const stats = new Float64Array(2);
  for (let r = lo; r < hi; r++) {
    const o = r * d;
    rowMoments(X, o, d, eps, stats, 0);
    const mean = stats[0], rstd = stats[1];
    for (let i = 0; i < d; i++) {
      let y = (X[o + i] - mean) * rstd;
      if (hasG) y *= G[i];
      if (hasB) y += Bv[i];
      Y[o + i] = y;
    }
  }
}

/**
 * LayerNorm backward, the input gradient over rows: arrays `[X, DY, gamma?, DX, stats]` (gamma length 0 when absent;
 * `stats` a Float64Array of 2 per row that receives each row's mean and 1/√(var + eps) for
 * {@link layerNormGradAffine}), scalars `[d, eps]`.
 */
function layerNormGradInput(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), DY = f32(a, 1), G = f32(a, 2), DX = f32(a, 3);
  const stats = a[4] as Float64Array;
  const d = s[0] | 0, eps = s[1];
  const hasG = G.length > 0;
  for (let r = lo; r < hi; r++) {
    const o = r * d;
    rowMoments(X, o, d, eps, stats, 2 * r);
    const mean = stats[2 * r], rstd = stats[2 * r + 1];
    let sumG = 0;
    let sumGx = 0;
    for (let i = 0; i < d; i++) {
      const xh = (X[o + i] - mean) * rstd;
      const g = DY[o + i] * (hasG ? G[i] : 1);
      sumG += g;
      sumGx += g * xh;
    }
    for (let i = 0; i < d; i++) {
      const xh = Math.fround((X[o + i] - mean) * rstd); // x̂ as float32, as the gradient has always used it
      const g = DY[o + i] * (hasG ? G[i] : 1);
      DX[o + i] = rstd * (g - sumG / d - (xh * sumGx) / d);
    }
  }
}

/**
 * LayerNorm backward, gamma's and beta's gradients over columns: arrays `[X, DY, stats, DG, DB]` (`stats` from
 * {@link layerNormGradInput}; DG and DB Float64Arrays of `d`, accumulated into), scalars `[d, rows]`. Each column is
 * summed over all rows in row order.
 */
function layerNormGradAffine(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), DY = f32(a, 1);
  const stats = a[2] as Float64Array, DG = a[3] as Float64Array, DB = a[4] as Float64Array;
  const d = s[0] | 0, rows = s[1] | 0;
  for (let r = 0; r < rows; r++) {
    const o = r * d;
    const mean = stats[2 * r], rstd = stats[2 * r + 1];
    for (let i = lo; i < hi; i++) {
      const dy = DY[o + i];
      DG[i] += dy * ((X[o + i] - mean) * rstd);
      DB[i] += dy;
    }
  }
}

/** Softmax backward over rows: arrays `[Y, DY, DX]`, scalars `[n, scale]`; `dx = scale · y · (dy − Σ dy·y)`. */
function softmaxGrad(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const Y = f32(a, 0), DY = f32(a, 1), DX = f32(a, 2);
  const n = s[0] | 0, scale = s[1];
  for (let r = lo; r < hi; r++) {
    const o = r * n;
    let dot = 0;
    for (let i = 0; i < n; i++) dot += DY[o + i] * Y[o + i];
    for (let i = 0; i < n; i++) DX[o + i] = scale * Y[o + i] * (DY[o + i] - dot);
  }
}

/** Dropout over elements: arrays `[X, keep (Uint8Array), Y]`, scalars `[scale]` (a float32 value). */
function dropout(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), K = a[1] as Uint8Array, Y = f32(a, 2);
  const scale = s[0];
  for (let i = lo; i < hi; i++) Y[i] = X[i] * (K[i] ? scale : 0); // x·0, not 0: signed zeros as x·mask
}

/** `Y = X + B` over elements: arrays `[X, B, Y]`. */
function add(a: readonly ArrayBufferView[], _s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), Bv = f32(a, 1), Y = f32(a, 2);
  for (let i = lo; i < hi; i++) Y[i] = X[i] + Bv[i];
}

/**
 * Drop-path's residual over rows: arrays `[X, B, S, Y]`, scalars `[per]` (values per row);
 * `Y = X + fround(B · S[row])`, the scaled branch rounded to float32 before the sum as tfjs's Multiply then Add.
 */
function residualScaled(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), Bv = f32(a, 1), S = f32(a, 2), Y = f32(a, 3);
  const per = s[0] | 0;
  for (let r = lo; r < hi; r++) {
    const sr = S[r];
    for (let i = r * per, end = i + per; i < end; i++) Y[i] = X[i] + Math.fround(Bv[i] * sr);
  }
}

/** Rows scaled by one factor each: arrays `[D, S, Y]`, scalars `[per]`; `Y = D · S[row]`. */
function rowScale(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const D = f32(a, 0), S = f32(a, 1), Y = f32(a, 2);
  const per = s[0] | 0;
  for (let r = lo; r < hi; r++) {
    const sr = S[r];
    for (let i = r * per, end = i + per; i < end; i++) Y[i] = D[i] * sr;
  }
}

/**
 * Attention heads split `[B, L, H·d] → [B, H, L, d]` (`split` 1) or merged back (0) over the range of `b·H + h`:
 * arrays `[X, Y]`, scalars `[split, H, L, d]`.
 */
function heads(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), Y = f32(a, 1);
  const split = s[0] === 1, H = s[1] | 0, L = s[2] | 0, d = s[3] | 0;
  for (let bh = lo; bh < hi; bh++) {
    const bi = (bh / H) | 0, h = bh - bi * H;
    for (let l = 0; l < L; l++) {
      const merged = ((bi * L + l) * H + h) * d; // [B, L, H, d]
      const headed = (bh * L + l) * d; // [B, H, L, d]
      if (split) { for (let i = 0; i < d; i++) Y[headed + i] = X[merged + i]; }
      else for (let i = 0; i < d; i++) Y[merged + i] = X[headed + i];
    }
  }
}

/** AdamW over elements, in place: arrays `[W, G, M, V]`, scalars the factors of `adamwFactors` (src/util/optim.ts). */
function adamw(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  adamwRange(f32(a, 0), f32(a, 1), f32(a, 2), f32(a, 3), s, lo, hi);
}

/**
 * Sums over leading axes, over columns: arrays `[X, acc]` (`X` as `[rows, cols]`, `acc` a zeroed Float64Array of
 * `cols`), scalars `[rows, cols]`; each column summed in row order in float64.
 */
function sumLeading(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), acc = a[1] as Float64Array;
  const rows = s[0] | 0, cols = s[1] | 0;
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    for (let j = lo; j < hi; j++) acc[j] += X[o + j];
  }
}

/** Sums over trailing axes, over rows: arrays `[X, Y]` (`X` as `[rows, n]`), scalars `[n]`; in float64 per row. */
function sumTrailing(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), Y = f32(a, 1);
  const n = s[0] | 0;
  for (let r = lo; r < hi; r++) {
    let sum = 0;
    const o = r * n;
    for (let i = 0; i < n; i++) sum += X[o + i];
    Y[r] = sum;
  }
}

/**
 * Cross-entropy with label smoothing over rows (PyTorch's `F.cross_entropy(..., reduction="none",
 * label_smoothing=ε)`): arrays `[logits, targets (Int32Array), loss, lse]` (`loss`: one value per row; `lse`: two per
 * row, the float64 log-sum-exp split into a float32 and its float32 remainder, so the gradient gets it to about 48
 * bits), scalars `[C, ε]`. `lse = log Σ exp(x)`, `loss = (1 − ε)·(lse − x_t) + ε·(lse − mean x)`, in float64 per row;
 * a target outside `[0, C)` contributes no likelihood term (a one-hot row of zeros, as the composite op gives).
 */
function crossEntropy(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), T = a[1] as Int32Array, loss = f32(a, 2), lse = f32(a, 3);
  const C = s[0] | 0, eps = s[1];
  for (let r = lo; r < hi; r++) {
    const o = r * C;
    let max = -Infinity, sum = 0;
    for (let j = 0; j < C; j++) if (X[o + j] > max) max = X[o + j];
    for (let j = 0; j < C; j++) sum += Math.exp(X[o + j] - max);
    const l = max + Math.log(sum);
    let mean = 0;
    if (eps !== 0) {
      for (let j = 0; j < C; j++) mean += X[o + j];
      mean /= C;
    }
    const t = T[r];
    const nll = t >= 0 && t < C ? l - X[o + t] : 0;
    loss[r] = (1 - eps) * nll + (eps !== 0 ? eps * (l - mean) : 0);
    const hi = Math.fround(l);
    lse[2 * r] = hi;
    lse[2 * r + 1] = l - hi;
  }
}

/**
 * The gradient of {@link crossEntropy} over rows: arrays `[logits, targets, lse (two per row), dLoss, dLogits]`,
 * scalars `[C, ε]`;
 * `dx_j = dLoss_r · (softmax_j − (1 − ε)·[j = t] − ε/C)` (without the `[j = t]` term for a target outside `[0, C)`,
 * whose likelihood term is absent: then `ε·(softmax_j − 1/C)`).
 */
function crossEntropyGrad(a: readonly ArrayBufferView[], s: ArrayLike<number>, lo: number, hi: number): void {
  const X = f32(a, 0), T = a[1] as Int32Array, lse = f32(a, 2), DL = f32(a, 3), DX = f32(a, 4);
  const C = s[0] | 0, eps = s[1];
  for (let r = lo; r < hi; r++) {
    const o = r * C;
    const g = DL[r], hi = lse[2 * r], lo = lse[2 * r + 1], t = T[r];
    const valid = t >= 0 && t < C;
    const w = valid ? 1 : eps; // the softmax's weight: (1 − ε) + ε, or ε alone
    for (let j = 0; j < C; j++) DX[o + j] = g * (w * Math.exp(X[o + j] - hi - lo) - eps / C);
    // The target's entry in one expression (one rounding to float32, not two).
    if (valid) DX[o + t] = g * (Math.exp(X[o + t] - hi - lo) - eps / C - (1 - eps));
  }
}

/** The kernels by name; a worker finds them by their index in {@link RANGE_KERNEL_NAMES}. */
export const RANGE_KERNELS = {
  layerNorm,
  layerNormGradInput,
  layerNormGradAffine,
  softmaxGrad,
  dropout,
  add,
  residualScaled,
  rowScale,
  heads,
  adamw,
  sumLeading,
  sumTrailing,
  crossEntropy,
  crossEntropyGrad,
} as const satisfies Record<string, RangeKernel>;

/** A kernel's name. */
export type RangeKernelName = keyof typeof RANGE_KERNELS;

/** The kernels' names in a fixed order (a job names its kernel by index). */
export const RANGE_KERNEL_NAMES = Object.keys(RANGE_KERNELS) as RangeKernelName[];
