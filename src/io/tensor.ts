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

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Views `bytes` (little-endian) as a typed array of `dtype`; copies only if unaligned. */
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

/** An empty typed array of `dtype` with `n` elements. */
export function allocTyped(dtype: DType, n: number): TypedData {
  return typedView(dtype, new Uint8Array(n * DTYPE_SIZE[dtype]));
}

/** The raw little-endian bytes of a tensor (a view, no copy). */
export function tensorBytes(t: TensorData): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/** IEEE half → float. */
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

/** float → IEEE half (round to nearest even). */
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

/** bfloat16 → float. */
export function bf16ToFloat(h: number): number {
  u32[0] = h << 16;
  return f32[0];
}

/** float → bfloat16 (round to nearest even, as PyTorch). */
export function floatToBf16(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x40;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Converts any floating or integer tensor to float32 (bools become 0/1). */
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

/** A float32 tensor from values and shape, checking the size. */
export function float32Tensor(data: Float32Array, shape: number[]): TensorData {
  if (data.length !== numel(shape)) {
    throw new CheckpointError(`float32Tensor: ${data.length} values do not fill shape [${shape}]`);
  }
  return { dtype: "F32", shape: [...shape], data };
}
