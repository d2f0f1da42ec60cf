/**
 * A small pickle assembler for tests: write opcodes by name and get bytes,
 * plus a PyTorch zip around a pickle. Used to craft hostile files (shared
 * structures, BUILD on lists, stride-0 tensors) and by the resource fuzzer.
 */
import { buildZip, type ZipInput } from "../../src/io/mod.ts";
import { concatBytes } from "../../src/util/bytes.ts";

const enc = new TextEncoder();

/** Appends pickle opcodes; each method returns `this`. */
export class PickleWriter {
  out: number[] = [0x80, 0x02];
  op(...b: number[]): this {
    for (const x of b) this.out.push(x & 0xff);
    return this;
  }
  u32(n: number): this {
    return this.op(n, n >>> 8, n >>> 16, n >>> 24);
  }
  mark = () => this.op(0x28);
  none = () => this.op(0x4e);
  int(n: number): this {
    if (n >= 0 && n < 256) return this.op(0x4b, n);
    if (n >= -(2 ** 31) && n < 2 ** 31) return this.op(0x4a).u32(n >>> 0);
    // LONG1, little-endian two's complement
    const bytes: number[] = [];
    let v = BigInt(n);
    for (let i = 0; i < 8; i++) {
      bytes.push(Number(v & 0xffn));
      v >>= 8n;
    }
    return this.op(0x8a, 8, ...bytes);
  }
  str(s: string): this {
    const u = enc.encode(s);
    return u.length < 256 ? this.op(0x8c, u.length, ...u) : this.op(0x58).u32(u.length).op(...u);
  }
  global(module: string, name: string): this {
    return this.op(0x63, ...enc.encode(`${module}\n${name}\n`));
  }
  put(i: number): this {
    return i < 256 ? this.op(0x71, i) : this.op(0x72).u32(i);
  }
  get(i: number): this {
    return i < 256 ? this.op(0x68, i) : this.op(0x6a).u32(i);
  }
  tuple = () => this.op(0x74);
  tuple1 = () => this.op(0x85);
  tuple2 = () => this.op(0x86);
  emptyTuple = () => this.op(0x29);
  emptyList = () => this.op(0x5d);
  emptyDict = () => this.op(0x7d);
  append = () => this.op(0x61);
  appends = () => this.op(0x65);
  setitem = () => this.op(0x73);
  setitems = () => this.op(0x75);
  reduce = () => this.op(0x52);
  build = () => this.op(0x62);
  pop = () => this.op(0x30);
  dup = () => this.op(0x32);
  binpersid = () => this.op(0x51);
  /** `_rebuild_tensor_v2(storage(key, numel), offset, size, stride, False, OrderedDict())`. */
  tensor(key: string, numel: number, size: number[], stride: number[], offset = 0, storage = "FloatStorage"): this {
    this.global("torch._utils", "_rebuild_tensor_v2").mark();
    this.mark().str("storage").global("torch", storage).str(key).str("cpu").int(numel).tuple().binpersid();
    this.int(offset);
    this.mark();
    for (const d of size) this.int(d);
    this.tuple().mark();
    for (const s of stride) this.int(s);
    this.tuple().op(0x89).global("collections", "OrderedDict").emptyTuple().reduce();
    return this.tuple().reduce();
  }
  stop(): Uint8Array {
    return Uint8Array.from([...this.out, 0x2e]);
  }
}

/** A PyTorch-layout zip (`archive/data.pkl`, `archive/data/<key>` records) around a pickle. */
export function torchZip(pickle: Uint8Array, storages: Record<string, Uint8Array> = {}): Uint8Array {
  const members: ZipInput[] = [
    { name: "archive/data.pkl", chunks: [pickle] },
    { name: "archive/byteorder", chunks: [enc.encode("little")] },
    ...Object.entries(storages).map(([k, v]) => ({ name: `archive/data/${k}`, chunks: [v] })),
    { name: "archive/version", chunks: [enc.encode("3\n")] },
  ];
  return concatBytes(buildZip(members));
}
