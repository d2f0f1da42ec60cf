/**
 * PyTorch checkpoint (`torch.save`) reader: the zip format of PyTorch ≥ 1.6
 * and the legacy pre-1.6 stream format. Storages are read one record at a
 * time from disk, never the whole archive at once. The pickle runs on a safe
 * VM that allows only the globals a state dict needs.
 * @module
 */
import { CheckpointError } from "../util/errors.ts";
import { plainClass, type PyGlobal, type PyObject, unpickle } from "./pickle.ts";
import { type ByteSource, fileSource, memorySource } from "./source.ts";
import { type DType, DTYPE_SIZE, numel, type TensorData, type TypedData, typedView } from "./tensor.ts";
import { looksLikeZip, ZipReader } from "./zip.ts";

/** Storage classes PyTorch pickles, and their element types. */
export const STORAGE_DTYPES: Record<string, DType> = {
  "torch.FloatStorage": "F32",
  "torch.DoubleStorage": "F64",
  "torch.HalfStorage": "F16",
  "torch.BFloat16Storage": "BF16",
  "torch.LongStorage": "I64",
  "torch.IntStorage": "I32",
  "torch.ShortStorage": "I16",
  "torch.CharStorage": "I8",
  "torch.ByteStorage": "U8",
  "torch.BoolStorage": "BOOL",
  "torch.UntypedStorage": "U8",
};

interface StorageType {
  storageDtype: DType;
  qualname: string;
}

interface StorageRef {
  storage: true;
  key: string;
  dtype: DType;
  numel: number;
  viewOffset?: number;
  viewSize?: number;
}

/** What {@link readPth} returns. */
export interface PthContents {
  /** The unpickled object: dicts are `Map`s, tensors {@link TensorData}. */
  value: unknown;
  /** `zip` (PyTorch ≥ 1.6) or `legacy`. */
  format: "zip" | "legacy";
  /** The file the contents came from. */
  fileName: string;
}

/** Options of {@link readPth}. */
export interface ReadPthOptions {
  /** Verify each record's CRC-32 (default true). */
  verifyCrc?: boolean;
}

function isContiguous(shape: number[], stride: number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expected) return false;
    expected *= shape[d];
  }
  return true;
}

/** Materialises a strided view of `storage` as a contiguous tensor. */
function viewTensor(
  file: string,
  storage: TypedData,
  dtype: DType,
  offset: number,
  shape: number[],
  stride: number[],
): TensorData {
  if (
    !shape.every((d) => Number.isInteger(d) && d >= 0) || stride.length !== shape.length ||
    !stride.every((s) => Number.isInteger(s) && s >= 0)
  ) {
    throw new CheckpointError(`${file}: tensor has invalid size [${shape}] or stride [${stride}]`);
  }
  const n = numel(shape);
  if (n === 0) return { dtype, shape, data: storage.subarray(0, 0) as TypedData };
  let maxIndex = offset;
  for (let d = 0; d < shape.length; d++) maxIndex += (shape[d] - 1) * stride[d];
  if (!Number.isInteger(offset) || offset < 0 || maxIndex >= storage.length) {
    throw new CheckpointError(
      `${file}: tensor of size [${shape}], stride [${stride}] at storage offset ${offset} reaches element ${maxIndex} of a ${storage.length}-element storage`,
    );
  }
  if (isContiguous(shape, stride)) {
    return {
      dtype,
      shape,
      data: (offset === 0 && n === storage.length ? storage : storage.subarray(offset, offset + n)) as TypedData,
    };
  }
  const out = new (storage.constructor as new (n: number) => TypedData)(n);
  const idx = new Array(shape.length).fill(0);
  let src = offset;
  for (let i = 0; i < n; i++) {
    (out as unknown as number[])[i] = (storage as unknown as number[])[src];
    for (let d = shape.length - 1; d >= 0; d--) {
      idx[d]++;
      src += stride[d];
      if (idx[d] < shape[d]) break;
      src -= stride[d] * shape[d];
      idx[d] = 0;
    }
  }
  return { dtype, shape, data: out };
}

function swapBytes(bytes: Uint8Array, size: number): void {
  if (size === 1) return;
  for (let i = 0; i + size <= bytes.length; i += size) bytes.subarray(i, i + size).reverse();
}

function asIntList(file: string, v: unknown, what: string): number[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === "number")) {
    throw new CheckpointError(`${file}: tensor ${what} is not a tuple of ints`);
  }
  return v as number[];
}

/**
 * The allow-list: exactly the globals a PyTorch state dict (plus the harmless
 * extras found in real checkpoints: argparse.Namespace, numpy scalars) needs.
 */
function torchGlobals(
  file: string,
  loadStorage: (ref: StorageRef) => TypedData,
  pending?: PendingTensor[],
): Map<string, PyGlobal> {
  const g = new Map<string, PyGlobal>();
  const dictLike: PyGlobal = {
    call: (args) => {
      const m = new Map();
      if (Array.isArray(args[0])) { for (const pair of args[0]) if (Array.isArray(pair)) m.set(pair[0], pair[1]); }
      return m;
    },
  };
  g.set("collections.OrderedDict", dictLike);
  g.set("builtins.dict", dictLike);
  g.set("__builtin__.dict", dictLike);
  const rebuild = (args: unknown[]): unknown => {
    const [storage, offset, size, stride] = args as [StorageRef, number, unknown, unknown];
    if (!storage || (storage as StorageRef).storage !== true) {
      throw new CheckpointError(`${file}: _rebuild_tensor without a storage`);
    }
    const shape = asIntList(file, size, "size");
    const strides = asIntList(file, stride, "stride");
    if (pending) {
      const p: PendingTensor = { pending: true, storage, offset, shape, stride: strides };
      pending.push(p);
      return p;
    }
    return viewTensor(file, loadStorage(storage), storage.dtype, offset, shape, strides);
  };
  g.set("torch._utils._rebuild_tensor_v2", { call: rebuild });
  g.set("torch._utils._rebuild_tensor", { call: rebuild });
  g.set("torch._utils._rebuild_parameter", { call: (args) => args[0] });
  g.set("torch._utils._rebuild_parameter_with_state", { call: (args) => args[0] });
  for (const [qualname, dtype] of Object.entries(STORAGE_DTYPES)) {
    g.set(qualname, { call: () => ({ storageDtype: dtype, qualname }) as StorageType });
  }
  for (
    const name of ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"]
  ) {
    g.set(`torch.${name}`, { call: () => `torch.${name}` });
  }
  g.set("torch.Size", { call: (args) => [...((args[0] as unknown[]) ?? [])] });
  g.set("torch.device", { call: (args) => args.join(":") });
  g.set("argparse.Namespace", plainClass("argparse.Namespace"));
  // Protocol-2 pickles name builtins "__builtin__" (Python 2 spelling).
  for (const mod of ["builtins", "__builtin__"]) {
    g.set(`${mod}.set`, { call: (args) => new Set((args[0] as unknown[]) ?? []) });
    g.set(`${mod}.frozenset`, { call: (args) => new Set((args[0] as unknown[]) ?? []) });
  }
  g.set("_codecs.encode", {
    call: ([text, encoding]) => {
      if (
        typeof text !== "string" ||
        !["latin1", "latin-1", "iso-8859-1"].includes(String(encoding ?? "latin1").toLowerCase())
      ) {
        throw new CheckpointError(`${file}: _codecs.encode only supports latin1 text`);
      }
      return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
    },
  });
  g.set("numpy.dtype", {
    call: ([descr]) => ({ __class__: "numpy.dtype", descr: String(descr), byteorder: "<" }) as PyObject,
    build: (obj, state) => {
      if (Array.isArray(state) && typeof state[1] === "string") (obj as PyObject).byteorder = state[1];
      return obj;
    },
  });
  g.set("numpy.core.multiarray.scalar", {
    call: ([dtype, raw]) => {
      const d = dtype as PyObject;
      if (!(raw instanceof Uint8Array) || !d || d.__class__ !== "numpy.dtype") {
        throw new CheckpointError(`${file}: malformed numpy scalar`);
      }
      const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
      const le = d.byteorder !== ">";
      const readers: Record<string, () => number | bigint | boolean> = {
        f8: () => v.getFloat64(0, le),
        f4: () => v.getFloat32(0, le),
        i8: () => v.getBigInt64(0, le),
        i4: () => v.getInt32(0, le),
        i2: () => v.getInt16(0, le),
        i1: () => v.getInt8(0),
        u8: () => v.getBigUint64(0, le),
        u4: () => v.getUint32(0, le),
        u2: () => v.getUint16(0, le),
        u1: () => v.getUint8(0),
        b1: () => v.getUint8(0) !== 0,
      };
      const reader = readers[String(d.descr)];
      if (!reader) throw new CheckpointError(`${file}: unsupported numpy scalar dtype "${d.descr}"`);
      const out = reader();
      return typeof out === "bigint" && out <= BigInt(Number.MAX_SAFE_INTEGER) && out >= BigInt(Number.MIN_SAFE_INTEGER)
        ? Number(out)
        : out;
    },
  });
  return g;
}

interface PendingTensor {
  pending: true;
  storage: StorageRef;
  offset: number;
  shape: number[];
  stride: number[];
}

function storageRefFromPid(file: string, pid: unknown): StorageRef {
  if (!Array.isArray(pid) || pid[0] !== "storage") {
    throw new CheckpointError(`${file}: unknown persistent id ${JSON.stringify(String(pid))}`);
  }
  const [, cls, key, , n, viewMeta] = pid as [string, PyGlobal, unknown, unknown, unknown, unknown];
  // The storage type arrives as the class itself (a GLOBAL); calling our stand-in yields its dtype.
  const type = cls && typeof cls.call === "function" ? cls.call([]) as StorageType : undefined;
  if (!type || !type.storageDtype) throw new CheckpointError(`${file}: persistent id names an unknown storage type`);
  if (typeof n !== "number" || !Number.isInteger(n) || n < 0) {
    throw new CheckpointError(`${file}: storage has invalid size ${String(n)}`);
  }
  const ref: StorageRef = { storage: true, key: String(key), dtype: type.storageDtype, numel: n };
  if (Array.isArray(viewMeta) && viewMeta.length === 3) {
    ref.key = String(viewMeta[0]);
    ref.viewOffset = Number(viewMeta[1]);
    ref.viewSize = Number(viewMeta[2]);
  }
  return ref;
}

function readZipPth(src: ByteSource, options: ReadPthOptions): unknown {
  const file = src.name;
  const zip = ZipReader.open(src);
  const pkl = [...zip.entries.keys()].find((n) => /^[^/]+\/data\.pkl$/.test(n) || n === "data.pkl");
  if (!pkl) throw new CheckpointError(`${file}: zip archive has no data.pkl; it is not a PyTorch checkpoint`);
  const prefix = pkl.slice(0, -"data.pkl".length);
  let bigEndian = false;
  if (zip.entries.has(`${prefix}byteorder`)) {
    const order = new TextDecoder().decode(zip.read(`${prefix}byteorder`)).trim();
    if (order !== "little" && order !== "big") throw new CheckpointError(`${file}: unknown byteorder "${order}"`);
    bigEndian = order === "big";
  }
  const storages = new Map<string, TypedData>();
  const loadStorage = (ref: StorageRef): TypedData => {
    let s = storages.get(ref.key);
    if (!s) {
      const name = `${prefix}data/${ref.key}`;
      if (!zip.entries.has(name)) throw new CheckpointError(`${file}: storage record "${name}" is missing`);
      const bytes = zip.read(name, { verifyCrc: options.verifyCrc });
      const size = DTYPE_SIZE[ref.dtype];
      if (bytes.length < ref.numel * size) {
        throw new CheckpointError(
          `${file}: storage "${name}" has ${bytes.length} bytes, needs ${
            ref.numel * size
          } for ${ref.numel} ${ref.dtype}`,
        );
      }
      if (bigEndian) swapBytes(bytes, size);
      s = typedView(ref.dtype, bytes.subarray(0, ref.numel * size));
      storages.set(ref.key, s);
    }
    return s;
  };
  const bytes = zip.read(pkl, { verifyCrc: options.verifyCrc });
  return unpickle(bytes, {
    fileName: file,
    globals: torchGlobals(file, loadStorage),
    persistentLoad: (pid) => storageRefFromPid(file, pid),
  }).value;
}

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

function readLegacyPth(src: ByteSource): unknown {
  const file = src.name;
  const bytes = src.read(0, src.size);
  const noGlobals = { fileName: file, globals: new Map<string, PyGlobal>() };
  const magic = unpickle(bytes, noGlobals);
  if (BigInt(magic.value as number | bigint) !== LEGACY_MAGIC) {
    throw new CheckpointError(`${file}: starts with a pickle but is not a PyTorch checkpoint (no torch magic number)`);
  }
  const proto = unpickle(bytes, { ...noGlobals, offset: magic.end });
  if (proto.value !== 1001) {
    throw new CheckpointError(`${file}: unsupported legacy PyTorch protocol ${String(proto.value)}`);
  }
  const sysInfo = unpickle(bytes, { ...noGlobals, offset: proto.end });
  const info = sysInfo.value as Map<string, unknown>;
  if (info instanceof Map && info.get("little_endian") === false) {
    throw new CheckpointError(`${file}: big-endian legacy checkpoints are not supported`);
  }
  const pending: PendingTensor[] = [];
  const refs = new Map<string, StorageRef>();
  const main = unpickle(bytes, {
    fileName: file,
    offset: sysInfo.end,
    globals: torchGlobals(file, () => {
      throw new CheckpointError(`${file}: storage read before its data`);
    }, pending),
    persistentLoad: (pid) => {
      const ref = storageRefFromPid(file, pid);
      const root = Array.isArray(pid) ? String(pid[2]) : ref.key;
      if (!refs.has(root)) refs.set(root, { ...ref, key: root, viewOffset: undefined, viewSize: undefined });
      return ref;
    },
  });
  const keys = unpickle(bytes, { ...noGlobals, offset: main.end });
  if (!Array.isArray(keys.value)) throw new CheckpointError(`${file}: legacy storage key list is missing`);
  let pos = keys.end;
  const storages = new Map<string, TypedData>();
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (const key of keys.value as unknown[]) {
    const ref = refs.get(String(key));
    if (!ref) throw new CheckpointError(`${file}: legacy storage "${key}" is listed but never used`);
    if (pos + 8 > bytes.length) throw new CheckpointError(`${file}: truncated before storage "${key}"`);
    const n = Number(view.getBigInt64(pos, true));
    pos += 8;
    const size = DTYPE_SIZE[ref.dtype];
    if (n < 0 || pos + n * size > bytes.length) {
      throw new CheckpointError(`${file}: storage "${key}" (${n} elements) runs past the end of the file`);
    }
    storages.set(String(key), typedView(ref.dtype, bytes.slice(pos, pos + n * size)));
    pos += n * size;
  }
  const resolve = (v: unknown): unknown => {
    if (v && typeof v === "object" && (v as PendingTensor).pending === true) {
      const p = v as PendingTensor;
      let s = storages.get(p.storage.key);
      if (!s) throw new CheckpointError(`${file}: storage "${p.storage.key}" has no data`);
      if (p.storage.viewOffset !== undefined) {
        s = s.subarray(p.storage.viewOffset, p.storage.viewOffset + p.storage.viewSize!) as TypedData;
      }
      return viewTensor(file, s, p.storage.dtype, p.offset, p.shape, p.stride);
    }
    if (v instanceof Map) {
      for (const [k, x] of v) v.set(k, resolve(x));
      return v;
    }
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) v[i] = resolve(v[i]);
      return v;
    }
    if (v && typeof v === "object" && "__class__" in (v as object)) {
      const o = v as Record<string, unknown>;
      for (const k of Object.keys(o)) o[k] = resolve(o[k]);
    }
    return v;
  };
  return resolve(main.value);
}

/**
 * Reads a PyTorch checkpoint safely.
 *
 * @example
 * ```ts
 * import { readPth } from "./pth.ts";
 * const { value } = readPth("RETFound_oct_weights.pth");
 * const model = (value as Map<string, unknown>).get("model");
 * ```
 */
export function readPth(input: string | Uint8Array, options: ReadPthOptions = {}): PthContents {
  const src = typeof input === "string" ? fileSource(input) : memorySource(input);
  try {
    const head = src.read(0, Math.min(src.size, 512));
    if (looksLikeZip(head)) return { value: readZipPth(src, options), format: "zip", fileName: src.name };
    if (head[0] === 0x80) return { value: readLegacyPth(src), format: "legacy", fileName: src.name };
    if (head.length >= 262 && new TextDecoder().decode(head.subarray(257, 262)) === "ustar") {
      throw new CheckpointError(
        `${src.name}: this is PyTorch's very old tar-based format (before 0.4); load it in PyTorch and re-save it: ` +
          `torch.save(torch.load(path), new_path)`,
      );
    }
    throw new CheckpointError(`${src.name}: not a PyTorch checkpoint (neither a zip archive nor a pickle)`);
  } catch (err) {
    if (err instanceof CheckpointError) throw err;
    throw new CheckpointError(`${src.name}: malformed checkpoint (${(err as Error).message})`, { cause: err });
  } finally {
    src.close();
  }
}
