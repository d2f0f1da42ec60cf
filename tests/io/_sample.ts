/** A deterministic state dict used by the PyTorch round-trip test and its fixture. */
import { floatToBf16, floatToHalf, type TensorData } from "../../src/io/mod.ts";

export function writerSample(): Map<string, TensorData> {
  const f = (n: number, k: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * k) * 3);
  return new Map<string, TensorData>([
    ["blocks.0.attn.qkv.weight", { dtype: "F32", shape: [6, 2], data: f(12, 0.7) }],
    ["blocks.0.attn.qkv.bias", { dtype: "F32", shape: [6], data: f(6, 1.3) }],
    ["cls_token", { dtype: "F32", shape: [1, 1, 2], data: f(2, 0.1) }],
    ["double", { dtype: "F64", shape: [3], data: Float64Array.from([Math.PI, -1e-300, 1e300]) }],
    ["half", { dtype: "F16", shape: [2], data: Uint16Array.from([floatToHalf(1.5), floatToHalf(-0.25)]) }],
    ["bf16", { dtype: "BF16", shape: [2], data: Uint16Array.from([floatToBf16(3), floatToBf16(-0.5)]) }],
    ["steps", { dtype: "I64", shape: [1], data: BigInt64Array.from([123456789012n]) }],
    ["flags", { dtype: "BOOL", shape: [2], data: Uint8Array.from([1, 0]) }],
    ["scalar", { dtype: "F32", shape: [], data: Float32Array.from([0.125]) }],
  ]);
}
