/**
 * Fused elementwise kernels for the `cpu` backend: LayerNorm, exact GELU and a
 * scaled, masked softmax, each one pass over memory with a hand-written
 * gradient kernel, plus a faster Transpose. tfjs builds these from chains of
 * generic broadcasting ops, each allocating a buffer; on a CPU those chains,
 * not the matrix products, dominate a transformer step.
 *
 * The ops in this file pick the fused kernel when the active backend is
 * `cpu` and fall back to the equivalent composite tfjs ops elsewhere.
 * @module
 */
import { tf } from "./tf.ts";
import type { Tensor } from "./tf.ts";
import { installElementwiseKernels, setElementwiseVectorMath, uninstallElementwiseKernels } from "./elementwise.ts";
import type { VectorMath } from "./gemm.ts";
import { allocFloat32, allocLike } from "./pool.ts";
import { COPY_GRAIN, grain, offHeap, parallelFor } from "./threads.ts";

import { type CpuBackend, registerCpuKernel, type TensorInfo } from "./cpu_kernel.ts";
import type { KernelArgs } from "./cpu_kernel.ts";

const vals = (b: CpuBackend, t: TensorInfo) => b.data.get(t.dataId).values as Float32Array;
/** An absent gamma or beta, for the range kernels. */
const EMPTY = new Float32Array(0);

// ------------------------------------------------------------------ erf coefficients (Abramowitz & Stegun 7.1.26, |err| < 1.5e-7, as tfjs)
const ERF_P = 0.3275911;
const A1 = 0.254829592, A2 = -0.284496736, A3 = 1.421413741, A4 = -1.453152027, A5 = 1.061405429;

// ------------------------------------------------------------------ LayerNorm
function layerNormKernel({ inputs, backend, attrs }: KernelArgs): TensorInfo {
  const { x, gamma, beta } = inputs;
  const X = vals(backend, x!);
  const d = x!.shape[x!.shape.length - 1];
  const Y = allocFloat32(X.length);
  const G = gamma ? vals(backend, gamma) : EMPTY;
  const Bv = beta ? vals(backend, beta) : EMPTY;
  parallelFor("layerNorm", [X, Y, G, Bv], [d, attrs!.eps as number], X.length / d, grain(d));
  return backend.makeTensorInfo(x!.shape, "float32", Y);
}

function layerNormGradKernel({ inputs, backend, attrs }: KernelArgs): TensorInfo[] {
  const { dy, x, gamma } = inputs;
  const X = vals(backend, x!);
  const DY = vals(backend, dy!);
  const G = gamma ? vals(backend, gamma) : EMPTY;
  const d = x!.shape[x!.shape.length - 1];
  const rows = X.length / d;
  const DX = allocFloat32(X.length);
  const stats = new Float64Array(2 * rows); // each row's mean and 1/std, for the affine gradients
  const DG = new Float64Array(d);
  const DB = new Float64Array(d);
  parallelFor("layerNormGradInput", [X, DY, G, DX, stats], [d, attrs!.eps as number], rows, grain(d));
  // γ's and β's gradients sum over rows: split over columns, each summed in row order (any thread count, same bits).
  parallelFor("layerNormGradAffine", [X, DY, stats, DG, DB], [d, rows], d, grain(rows));
  return [
    backend.makeTensorInfo(x!.shape, "float32", DX),
    backend.makeTensorInfo([d], "float32", Float32Array.from(DG)),
    backend.makeTensorInfo([d], "float32", Float32Array.from(DB)),
  ];
}

// ------------------------------------------------------------------ GELU (exact, erf)
/** 0.5·(1 + erf(x/√2)) given e = exp(−x²/2) (the same exponential A&S's erf needs). */
function halfOnePlusErf(x: number, e: number): number {
  const a = Math.abs(x) * Math.SQRT1_2;
  const t = 1 / (1 + ERF_P * a);
  const erfAbs = 1 - ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t * e;
  return 0.5 * (1 + (x < 0 ? -erfAbs : erfAbs));
}

/**
 * A vectorised library's GELU and softmax (ONNX Runtime's MLAS under `cpu-onnx`, multi-threaded), used for arrays
 * at least this long; below it, a call's fixed cost outweighs the loop. The softmax's `Math.exp` loop ran at about
 * 10 ns per score: 27 % of encoding a ViT-B batch, which MLAS's takes to 1.43 s from 1.84 s (2 threads, 2026-12-02).
 */
let vectorMath: VectorMath | undefined;
const VECTOR_MIN = 4096;
/** A pooled output like `x` for the vectorised library when it writes into one (else it returns its own copy). */
const pooledFor = (x: Float32Array) => vectorMath?.writesOut ? allocFloat32(x.length) : undefined;

function geluKernel({ inputs, backend }: KernelArgs): TensorInfo {
  const X = vals(backend, inputs.x!);
  if (vectorMath && X.length >= VECTOR_MIN && X instanceof Float32Array) {
    return backend.makeTensorInfo(inputs.x!.shape, "float32", vectorMath.gelu(X, pooledFor(X)));
  }
  const Y = allocFloat32(X.length);
  for (let i = 0; i < X.length; i++) {
    const v = X[i];
    Y[i] = v * halfOnePlusErf(v, Math.exp(-0.5 * v * v));
  }
  return backend.makeTensorInfo(inputs.x!.shape, "float32", Y);
}

const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

function geluGradKernel({ inputs, backend }: KernelArgs): TensorInfo {
  const X = vals(backend, inputs.x!);
  const DY = vals(backend, inputs.dy!);
  if (vectorMath && X.length >= VECTOR_MIN && X instanceof Float32Array && DY instanceof Float32Array) {
    return backend.makeTensorInfo(inputs.x!.shape, "float32", vectorMath.geluGrad(DY, X, pooledFor(X)));
  }
  const DX = allocFloat32(X.length);
  for (let i = 0; i < X.length; i++) {
    const v = X[i];
    const e = Math.exp(-0.5 * v * v); // shared by Φ(x) and the density
    DX[i] = DY[i] * (halfOnePlusErf(v, e) + v * e * INV_SQRT_2PI);
  }
  return backend.makeTensorInfo(inputs.x!.shape, "float32", DX);
}

// ------------------------------------------------------------------ softmax(scale * x + mask) over the last axis
/** Offset of row `row` of `[B, H, Lq, Lk]` scores in a mask of shape `[B or 1, 1, Lq or 1, Lk]`. */
function maskRowOffset(maskShape: number[], xShape: number[], row: number): number {
  const [, H, Lq, Lk] = xShape;
  const b = maskShape[0] === 1 ? 0 : Math.floor(row / (H * Lq));
  const q = maskShape[2] === 1 ? 0 : row % Lq;
  return (b * maskShape[2] + q) * Lk;
}

function softmaxKernel({ inputs, backend, attrs }: KernelArgs): TensorInfo {
  const { x, mask } = inputs;
  const scale = attrs!.scale as number;
  const X = vals(backend, x!);
  const M = mask ? vals(backend, mask) : undefined;
  const n = x!.shape[x!.shape.length - 1];
  const rows = X.length / n;
  // The vectorised path reads float32 bytes: tfjs's Cast to float32 may leave an Int32Array or Uint8Array behind.
  const floats = X instanceof Float32Array && (!M || M instanceof Float32Array);
  if (
    vectorMath?.softmax && floats && X.length >= VECTOR_MIN &&
    (!M || (x!.shape.length === 4 && mask!.shape.length === 4))
  ) {
    const maskIo = M ? { data: M, dims: mask!.shape } : undefined;
    return backend.makeTensorInfo(x!.shape, "float32", vectorMath.softmax(X, x!.shape, scale, maskIo, pooledFor(X)));
  }
  const Y = allocFloat32(X.length);
  for (let r = 0; r < rows; r++) {
    const o = r * n;
    const mo = M ? maskRowOffset(mask!.shape, x!.shape, r) : 0;
    let max = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = X[o + i] * scale + (M ? M[mo + i] : 0);
      Y[o + i] = v;
      if (v > max) max = v;
    }
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const e = Math.exp(Y[o + i] - max);
      Y[o + i] = e;
      sum += e;
    }
    const inv = 1 / sum;
    for (let i = 0; i < n; i++) Y[o + i] *= inv;
  }
  return backend.makeTensorInfo(x!.shape, "float32", Y);
}

function softmaxGradKernel({ inputs, backend, attrs }: KernelArgs): TensorInfo {
  const scale = attrs!.scale as number;
  const Y = vals(backend, inputs.y!);
  const DY = vals(backend, inputs.dy!);
  const n = inputs.y!.shape[inputs.y!.shape.length - 1];
  const DX = allocFloat32(Y.length);
  parallelFor("softmaxGrad", [Y, DY, DX], [n, scale], Y.length / n, grain(n));
  return backend.makeTensorInfo(inputs.y!.shape, "float32", DX);
}

// ------------------------------------------------------------------ Transpose (any rank ≤ 6, any dtype with a typed array)
function transposeKernel(args: KernelArgs): TensorInfo {
  const { inputs, backend, attrs } = args;
  const x = inputs.x!;
  const perm = attrs!.perm as number[];
  const X = backend.data.get(x.dataId).values as ArrayLike<number>;
  if (!ArrayBuffer.isView(X) || x.dtype === "string" || x.dtype === "complex64") {
    return (originalTranspose!.kernelFunc as unknown as (a: KernelArgs) => TensorInfo)(args);
  }
  const rank = x.shape.length;
  const outShape = perm.map((p) => x.shape[p]);
  const moved = perm.filter((p) => x.shape[p] !== 1);
  if (moved.every((p, i) => i === 0 || moved[i - 1] < p)) {
    // Only size-1 axes move (or none: tfjs asks for identity perms, e.g. in matMul's gradient): the layout is
    // unchanged, so share the buffer as tfjs's Reshape does.
    (backend as unknown as { incRef(id: object): void }).incRef(x.dataId);
    return { dataId: x.dataId, shape: outShape, dtype: x.dtype };
  }
  const inStrides = new Array(rank).fill(1);
  for (let d = rank - 2; d >= 0; d--) inStrides[d] = inStrides[d + 1] * x.shape[d + 1];
  const srcStride = perm.map((p) => inStrides[p]);
  const Y = allocLike(X as Float32Array, X.length);
  if (X.length === 0) return backend.makeTensorInfo(outShape, x.dtype, Y);
  // Walk the output in order; the innermost output axis is copied with a strided loop.
  const last = rank - 1;
  const inner = outShape[last];
  const innerStride = srcStride[last];
  const idx = new Array(rank).fill(0);
  let src = 0;
  for (let o = 0; o < Y.length; o += inner) {
    let s = src;
    for (let i = 0; i < inner; i++, s += innerStride) Y[o + i] = X[s];
    for (let d = last - 1; d >= 0; d--) {
      idx[d]++;
      src += srcStride[d];
      if (idx[d] < outShape[d]) break;
      src -= srcStride[d] * outShape[d];
      idx[d] = 0;
    }
  }
  return backend.makeTensorInfo(outShape, x.dtype, Y);
}

// ------------------------------------------------------------------ UnsortedSegmentSum (the gradient of gather / embedding lookup)
function unsortedSegmentSumKernel(args: KernelArgs): TensorInfo {
  const { inputs, backend, attrs } = args;
  const x = inputs.x!;
  const ids = backend.data.get(inputs.segmentIds!.dataId).values as Int32Array;
  const numSegments = attrs!.numSegments as number;
  const X = backend.data.get(x.dataId).values as Float32Array;
  if (x.dtype !== "float32" || inputs.segmentIds!.shape.length !== 1 || inputs.segmentIds!.shape[0] !== x.shape[0]) {
    return (originalSegmentSum!.kernelFunc as unknown as (a: KernelArgs) => TensorInfo)(args);
  }
  // tfjs builds one mask per segment (O(segments × rows)); summing rows by id is O(rows).
  const row = x.shape.slice(1).reduce((a, b) => a * b, 1);
  const out = allocFloat32(numSegments * row, true); // accumulated into
  for (let i = 0; i < ids.length; i++) {
    const s = ids[i];
    if (s < 0 || s >= numSegments) continue;
    const o = s * row;
    const src = i * row;
    for (let j = 0; j < row; j++) out[o + j] += X[src + j];
  }
  return backend.makeTensorInfo([numSegments, ...x.shape.slice(1)], "float32", out);
}

let originalTranspose: tf.KernelConfig | undefined;
let originalSegmentSum: tf.KernelConfig | undefined;
// ------------------------------------------------------------------ dropout with a byte mask
/**
 * `y = x · (keep[i] ? scale : 0)`. The same kernel is its own gradient (`dx = dy · (keep[i] ? scale : 0)`), so the backward
 * pass needs only the byte mask: 1 byte per element saved where `x * floatMask` saves `x` and a float32 mask (8 bytes).
 */
function dropoutKernel({ inputs, backend, attrs }: KernelArgs): TensorInfo {
  const { x, keep } = inputs;
  const X = vals(backend, x!);
  const K = backend.data.get(keep!.dataId).values as Uint8Array;
  const scale = Math.fround(attrs!.scale as number);
  const Y = allocFloat32(X.length);
  parallelFor("dropout", [X, K, Y], [scale], X.length, COPY_GRAIN);
  return backend.makeTensorInfo(x!.shape, "float32", Y);
}

// ------------------------------------------------------------------ residual connections
/**
 * `y = x + branch`, or with per-row factors (drop-path) `y = x + branch · scale[row]`, one pass. tfjs's Add saves
 * both operands for its backward pass (it needs only their shapes) and drop-path's Multiply saves the branch again;
 * the gradient here needs nothing (`dx = dy`) or only the factors (`dbranch = dy · scale[row]`).
 */
function residualKernel({ inputs, backend }: KernelArgs): TensorInfo {
  const { x, branch, scale } = inputs;
  const X = vals(backend, x!);
  const Bv = vals(backend, branch!);
  const Y = allocFloat32(X.length);
  if (!scale) parallelFor("add", [X, Bv, Y], [], X.length, COPY_GRAIN);
  else {
    const S = vals(backend, scale);
    const per = X.length / S.length;
    parallelFor("residualScaled", [X, Bv, offHeap(S), Y], [per], S.length, Math.ceil(COPY_GRAIN / per));
  }
  return backend.makeTensorInfo(x!.shape, "float32", Y);
}

function rowScaleKernel({ inputs, backend }: KernelArgs): TensorInfo {
  const { dy, scale } = inputs;
  const D = vals(backend, dy!);
  const S = vals(backend, scale!);
  const per = D.length / S.length;
  const Y = allocFloat32(D.length);
  parallelFor("rowScale", [D, offHeap(S), Y], [per], S.length, Math.ceil(COPY_GRAIN / per));
  return backend.makeTensorInfo(dy!.shape, "float32", Y);
}

// ------------------------------------------------------------------ attention heads
/**
 * `[B, L, H·d] → [B, H, L, d]` (`split`) and back (`merge`) as one copy each, with attrs `{ heads }`. As tfjs ops,
 * a Reshape then a Transpose: the Reshape keeps its input alive for the backward pass (to learn its shape), so the
 * projections of every attention layer would be held twice, before and after the transpose. These save nothing:
 * each is the other's gradient.
 */
function headsKernel(split: boolean) {
  return ({ inputs, backend, attrs }: KernelArgs): TensorInfo => {
    const { x } = inputs;
    const X = vals(backend, x!);
    const H = attrs!.heads as number;
    const [b, a1, a2, a3] = x!.shape; // split: [B, L, H·d]; merge: [B, H, L, d]
    const L = split ? a1 : a2;
    const d = split ? a2 / H : a3;
    const Y = allocFloat32(X.length);
    parallelFor("heads", [X, Y], [split ? 1 : 0, H, L, d], b * H, Math.ceil(COPY_GRAIN / (L * d)));
    return backend.makeTensorInfo(split ? [b, H, L, d] : [b, L, H * d], "float32", Y);
  };
}

// ------------------------------------------------------------------ cross-entropy with label smoothing, per row
function crossEntropyKernel({ inputs, backend, attrs }: KernelArgs): TensorInfo[] {
  const { logits, targets } = inputs;
  const X = vals(backend, logits!);
  const T = backend.data.get(targets!.dataId).values as Int32Array;
  const [N, C] = logits!.shape;
  const loss = new Float32Array(N), lse = new Float32Array(2 * N); // log-sum-exp as float32 + remainder
  parallelFor("crossEntropy", [X, T, loss, lse], [C, attrs!.smoothing as number], N, grain(4 * C));
  return [backend.makeTensorInfo([N], "float32", loss), backend.makeTensorInfo([N, 2], "float32", lse)];
}

function crossEntropyGradKernel({ inputs, backend, attrs }: KernelArgs): TensorInfo {
  const { logits, targets, lse, dy } = inputs;
  const X = vals(backend, logits!);
  const [N, C] = logits!.shape;
  const DX = allocFloat32(X.length);
  const T = backend.data.get(targets!.dataId).values as Int32Array;
  const arrays = [X, T, offHeap(vals(backend, lse!)), offHeap(vals(backend, dy!)), DX];
  parallelFor("crossEntropyGrad", arrays, [C, attrs!.smoothing as number], N, grain(4 * C));
  return backend.makeTensorInfo([N, C], "float32", DX);
}

let installed = false;

/**
 * Registers the fused kernels and their gradients on the `cpu` backend
 * (idempotent). `math` computes GELU and its gradient on long arrays; `null`
 * means plain JavaScript loops; left out, the previous choice stays.
 * @param math vectorised GELU math, `null` for plain loops, or undefined to keep the previous choice
 */
export function installFusedKernels(math: VectorMath | null | undefined = vectorMath): void {
  vectorMath = math ?? undefined;
  setElementwiseVectorMath(vectorMath);
  if (installed) return;
  installElementwiseKernels();
  const reg = registerCpuKernel;
  reg("RetfinerLayerNorm", layerNormKernel);
  reg("RetfinerLayerNormGrad", layerNormGradKernel);
  reg("RetfinerGelu", geluKernel);
  reg("RetfinerGeluGrad", geluGradKernel);
  reg("RetfinerSoftmax", softmaxKernel);
  reg("RetfinerSoftmaxGrad", softmaxGradKernel);
  reg("RetfinerCrossEntropy", crossEntropyKernel);
  reg("RetfinerCrossEntropyGrad", crossEntropyGradKernel);
  originalTranspose = tf.getKernel("Transpose", "cpu");
  reg("Transpose", transposeKernel);
  originalSegmentSum = tf.getKernel("UnsortedSegmentSum", "cpu");
  reg("UnsortedSegmentSum", unsortedSegmentSumKernel);
  tf.registerGradient({
    kernelName: "RetfinerLayerNorm",
    inputsToSave: ["x", "gamma"],
    gradFunc: (dy, saved, attrs) => {
      const [x, gamma] = saved as Tensor[];
      const [dx, dgamma, dbeta] = tf.engine().runKernel(
        "RetfinerLayerNormGrad",
        { dy: dy as Tensor, x, gamma },
        attrs,
      ) as Tensor[];
      return { x: () => dx, gamma: () => dgamma, beta: () => dbeta };
    },
  });
  tf.registerGradient({
    kernelName: "RetfinerGelu",
    inputsToSave: ["x"],
    gradFunc: (dy, saved) => ({
      x: () => tf.engine().runKernel("RetfinerGeluGrad", { dy: dy as Tensor, x: (saved as Tensor[])[0] }) as Tensor,
    }),
  });
  reg("RetfinerResidual", residualKernel);
  reg("RetfinerResidualScaled", residualKernel);
  reg("RetfinerRowScale", rowScaleKernel);
  // Each input gets its own tensor (a clone shares the buffer): tfjs accumulates and disposes per input.
  tf.registerGradient({
    kernelName: "RetfinerResidual",
    gradFunc: (dy) => ({ x: () => tf.clone(dy as Tensor), branch: () => tf.clone(dy as Tensor) }),
  });
  tf.registerGradient({
    kernelName: "RetfinerResidualScaled",
    inputsToSave: ["scale"],
    gradFunc: (dy, saved) => {
      const [scale] = saved as Tensor[];
      return {
        x: () => tf.clone(dy as Tensor),
        branch: () => tf.engine().runKernel("RetfinerRowScale", { dy: dy as Tensor, scale }) as Tensor,
        scale: () => tf.zerosLike(scale),
      };
    },
  });
  reg("RetfinerSplitHeads", headsKernel(true));
  reg("RetfinerMergeHeads", headsKernel(false));
  tf.registerGradient({
    kernelName: "RetfinerSplitHeads",
    gradFunc: (dy, _saved, attrs) => ({
      x: () => tf.engine().runKernel("RetfinerMergeHeads", { x: dy as Tensor }, attrs) as Tensor,
    }),
  });
  tf.registerGradient({
    kernelName: "RetfinerMergeHeads",
    gradFunc: (dy, _saved, attrs) => ({
      x: () => tf.engine().runKernel("RetfinerSplitHeads", { x: dy as Tensor }, attrs) as Tensor,
    }),
  });
  reg("RetfinerDropout", dropoutKernel);
  tf.registerGradient({
    kernelName: "RetfinerDropout",
    inputsToSave: ["keep"],
    gradFunc: (dy, saved, attrs) => {
      const [keep] = saved as Tensor[];
      return {
        x: () => tf.engine().runKernel("RetfinerDropout", { x: dy as Tensor, keep }, attrs) as Tensor,
        // The mask is a constant; it gets no gradient.
        keep: () => tf.zerosLike(keep),
      };
    },
  });
  reg("RetfinerMaskedSoftmax", softmaxKernel);
  tf.registerGradient({
    kernelName: "RetfinerSoftmax",
    outputsToSave: [true],
    gradFunc: (dy, saved, attrs) => ({
      x: () =>
        tf.engine().runKernel("RetfinerSoftmaxGrad", { dy: dy as Tensor, y: (saved as Tensor[])[0] }, attrs) as Tensor,
    }),
  });
  tf.registerGradient({
    kernelName: "RetfinerCrossEntropy",
    inputsToSave: ["logits", "targets"],
    outputsToSave: [false, true],
    gradFunc: (dy, saved, attrs) => {
      const [logits, targets, lse] = saved as Tensor[];
      // Only the losses are differentiated; the log-sum-exps are saved for this gradient.
      const dLoss = Array.isArray(dy) ? dy[0] : dy;
      return {
        logits: () =>
          tf.engine().runKernel("RetfinerCrossEntropyGrad", { logits, targets, lse, dy: dLoss }, attrs) as Tensor,
        targets: () => tf.zerosLike(targets),
      };
    },
  });
  tf.registerGradient({
    kernelName: "RetfinerMaskedSoftmax",
    inputsToSave: ["mask"],
    outputsToSave: [true],
    gradFunc: (dy, saved, attrs) => {
      const [mask, y] = saved as Tensor[];
      return {
        x: () => tf.engine().runKernel("RetfinerSoftmaxGrad", { dy: dy as Tensor, y }, attrs) as Tensor,
        // The mask is an additive constant; it gets no gradient.
        mask: () => tf.zerosLike(mask),
      };
    },
  });
  installed = true;
}

/** Restores tfjs's own Transpose (the fused ops then take their composite path). */
export function uninstallFusedKernels(): void {
  if (!installed) return;
  uninstallElementwiseKernels();
  tf.unregisterKernel("Transpose", "cpu");
  tf.registerKernel(originalTranspose!);
  tf.unregisterKernel("UnsortedSegmentSum", "cpu");
  tf.registerKernel(originalSegmentSum!);
  for (
    const k of [
      "RetfinerLayerNorm",
      "RetfinerLayerNormGrad",
      "RetfinerGelu",
      "RetfinerGeluGrad",
      "RetfinerSoftmax",
      "RetfinerMaskedSoftmax",
      "RetfinerSoftmaxGrad",
      "RetfinerCrossEntropy",
      "RetfinerCrossEntropyGrad",
      "RetfinerDropout",
      "RetfinerSplitHeads",
      "RetfinerMergeHeads",
      "RetfinerResidual",
      "RetfinerResidualScaled",
      "RetfinerRowScale",
    ]
  ) {
    tf.unregisterKernel(k, "cpu");
  }
  installed = false;
}

function fusedAvailable(x: Tensor): boolean {
  return installed && x.dtype === "float32" && tf.getBackend() === "cpu";
}

/**
 * LayerNorm over the last axis (biased variance), as `nn.LayerNorm`; `gamma`/`beta` optional.
 * @param x input `[..., D]`
 * @param gamma scale `[D]` (omitted: 1)
 * @param beta shift `[D]` (omitted: 0)
 * @param eps added to the variance
 * @returns the normalised tensor, same shape
 */
export function fusedLayerNorm(x: Tensor, gamma: Tensor | undefined, beta: Tensor | undefined, eps: number): Tensor {
  if (fusedAvailable(x) && (!gamma || gamma.rank === 1) && (!beta || beta.rank === 1)) {
    // The kernel always takes gamma and beta (tfjs cannot save an absent input for the gradient).
    const d = x.shape[x.rank - 1];
    return tf.tidy(() =>
      tf.engine().runKernel("RetfinerLayerNorm", { x, gamma: gamma ?? tf.ones([d]), beta: beta ?? tf.zeros([d]) }, {
        eps,
      }) as Tensor
    );
  }
  return tf.tidy(() => {
    const { mean, variance } = tf.moments(x, x.rank - 1, true);
    let y = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
    if (gamma) y = tf.mul(y, gamma);
    if (beta) y = tf.add(y, beta);
    return y;
  });
}

/**
 * Exact GELU, `0.5·x·(1 + erf(x/√2))`.
 * @param x any tensor
 * @returns GELU(x), same shape
 */
export function fusedGelu(x: Tensor): Tensor {
  if (fusedAvailable(x)) return tf.engine().runKernel("RetfinerGelu", { x }) as Tensor;
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)));
}

/**
 * `softmax(scale·x + mask)` over the last axis of `[B, H, Lq, Lk]` scores; `mask`
 * (additive, no gradient) broadcasts from `[B or 1, 1, Lq or 1, Lk]`.
 * @param x attention scores `[B, H, Lq, Lk]`
 * @param scale multiplies the scores (1/√d for attention)
 * @param mask additive mask broadcastable from `[B or 1, 1, Lq or 1, Lk]`
 * @returns the probabilities, same shape as `x`
 */
export function fusedSoftmax(x: Tensor, scale: number, mask?: Tensor): Tensor {
  const maskOk = !mask || (mask.rank === 4 && x.rank === 4 && mask.shape[1] === 1 && mask.shape[3] === x.shape[3] &&
    (mask.shape[0] === 1 || mask.shape[0] === x.shape[0]) && (mask.shape[2] === 1 || mask.shape[2] === x.shape[2]));
  if (fusedAvailable(x) && maskOk && (!mask || mask.dtype === "float32")) {
    return (mask
      ? tf.engine().runKernel("RetfinerMaskedSoftmax", { x, mask }, { scale })
      : tf.engine().runKernel("RetfinerSoftmax", { x }, { scale })) as Tensor;
  }
  return tf.tidy(() => {
    let s = scale === 1 ? x : tf.mul(x, scale);
    if (mask) s = tf.add(s, mask);
    return tf.softmax(s);
  });
}

/**
 * Cross-entropy of each row, with label smoothing: PyTorch's `F.cross_entropy(logits, targets, reduction="none",
 * label_smoothing=ε)`, i.e. `(1 − ε)·(−log p_t) + ε·mean_j(−log p_j)`. On `cpu` one kernel each way, in float64 per
 * row, on every thread, saving the logits and each row's log-sum-exp (to about 48 bits) for the gradient (tfjs's `logSoftmax` with a
 * one-hot product saves the log-probabilities and the one-hot matrix, each as large as the logits: the generative
 * objective's are `[B·L, vocabulary]`); elsewhere tfjs's ops. A target outside `[0, C)` adds no likelihood term.
 * @param logits `[N, C]`
 * @param targets N class indices
 * @param labelSmoothing ε in [0, 1)
 * @returns the N losses `[N]`
 */
export function fusedCrossEntropy(logits: Tensor, targets: Int32Array, labelSmoothing: number): Tensor {
  const [n, c] = logits.shape;
  if (fusedAvailable(logits) && logits.rank === 2 && targets.length === n) {
    return tf.tidy(() => {
      const t = tf.tensor1d(targets, "int32");
      const [loss] = tf.engine().runKernel("RetfinerCrossEntropy", { logits, targets: t }, {
        smoothing: labelSmoothing,
      }) as Tensor[];
      return loss;
    });
  }
  return tf.tidy(() => {
    const logp = tf.logSoftmax(logits);
    const nll = tf.neg(tf.sum(tf.mul(logp, tf.oneHot(tf.tensor1d(targets, "int32"), c)), 1));
    if (labelSmoothing === 0) return nll;
    return tf.add(tf.mul(nll, 1 - labelSmoothing), tf.mul(tf.neg(tf.mean(logp, 1)), labelSmoothing));
  });
}

/**
 * Inverted dropout with a given mask: `x · keep / p` where `keep` is 1 for kept entries (p = the keep probability).
 * On `cpu` one fused kernel whose backward pass saves only the byte mask; elsewhere `x * float mask`.
 * @param x input, any shape
 * @param keep the mask, 1 = kept, 0 = dropped, row-major, `x`'s size
 * @param keepProb the keep probability p in (0, 1]; kept entries are scaled by `1 / p`
 * @returns the dropped-out tensor, same shape
 * @throws {RangeError} when the mask's length is not `x`'s size
 */
export function fusedDropout(x: Tensor, keep: Uint8Array, keepProb: number): Tensor {
  if (keep.length !== x.size) throw new RangeError(`dropout mask of ${keep.length} for a tensor of ${x.size}`);
  const scale = 1 / keepProb;
  return tf.tidy(() => {
    const mask = tf.tensor(keep, x.shape, "bool");
    if (fusedAvailable(x)) return tf.engine().runKernel("RetfinerDropout", { x, keep: mask }, { scale }) as Tensor;
    return tf.mul(x, tf.mul(tf.cast(mask, "float32"), Math.fround(scale)));
  });
}

/**
 * A residual connection `x + branch`, or `x + branch · rowScale[b]` with one factor per row (drop-path's `0` or
 * `1 / keep`). On `cpu` one fused kernel whose backward pass saves none of the operands (tfjs's Add keeps both, and
 * drop-path's Multiply the branch again); elsewhere tfjs's ops.
 * @param x the residual stream `[B, ...]`
 * @param branch the branch, `x`'s shape
 * @param rowScale one factor per row (`B` of them), or none
 * @returns the sum, `x`'s shape
 * @throws {RangeError} when the shapes differ or the factors are not one per row
 */
export function fusedResidual(x: Tensor, branch: Tensor, rowScale?: Float32Array): Tensor {
  if (x.shape.join() !== branch.shape.join()) {
    throw new RangeError(`residual of [${x.shape}] and [${branch.shape}]: the shapes must be equal`);
  }
  if (rowScale && rowScale.length !== x.shape[0]) {
    throw new RangeError(`${rowScale.length} row factors for ${x.shape[0]} rows`);
  }
  return tf.tidy(() => {
    const scale = rowScale && tf.tensor(rowScale, [rowScale.length]);
    if (fusedAvailable(x) && branch.dtype === "float32") {
      return (scale
        ? tf.engine().runKernel("RetfinerResidualScaled", { x, branch, scale })
        : tf.engine().runKernel("RetfinerResidual", { x, branch })) as Tensor;
    }
    if (!scale) return tf.add(x, branch);
    return tf.add(x, tf.mul(branch, tf.reshape(scale, [rowScale!.length, ...new Array(x.rank - 1).fill(1)])));
  });
}

/**
 * Splits attention heads: `[B, L, H·d] → [B, H, L, d]` (PyTorch's `view(B, L, H, d).transpose(1, 2)`). On `cpu` one
 * copy that keeps nothing for the backward pass; elsewhere tfjs's Reshape and Transpose.
 * @param x the projections `[B, L, H·d]`
 * @param heads H
 * @returns `[B, H, L, d]`
 * @throws {RangeError} when `x` is not rank 3 or its width is not a multiple of `heads`
 */
export function fusedSplitHeads(x: Tensor, heads: number): Tensor {
  const [b, l, width] = x.shape;
  if (x.rank !== 3 || width % heads !== 0) throw new RangeError(`cannot split [${x.shape}] into ${heads} heads`);
  if (fusedAvailable(x)) return tf.engine().runKernel("RetfinerSplitHeads", { x }, { heads }) as Tensor;
  return tf.tidy(() => tf.transpose(tf.reshape(x, [b, l, heads, width / heads]), [0, 2, 1, 3]));
}

/**
 * Merges attention heads: `[B, H, L, d] → [B, L, H·d]`, the inverse of {@link fusedSplitHeads}.
 * @param x the per-head values `[B, H, L, d]`
 * @returns `[B, L, H·d]`
 * @throws {RangeError} when `x` is not rank 4
 */
export function fusedMergeHeads(x: Tensor): Tensor {
  if (x.rank !== 4) throw new RangeError(`cannot merge the heads of [${x.shape}]: expected [B, H, L, d]`);
  const [b, h, l, d] = x.shape;
  if (fusedAvailable(x)) return tf.engine().runKernel("RetfinerMergeHeads", { x }, { heads: h }) as Tensor;
  return tf.tidy(() => tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [b, l, h * d]));
}
