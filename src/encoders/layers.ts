/**
 * Building blocks shared by the ViT and BERT: parameters keyed by their
 * PyTorch names, Linear, LayerNorm, exact GELU, attention and initialisers.
 * All functions are pure tensor computations; callers wrap them in `tf.tidy`.
 * @module
 */
import { tf } from "../backend/tf.ts";
import {
  fusedDropout,
  fusedGelu,
  fusedLayerNorm,
  fusedMergeHeads,
  fusedResidual,
  fusedSoftmax,
  fusedSplitHeads,
} from "../backend/fused.ts";
import type { Tensor, Variable } from "../backend/tf.ts";
import { type RandomSource, type Rng, rowRng } from "../util/rng.ts";
import { EncoderError } from "../util/errors.ts";

/** Trainable tensors keyed by their PyTorch state-dict names, e.g. `blocks.0.attn.qkv.weight`. */
export type Params = Map<string, Variable>;

let instanceCounter = 0;

/** A unique prefix for tfjs variable names (tfjs variable names are global). */
export function uniqueScope(kind: string): string {
  return `${kind}_${++instanceCounter}`;
}

/** Looks a parameter up by its PyTorch name, naming it if missing. */
export function param(params: Params, name: string): Variable {
  const p = params.get(name);
  if (!p) throw new EncoderError(`parameter "${name}" is missing from the model`);
  return p;
}

/** Creates a variable named `scope/name` from values. */
export function makeParam(
  params: Params,
  scope: string,
  name: string,
  values: Float32Array,
  shape: number[],
  trainable = true,
): void {
  params.set(name, tf.variable(tf.tensor(values, shape, "float32"), trainable, `${scope}/${name}`));
}

/** Truncated normal values (mean 0, std, cut at ±2 absolute, as `timm.trunc_normal_`). */
export function truncNormal(rng: Rng, size: number, std: number, bound = 2): Float32Array {
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    let v: number;
    do v = rng.normal() * std; while (v < -bound || v > bound);
    out[i] = v;
  }
  return out;
}

/** Normal values N(0, std²). */
export function normalValues(rng: Rng, size: number, std: number): Float32Array {
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) out[i] = rng.normal() * std;
  return out;
}

/** Uniform values in [-bound, bound) (PyTorch's default Linear init uses bound = 1/sqrt(fan_in)). */
export function uniformValues(rng: Rng, size: number, bound: number): Float32Array {
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) out[i] = (rng.uniform() * 2 - 1) * bound;
  return out;
}

/** Adds `prefix.weight` [out, in] and `prefix.bias` [out] initialised like PyTorch's `nn.Linear`. */
export function initLinearDefault(
  params: Params,
  scope: string,
  prefix: string,
  inDim: number,
  outDim: number,
  rng: Rng,
  bias = true,
): void {
  const bound = 1 / Math.sqrt(inDim);
  makeParam(params, scope, `${prefix}.weight`, uniformValues(rng, outDim * inDim, bound), [outDim, inDim]);
  if (bias) makeParam(params, scope, `${prefix}.bias`, uniformValues(rng, outDim, bound), [outDim]);
}

/** Adds `prefix.weight` ~ trunc-normal(std) and a zero bias (timm / HF BERT init). */
export function initLinearTrunc(
  params: Params,
  scope: string,
  prefix: string,
  inDim: number,
  outDim: number,
  rng: Rng,
  std = 0.02,
  bias = true,
): void {
  makeParam(params, scope, `${prefix}.weight`, truncNormal(rng, outDim * inDim, std), [outDim, inDim]);
  if (bias) makeParam(params, scope, `${prefix}.bias`, new Float32Array(outDim), [outDim]);
}

/** Adds LayerNorm `prefix.weight` = 1 and `prefix.bias` = 0. */
export function initLayerNorm(params: Params, scope: string, prefix: string, dim: number): void {
  makeParam(params, scope, `${prefix}.weight`, new Float32Array(dim).fill(1), [dim]);
  makeParam(params, scope, `${prefix}.bias`, new Float32Array(dim), [dim]);
}

/**
 * `nn.Linear`: y = x Wᵀ + b with W stored [out, in] as in PyTorch.
 * Works on any rank by flattening to 2-D (tfjs's batched-matmul gradient
 * does not reduce broadcast batch dimensions).
 * @param x input `[..., in]`
 * @param weight `[out, in]`
 * @param bias `[out]`, optional
 * @returns `[..., out]`
 */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  const inDim = x.shape[x.shape.length - 1];
  const outDim = weight.shape[0];
  const lead = x.shape.slice(0, -1);
  const x2 = x.rank === 2 ? x : tf.reshape(x, [-1, inDim]);
  const y = bias ? linearWithBias(x2, weight, bias) : linearNoBias(x2, weight);
  return x.rank === 2 ? y : tf.reshape(y, [...lead, outDim]);
}

// `tf.fused.matMul` keeps its output for the backward pass whatever the activation (tfjs 4.22 `fused/mat_mul`), so
// every linear layer's output would be held until the backward pass. A linear layer's gradient needs only its input
// and weight, as PyTorch's `addmm` saves: dx = dy·W, dW = dyᵀ·x, db = Σ dy over rows.
const linearGrads = (dy: Tensor, x: Tensor, w: Tensor) => [tf.matMul(dy, w), tf.matMul(dy, x, true, false)];

const linearNoBias = tf.customGrad((x, w, save) => {
  (save as (t: Tensor[]) => void)([x as Tensor, w as Tensor]);
  return {
    value: tf.fused.matMul({ a: x as tf.Tensor2D, b: w as tf.Tensor2D, transposeB: true }),
    gradFunc: (dy, saved) => linearGrads(dy as Tensor, saved[0], saved[1]),
  };
}) as (x: Tensor, w: Tensor) => Tensor;

const linearWithBias = tf.customGrad((x, w, b, save) => {
  (save as (t: Tensor[]) => void)([x as Tensor, w as Tensor]);
  return {
    value: tf.fused.matMul({ a: x as tf.Tensor2D, b: w as tf.Tensor2D, transposeB: true, bias: b as Tensor }),
    gradFunc: (dy, saved) => [...linearGrads(dy as Tensor, saved[0], saved[1]), tf.sum(dy as Tensor, 0)],
  };
}) as (x: Tensor, w: Tensor, b: Tensor) => Tensor;

/** Linear layer by parameter prefix: `prefix.weight`, optional `prefix.bias`. */
export function linearP(params: Params, prefix: string, x: Tensor): Tensor {
  return linear(x, param(params, `${prefix}.weight`), params.get(`${prefix}.bias`));
}

/**
 * LayerNorm over the last axis with biased variance, as `nn.LayerNorm`.
 * @param x input `[..., D]`
 * @param weight γ `[D]` (omitted: 1)
 * @param bias β `[D]` (omitted: 0)
 * @param eps added to the variance (timm ViT 1e-6, BERT 1e-12)
 * @returns the normalised tensor, same shape
 */
export function layerNorm(
  x: Tensor,
  weight: Tensor | undefined,
  bias: Tensor | undefined,
  eps: number,
): Tensor {
  return fusedLayerNorm(x, weight, bias, eps);
}

/** LayerNorm by parameter prefix. */
export function layerNormP(params: Params, prefix: string, x: Tensor, eps: number): Tensor {
  return layerNorm(x, param(params, `${prefix}.weight`), param(params, `${prefix}.bias`), eps);
}

/**
 * Exact (erf) GELU, `nn.GELU()`: 0.5·x·(1 + erf(x/√2)).
 * @param x any tensor
 * @returns GELU(x), same shape
 */
export function gelu(x: Tensor): Tensor {
  return fusedGelu(x);
}

/**
 * Scaled dot-product attention on `[B, H, Lq, d]` queries and `[B, H, Lk, d]`
 * keys/values. `additiveMask` (broadcastable to `[B, H, Lq, Lk]`) holds 0 for
 * visible and a large negative number for hidden positions; `dropProbs`
 * (attention dropout) is applied to the probabilities before they weight `v`.
 * Returns the context `[B, H, Lq, d]` and the attention probabilities.
 */
export function attention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  additiveMask?: Tensor,
  dropProbs?: (probs: Tensor) => Tensor,
): { context: Tensor; probs: Tensor } {
  const d = q.shape[q.rank - 1] as number;
  const probs = fusedSoftmax(tf.matMul(q, k, false, true), 1 / Math.sqrt(d), additiveMask);
  return { context: tf.matMul(dropProbs ? dropProbs(probs) : probs, v), probs };
}

/** `[B, L, H*d]` → `[B, H, L, d]`. */
export function splitHeads(x: Tensor, heads: number): Tensor {
  return fusedSplitHeads(x, heads);
}

/** `[B, H, L, d]` → `[B, L, H*d]`. */
export function mergeHeads(x: Tensor): Tensor {
  return fusedMergeHeads(x);
}

/**
 * Which entries a dropout keeps, for a tensor of `shape`: 1 with probability `keep`, else 0. One generator draws the
 * entries in row-major order; per-row generators draw row i's entries (the `size / shape[0]` after it) from
 * `rows[i]`, so a sample's mask does not depend on the other rows of its batch.
 * @param shape the tensor's shape, rows first
 * @param keep the keep probability, in (0, 1]
 * @param source one generator for the batch, or one per row (`shape[0]` of them)
 * @returns the mask, row-major, `shape`'s size, one byte per entry
 * @throws {RangeError} per-row generators fewer than the rows
 */
export function keepMask(shape: readonly number[], keep: number, source: RandomSource): Uint8Array {
  const size = shape.reduce((a, b) => a * b, 1);
  const mask = new Uint8Array(size);
  const rows = shape[0] ?? 1;
  const per = rows ? size / rows : 0;
  for (let r = 0; r < rows; r++) rowRng(source, r).fillBelow(mask, r * per, (r + 1) * per, keep);
  return mask;
}

/**
 * A dropout mask for a tensor of `shape` as float32 multipliers: each entry `1/keep` where {@link keepMask} keeps it,
 * else 0 (the same draws).
 * @param shape the tensor's shape, rows first
 * @param keep the keep probability, in (0, 1]
 * @param source one generator for the batch, or one per row (`shape[0]` of them)
 * @returns the mask, row-major, `shape`'s size
 * @throws {RangeError} per-row generators fewer than the rows
 */
export function dropMask(shape: readonly number[], keep: number, source: RandomSource): Float32Array {
  return Float32Array.from(keepMask(shape, keep, source), (k) => (k ? 1 / keep : 0));
}

/**
 * Inverted dropout (`nn.Dropout` in training mode): zeroes each entry with probability `rate` and scales the others
 * by `1 / (1 - rate)`. The backward pass keeps a byte mask (see `fusedDropout`).
 * @param x any tensor, rows first
 * @param rate the drop probability, in [0, 1)
 * @param source one generator for the batch, or one per row
 * @returns the tensor after dropout, same shape (`x` itself when `rate` is 0)
 * @throws {RangeError} per-row generators fewer than the rows
 */
export function dropout(x: Tensor, rate: number, source: RandomSource): Tensor {
  if (rate <= 0) return x;
  return fusedDropout(x, keepMask(x.shape, 1 - rate, source), 1 - rate);
}

/**
 * A residual connection with stochastic depth on the branch (`x + timm.DropPath(branch)`): each row's branch is
 * dropped with probability `rate` and the survivors scaled by 1/(1-rate) (one {@link dropMask} draw per row), in one
 * fused op that keeps no operand for the backward pass (`fusedResidual`).
 * @param x the residual stream `[B, ...]`
 * @param branch the branch, `x`'s shape
 * @param rate the drop probability (0, or no `rng`: a plain sum)
 * @param rng one generator for the batch, or one per row
 * @returns the sum, `x`'s shape
 */
export function residual(x: Tensor, branch: Tensor, rate = 0, rng?: RandomSource): Tensor {
  if (rate <= 0 || !rng) return fusedResidual(x, branch);
  return fusedResidual(x, branch, dropMask([x.shape[0]], 1 - rate, rng));
}

/**
 * Total number of scalar parameters.
 * @param params the model's variables
 * @returns the sum of their sizes
 */
export function countParams(params: Params): number {
  let n = 0;
  for (const p of params.values()) n += p.size;
  return n;
}

/**
 * Disposes every variable of a model.
 * @param params the model's variables (unusable afterwards)
 */
export function disposeParams(params: Params): void {
  for (const p of params.values()) p.dispose();
  params.clear();
}

/**
 * Replaces a variable's value with `values` (tfjs's `assign` keeps the source
 * tensor registered, so the temporary is disposed here to avoid a leak).
 */
export function assignValues(v: Variable, values: Float32Array): void {
  const t = tf.tensor(values, v.shape, "float32");
  v.assign(t);
  t.dispose();
}

/**
 * `p` broadcast to `shape` by addition. Unlike `tf.broadcastTo` (whose gradient
 * in tfjs slices and adds once per repetition), its gradient is one sum.
 */
export function expandParam(p: Tensor, shape: number[]): Tensor {
  return tf.add(tf.zeros(shape), p);
}
