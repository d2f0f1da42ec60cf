/**
 * Writes PyTorch checkpoints (zip format, pickle protocol 2) that
 * `torch.load(path, weights_only=True)` accepts: dicts, lists, strings,
 * numbers and tensors of any dtype.
 * @module
 */
import { writeChunksAtomic } from "../util/fs.ts";
import { CheckpointError } from "../util/errors.ts";
import { concatBytes } from "../util/bytes.ts";
import { type DType, numel, tensorBytes, type TensorData } from "./tensor.ts";
import { buildZip, type ZipInput } from "./zip.ts";

const STORAGE_NAMES: Record<DType, string> = {
  F32: "FloatStorage",
  F64: "DoubleStorage",
  F16: "HalfStorage",
  BF16: "BFloat16Storage",
  I64: "LongStorage",
  I32: "IntStorage",
  I16: "ShortStorage",
  I8: "CharStorage",
  U8: "ByteStorage",
  BOOL: "BoolStorage",
};

/** Values {@link writePth} can store. Maps become `OrderedDict`s, plain objects `dict`s. */
export type PthValue =
  | null
  | boolean
  | number
  | string
  | TensorData
  | PthValue[]
  | Map<string, PthValue>
  | { [key: string]: PthValue };

function isTensor(v: unknown): v is TensorData {
  return !!v && typeof v === "object" && "dtype" in v && "shape" in v && "data" in v &&
    ArrayBuffer.isView((v as TensorData).data);
}

class Pickler {
  bytes: number[] = [];
  storages: TensorData[] = [];
  #enc = new TextEncoder();

  op(...b: number[]) {
    for (const x of b) this.bytes.push(x);
  }
  global(module: string, name: string) {
    this.op(0x63, ...this.#enc.encode(`${module}\n${name}\n`));
  }
  str(s: string) {
    const u = this.#enc.encode(s);
    this.op(0x58, u.length & 0xff, (u.length >>> 8) & 0xff, (u.length >>> 16) & 0xff, (u.length >>> 24) & 0xff, ...u);
  }
  int(n: number) {
    if (n >= 0 && n < 256) this.op(0x4b, n);
    else if (n >= -0x80000000 && n <= 0x7fffffff) {
      this.op(0x4a, n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff);
    } else {
      let v = BigInt(n);
      const out: number[] = [];
      for (let i = 0; i < 8; i++) {
        out.push(Number(v & 0xffn));
        v >>= 8n;
      }
      this.op(0x8a, 8, ...out);
    }
  }
  float(x: number) {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, x, false);
    this.op(0x47, ...b);
  }
  tuple(items: (() => void)[]) {
    if (items.length === 0) return this.op(0x29);
    this.op(0x28);
    for (const it of items) it();
    this.op(0x74);
  }
  orderedDictEmpty() {
    this.global("collections", "OrderedDict");
    this.op(0x29, 0x52);
  }
  value(v: PthValue) {
    if (v === null) return this.op(0x4e);
    if (v === true) return this.op(0x88);
    if (v === false) return this.op(0x89);
    if (typeof v === "number") return Number.isInteger(v) ? this.int(v) : this.float(v);
    if (typeof v === "string") return this.str(v);
    if (isTensor(v)) return this.tensor(v);
    if (Array.isArray(v)) {
      this.op(0x5d);
      if (v.length) {
        this.op(0x28);
        for (const x of v) this.value(x);
        this.op(0x65);
      }
      return;
    }
    const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
    if (v instanceof Map) this.orderedDictEmpty();
    else this.op(0x7d);
    if (entries.length) {
      this.op(0x28);
      for (const [k, x] of entries) {
        if (typeof k !== "string") throw new CheckpointError(`writePth: dict keys must be strings, got ${typeof k}`);
        this.str(k);
        this.value(x);
      }
      this.op(0x75);
    }
  }
  tensor(t: TensorData) {
    if (t.data.length !== numel(t.shape)) {
      throw new CheckpointError(`writePth: tensor data (${t.data.length}) does not match shape [${t.shape}]`);
    }
    const key = String(this.storages.length);
    this.storages.push(t);
    const stride: number[] = new Array(t.shape.length);
    let s = 1;
    for (let d = t.shape.length - 1; d >= 0; d--) {
      stride[d] = s;
      s *= t.shape[d];
    }
    this.global("torch._utils", "_rebuild_tensor_v2");
    this.op(0x28); // MARK: args tuple
    this.tuple([
      () => this.str("storage"),
      () => this.global("torch", STORAGE_NAMES[t.dtype]),
      () => this.str(key),
      () => this.str("cpu"),
      () => this.int(t.data.length),
    ]);
    this.op(0x51); // BINPERSID
    this.int(0);
    this.tuple(t.shape.map((d) => () => this.int(d)));
    this.tuple(stride.map((d) => () => this.int(d)));
    this.op(0x89); // requires_grad False
    this.orderedDictEmpty(); // backward hooks
    this.op(0x74, 0x52); // TUPLE, REDUCE
  }
}

/** Options of {@link writePth}. */
export interface WritePthOptions {
  /**
   * Attached to the top-level OrderedDict as its `_metadata` attribute (BUILD), where PyTorch keeps a state dict's
   * metadata; `torch.load(weights_only=True)` restores it and `load_state_dict` ignores keys that name no module.
   */
  stateDictMetadata?: Map<string, PthValue>;
  /** Extra records stored in the archive beside `data.pkl` (`<archive>/<name>`); `torch.load` ignores them. */
  extraRecords?: { name: string; bytes: Uint8Array }[];
}

/** Serialises `value` into the members of a PyTorch zip checkpoint. */
export function pthMembers(value: PthValue, archiveName = "archive", options: WritePthOptions = {}): ZipInput[] {
  const p = new Pickler();
  p.op(0x80, 0x02);
  p.value(value);
  if (options.stateDictMetadata) {
    if (!(value instanceof Map)) {
      throw new CheckpointError("writePth: stateDictMetadata needs a Map (OrderedDict) value");
    }
    p.value({ _metadata: options.stateDictMetadata });
    p.op(0x62); // BUILD: OrderedDict.__dict__.update({"_metadata": …})
  }
  p.op(0x2e);
  const enc = new TextEncoder();
  return [
    { name: `${archiveName}/data.pkl`, chunks: [new Uint8Array(p.bytes)] },
    { name: `${archiveName}/byteorder`, chunks: [enc.encode("little")] },
    ...p.storages.map((t, i) => ({ name: `${archiveName}/data/${i}`, chunks: [tensorBytes(t)] })),
    { name: `${archiveName}/version`, chunks: [enc.encode("3\n")] },
    ...(options.extraRecords ?? []).map((r) => ({ name: `${archiveName}/${r.name}`, chunks: [r.bytes] })),
  ];
}

/**
 * The bytes of a PyTorch checkpoint holding `value`.
 * @param value what to save: a Map, array, number, string, boolean, null or {@link TensorData}
 * @returns the checkpoint's bytes (a zip archive `torch.load` reads)
 * @example
 * ```ts
 * import { encodePth } from "./pth_writer.ts";
 * import { readPth } from "./pth.ts";
 * import { float32Tensor } from "./tensor.ts";
 * const bytes = encodePth(new Map([["pos_embed", float32Tensor(new Float32Array([1, 2, 3]), [1, 3])]]));
 * const back = readPth(bytes).value as Map<string, { shape: number[]; data: Float32Array }>;
 * if (back.get("pos_embed")!.data[2] !== 3) throw new Error("round trip");
 * ```
 */
export function encodePth(value: PthValue): Uint8Array {
  return concatBytes(buildZip(pthMembers(value)));
}

/**
 * Writes `value` (typically a state dict: a Map of name → tensor) to `path`
 * atomically, without copying tensor data.
 *
 * @param path the file to write (replaced atomically: a temporary file, then a rename)
 * @param value what to save, as for {@link encodePth}
 * @param options e.g. the state dict's `_metadata`, see {@link WritePthOptions}
 * @returns when the file is written
 * @example
 * ```ts ignore
 * import { writePth } from "./pth_writer.ts";
 * await writePth("backbone.pth", new Map([["cls_token", { dtype: "F32", shape: [1, 1, 2], data: new Float32Array(2) }]]));
 * ```
 */
export async function writePth(path: string, value: PthValue, options: WritePthOptions = {}): Promise<void> {
  const stem = path.split("/").pop()!.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_.-]/g, "_") || "archive";
  await writeChunksAtomic(path, buildZip(pthMembers(value, stem, options)));
}
