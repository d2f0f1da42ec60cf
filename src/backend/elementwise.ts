/**
 * Fast float32 `cpu` kernels for the generic ops a transformer step leans on:
 * broadcasting Add, Sub, Multiply and RealDiv (one strided pass, no index
 * arithmetic per element), Sum over leading or trailing axes, and Slice,
 * SplitV and PadV2 as contiguous-run copies. tfjs's own
 * versions run at 15–90 M elements/s; these at several hundred. Other dtypes
 * and layouts go to tfjs's kernels.
 * @module
 */
import { BackendError } from "../util/errors.ts";
import type { VectorMath } from "./gemm.ts";
import { allocFloat32, allocLike } from "./pool.ts";
import { grain, parallelFor } from "./threads.ts";
import {
  callOriginal,
  type KernelArgs,
  type OriginalKernels,
  overrideCpuKernel,
  restoreCpuKernels,
  type TensorInfo,
} from "./cpu_kernel.ts";

type KernelFunc = (args: KernelArgs) => TensorInfo;

/**
 * Chooses the library large same-length Add/Sub/Multiply/RealDiv go to (undefined: plain loops).
 * @param math vectorised math that writes into the caller's buffer, or undefined
 */
export function setElementwiseVectorMath(math: VectorMath | undefined): void {
  vectorBinary = math?.writesOut ? math.binary?.bind(math) : undefined;
}

/**
 * A vectorised, multi-threaded library's elementwise arithmetic (ONNX Runtime's under `cpu-onnx`), used for two
 * same-length operands of at least {@link VECTOR_BINARY_MIN} elements: the gradient sums of weights used in several
 * passes and the residual stream. IEEE arithmetic, so the results are the loops' bit for bit.
 */
let vectorBinary: VectorMath["binary"];
const VECTOR_BINARY_MIN = 1 << 16;
const ORT_OP = { Add: "Add", Sub: "Sub", Multiply: "Mul", RealDiv: "Div" } as const;

const originals: OriginalKernels = new Map();

function fallback(name: string, args: KernelArgs): TensorInfo {
  return callOriginal(originals, name, args);
}

/** Output shape and per-input strides (0 on broadcast axes), with adjacent axes merged where possible. */
function broadcastPlan(
  sa: number[],
  sb: number[],
): { out: number[]; dims: number[]; stA: number[]; stB: number[] } | null {
  const rank = Math.max(sa.length, sb.length);
  const a = [...new Array(rank - sa.length).fill(1), ...sa];
  const b = [...new Array(rank - sb.length).fill(1), ...sb];
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    if (a[i] !== b[i] && a[i] !== 1 && b[i] !== 1) return null;
    out.push(a[i] === 1 ? b[i] : a[i]); // not max: a size-0 axis broadcasts against 1 to 0
  }
  // Merge axes with the same broadcast pattern: (a full, b full), (a full, b bcast), (a bcast, b full).
  const dims: number[] = [];
  const kinds: string[] = [];
  for (let i = 0; i < rank; i++) {
    if (out[i] === 1) continue;
    const k = `${a[i] === 1 ? 0 : 1}${b[i] === 1 ? 0 : 1}`;
    if (kinds.length && kinds[kinds.length - 1] === k) dims[dims.length - 1] *= out[i];
    else {
      dims.push(out[i]);
      kinds.push(k);
    }
  }
  if (dims.length === 0) {
    dims.push(1);
    kinds.push("11");
  }
  const stA = new Array(dims.length).fill(0);
  const stB = new Array(dims.length).fill(0);
  let pa = 1;
  let pb = 1;
  for (let i = dims.length - 1; i >= 0; i--) {
    if (kinds[i][0] === "1") {
      stA[i] = pa;
      pa *= dims[i];
    }
    if (kinds[i][1] === "1") {
      stB[i] = pb;
      pb *= dims[i];
    }
  }
  return { out, dims, stA, stB };
}

type BinOp = (x: number, y: number) => number;

function binaryKernel(
  name: string,
  op: BinOp,
  inner: (
    A: Float32Array,
    B: Float32Array,
    O: Float32Array,
    ia: number,
    ib: number,
    io: number,
    n: number,
    sa: number,
    sb: number,
  ) => void,
): KernelFunc {
  return (args) => {
    const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
    if (a.dtype !== "float32" || b.dtype !== "float32") return fallback(name, args);
    const plan = broadcastPlan(a.shape, b.shape);
    if (!plan) return fallback(name, args);
    const A = args.backend.data.get(a.dataId).values as Float32Array;
    const B = args.backend.data.get(b.dataId).values as Float32Array;
    const size = plan.out.reduce((x, y) => x * y, 1);
    const O = allocFloat32(size); // every element is written below
    const ortOp = ORT_OP[name as keyof typeof ORT_OP];
    // Only real Float32Arrays: tfjs's Cast to float32 keeps an int32 or bool tensor's Int32Array/Uint8Array.
    if (
      vectorBinary && ortOp && size >= VECTOR_BINARY_MIN && A.length === size && B.length === size &&
      A instanceof Float32Array && B instanceof Float32Array
    ) {
      vectorBinary(ortOp, A, B, O);
      return args.backend.makeTensorInfo(plan.out, "float32", O);
    }
    if (size > 0) {
      const { dims, stA, stB } = plan;
      const last = dims.length - 1;
      const n = dims[last];
      const outer = size / n;
      const idx = new Array(last).fill(0);
      let ia = 0;
      let ib = 0;
      for (let o = 0; o < outer; o++) {
        inner(A, B, O, ia, ib, o * n, n, stA[last], stB[last]);
        for (let d = last - 1; d >= 0; d--) {
          idx[d]++;
          ia += stA[d];
          ib += stB[d];
          if (idx[d] < dims[d]) break;
          ia -= stA[d] * dims[d];
          ib -= stB[d] * dims[d];
          idx[d] = 0;
        }
      }
    }
    void op;
    return args.backend.makeTensorInfo(plan.out, "float32", O);
  };
}

// Inner loops are written out per op so V8 inlines the arithmetic.
const addInner = (
  A: Float32Array,
  B: Float32Array,
  O: Float32Array,
  ia: number,
  ib: number,
  io: number,
  n: number,
  sa: number,
  sb: number,
) => {
  if (sa === 1 && sb === 1) { for (let i = 0; i < n; i++) O[io + i] = A[ia + i] + B[ib + i]; }
  else if (sb === 0) {
    const y = B[ib];
    for (let i = 0; i < n; i++) O[io + i] = A[ia + i * sa] + y;
  } else {
    const x = A[ia];
    for (let i = 0; i < n; i++) O[io + i] = x + B[ib + i];
  }
};
const subInner = (
  A: Float32Array,
  B: Float32Array,
  O: Float32Array,
  ia: number,
  ib: number,
  io: number,
  n: number,
  sa: number,
  sb: number,
) => {
  if (sa === 1 && sb === 1) { for (let i = 0; i < n; i++) O[io + i] = A[ia + i] - B[ib + i]; }
  else if (sb === 0) {
    const y = B[ib];
    for (let i = 0; i < n; i++) O[io + i] = A[ia + i * sa] - y;
  } else {
    const x = A[ia];
    for (let i = 0; i < n; i++) O[io + i] = x - B[ib + i];
  }
};
const mulInner = (
  A: Float32Array,
  B: Float32Array,
  O: Float32Array,
  ia: number,
  ib: number,
  io: number,
  n: number,
  sa: number,
  sb: number,
) => {
  if (sa === 1 && sb === 1) { for (let i = 0; i < n; i++) O[io + i] = A[ia + i] * B[ib + i]; }
  else if (sb === 0) {
    const y = B[ib];
    for (let i = 0; i < n; i++) O[io + i] = A[ia + i * sa] * y;
  } else {
    const x = A[ia];
    for (let i = 0; i < n; i++) O[io + i] = x * B[ib + i];
  }
};
const divInner = (
  A: Float32Array,
  B: Float32Array,
  O: Float32Array,
  ia: number,
  ib: number,
  io: number,
  n: number,
  sa: number,
  sb: number,
) => {
  if (sa === 1 && sb === 1) { for (let i = 0; i < n; i++) O[io + i] = A[ia + i] / B[ib + i]; }
  else if (sb === 0) {
    const y = B[ib];
    for (let i = 0; i < n; i++) O[io + i] = A[ia + i * sa] / y;
  } else {
    const x = A[ia];
    for (let i = 0; i < n; i++) O[io + i] = x / B[ib + i];
  }
};

/** Sum over a prefix or suffix of axes (after dropping size-1 axes from the reduced set). */
function sumKernel(args: KernelArgs): TensorInfo {
  const x = args.inputs.x!;
  if (x.dtype !== "float32") return fallback("Sum", args);
  const rank = x.shape.length;
  const raw = args.attrs!.axis as number | number[] | null | undefined;
  // No axis means every axis (tfjs's parseAxisParam).
  const list = raw === null || raw === undefined ? x.shape.map((_, i) => i) : Array.isArray(raw) ? raw : [raw];
  const axes = [...new Set(list.map((a) => (a < 0 ? a + rank : a)))].sort((p, q) => p - q);
  const keepDims = !!args.attrs!.keepDims;
  const reduced = new Set(axes);
  const outShape = keepDims
    ? x.shape.map((d, i) => (reduced.has(i) ? 1 : d))
    : x.shape.filter((_, i) => !reduced.has(i));
  // Axes of size 1 do not matter; classify the rest.
  const big = x.shape.map((d, i) => ({ d, i })).filter(({ d }) => d !== 1);
  const flags = big.map(({ i }) => reduced.has(i));
  const firstKept = flags.indexOf(false);
  const isPrefix = firstKept === -1 || flags.slice(firstKept).every((f) => !f);
  const firstRed = flags.indexOf(true);
  const isSuffix = firstRed === -1 || flags.slice(firstRed).every((f) => f);
  if (!isPrefix && !isSuffix) return fallback("Sum", args);
  const X = args.backend.data.get(x.dataId).values as Float32Array;
  const total = X.length;
  const redSize = axes.reduce((s, a) => s * x.shape[a], 1);
  const keepSize = redSize === 0 ? outShape.reduce((s, d) => s * d, 1) : total / redSize;
  const out = allocFloat32(keepSize, total === 0); // written in full below unless x is empty
  if (total > 0) {
    if (isSuffix) parallelFor("sumTrailing", [X, out], [redSize], keepSize, grain(redSize));
    else {
      const acc = new Float64Array(keepSize);
      parallelFor("sumLeading", [X, acc], [redSize, keepSize], keepSize, grain(redSize));
      out.set(acc);
    }
  }
  return args.backend.makeTensorInfo(outShape, "float32", out);
}

/**
 * Runs at least this long are copied with `TypedArray.set` (a memcpy) rather than element by element: below it, the
 * subarray that `set` needs costs more than the loop (measured on rows of 64 floats: about even).
 */
const SET_MIN_RUN = 64;

/** Copies a box `[begin, begin+size)` of a row-major array into a new contiguous array. */
function copyBox(
  X: ArrayLike<number>,
  shape: number[],
  begin: number[],
  size: number[],
  Out: { [i: number]: number; length: number },
  outOffset = 0,
): void {
  const rank = shape.length;
  const strides = new Array(rank).fill(1);
  for (let d = rank - 2; d >= 0; d--) strides[d] = strides[d + 1] * shape[d + 1];
  // Merge trailing axes taken whole into one contiguous run.
  let last = rank - 1;
  let run = rank ? size[last] : 1;
  while (last > 0 && size[last] === shape[last] && begin[last] === 0) {
    last--;
    run *= size[last];
  }
  const total = size.reduce((a, b) => a * b, 1);
  if (total === 0) return;
  const idx = new Array(Math.max(0, last)).fill(0);
  let src = 0;
  for (let d = 0; d < rank; d++) src += begin[d] * strides[d];
  const bulk = run >= SET_MIN_RUN && ArrayBuffer.isView(X) && ArrayBuffer.isView(Out);
  for (let o = 0; o < total; o += run) {
    if (bulk) (Out as Float32Array).set((X as Float32Array).subarray(src, src + run), outOffset + o);
    else for (let i = 0; i < run; i++) Out[outOffset + o + i] = X[src + i];
    for (let d = last - 1; d >= 0; d--) {
      idx[d]++;
      src += strides[d];
      if (idx[d] < size[d]) break;
      src -= strides[d] * size[d];
      idx[d] = 0;
    }
  }
}

function sliceKernel(args: KernelArgs): TensorInfo {
  const x = args.inputs.x!;
  const X = args.backend.data.get(x.dataId).values;
  if (!ArrayBuffer.isView(X) || x.dtype === "string" || x.dtype === "complex64") return fallback("Slice", args);
  const begin = (args.attrs!.begin as number[]).map((b, d) => (b < 0 ? b + x.shape[d] : b));
  const size = (args.attrs!.size as number[]).map((s, d) => (s === -1 ? x.shape[d] - begin[d] : s));
  const out = allocLike(X as Float32Array, size.reduce((a, b) => a * b, 1));
  copyBox(X as Float32Array, x.shape, begin, size, out);
  return args.backend.makeTensorInfo(size, x.dtype, out);
}

function splitVKernel(args: KernelArgs): TensorInfo[] {
  const x = args.inputs.x!;
  const X = args.backend.data.get(x.dataId).values;
  const axisRaw = args.attrs!.axis as number | number[];
  const axis0 = Array.isArray(axisRaw) ? axisRaw[0] : axisRaw;
  const axis = axis0 < 0 ? axis0 + x.shape.length : axis0;
  const spec = args.attrs!.numOrSizeSplits as number | number[];
  if (!ArrayBuffer.isView(X) || x.dtype === "string" || x.dtype === "complex64") {
    return callOriginal<TensorInfo[]>(originals, "SplitV", args);
  }
  let sizes: number[];
  if (Array.isArray(spec)) {
    const known = spec.filter((s) => s !== -1).reduce((a, b) => a + b, 0);
    sizes = spec.map((s) => (s === -1 ? x.shape[axis] - known : s));
  } else sizes = new Array(spec).fill(x.shape[axis] / spec);
  const begin = new Array(x.shape.length).fill(0);
  return sizes.map((s) => {
    const size = [...x.shape];
    size[axis] = s;
    const out = allocLike(X as Float32Array, size.reduce((a, b) => a * b, 1));
    copyBox(X as Float32Array, x.shape, begin, size, out);
    begin[axis] += s;
    return args.backend.makeTensorInfo(size, x.dtype, out);
  });
}

function padKernel(args: KernelArgs): TensorInfo {
  const x = args.inputs.x!;
  const X = args.backend.data.get(x.dataId).values;
  if (!ArrayBuffer.isView(X) || x.dtype === "string" || x.dtype === "complex64") return fallback("PadV2", args);
  const paddings = args.attrs!.paddings as [number, number][];
  const value = (args.attrs!.constantValue as number) ?? 0;
  const outShape = x.shape.map((d, i) => paddings[i][0] + d + paddings[i][1]);
  const out = allocLike(X as Float32Array, outShape.reduce((a, b) => a * b, 1), true);
  if (value !== 0) out.fill(value);
  // Copy each input row (last axis) to its place in the output.
  const rank = x.shape.length;
  const outStrides = new Array(rank).fill(1);
  for (let d = rank - 2; d >= 0; d--) outStrides[d] = outStrides[d + 1] * outShape[d + 1];
  const total = x.shape.reduce((a, b) => a * b, 1);
  if (total > 0) {
    const row = x.shape[rank - 1];
    const idx = new Array(rank).fill(0);
    for (let o = 0; o < total; o += row) {
      let dst = 0;
      for (let d = 0; d < rank; d++) dst += (idx[d] + paddings[d][0]) * outStrides[d];
      for (let i = 0; i < row; i++) out[dst + i] = (X as Float32Array)[o + i];
      for (let d = rank - 2; d >= 0; d--) {
        if (++idx[d] < x.shape[d]) break;
        idx[d] = 0;
      }
    }
  }
  return args.backend.makeTensorInfo(outShape, x.dtype, out);
}

/**
 * Concat along any axis: each input's block of `shape[axis]·inner` values copied per outer index with `set`. tfjs's
 * own kernel copies axes other than the first value by value (1.6 ms for the `[16, 50, 3·192]` gradient of the
 * stand-ins' qkv split, 2 % of their step).
 */
function concatKernel(args: KernelArgs): TensorInfo {
  const inputs = args.inputs as unknown as TensorInfo[];
  const x0 = inputs[0];
  const rank = x0.shape.length;
  const axisRaw = args.attrs!.axis as number | number[];
  const a0 = Array.isArray(axisRaw) ? axisRaw[0] : axisRaw;
  const axis = a0 < 0 ? a0 + rank : a0;
  const arrays = inputs.map((t) => args.backend.data.get(t.dataId).values);
  const sameKind = inputs.every((t, i) =>
    t.dtype === x0.dtype && t.shape.length === rank && arrays[i]?.constructor === arrays[0]?.constructor &&
    t.shape.every((d, k) => k === axis || d === x0.shape[k])
  );
  if (!sameKind || !ArrayBuffer.isView(arrays[0]) || x0.dtype === "string" || x0.dtype === "complex64" || rank === 0) {
    return fallback("Concat", args);
  }
  const outShape = [...x0.shape];
  outShape[axis] = inputs.reduce((n, t) => n + t.shape[axis], 0);
  const outer = x0.shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const inner = x0.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const rowOut = outShape[axis] * inner;
  const out = allocLike(arrays[0] as Float32Array, outer * rowOut);
  let at = 0;
  inputs.forEach((t, i) => {
    const X = arrays[i] as Float32Array;
    const block = t.shape[axis] * inner;
    for (let o = 0; o < outer; o++) out.set(X.subarray(o * block, (o + 1) * block), o * rowOut + at);
    at += block;
  });
  return args.backend.makeTensorInfo(outShape, x0.dtype, out);
}

/** GatherV2 along one axis without batch dimensions: rows copied with `set`, not element by element. */
function gatherKernel(args: KernelArgs): TensorInfo {
  const x = args.inputs.x!;
  const ind = args.inputs.indices!;
  const X = args.backend.data.get(x.dataId).values;
  const batchDims = (args.attrs!.batchDims as number) ?? 0;
  const axisRaw = args.attrs!.axis as number;
  const axis = axisRaw < 0 ? axisRaw + x.shape.length : axisRaw;
  if (!ArrayBuffer.isView(X) || x.dtype === "string" || x.dtype === "complex64" || batchDims !== 0) {
    return fallback("GatherV2", args);
  }
  const I = args.backend.data.get(ind.dataId).values as Int32Array | Float32Array;
  const outer = x.shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const dim = x.shape[axis];
  const inner = x.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  const n = I.length;
  const outShape = [...x.shape.slice(0, axis), ...ind.shape, ...x.shape.slice(axis + 1)];
  const out = allocLike(X as Float32Array, outer * n * inner);
  const Xa = X as Float32Array;
  for (let o = 0; o < outer; o++) {
    for (let k = 0; k < n; k++) {
      const idx = I[k];
      if (idx < 0 || idx >= dim) throw new BackendError(`GatherV2: index ${idx} is not in [0, ${dim})`);
      const src = (o * dim + idx) * inner;
      out.set(Xa.subarray(src, src + inner), (o * n + k) * inner);
    }
  }
  return args.backend.makeTensorInfo(outShape, x.dtype, out);
}

const KERNELS: Record<string, KernelFunc> = {
  GatherV2: gatherKernel,
  Slice: sliceKernel,
  SplitV: splitVKernel as unknown as KernelFunc,
  Concat: concatKernel,
  PadV2: padKernel,
  Add: binaryKernel("Add", (x, y) => x + y, addInner),
  Sub: binaryKernel("Sub", (x, y) => x - y, subInner),
  Multiply: binaryKernel("Multiply", (x, y) => x * y, mulInner),
  RealDiv: binaryKernel("RealDiv", (x, y) => x / y, divInner),
  Sum: sumKernel,
};

/** Registers the fast elementwise kernels on `cpu` (idempotent); {@link setElementwiseVectorMath} picks their library. */
export function installElementwiseKernels(): void {
  for (const [name, fn] of Object.entries(KERNELS)) overrideCpuKernel(originals, name, fn);
}

/** Restores tfjs's own kernels. */
export function uninstallElementwiseKernels(): void {
  vectorBinary = undefined;
  restoreCpuKernels(originals);
}
