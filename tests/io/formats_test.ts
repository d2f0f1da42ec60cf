import { assert, assertAllClose, assertEquals, assertThrows } from "../_assert.ts";
import { CheckpointError } from "../../src/util/errors.ts";
import {
  bf16ToFloat,
  crc32,
  encodeNpy,
  encodePth,
  floatToBf16,
  floatToHalf,
  halfToFloat,
  parseNpy,
  readPth,
  readSafetensors,
  type TensorData,
  toFloat32,
  writeSafetensors,
} from "../../src/io/mod.ts";

function sampleTensors(): Map<string, TensorData> {
  return new Map<string, TensorData>([
    ["a.weight", { dtype: "F32", shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6.5]) }],
    ["a.bias", { dtype: "F32", shape: [3], data: Float32Array.from([-1, 0, 1]) }],
    ["steps", { dtype: "I64", shape: [2], data: BigInt64Array.from([5n, -7n]) }],
    ["half", { dtype: "F16", shape: [2], data: Uint16Array.from([floatToHalf(0.5), floatToHalf(-2)]) }],
    ["mask", { dtype: "BOOL", shape: [3], data: Uint8Array.from([1, 0, 1]) }],
    ["empty", { dtype: "F32", shape: [0, 2], data: new Float32Array(0) }],
  ]);
}

Deno.test("crc32 matches known values", () => {
  assertEquals(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assertEquals(crc32(new Uint8Array(0)), 0);
  const big = new TextEncoder().encode("The quick brown fox jumps over the lazy dog");
  assertEquals(crc32(big), 0x414fa339);
  assertEquals(crc32(big.subarray(10), crc32(big.subarray(0, 10))), 0x414fa339);
});

Deno.test("half and bfloat16 conversions round-trip representable values", () => {
  for (const x of [0, 1, -1, 0.5, 65504, -0.0001220703125, 6.103515625e-5, 5.960464477539063e-8]) {
    assertEquals(halfToFloat(floatToHalf(x)), x, `half ${x}`);
  }
  assertEquals(halfToFloat(floatToHalf(1e6)), Infinity);
  for (const x of [0, 1, -3.5, 1.5 * 2 ** 120, 2 ** -100]) assertEquals(bf16ToFloat(floatToBf16(x)), x, `bf16 ${x}`);
  assert(Number.isNaN(bf16ToFloat(floatToBf16(NaN))));
  // Round to nearest even: 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7.
  assertEquals(bf16ToFloat(floatToBf16(1 + 2 ** -8)), 1);
});

Deno.test("safetensors round-trips tensors and metadata", async () => {
  const tensors = sampleTensors();
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  await writeSafetensors(path, tensors, { format: "pt", note: "x" });
  const back = readSafetensors(path);
  assertEquals(back.metadata, { format: "pt", note: "x" });
  assertEquals([...back.tensors.keys()], [...tensors.keys()]);
  for (const [k, t] of tensors) {
    const b = back.tensors.get(k)!;
    assertEquals(b.dtype, t.dtype);
    assertEquals(b.shape, t.shape);
    assertEquals([...b.data as ArrayLike<unknown> as unknown[]], [...t.data as ArrayLike<unknown> as unknown[]]);
  }
  const bytes = Deno.readFileSync(path);
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assertEquals((8 + headerLen) % 8, 0, "data section is 8-byte aligned");
  await Deno.remove(path);
});

function withHeader(header: unknown, dataBytes: number): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

Deno.test("safetensors header validation refuses bad offsets, overlaps, holes and sizes", () => {
  const cases: [unknown, number, RegExp][] = [
    [{ a: { dtype: "F32", shape: [2], data_offsets: [0, 8] } }, 4, /lie outside/],
    [{ a: { dtype: "F32", shape: [2], data_offsets: [0, 12] } }, 12, /= 8 bytes but its offsets span 12/],
    [
      { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] }, b: { dtype: "F32", shape: [1], data_offsets: [4, 8] } },
      8,
      /overlaps/,
    ],
    [{ a: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }, 8, /hole/],
    [{ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }, 8, /trailing bytes/],
    [{ a: { dtype: "Q8", shape: [1], data_offsets: [0, 1] } }, 1, /unsupported dtype "Q8"/],
    [{ a: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }, 4, /invalid shape/],
    [{ a: { dtype: "F32", shape: [1], data_offsets: [8, 4] } }, 8, /lie outside|outside/],
    [[1, 2], 0, /not a JSON object/],
  ];
  for (const [header, n, pattern] of cases) {
    assertThrows(() => readSafetensors(withHeader(header, n)), pattern, CheckpointError);
  }
  const huge = new Uint8Array(16);
  new DataView(huge.buffer).setBigUint64(0, 1000n, true);
  assertThrows(() => readSafetensors(huge), /header length 1000 is larger than the file/, CheckpointError);
  assertThrows(() => readSafetensors(new Uint8Array(3)), /too short/, CheckpointError);
});

Deno.test("pth writer output reads back with every dtype", () => {
  const tensors = sampleTensors();
  const bytes = encodePth(
    new Map<string, unknown>([["model", tensors], ["epoch", 3], ["lr", 0.5], ["name", "x"]]) as never,
  );
  const top = readPth(bytes).value as Map<string, unknown>;
  assertEquals(top.get("epoch"), 3);
  assertEquals(top.get("lr"), 0.5);
  const model = top.get("model") as Map<string, TensorData>;
  for (const [k, t] of tensors) {
    const b = model.get(k)!;
    assertEquals(b.dtype, t.dtype, k);
    assertEquals(b.shape, t.shape, k);
    assertEquals([...b.data as ArrayLike<unknown> as unknown[]], [...t.data as ArrayLike<unknown> as unknown[]], k);
  }
});

Deno.test("pth writer aligns every record's data to 64 bytes, as PyTorch does", () => {
  const bytes = encodePth(sampleTensors() as never);
  const view = new DataView(bytes.buffer);
  let p = 0;
  let records = 0;
  while (view.getUint32(p, true) === 0x04034b50) {
    const nameLen = view.getUint16(p + 26, true);
    const extraLen = view.getUint16(p + 28, true);
    const size = view.getUint32(p + 18, true);
    const dataStart = p + 30 + nameLen + extraLen;
    assertEquals(dataStart % 64, 0, `record ${records}`);
    p = dataStart + size;
    records++;
  }
  assertEquals(records, 3 + 6);
});

Deno.test(".npy parses every supported dtype, both byte orders and Fortran order", () => {
  const make = (descr: string, shape: string, fortran: boolean, data: Uint8Array) => {
    let header = `{'descr': '${descr}', 'fortran_order': ${fortran ? "True" : "False"}, 'shape': ${shape}, }`;
    header += " ".repeat((64 - ((10 + header.length + 1) % 64)) % 64) + "\n";
    const out = new Uint8Array(10 + header.length + data.length);
    out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
    new DataView(out.buffer).setUint16(8, header.length, true);
    out.set(new TextEncoder().encode(header), 10);
    out.set(data, 10 + header.length);
    return out;
  };
  const f = parseNpy(make("<f4", "(2, 3)", false, new Uint8Array(Float32Array.from([1, 2, 3, 4, 5, 6]).buffer)));
  assertEquals(f.shape, [2, 3]);
  assertEquals([...f.data as Float32Array], [1, 2, 3, 4, 5, 6]);
  const be = new Uint8Array(4);
  new DataView(be.buffer).setUint16(0, 513, false);
  new DataView(be.buffer).setUint16(2, 65535, false);
  assertEquals([...parseNpy(make(">u2", "(2,)", false, be)).data as Uint16Array], [513, 65535]);
  // Fortran order: memory [1,4,2,5,3,6] is the 2x3 array [[1,2,3],[4,5,6]].
  const fo = parseNpy(make("<f8", "(2, 3)", true, new Uint8Array(Float64Array.from([1, 4, 2, 5, 3, 6]).buffer)));
  assertEquals([...fo.data as Float64Array], [1, 2, 3, 4, 5, 6]);
  assertEquals([...parseNpy(make("|u1", "(3,)", false, Uint8Array.from([0, 128, 255]))).data], [0, 128, 255]);
  assertThrows(
    () => parseNpy(make("<c8", "(1,)", false, new Uint8Array(8))),
    /unsupported .npy dtype '<c8'/,
    CheckpointError,
  );
  assertThrows(() => parseNpy(make("<f4", "(4,)", false, new Uint8Array(8))), /truncated/, CheckpointError);
  assertThrows(() => parseNpy(new TextEncoder().encode("not npy at all")), /bad magic/, CheckpointError);
  // encodeNpy → parseNpy round trip
  const t: TensorData = { dtype: "F32", shape: [2, 2], data: Float32Array.from([0.5, -1, 2, 3]) };
  const back = parseNpy(encodeNpy(t));
  assertEquals(back.shape, [2, 2]);
  assertAllClose(back.data as Float32Array, toFloat32(t), 0);
});
