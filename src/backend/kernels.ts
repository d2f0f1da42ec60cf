/**
 * tfjs `cpu` kernels for `BatchMatMul` and `_FusedMatMul` that call a fast
 * {@link Gemm} instead of tfjs's scalar JavaScript loops. They support
 * transposes, numpy-style broadcasting of batch dimensions and zero-size
 * dimensions; other dtypes go to the original kernels.
 * @module
 */
import { BackendError } from "../util/errors.ts";
import { tf } from "./tf.ts";
import type { Gemm } from "./gemm.ts";
import { allocFloat32 } from "./pool.ts";

import {
  callOriginal,
  type CpuBackend,
  type KernelArgs,
  type KernelFunc,
  type OriginalKernels,
  overrideCpuKernel,
  restoreCpuKernels,
  type TensorInfo,
} from "./cpu_kernel.ts";

const originals: OriginalKernels = new Map();
let activeGemm: Gemm | undefined;

function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Copies `[batchDims..., rows, cols]` values to the broadcast batch shape `outDims`. */
function broadcastBatches(values: Float32Array, batchDims: number[], outDims: number[], matSize: number): Float32Array {
  const rank = outDims.length;
  const dims = [...new Array(rank - batchDims.length).fill(1), ...batchDims];
  const strides = new Array(rank).fill(0);
  let s = 1;
  for (let d = rank - 1; d >= 0; d--) {
    strides[d] = dims[d] === 1 ? 0 : s;
    s *= dims[d];
  }
  const total = sizeOf(outDims);
  const out = new Float32Array(total * matSize);
  const idx = new Array(rank).fill(0);
  for (let i = 0; i < total; i++) {
    let src = 0;
    for (let d = 0; d < rank; d++) src += idx[d] * strides[d];
    out.set(values.subarray(src * matSize, (src + 1) * matSize), i * matSize);
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d] < outDims[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

/**
 * A float32 tensor's values as a Float32Array. tfjs's `Cast` to float32 keeps an int32 or bool tensor's
 * Int32Array/Uint8Array under the float32 label, and the GEMMs read raw float32 bytes, so those are converted.
 */
function float32Values(backend: CpuBackend, t: TensorInfo): Float32Array {
  const values = backend.data.get(t.dataId).values;
  return values instanceof Float32Array ? values : Float32Array.from(values as ArrayLike<number>);
}

/** The product of two float32 tensor infos with the active GEMM; returns values and shape. */
function gemmProduct(
  gemm: Gemm,
  backend: CpuBackend,
  a: TensorInfo,
  b: TensorInfo,
  transA: boolean,
  transB: boolean,
  rowBias?: Float32Array,
) {
  const aValues = float32Values(backend, a);
  const bValues = float32Values(backend, b);
  const ar = a.shape.length;
  const br = b.shape.length;
  const m = transA ? a.shape[ar - 1] : a.shape[ar - 2];
  const kA = transA ? a.shape[ar - 2] : a.shape[ar - 1];
  const kB = transB ? b.shape[br - 1] : b.shape[br - 2];
  const n = transB ? b.shape[br - 2] : b.shape[br - 1];
  if (kA !== kB) {
    throw new BackendError(
      `Error in matMul: inner shapes (${kA}) and (${kB}) of Tensors with shapes ${a.shape} and ${b.shape} ` +
        `and transposeA=${transA} and transposeB=${transB} must match.`,
    );
  }
  const batchDimsA = a.shape.slice(0, -2);
  const batchDimsB = b.shape.slice(0, -2);
  const outBatch = tf.backend_util.assertAndGetBroadcastShape(batchDimsA, batchDimsB);
  const outShape = [...outBatch, m, n];
  const batch = sizeOf(outBatch);
  if (batch === 0 || m === 0 || n === 0 || kA === 0) {
    return { values: allocFloat32(batch * m * n, true), shape: outShape, biasAdded: false };
  }
  let batchA = sizeOf(batchDimsA);
  let batchB = sizeOf(batchDimsB);
  let av = aValues;
  let bv = bValues;
  if (batchA !== 1 && batchA !== batch) {
    av = broadcastBatches(av, batchDimsA, outBatch, m * kA);
    batchA = batch;
  }
  if (batchB !== 1 && batchB !== batch) {
    bv = broadcastBatches(bv, batchDimsB, outBatch, kA * n);
    batchB = batch;
  }
  // A GEMM overwrites its output, so a pooled (unzeroed) buffer is fine.
  const spec = { batch, batchA, batchB, m, n, k: kA, transA, transB };
  const out = gemm.writesOut?.(spec) ? allocFloat32(batch * m * n) : undefined;
  const biasAdded = !!(rowBias && rowBias.length === n && gemm.foldsBias?.(spec));
  const values = gemm.matmul(av, bv, spec, out, biasAdded ? rowBias : undefined);
  return { values, shape: outShape, biasAdded };
}

function batchMatMulKernel(args: KernelArgs): TensorInfo {
  const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
  const { transposeA, transposeB } = args.attrs as { transposeA: boolean; transposeB: boolean };
  if (!activeGemm || a.dtype !== "float32" || b.dtype !== "float32") {
    return callOriginal(originals, "BatchMatMul", args);
  }
  const { values, shape } = gemmProduct(activeGemm, args.backend, a, b, !!transposeA, !!transposeB);
  return args.backend.makeTensorInfo(shape, "float32", values);
}

const activationKernels: Record<string, string> = {
  relu: "Relu",
  relu6: "Relu6",
  elu: "Elu",
  sigmoid: "Sigmoid",
  leakyrelu: "LeakyRelu",
  prelu: "Prelu",
};

function runCpuKernel(name: string, args: KernelArgs): TensorInfo {
  const config = tf.getKernel(name, "cpu");
  if (!config) throw new BackendError(`tfjs cpu kernel ${name} is not registered`);
  return (config.kernelFunc as unknown as KernelFunc)(args) as TensorInfo;
}

function fusedMatMulKernel(args: KernelArgs): TensorInfo {
  const { a, b, bias, preluActivationWeights } = args.inputs;
  const attrs = args.attrs as {
    transposeA: boolean;
    transposeB: boolean;
    activation?: string;
    leakyreluAlpha?: number;
  };
  if (!activeGemm || a!.dtype !== "float32" || b!.dtype !== "float32") {
    return callOriginal(originals, "_FusedMatMul", args);
  }
  const backend = args.backend;
  // A bias over the last axis only (shape [n], or [1, ..., n]) can be folded into the GEMM.
  const outRank = Math.max(a!.shape.length, b!.shape.length);
  const rowBias = bias && bias.dtype === "float32" && bias.shape.length <= outRank &&
      bias.shape.slice(0, -1).every((d) => d === 1)
    ? float32Values(backend, bias)
    : undefined;
  const product = gemmProduct(activeGemm, backend, a!, b!, !!attrs.transposeA, !!attrs.transposeB, rowBias);
  let current = backend.makeTensorInfo(product.shape, "float32", product.values);
  if (bias && !product.biasAdded) {
    const added = runCpuKernel("Add", { inputs: { a: current, b: bias }, backend });
    backend.disposeIntermediateTensorInfo(current);
    current = added;
  }
  const activation = attrs.activation ?? "linear";
  if (activation !== "linear") {
    const kernel = activationKernels[activation];
    if (!kernel) throw new BackendError(`Activation ${activation} has not been implemented for the CPU backend.`);
    const inputs = kernel === "Prelu" ? { x: current, alpha: preluActivationWeights } : { x: current };
    const activated = runCpuKernel(kernel, { inputs, backend, attrs: { alpha: attrs.leakyreluAlpha } });
    backend.disposeIntermediateTensorInfo(current);
    current = activated;
  }
  return current;
}

const ourKernels: Record<string, KernelFunc> = {
  BatchMatMul: batchMatMulKernel,
  _FusedMatMul: fusedMatMulKernel,
};

/**
 * Registers the accelerated `BatchMatMul` and `_FusedMatMul` kernels on the
 * tfjs `cpu` backend, using `gemm`. Calling it again swaps the GEMM.
 * @param gemm the matrix product to use
 * @throws {BackendError} when tfjs's `cpu` backend (and so its matmul kernels) is not loaded
 */
export function installMatMulKernels(gemm: Gemm): void {
  for (const name of Object.keys(ourKernels)) overrideCpuKernel(originals, name, ourKernels[name]);
  activeGemm = gemm;
}

/** Restores tfjs's own `cpu` matmul kernels. */
export function restoreMatMulKernels(): void {
  restoreCpuKernels(originals);
  activeGemm = undefined;
}

/**
 * The GEMM the `cpu` kernels use now, if accelerated.
 * @returns the installed GEMM, or undefined when tfjs's own kernels run
 */
export function activeMatMulGemm(): Gemm | undefined {
  return activeGemm;
}
