/**
 * PyTorch checkpoint (`torch.save`) reader: the zip format of PyTorch ≥ 1.6
 * and the legacy pre-1.6 stream format. Storages are read one record at a
 * time from disk, never the whole archive at once. The pickle runs on a safe
 * VM that allows only the globals a state dict needs.
 * @module
 */
import { CheckpointError } from "../util/errors.ts";
import {
  type PickleLimits,
  PickleTruncatedError,
  plainClass,
  type PyGlobal,
  type PyObject,
  unpickle,
} from "./pickle.ts";
import { type ByteSource, fileSource, memorySource } from "./source.ts";
import {
  type DType,
  DTYPE_SIZE,
  isTensorData,
  lazyTensor,
  numel,
  type TensorData,
  type TypedData,
  typedView,
} from "./tensor.ts";
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

/** A storage as a persistent id names it: a window of `length` elements at `base` of the root storage `key`. */
interface StorageRef {
  storage: true;
  key: string;
  dtype: DType;
  /** Elements of the root storage. */
  numel: number;
  base: number;
  length: number;
}

/** What {@link readPth} returns. */
export interface PthContents {
  /**
   * The unpickled object: dicts are `Map`s, tensors {@link TensorData} whose
   * `data` is read from the file when first accessed (so tensors that are
   * dropped, such as optimizer state, are never read).
   */
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
  /** Limits of the pickle VM (default {@link DEFAULT_PICKLE_LIMITS}). */
  limits?: Partial<PickleLimits>;
}

/**
 * How many bytes more than its storage holds a strided tensor (stride 0,
 * overlapping windows) may take when it is copied out: PyTorch keeps such a
 * tensor as a view; this package materialises tensors, so it bounds the copy,
 * per tensor and (twice this) per file.
 */
export const MAX_VIEW_EXPANSION_BYTES = 64 * 2 ** 20;
const MAX_RANK = 64;

function isContiguous(shape: number[], stride: number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expected) return false;
    expected *= shape[d];
  }
  return true;
}

/** Copies a strided view of `storage` out as C-contiguous data (the bounds were checked when it was read). */
function viewData(storage: TypedData, offset: number, shape: number[], stride: number[]): TypedData {
  const n = numel(shape);
  if (n === 0) return storage.subarray(0, 0) as TypedData;
  if (isContiguous(shape, stride)) {
    return (offset === 0 && n === storage.length ? storage : storage.subarray(offset, offset + n)) as TypedData;
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
  return out;
}

function swapBytes(bytes: Uint8Array, size: number): void {
  if (size === 1) return;
  for (let i = 0; i + size <= bytes.length; i += size) bytes.subarray(i, i + size).reverse();
}

/** A short description of an untrusted value for an error message (never walks it: it may be a huge shared DAG). */
function describe(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === "number" || typeof v === "bigint" || typeof v === "boolean") return String(v);
  if (v === null || v === undefined) return "None";
  if (Array.isArray(v)) return `a tuple/list of ${v.length} items`;
  if (v instanceof Map) return `a dict of ${v.size} items`;
  return "an object";
}

function asIntList(file: string, v: unknown, what: string): number[] {
  if (!Array.isArray(v) || v.length > MAX_RANK || !v.every((x) => Number.isSafeInteger(x) && x >= 0)) {
    throw new CheckpointError(
      `${file}: tensor ${what} is not a tuple of at most ${MAX_RANK} non-negative ints (${describe(v)})`,
    );
  }
  return v as number[];
}

/** Reads a file's storages on demand, once each; checks that every reference to a storage agrees. */
class StorageTable {
  readonly #declared = new Map<string, { dtype: DType; numel: number }>();
  readonly #loaded = new Map<string, TypedData>();
  #expansion = 0;

  /**
   * @param file names the file in errors
   * @param storageTypes the allowed storage-type globals
   * @param checkRoot checks a declared storage against the file before anything is read (throws if it cannot be)
   * @param loadRoot reads a root storage's elements
   */
  constructor(
    readonly file: string,
    readonly storageTypes: Set<PyGlobal>,
    readonly checkRoot: (key: string, dtype: DType, numel: number) => void,
    readonly loadRoot: (key: string, dtype: DType, numel: number) => TypedData,
  ) {}

  /** A persistent id → a storage reference, checked against the file and earlier references. */
  ref(pid: unknown): StorageRef {
    const file = this.file;
    if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5) {
      throw new CheckpointError(`${file}: unknown persistent id (only PyTorch storages are allowed)`);
    }
    const [, cls, key, , n, viewMeta] = pid as [string, PyGlobal, unknown, unknown, unknown, unknown];
    if (!this.storageTypes.has(cls)) throw new CheckpointError(`${file}: persistent id names an unknown storage type`);
    const type = cls.call([]) as StorageType;
    if (typeof key !== "string" && typeof key !== "number") {
      throw new CheckpointError(`${file}: storage key is not a string (${describe(key)})`);
    }
    if (!Number.isSafeInteger(n) || (n as number) < 0) {
      throw new CheckpointError(`${file}: storage "${key}" has invalid size ${describe(n)}`);
    }
    const ref: StorageRef = {
      storage: true,
      key: String(key),
      dtype: type.storageDtype,
      numel: n as number,
      base: 0,
      length: n as number,
    };
    const prev = this.#declared.get(ref.key);
    if (prev && (prev.dtype !== ref.dtype || prev.numel !== ref.numel)) {
      throw new CheckpointError(
        `${file}: storage "${ref.key}" is declared both as ${prev.numel} ${prev.dtype} and as ${ref.numel} ` +
          `${ref.dtype} elements; PyTorch never saves one storage as two types`,
      );
    }
    if (!prev) this.checkRoot(ref.key, ref.dtype, ref.numel);
    this.#declared.set(ref.key, { dtype: ref.dtype, numel: ref.numel });
    if (viewMeta !== null && viewMeta !== undefined) {
      // Legacy storage views: (view key, offset, size) inside the root storage.
      if (!Array.isArray(viewMeta) || viewMeta.length !== 3) {
        throw new CheckpointError(`${file}: storage "${ref.key}" has malformed view metadata`);
      }
      const [, off, len] = viewMeta;
      if (!Number.isSafeInteger(off) || !Number.isSafeInteger(len) || off < 0 || len < 0 || off + len > ref.numel) {
        throw new CheckpointError(
          `${file}: storage view [${describe(off)}, +${
            describe(len)
          }] lies outside its ${ref.numel}-element storage "${ref.key}"`,
        );
      }
      ref.base = off;
      ref.length = len;
    }
    return ref;
  }

  /** The elements of a storage reference (its root storage is read on first use). */
  data(ref: StorageRef): TypedData {
    let root = this.#loaded.get(ref.key);
    if (!root) {
      root = this.loadRoot(ref.key, ref.dtype, ref.numel);
      if (root.length !== ref.numel) {
        throw new CheckpointError(`${this.file}: storage "${ref.key}" has ${root.length} elements, not ${ref.numel}`);
      }
      this.#loaded.set(ref.key, root);
    }
    return ref.base === 0 && ref.length === root.length
      ? root
      : root.subarray(ref.base, ref.base + ref.length) as TypedData;
  }

  /** `_rebuild_tensor(_v2)`: checks the view against its storage now; reads nothing until `.data` is used. */
  tensor(args: unknown[]): TensorData {
    const file = this.file;
    const [storage, offset, size, stride] = args as [StorageRef, unknown, unknown, unknown];
    if (!storage || typeof storage !== "object" || (storage as StorageRef).storage !== true) {
      throw new CheckpointError(`${file}: _rebuild_tensor without a storage`);
    }
    const shape = asIntList(file, size, "size");
    const strides = asIntList(file, stride, "stride");
    if (strides.length !== shape.length) {
      throw new CheckpointError(`${file}: tensor size [${shape}] and stride [${strides}] differ in length`);
    }
    if (!Number.isSafeInteger(offset) || (offset as number) < 0) {
      throw new CheckpointError(`${file}: tensor has invalid storage offset ${describe(offset)}`);
    }
    const n = numel(shape);
    const where = `${file}: tensor of size [${shape}], stride [${strides}] at storage offset ${offset}`;
    if (n > 0) {
      let maxIndex = offset as number;
      for (let d = 0; d < shape.length; d++) maxIndex += (shape[d] - 1) * strides[d];
      if (!(maxIndex < storage.length)) {
        throw new CheckpointError(`${where} reaches element ${maxIndex} of a ${storage.length}-element storage`);
      }
      if (!isContiguous(shape, strides) && n > storage.length) {
        const extra = (n - storage.length) * DTYPE_SIZE[storage.dtype];
        this.#expansion += extra;
        if (extra > MAX_VIEW_EXPANSION_BYTES || this.#expansion > 2 * MAX_VIEW_EXPANSION_BYTES) {
          throw new CheckpointError(
            `${where} repeats a ${storage.length}-element storage as ${n} elements (stride 0 or overlapping ` +
              `windows). PyTorch keeps such a tensor as a view; this package copies tensors out and allows at most ` +
              `${MAX_VIEW_EXPANSION_BYTES / 2 ** 20} MiB more than the storage per tensor ` +
              `(${(2 * MAX_VIEW_EXPANSION_BYTES) / 2 ** 20} MiB per file). Save it with .contiguous() if it is real`,
          );
        }
      }
    }
    return lazyTensor(storage.dtype, shape, () => viewData(this.data(storage), offset as number, shape, strides), file);
  }
}

/** Reads a numpy scalar's raw bytes. */
function numpyScalar(file: string, dtype: unknown, raw: unknown): number | bigint | boolean {
  const d = dtype as PyObject;
  if (!(raw instanceof Uint8Array) || !d || d.__class__ !== "numpy.dtype") {
    throw new CheckpointError(`${file}: malformed numpy scalar`);
  }
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const le = d.byteorder !== ">";
  const need = Number(String(d.descr).slice(1)) || 0;
  if (raw.length !== need) {
    throw new CheckpointError(`${file}: numpy scalar of type ${d.descr} has ${raw.length} bytes`);
  }
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
}

const NUMPY_ARRAY_TYPES: Record<string, [number, new (b: ArrayBuffer, o: number, n: number) => TypedData]> = {
  f8: [8, Float64Array],
  f4: [4, Float32Array],
  f2: [2, Uint16Array],
  i8: [8, BigInt64Array],
  i4: [4, Int32Array],
  i2: [2, Int16Array],
  i1: [1, Int8Array],
  u1: [1, Uint8Array],
  b1: [1, Uint8Array],
};

/**
 * A numpy array pickled inside a checkpoint (`numpy.core.multiarray._reconstruct` + BUILD): loaded as a plain
 * `{__class__: "numpy.ndarray", descr, shape, data}` object, not a tensor (PyTorch would not load it into a model).
 */
function numpyArrayGlobal(file: string, ndarray: PyGlobal): PyGlobal {
  return {
    call: ([cls]) => {
      if (cls !== ndarray) throw new CheckpointError(`${file}: numpy _reconstruct of a type other than numpy.ndarray`);
      return { __class__: "numpy.ndarray", descr: "", shape: [], data: new Uint8Array(0) } as PyObject;
    },
    build(obj, state) {
      const [, shape, dtype, fortran, raw] = Array.isArray(state) ? state : [];
      const d = dtype as PyObject;
      const what = `${file}: a numpy array inside the checkpoint`;
      if (!d || d.__class__ !== "numpy.dtype") throw new CheckpointError(`${what} has a malformed dtype`);
      const kind = NUMPY_ARRAY_TYPES[String(d.descr)];
      if (!kind) {
        throw new CheckpointError(
          `${what} has dtype "${d.descr}"${
            String(d.descr).startsWith("O") ? " (Python objects)" : ""
          }, which is not loaded (only numeric arrays are; object arrays would need ` +
            `code to run). Save plain tensors or numbers instead`,
        );
      }
      if (fortran === true) throw new CheckpointError(`${what} is in Fortran order, which is not supported`);
      if (!Array.isArray(shape) || !shape.every((x) => Number.isSafeInteger(x) && x >= 0)) {
        throw new CheckpointError(`${what} has an invalid shape`);
      }
      if (!(raw instanceof Uint8Array) || raw.length !== numel(shape) * kind[0]) {
        throw new CheckpointError(`${what} of shape [${shape}] and dtype ${d.descr} does not hold its data`);
      }
      const bytes = raw.slice();
      if (d.byteorder === ">") swapBytes(bytes, kind[0]);
      const o = obj as PyObject;
      o.descr = `${kind[0] === 1 ? "|" : "<"}${d.descr}`;
      o.shape = [...shape];
      o.data = new kind[1](bytes.buffer, 0, bytes.length / kind[0]);
      return o;
    },
  };
}

/**
 * The allow-list: exactly the globals a PyTorch state dict (plus the harmless
 * extras found in real checkpoints: argparse.Namespace, numpy scalars and
 * numeric arrays) needs, with numpy ≥ 2's `numpy._core` spellings beside
 * numpy 1's `numpy.core`.
 */
function torchGlobals(file: string, table: () => StorageTable, storageTypes: Set<PyGlobal>): Map<string, PyGlobal> {
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
  const rebuild = (args: unknown[]): unknown => table().tensor(args);
  g.set("torch._utils._rebuild_tensor_v2", { call: rebuild });
  g.set("torch._utils._rebuild_tensor", { call: rebuild });
  const parameter = (args: unknown[]) => {
    if (!isTensorData(args[0])) throw new CheckpointError(`${file}: _rebuild_parameter of something not a tensor`);
    return args[0];
  };
  g.set("torch._utils._rebuild_parameter", { call: parameter });
  g.set("torch._utils._rebuild_parameter_with_state", { call: parameter });
  for (const [qualname, dtype] of Object.entries(STORAGE_DTYPES)) {
    const t: PyGlobal = { call: () => ({ storageDtype: dtype, qualname }) as StorageType };
    storageTypes.add(t);
    g.set(qualname, t);
  }
  for (
    const name of ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"]
  ) {
    g.set(`torch.${name}`, { call: () => `torch.${name}` });
  }
  g.set("torch.Size", { call: (args) => [...(Array.isArray(args[0]) ? args[0] : [])] });
  g.set("torch.device", {
    call: (args) => {
      if (!args.every((a) => typeof a === "string" || typeof a === "number")) {
        throw new CheckpointError(`${file}: torch.device of something not a string or index`);
      }
      return args.join(":");
    },
  });
  g.set("argparse.Namespace", plainClass("argparse.Namespace"));
  // Protocol-2 pickles name builtins "__builtin__" (Python 2 spelling).
  for (const mod of ["builtins", "__builtin__"]) {
    g.set(`${mod}.set`, { call: (args) => new Set(Array.isArray(args[0]) ? args[0] : []) });
    g.set(`${mod}.frozenset`, { call: (args) => new Set(Array.isArray(args[0]) ? args[0] : []) });
  }
  g.set("_codecs.encode", {
    call: ([text, encoding]) => {
      if (
        typeof text !== "string" || (encoding !== undefined && typeof encoding !== "string") ||
        !["latin1", "latin-1", "iso-8859-1"].includes((encoding ?? "latin1").toLowerCase())
      ) {
        throw new CheckpointError(`${file}: _codecs.encode only supports latin1 text`);
      }
      return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
    },
  });
  g.set("numpy.dtype", {
    call: ([descr]) => {
      if (typeof descr !== "string") throw new CheckpointError(`${file}: numpy.dtype of ${describe(descr)}`);
      return { __class__: "numpy.dtype", descr, byteorder: "<" } as PyObject;
    },
    build: (obj, state) => {
      if (Array.isArray(state) && typeof state[1] === "string") (obj as PyObject).byteorder = state[1];
      return obj;
    },
  });
  const scalar: PyGlobal = { call: ([dtype, raw]) => numpyScalar(file, dtype, raw) };
  const ndarray: PyGlobal = {
    call: () => {
      throw new CheckpointError(`${file}: numpy.ndarray called directly; only _reconstruct is supported`);
    },
  };
  const reconstruct = numpyArrayGlobal(file, ndarray);
  g.set("numpy.ndarray", ndarray);
  for (const core of ["numpy.core", "numpy._core"]) {
    g.set(`${core}.multiarray.scalar`, scalar);
    g.set(`${core}.multiarray._reconstruct`, reconstruct);
  }
  return g;
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
  const storageTypes = new Set<PyGlobal>();
  const table = new StorageTable(file, storageTypes, (key, dtype, n) => {
    const name = `${prefix}data/${key}`;
    const entry = zip.entries.get(name);
    if (!entry) throw new CheckpointError(`${file}: storage record "${name}" is missing`);
    if (entry.size !== n * DTYPE_SIZE[dtype]) {
      throw new CheckpointError(
        `${file}: storage record "${name}" has ${entry.size} bytes, but the pickle declares ${n} ${dtype} ` +
          `elements (${n * DTYPE_SIZE[dtype]} bytes)`,
      );
    }
  }, (key, dtype) => {
    try {
      const bytes = zip.read(`${prefix}data/${key}`, { verifyCrc: options.verifyCrc });
      if (bigEndian) swapBytes(bytes, DTYPE_SIZE[dtype]);
      return typedView(dtype, bytes);
    } finally {
      src.close(); // lazy reads reopen the file; no handle is kept between them
    }
  });
  const bytes = zip.read(pkl, { verifyCrc: options.verifyCrc });
  return unpickle(bytes, {
    fileName: file,
    globals: torchGlobals(file, () => table, storageTypes),
    persistentLoad: (pid) => table.ref(pid),
    limits: options.limits,
    isLeaf: isTensorData,
  }).value;
}

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

function readLegacyPth(src: ByteSource, options: ReadPthOptions): unknown {
  const file = src.name;
  const storageTypes = new Set<PyGlobal>();
  const offsets = new Map<string, number>();
  const table = new StorageTable(file, storageTypes, (key, dtype, n) => {
    if (n * DTYPE_SIZE[dtype] > src.size) {
      throw new CheckpointError(
        `${file}: storage "${key}" declares ${n} ${dtype} elements, more than the ${src.size}-byte file holds`,
      );
    }
  }, (key, dtype, n) => {
    const at = offsets.get(key);
    if (at === undefined) throw new CheckpointError(`${file}: storage "${key}" has no data in the file`);
    try {
      return typedView(dtype, src.read(at, n * DTYPE_SIZE[dtype]));
    } finally {
      src.close();
    }
  });
  // The five pickles come first and are small next to the storages after them: read a prefix, longer if needed.
  let length = Math.min(src.size, 1 << 20);
  for (;;) {
    const bytes = src.read(0, length);
    try {
      return parseLegacy(bytes, file, table, storageTypes, offsets, src, options);
    } catch (err) {
      if (!(err instanceof PickleTruncatedError) || length === src.size) throw err;
      length = Math.min(src.size, length * 4);
    }
  }
}

function parseLegacy(
  bytes: Uint8Array,
  file: string,
  table: StorageTable,
  storageTypes: Set<PyGlobal>,
  offsets: Map<string, number>,
  src: ByteSource,
  options: ReadPthOptions,
): unknown {
  const noGlobals = { fileName: file, globals: new Map<string, PyGlobal>(), limits: options.limits };
  const magic = unpickle(bytes, noGlobals);
  if (typeof magic.value !== "bigint" || magic.value !== LEGACY_MAGIC) {
    throw new CheckpointError(`${file}: starts with a pickle but is not a PyTorch checkpoint (no torch magic number)`);
  }
  const proto = unpickle(bytes, { ...noGlobals, offset: magic.end });
  if (proto.value !== 1001) {
    throw new CheckpointError(`${file}: unsupported legacy PyTorch protocol ${describe(proto.value)}`);
  }
  const sysInfo = unpickle(bytes, { ...noGlobals, offset: proto.end });
  const info = sysInfo.value as Map<string, unknown>;
  if (info instanceof Map && info.get("little_endian") === false) {
    throw new CheckpointError(`${file}: big-endian legacy checkpoints are not supported`);
  }
  const declared = new Map<string, StorageRef>();
  const main = unpickle(bytes, {
    fileName: file,
    offset: sysInfo.end,
    globals: torchGlobals(file, () => table, storageTypes),
    persistentLoad: (pid) => {
      const ref = table.ref(pid);
      declared.set(ref.key, ref);
      return ref;
    },
    limits: options.limits,
    isLeaf: isTensorData,
  });
  const keys = unpickle(bytes, { ...noGlobals, offset: main.end });
  if (!Array.isArray(keys.value)) throw new CheckpointError(`${file}: legacy storage key list is missing`);
  // The storages follow, each as an int64 element count and its elements: note where each one is.
  let pos = keys.end;
  offsets.clear();
  for (const key of keys.value as unknown[]) {
    if (typeof key !== "string" && typeof key !== "number") {
      throw new CheckpointError(`${file}: legacy storage key list holds ${describe(key)}`);
    }
    const ref = declared.get(String(key));
    if (!ref) throw new CheckpointError(`${file}: legacy storage "${key}" is listed but never used`);
    if (offsets.has(ref.key)) throw new CheckpointError(`${file}: legacy storage "${key}" is listed twice`);
    if (pos + 8 > src.size) throw new CheckpointError(`${file}: truncated before storage "${key}"`);
    const head = src.read(pos, 8);
    const n = Number(new DataView(head.buffer, head.byteOffset, 8).getBigInt64(0, true));
    pos += 8;
    if (n !== ref.numel) {
      throw new CheckpointError(`${file}: storage "${key}" holds ${n} elements, the pickle declares ${ref.numel}`);
    }
    const size = DTYPE_SIZE[ref.dtype];
    if (pos + n * size > src.size) {
      throw new CheckpointError(`${file}: storage "${key}" (${n} elements) runs past the end of the file`);
    }
    offsets.set(ref.key, pos);
    pos += n * size;
  }
  for (const key of declared.keys()) {
    if (!offsets.has(key)) throw new CheckpointError(`${file}: storage "${key}" is used but has no data`);
  }
  return main.value;
}

/**
 * Reads a PyTorch checkpoint safely.
 *
 * @param input a path (read through a bounded file source) or the checkpoint's bytes: a PyTorch zip checkpoint
 *  (`torch.save` since 1.6) or a legacy one
 * @param options limits and which pickle globals to allow, see {@link ReadPthOptions}
 * @returns the unpickled value (tensors as {@link TensorData}, dicts as Maps) and the archive's details
 * @throws {CheckpointError} when the file is missing, truncated, malformed, over a limit or asks for a global
 *  outside the allow-list (nothing in it is executed); its subclasses name the kind
 * @example
 * ```ts ignore
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
    if (head[0] === 0x80) return { value: readLegacyPth(src, options), format: "legacy", fileName: src.name };
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
