/**
 * Framework-free tensors as read from and written to weight files.
 * @module
 */
import { CheckpointError } from "../util/errors.ts";

/** Element types, named as in safetensors. */
export type DType = "F64" | "F32" | "F16" | "BF16" | "I64" | "I32" | "I16" | "I8" | "U8" | "BOOL";

/** Typed-array storage for each {@link DType} (F16/BF16 keep their raw 16-bit patterns). */
export type TypedData =
  | Float64Array
  | Float32Array
  | Uint16Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array;

/** A dense, C-contiguous tensor. */
export interface TensorData {
  /** Element type. */
  dtype: DType;
  /** Dimensions; `[]` for a scalar. */
  shape: number[];
  /** Elements in row-major order. */
  data: TypedData;
}

/**
 * Tensors made by this package's readers and constructors. A value read from a
 * file is a tensor only if it is in this set: an object that merely has
 * `dtype`, `shape` and `data` fields (a forged `argparse.Namespace` in a
 * pickle, say) is not.
 */
const TENSORS = new WeakSet<object>();

/**
 * True when `v` is a tensor made by this package (a reader or
 * {@link makeTensor}), not any object that has `dtype`/`shape`/`data` fields.
 * @param v any value, typically from a weight file
 * @returns whether it is a real tensor
 */
export function isTensorData(v: unknown): v is TensorData {
  return typeof v === "object" && v !== null && TENSORS.has(v);
}

// deno-lint-ignore no-explicit-any
const ARRAY_OF: Record<DType, new (...a: any[]) => TypedData> = {
  F64: Float64Array,
  F32: Float32Array,
  F16: Uint16Array,
  BF16: Uint16Array,
  I64: BigInt64Array,
  I32: Int32Array,
  I16: Int16Array,
  I8: Int8Array,
  U8: Uint8Array,
  BOOL: Uint8Array,
};

function checkTensor(dtype: DType, shape: readonly number[], data: TypedData, where: string): void {
  if (!(dtype in ARRAY_OF)) throw new CheckpointError(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new CheckpointError(`${where}: invalid shape [${shape}]`);
  }
  if (!(data instanceof ARRAY_OF[dtype])) {
    throw new CheckpointError(`${where}: ${dtype} data must be a ${ARRAY_OF[dtype].name}`);
  }
  if (data.length !== numel(shape)) {
    throw new CheckpointError(`${where}: ${data.length} elements do not fill shape [${shape}]`);
  }
}

/**
 * A tensor from values, checked (typed-array kind matches the dtype, length
 * matches the shape) and recognised by {@link isTensorData}.
 * @param dtype element type
 * @param shape dimensions
 * @param data elements in row-major order
 * @param where names the tensor or file in error messages
 * @returns the tensor
 * @throws {CheckpointError} when the data does not match the dtype or shape
 */
export function makeTensor(dtype: DType, shape: number[], data: TypedData, where = "tensor"): TensorData {
  checkTensor(dtype, shape, data, where);
  const t: TensorData = { dtype, shape, data };
  TENSORS.add(t);
  return t;
}

/**
 * A tensor whose elements are read on first access of `.data` (then kept),
 * so tensors that are dropped are never read. `data` is an own enumerable
 * accessor, so spreading or cloning the tensor reads it; assigning replaces it.
 * @param dtype element type
 * @param shape dimensions
 * @param load reads the elements (called at most once, unless it throws)
 * @param where names the tensor or file in error messages
 * @returns the tensor, recognised by {@link isTensorData}
 * @throws {CheckpointError} (on access) when `load` fails or returns data that do not fit
 */
export function lazyTensor(dtype: DType, shape: number[], load: () => TypedData, where = "tensor"): TensorData {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new CheckpointError(`${where}: invalid shape [${shape}]`);
  }
  let cached: TypedData | undefined;
  const t = { dtype, shape } as TensorData;
  Object.defineProperty(t, "data", {
    enumerable: true,
    configurable: true,
    get(): TypedData {
      if (!cached) {
        let d: TypedData;
        try {
          d = load();
        } catch (err) {
          if (err instanceof CheckpointError) throw err;
          throw new CheckpointError(`${where}: cannot read tensor data (${(err as Error).message})`, { cause: err });
        }
        checkTensor(dtype, shape, d, where);
        cached = d;
      }
      return cached;
    },
    set(v: TypedData) {
      cached = v;
    },
  });
  TENSORS.add(t);
  return t;
}

/** Bytes per element of each dtype. */
export const DTYPE_SIZE: Record<DType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/**
 * Number of elements of a shape.
 * @param shape the dimensions (`[]`: a scalar)
 * @returns their product (1 for a scalar)
 */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Views `bytes` (little-endian) as a typed array of `dtype`; copies only if unaligned.
 * @param dtype the element type
 * @param bytes the little-endian elements
 * @returns a typed array over the same memory when aligned, else over a copy (F16/BF16: raw Uint16 words)
 * @throws {CheckpointError} when the byte length is not a whole number of elements
 */
export function typedView(dtype: DType, bytes: Uint8Array): TypedData {
  const size = DTYPE_SIZE[dtype];
  if (bytes.byteLength % size !== 0) {
    throw new CheckpointError(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements`);
  }
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const { buffer, byteOffset, byteLength } = aligned;
  const n = byteLength / size;
  switch (dtype) {
    case "F64":
      return new Float64Array(buffer, byteOffset, n);
    case "F32":
      return new Float32Array(buffer, byteOffset, n);
    case "F16":
    case "BF16":
      return new Uint16Array(buffer, byteOffset, n);
    case "I64":
      return new BigInt64Array(buffer, byteOffset, n);
    case "I32":
      return new Int32Array(buffer, byteOffset, n);
    case "I16":
      return new Int16Array(buffer, byteOffset, n);
    case "I8":
      return new Int8Array(buffer, byteOffset, n);
    case "U8":
    case "BOOL":
      return new Uint8Array(buffer, byteOffset, n);
  }
}

/**
 * An empty typed array of `dtype` with `n` elements.
 * @param dtype the element type
 * @param n the number of elements
 * @returns a zero-filled typed array
 */
export function allocTyped(dtype: DType, n: number): TypedData {
  return typedView(dtype, new Uint8Array(n * DTYPE_SIZE[dtype]));
}

/**
 * The raw little-endian bytes of a tensor (a view, no copy).
 * @param t the tensor
 * @returns its data's bytes
 */
export function tensorBytes(t: TensorData): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/**
 * IEEE half → float.
 * @param h the 16-bit pattern (0–65535)
 * @returns its value (subnormals, ±Infinity and NaN included)
 * @example
 * ```ts
 * import { floatToHalf, halfToFloat } from "./tensor.ts";
 * if (floatToHalf(1) !== 0x3c00 || halfToFloat(0x3c00) !== 1) throw new Error("one");
 * if (halfToFloat(floatToHalf(0.1)) !== 0.0999755859375) throw new Error("rounding");
 * if (floatToHalf(70000) !== 0x7c00) throw new Error("overflow to Infinity");
 * ```
 */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * float → IEEE half (round to nearest even).
 * @param x the value
 * @returns the nearest half's 16-bit pattern; beyond 65504 (after rounding) ±Infinity, NaN stays NaN
 */
export function floatToHalf(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half++;
  e = half >> 10;
  return sign | half;
}

/**
 * bfloat16 → float.
 * @param h the 16-bit pattern (the upper half of a float32)
 * @returns its value
 */
export function bf16ToFloat(h: number): number {
  u32[0] = h << 16;
  return f32[0];
}

/**
 * float → bfloat16 (round to nearest even, as PyTorch).
 * @param x the value
 * @returns the nearest bfloat16's 16-bit pattern (NaN stays NaN)
 */
export function floatToBf16(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x40;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * Converts any floating or integer tensor to float32 (bools become 0/1).
 * @param t the tensor
 * @returns its values as float32 (a new array, or the tensor's own data when it is float32 already)
 */
export function toFloat32(t: TensorData): Float32Array {
  const d = t.data;
  if (t.dtype === "F32") return d as Float32Array;
  const out = new Float32Array(d.length);
  if (t.dtype === "F16") { for (let i = 0; i < d.length; i++) out[i] = halfToFloat((d as Uint16Array)[i]); }
  else if (t.dtype === "BF16") { for (let i = 0; i < d.length; i++) out[i] = bf16ToFloat((d as Uint16Array)[i]); }
  else if (t.dtype === "I64") { for (let i = 0; i < d.length; i++) out[i] = Number((d as BigInt64Array)[i]); }
  else for (let i = 0; i < d.length; i++) out[i] = Number(d[i]);
  return out;
}

/**
 * A float32 tensor from values and shape, checking the size.
 * @param data the values, row-major
 * @param shape the dimensions
 * @returns the tensor (not a copy of `data`)
 * @throws {CheckpointError} when `data.length` is not the product of `shape`
 */
export function float32Tensor(data: Float32Array, shape: number[]): TensorData {
  if (data.length !== numel(shape)) {
    throw new CheckpointError(`float32Tensor: ${data.length} values do not fill shape [${shape}]`);
  }
  return makeTensor("F32", [...shape], data, "float32Tensor");
}
