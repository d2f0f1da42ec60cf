/**
 * NumPy `.npy` arrays (format versions 1–3): read any numeric dtype in either
 * byte order; write float32 / uint8 / uint16 / int64 arrays.
 * @module
 */
import { CheckpointError } from "../util/errors.ts";
import { concatBytes } from "../util/bytes.ts";
import { writeFileAtomic } from "../util/fs.ts";
import { type DType, makeTensor, numel, type TensorData, typedView } from "./tensor.ts";

/** A `.npy` array: float/int data in a typed array, plus the NumPy dtype string. */
export interface NpyArray {
  /** NumPy dtype descriptor as written in the file, e.g. `<f4`. */
  descr: string;
  /** Array shape. */
  shape: number[];
  /** Values in C order (Fortran-ordered files are transposed on read). */
  data:
    | Float32Array
    | Float64Array
    | Uint8Array
    | Uint16Array
    | Int8Array
    | Int16Array
    | Int32Array
    | Uint32Array
    | BigInt64Array;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];

const KINDS: Record<string, { size: number; make: (b: ArrayBuffer, n: number) => NpyArray["data"] }> = {
  f4: { size: 4, make: (b, n) => new Float32Array(b, 0, n) },
  f8: { size: 8, make: (b, n) => new Float64Array(b, 0, n) },
  u1: { size: 1, make: (b, n) => new Uint8Array(b, 0, n) },
  b1: { size: 1, make: (b, n) => new Uint8Array(b, 0, n) },
  i1: { size: 1, make: (b, n) => new Int8Array(b, 0, n) },
  u2: { size: 2, make: (b, n) => new Uint16Array(b, 0, n) },
  i2: { size: 2, make: (b, n) => new Int16Array(b, 0, n) },
  i4: { size: 4, make: (b, n) => new Int32Array(b, 0, n) },
  u4: { size: 4, make: (b, n) => new Uint32Array(b, 0, n) },
  i8: { size: 8, make: (b, n) => new BigInt64Array(b, 0, n) },
};

/** numpy's `max_header_size` default: longer headers are refused unless the file is trusted. */
const MAX_HEADER = 10000;

type Token = { kind: "punct" | "str" | "int" | "name"; text: string };

function tokenize(header: string, fail: (msg: string) => never): Token[] {
  const out: Token[] = [];
  const re = /\s*(?:([{}():,\[\]])|'([^'\\]*)'|"([^"\\]*)"|(-?\d+)L?|([A-Za-z_]\w*))/y;
  let pos = 0;
  const end = header.replace(/\s+$/, "").length;
  while (pos < end) {
    re.lastIndex = pos;
    const m = re.exec(header);
    if (!m) fail(`unexpected text at column ${pos}`);
    pos = re.lastIndex;
    if (m![1]) out.push({ kind: "punct", text: m![1] });
    else if (m![2] !== undefined || m![3] !== undefined) out.push({ kind: "str", text: m![2] ?? m![3] });
    else if (m![4]) out.push({ kind: "int", text: m![4] });
    else out.push({ kind: "name", text: m![5] });
  }
  return out;
}

/**
 * Parses the header's Python dict literal the way numpy checks it: exactly the
 * keys `descr`, `fortran_order` and `shape` (numpy refuses missing or extra
 * keys; a key given twice is refused here, where Python would silently keep
 * the last), a string descr, a bool order and a tuple of non-negative ints.
 */
function parseHeader(header: string, name: string): { descr: string; fortran: boolean; shape: number[] } {
  const fail = (msg: string): never => {
    throw new CheckpointError(
      `${name}: malformed .npy header (${msg}): ${JSON.stringify(header.trim().slice(0, 200))}`,
    );
  };
  const toks = tokenize(header, fail);
  let i = 0;
  const next = () => toks[i++] ?? fail("it ends early");
  const expect = (text: string) => {
    const t = next();
    if (t.kind !== "punct" || t.text !== text) fail(`expected "${text}", found "${t.text}"`);
  };
  const value = (): unknown => {
    const t = next();
    if (t.kind === "str") return t.text;
    if (t.kind === "int") return Number(t.text);
    if (t.kind === "name") {
      if (t.text === "True") return true;
      if (t.text === "False") return false;
      if (t.text === "None") return null;
      fail(`unknown name ${t.text}`);
    }
    if (t.text === "(" || t.text === "[") {
      const close = t.text === "(" ? ")" : "]";
      const items: unknown[] = [];
      for (;;) {
        if (toks[i]?.kind === "punct" && toks[i].text === close) {
          i++;
          break;
        }
        items.push(value());
        const sep = next();
        if (sep.kind === "punct" && sep.text === close) break;
        if (sep.kind !== "punct" || sep.text !== ",") fail(`expected "," or "${close}"`);
      }
      return t.text === "(" ? { tuple: items } : items;
    }
    return fail(`unexpected "${t.text}"`);
  };
  expect("{");
  const dict = new Map<string, unknown>();
  for (;;) {
    if (toks[i]?.kind === "punct" && toks[i].text === "}") {
      i++;
      break;
    }
    const k = next();
    if (k.kind !== "str") fail("a key is not a string");
    if (dict.has(k.text)) fail(`key '${k.text}' appears twice`);
    expect(":");
    dict.set(k.text, value());
    const sep = next();
    if (sep.kind === "punct" && sep.text === "}") break;
    if (sep.kind !== "punct" || sep.text !== ",") fail('expected "," or "}"');
  }
  if (i !== toks.length) fail("text after the dict");
  const keys = [...dict.keys()].sort();
  if (keys.join(",") !== "descr,fortran_order,shape") {
    fail(`numpy requires exactly the keys 'descr', 'fortran_order', 'shape'; found ${keys.map((k) => `'${k}'`)}`);
  }
  const descr = dict.get("descr");
  const fortran = dict.get("fortran_order");
  const shape = dict.get("shape") as { tuple?: unknown[] } | null;
  if (typeof fortran !== "boolean") fail("'fortran_order' is not True or False");
  if (!shape || !Array.isArray(shape.tuple) || !shape.tuple.every((d) => Number.isSafeInteger(d) && Number(d) >= 0)) {
    fail("'shape' is not a tuple of non-negative ints");
  }
  if (typeof descr !== "string") {
    throw new CheckpointError(
      `${name}: unsupported .npy dtype ${JSON.stringify(descr)} (structured arrays are not read)`,
    );
  }
  return { descr: descr as string, fortran: fortran as boolean, shape: shape!.tuple as number[] };
}

/** What a `.npy` header says, checked as numpy checks it. */
export interface NpyHeader {
  /** dtype descriptor with its byte-order mark (`=` added where the file has none), e.g. `<f4`. */
  descr: string;
  /** Fortran (column-major) order. */
  fortran: boolean;
  /** Array shape. */
  shape: number[];
  /** Byte offset of the data. */
  dataStart: number;
}

/** Bytes from the start of a `.npy` file that always hold its whole header (magic, length, dict). */
export const NPY_HEADER_BYTES: number = 12 + MAX_HEADER;

/**
 * Parses a `.npy` file's header from its first bytes ({@link NPY_HEADER_BYTES} are always enough), without reading
 * the data: the one header parser, used by {@link parseNpy} and by image decoding's header pre-pass.
 * @param bytes the start of the file (or all of it)
 * @param name names the file in error messages
 * @returns descr, order, shape and where the data starts
 * @throws {CheckpointError} when the magic, version or header is malformed (missing, extra or repeated keys, as
 * numpy refuses) or longer than numpy's default limit
 */
export function parseNpyHeader(bytes: Uint8Array, name = "<npy>"): NpyHeader {
  if (bytes.length < 10 || !MAGIC.every((m, i) => bytes[i] === m)) {
    throw new CheckpointError(`${name}: not a .npy file (bad magic)`);
  }
  const major = bytes[6];
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number;
  let start: number;
  if (major === 1) {
    headerLen = view.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new CheckpointError(`${name}: truncated .npy header`);
    headerLen = view.getUint32(8, true);
    start = 12;
  } else throw new CheckpointError(`${name}: unsupported .npy version ${major}`);
  if (start + headerLen > bytes.length) throw new CheckpointError(`${name}: truncated .npy header`);
  if (headerLen > MAX_HEADER) {
    throw new CheckpointError(
      `${name}: .npy header of ${headerLen} bytes is larger than numpy's default limit (${MAX_HEADER}); refused`,
    );
  }
  let header: string;
  try {
    header = new TextDecoder(major === 3 ? "utf-8" : "latin1", { fatal: true }).decode(
      bytes.subarray(start, start + headerLen),
    );
  } catch {
    throw new CheckpointError(`${name}: .npy header is not valid text`);
  }
  const { descr, fortran, shape } = parseHeader(header, name);
  // no byte-order mark: native (numpy accepts 'f4')
  return { descr: /^[a-z]/.test(descr) ? `=${descr}` : descr, fortran, shape, dataStart: start + headerLen };
}

/**
 * Parses `.npy` bytes.
 * @param bytes the file's contents
 * @param name names the file in error messages
 * @returns the array (C order)
 * @throws {CheckpointError} when the header is malformed (missing, extra or repeated keys, as numpy refuses), the
 * dtype unsupported or the data truncated
 */
export function parseNpy(bytes: Uint8Array, name = "<npy>"): NpyArray {
  const { descr, fortran, shape, dataStart } = parseNpyHeader(bytes, name);
  const order = descr[0];
  const kind = KINDS[descr.slice(1)];
  if (!kind || !"<>|=".includes(order)) throw new CheckpointError(`${name}: unsupported .npy dtype '${descr}'`);
  const n = numel(shape);
  if (!Number.isSafeInteger(n * kind.size)) throw new CheckpointError(`${name}: .npy shape (${shape}) is too large`);
  if (dataStart + n * kind.size > bytes.length) {
    throw new CheckpointError(
      `${name}: .npy data is truncated (${bytes.length - dataStart} bytes, needs ${n * kind.size})`,
    );
  }
  const raw = bytes.slice(dataStart, dataStart + n * kind.size);
  if (order === ">" && kind.size > 1) {
    for (let i = 0; i < raw.length; i += kind.size) raw.subarray(i, i + kind.size).reverse();
  }
  let data = kind.make(raw.buffer, n);
  if (fortran && shape.length > 1) {
    const out = new (data.constructor as new (n: number) => NpyArray["data"])(n);
    const rank = shape.length;
    const idx = new Array(rank).fill(0);
    for (let c = 0; c < n; c++) {
      // idx is the C-order index of element c; its Fortran-order position:
      let f = 0;
      let mul = 1;
      for (let d = 0; d < rank; d++) {
        f += idx[d] * mul;
        mul *= shape[d];
      }
      (out as unknown as number[])[c] = (data as unknown as number[])[f];
      for (let d = rank - 1; d >= 0; d--) {
        if (++idx[d] < shape[d]) break;
        idx[d] = 0;
      }
    }
    data = out;
  }
  return { descr: `<${descr.slice(1)}`, shape, data };
}

/**
 * Reads a `.npy` file.
 * @param path the `.npy` file
 * @returns the array (C order)
 * @throws {CheckpointError} when the file is missing, unreadable or malformed (see {@link parseNpy})
 */
export async function readNpy(path: string): Promise<NpyArray> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    throw new CheckpointError(`${path}: cannot read (${(err as Error).message})`, { cause: err });
  }
  return parseNpy(bytes, path);
}

const DESCR: Partial<Record<DType, string>> = {
  F32: "<f4",
  F64: "<f8",
  U8: "|u1",
  I64: "<i8",
  I32: "<i4",
  I16: "<i2",
  I8: "|i1",
  BOOL: "|b1",
};

/**
 * Encodes a tensor as `.npy` bytes (format 1.0).
 * @param t the tensor (any dtype with a NumPy equivalent; raw `<u2` halves too)
 * @returns the `.npy` bytes (format 1.0, C order, header padded to 64 bytes)
 * @throws {CheckpointError} when the dtype has no `.npy` equivalent (bfloat16)
 * @example
 * ```ts
 * import { encodeNpy, parseNpy } from "./npy.ts";
 * import { float32Tensor } from "./tensor.ts";
 * const a = parseNpy(encodeNpy(float32Tensor(new Float32Array([0.5, -1, 2, 3, 4, 5]), [2, 3])));
 * if (a.descr !== "<f4" || a.shape.join() !== "2,3" || a.data[1] !== -1) throw new Error("round trip");
 * ```
 */
export function encodeNpy(t: TensorData | { descr: "<u2"; shape: number[]; data: Uint16Array }): Uint8Array {
  const descr = "descr" in t ? t.descr : DESCR[t.dtype];
  if (!descr) throw new CheckpointError(`encodeNpy: dtype ${(t as TensorData).dtype} has no .npy equivalent`);
  const shape = t.shape.length === 1 ? `(${t.shape[0]},)` : `(${t.shape.join(", ")})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const head = new Uint8Array(10);
  head.set(MAGIC);
  head[6] = 1;
  new DataView(head.buffer).setUint16(8, header.length, true);
  const data = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  return concatBytes([head, new TextEncoder().encode(header), data]);
}

/**
 * Writes a tensor to a `.npy` file atomically.
 * @param path the file to write (replaced atomically)
 * @param t the tensor
 * @returns when the file is written
 * @throws {CheckpointError} when the dtype has no `.npy` equivalent
 */
export async function writeNpy(path: string, t: TensorData): Promise<void> {
  await writeFileAtomic(path, encodeNpy(t));
}

/**
 * Converts a parsed `.npy` array to a {@link TensorData} when its dtype maps to one.
 * @param a the parsed array
 * @param name names the array in error messages
 * @returns a tensor viewing the same data
 * @throws {CheckpointError} when the dtype has no tensor equivalent or the data does not fill the shape
 */
export function npyToTensor(a: NpyArray, name = "<npy>"): TensorData {
  const map: Record<string, DType> = {
    "<f4": "F32",
    "<f8": "F64",
    "<u1": "U8",
    "<b1": "BOOL",
    "<i1": "I8",
    "<i2": "I16",
    "<i4": "I32",
    "<i8": "I64",
  };
  const dtype = map[a.descr];
  if (!dtype) throw new CheckpointError(`${name}: .npy dtype ${a.descr} has no tensor equivalent`);
  return makeTensor(
    dtype,
    a.shape,
    typedView(dtype, new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.byteLength)),
    name,
  );
}
