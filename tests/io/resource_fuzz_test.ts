/**
 * Resource fuzzing (issue 17 item 7): thousands of generated PyTorch checkpoints (zip and legacy) whose pickles come
 * from a grammar of the constructs hostile files use (shared memo references, tuple DAGs, cycles, BUILD on anything,
 * huge lengths and sizes, stride-0 and out-of-range tensors, storages of the wrong size or type, numpy reconstructs,
 * allowed and refused globals) and whose archives are mutated structurally (duplicate names, overlapping records,
 * lying sizes, deflate bombs, extreme directory fields, truncation), not only by byte flips. Every file is read in
 * full (every tensor's data is touched) and must load or fail with a CheckpointError within a time bound, and the
 * process's peak resident memory (VmHWM) must stay under a bound after every run.
 */
import { deflateRawSync } from "node:zlib";
import { assert } from "../_assert.ts";
import { CheckpointError } from "../../src/util/errors.ts";
import { buildZip, isTensorData, readPth, type ZipInput } from "../../src/io/mod.ts";
import { concatBytes } from "../../src/util/bytes.ts";
import { Rng } from "../../src/util/rng.ts";
import { PickleWriter } from "./_pickle_gen.ts";

const TIME_BOUND_MS = 3000;
const MEMORY_BOUND_MIB = 900;
const CASES = 3000;

const peakMiB = () => Number(/VmHWM:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status"))![1]) / 1024;
/**
 * Test files share one process, so the peak so far may be another file's (the WebGPU tests hold 128 MiB tensors):
 * each test starts its measurement from its own baseline (writing 5 to clear_refs resets VmHWM, Linux ≥ 4.0).
 */
const resetPeak = () => Deno.writeTextFileSync("/proc/self/clear_refs", "5");

const EXTREME_INTS = [0, 1, 2, 3, 7, 255, 256, 65535, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 40, 2 ** 53 - 1, -1, -(2 ** 31)];
const DIMS = [0, 1, 2, 3, 4, 5, 16, 1000, 2 ** 16, 2 ** 24, 2 ** 27, 2 ** 31 - 1, 2 ** 40];
const STORAGES: [string, number][] = [
  ["FloatStorage", 4],
  ["HalfStorage", 2],
  ["LongStorage", 8],
  ["ByteStorage", 1],
  ["DoubleStorage", 8],
  ["BoolStorage", 1],
];

/** One generated checkpoint's pickle, plus the storages it declared (key → element count and size). */
class Generator {
  p = new PickleWriter();
  memo = 0;
  storages = new Map<string, { numel: number; itemsize: number }>();
  constructor(readonly rng: Rng) {}

  pick<T>(xs: readonly T[]): T {
    return xs[this.rng.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.rng.uniform() < p;
  }
  /** Memoizes the top of the stack, returning its memo index. */
  remember(): number {
    this.p.put(this.memo);
    return this.memo++;
  }

  value(depth: number): void {
    const p = this.p;
    const r = this.rng;
    // Mostly the constructs of real checkpoints; one value in six from the hostile productions (12 and up).
    const k = depth > 4 ? r.int(4) : this.chance(1 / 6) ? 12 + r.int(10) : r.int(12);
    switch (k) {
      case 0:
        p.int(this.chance(0.5) ? r.int(300) : this.pick(EXTREME_INTS));
        return;
      case 1:
        p.str("k".repeat(r.int(40)));
        return;
      case 2:
        p.none();
        return;
      case 3:
        if (this.memo > 0) p.get(r.int(this.memo)); // a shared reference
        else p.int(1);
        return;
      case 4:
      case 5: { // list
        p.emptyList().mark();
        for (let i = 0, n = r.int(6); i < n; i++) this.value(depth + 1);
        p.appends();
        if (this.chance(0.3)) this.remember();
        return;
      }
      case 6: { // tuple
        p.mark();
        for (let i = 0, n = r.int(5); i < n; i++) this.value(depth + 1);
        p.tuple();
        if (this.chance(0.3)) this.remember();
        return;
      }
      case 7:
      case 8: { // dict, sometimes with tuple keys
        p.emptyDict().mark();
        for (let i = 0, n = r.int(5); i < n; i++) {
          if (this.chance(0.2)) this.value(depth + 1); // any key: tuples, lists, dicts
          else p.str(`key${r.int(50)}`);
          this.value(depth + 1);
        }
        p.setitems();
        if (this.chance(0.3)) this.remember();
        return;
      }
      case 9:
      case 10:
      case 11:
        this.tensor();
        return;
      case 12: { // a tuple DAG, 2^levels leaves
        const levels = this.pick([3, 10, 30, 60]);
        p.emptyTuple();
        let at = this.remember();
        p.pop();
        for (let i = 0; i < levels; i++) {
          p.get(at).get(at).tuple2();
          at = this.remember();
          p.pop();
        }
        p.get(at);
        return;
      }
      case 13: { // one memoized value referenced many times
        this.value(depth + 1);
        const at = this.remember();
        p.pop().emptyList().mark();
        for (let i = 0, n = this.pick([2, 100, 5000]); i < n; i++) p.get(at);
        p.appends();
        return;
      }
      case 14: { // allowed globals, with arguments from the grammar
        const g = this.pick([
          ["torch", "Size"],
          ["collections", "OrderedDict"],
          ["builtins", "set"],
          ["_codecs", "encode"],
          ["torch", "device"],
        ]);
        p.global(g[0], g[1]).mark();
        for (let i = 0, n = r.int(3); i < n; i++) this.value(depth + 1);
        p.tuple().reduce();
        return;
      }
      case 15: { // BUILD on whatever is there
        this.value(depth + 1);
        this.value(depth + 1);
        p.build();
        return;
      }
      case 16: // Namespace with state
        p.global("argparse", "Namespace").emptyTuple().reduce();
        this.value(depth + 1);
        p.build();
        return;
      case 17: { // a cycle
        p.emptyList();
        const at = this.remember();
        p.get(at).append();
        return;
      }
      case 18: { // big integers
        const n = this.pick([8, 200, 5000]);
        p.op(0x8b).u32(n).op(...Array.from({ length: n }, () => r.int(256)));
        return;
      }
      case 19: { // numpy array reconstruct with generated state
        p.global(this.pick(["numpy.core.multiarray", "numpy._core.multiarray"]), "_reconstruct").mark()
          .global("numpy", "ndarray").int(0).tuple1().op(0x43, 1, 0x62).tuple().reduce();
        p.mark().int(1).mark().int(this.pick(DIMS)).tuple();
        p.global("numpy", "dtype").mark().str(this.pick(["f4", "f8", "i8", "O8", "u1"])).op(0x89).op(0x88).tuple()
          .reduce();
        p.op(0x89);
        const n = this.pick([0, 4, 8, 100]);
        p.op(0x43, n, ...new Uint8Array(n)).tuple().build();
        return;
      }
      case 20: // a refused global
        p.global(this.pick(["posix", "builtins", "torch.nn.modules.linear"]), this.pick(["system", "eval", "Linear"]));
        return;
      default: { // lying lengths: a string that claims more bytes than remain
        p.op(0x58).u32(this.pick([2 ** 31, 2 ** 32 - 1, 1000]));
        return;
      }
    }
  }

  tensor(): void {
    const r = this.rng;
    const [type, itemsize] = this.pick(STORAGES);
    const key = String(r.int(3));
    const prev = this.storages.get(key);
    const numel = prev && this.chance(0.8) ? prev.numel : this.chance(0.7) ? r.int(64) : this.pick(DIMS);
    if (!prev) this.storages.set(key, { numel, itemsize });
    const rank = r.int(4);
    const shape = Array.from({ length: rank }, () => (this.chance(0.7) ? 1 + r.int(8) : this.pick(DIMS)));
    const stride: number[] = [];
    let s = 1;
    for (let d = rank - 1; d >= 0; d--) {
      stride.unshift(this.chance(0.8) ? s : this.pick([0, 1, 2, 2 ** 31, 2 ** 40]));
      s *= shape[d];
    }
    const offset = this.chance(0.8) ? r.int(4) : this.pick(EXTREME_INTS.filter((x) => x >= 0));
    this.p.tensor(key, numel, shape, stride, offset, type);
  }

  /** The top-level dict, with a few entries from the grammar. */
  pickle(): Uint8Array {
    this.p.emptyDict().mark();
    for (let i = 0, n = 1 + this.rng.int(4); i < n; i++) {
      this.p.str(`entry${i}`);
      this.value(0);
    }
    return this.p.setitems().stop();
  }

  /** Records for the declared storages: mostly the right size (when small), sometimes not. */
  records(): Record<string, Uint8Array> {
    const out: Record<string, Uint8Array> = {};
    for (const [key, { numel, itemsize }] of this.storages) {
      const right = numel * itemsize;
      const n = right <= 2 ** 20 && this.chance(0.85) ? right : this.rng.int(64);
      if (this.chance(0.95)) out[key] = new Uint8Array(n).fill(0x3f);
    }
    return out;
  }
}

const enc = new TextEncoder();

function members(pickle: Uint8Array, storages: Record<string, Uint8Array>): ZipInput[] {
  return [
    { name: "archive/data.pkl", chunks: [pickle] },
    { name: "archive/byteorder", chunks: [enc.encode("little")] },
    ...Object.entries(storages).map(([k, v]) => ({ name: `archive/data/${k}`, chunks: [v] })),
    { name: "archive/version", chunks: [enc.encode("3\n")] },
  ];
}

const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;

function findAll(bytes: Uint8Array, sig: number): number[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: number[] = [];
  for (let i = 0; i + 4 <= bytes.length; i++) if (v.getUint32(i, true) === sig) out.push(i);
  return out;
}

/** A structural mutation of a zip archive (or none). */
function mutateZip(rng: Rng, ms: ZipInput[], kind = rng.int(12)): Uint8Array {
  if (kind === 0 && ms.length > 1) { // a duplicate name
    const i = rng.int(ms.length);
    ms.splice(rng.int(ms.length), 0, { name: ms[i].name, chunks: [new Uint8Array(rng.int(16))] });
  }
  let deflated = -1;
  let declared = 0;
  if (kind === 1) { // a deflate bomb declaring the right size, or a deflated record declaring a wrong one
    deflated = ms.findIndex((m) => m.name.includes("/data/"));
    if (deflated >= 0) {
      declared = ms[deflated].chunks[0].length;
      const real = rng.uniform() < 0.5 ? 32 * 2 ** 20 : declared;
      ms[deflated] = { name: ms[deflated].name, chunks: [new Uint8Array(deflateRawSync(new Uint8Array(real)))] };
    }
  }
  const zip = concatBytes(buildZip(ms));
  const v = new DataView(zip.buffer);
  const cds = findAll(zip, SIG_CENTRAL);
  const eocd = findAll(zip, SIG_EOCD).at(-1)!;
  const c = cds[rng.int(cds.length)];
  switch (kind) {
    case 1:
      if (deflated >= 0) {
        const cd = cds[deflated];
        v.setUint16(cd + 10, 8, true);
        v.setUint16(v.getUint32(cd + 42, true) + 8, 8, true);
        v.setUint32(cd + 24, rng.int(4) ? declared : 16, true);
      }
      break;
    case 2: // overlapping: a directory entry points at another record
      v.setUint32(c + 42, v.getUint32(cds[rng.int(cds.length)] + 42, true) + rng.int(3) * 16, true);
      break;
    case 3: // lying sizes
      v.setUint32(c + 20, EXTREME_INTS[rng.int(EXTREME_INTS.length)] >>> 0, true);
      v.setUint32(c + 24, EXTREME_INTS[rng.int(EXTREME_INTS.length)] >>> 0, true);
      break;
    case 4: // extreme directory fields, zip64 markers without zip64 records
      v.setUint16(eocd + 10, rng.int(2) ? 0xffff : rng.int(0x10000), true);
      if (rng.int(2)) v.setUint32(eocd + 16, 0xffffffff, true);
      if (rng.int(2)) v.setUint32(eocd + 12, rng.int(2 ** 32), true);
      break;
    case 5: // a local name that disagrees with the directory
      zip[v.getUint32(c + 42, true) + 30] ^= 1;
      break;
    case 6: // truncated
      return zip.slice(0, rng.int(zip.length));
    case 7: // a few random bytes
      for (let i = 0; i < 4; i++) zip[rng.int(zip.length)] = rng.int(256);
      break;
  }
  return zip;
}

/** A legacy (pre-1.6) checkpoint around a generated pickle. */
function legacyFile(rng: Rng, pickle: Uint8Array, storages: Map<string, { numel: number; itemsize: number }>) {
  const magic = new Uint8Array([
    0x80,
    0x02,
    0x8a,
    0x0a,
    0x6c,
    0xfc,
    0x9c,
    0x46,
    0xf9,
    0x20,
    0x6a,
    0xa8,
    0x50,
    0x19,
    0x2e,
  ]);
  const proto = new PickleWriter().int(1001).stop();
  const info = new PickleWriter().emptyDict().str("little_endian").op(0x88).setitem().stop();
  const keys = new PickleWriter().emptyList().mark();
  const data: Uint8Array[] = [];
  for (const [k, { numel, itemsize }] of storages) {
    keys.str(k);
    const n = numel <= 2 ** 18 && rng.uniform() < 0.9 ? numel : rng.int(16);
    const head = new Uint8Array(8);
    new DataView(head.buffer).setBigInt64(0, BigInt(n), true);
    data.push(head, new Uint8Array(n * itemsize));
  }
  return concatBytes([magic, proto, info, pickle, keys.appends().stop(), ...data]);
}

/** Reads everything a file holds: every tensor's data, once. */
function touch(v: unknown, seen = new Set<unknown>()): void {
  if (v === null || typeof v !== "object" || seen.has(v)) return;
  seen.add(v);
  if (isTensorData(v)) {
    void v.data.length;
    return;
  }
  if (v instanceof Map) { for (const [k, x] of v) touch(k, seen), touch(x, seen); }
  else if (Array.isArray(v) || v instanceof Set) { for (const x of v) touch(x, seen); }
  else if (!ArrayBuffer.isView(v)) { for (const x of Object.values(v)) touch(x, seen); }
}

function run(label: string, bytes: Uint8Array): "ok" | "refused" {
  const t0 = performance.now();
  let outcome: "ok" | "refused" = "ok";
  try {
    touch(readPth(bytes).value);
  } catch (err) {
    assert(
      err instanceof CheckpointError,
      `${label}: threw ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`,
    );
    assert((err as Error).message.startsWith("<memory>"), `${label}: error does not name the file: ${err}`);
    outcome = "refused";
    if (Deno.env.get("FUZZ_VERBOSE")) console.log("ERR", (err as Error).message.replace(/\d+/g, "N").slice(0, 90));
  }
  const ms = performance.now() - t0;
  assert(ms < TIME_BOUND_MS, `${label}: took ${ms.toFixed(0)} ms`);
  const peak = peakMiB();
  assert(peak < MEMORY_BOUND_MIB, `${label}: peak resident memory reached ${peak.toFixed(0)} MiB`);
  return outcome;
}

Deno.test("resource fuzz: generated hostile checkpoints load or fail cleanly within time and memory bounds", () => {
  resetPeak();
  const rng = new Rng(17, "resource-fuzz");
  const counts = { ok: 0, refused: 0 };
  const t0 = performance.now();
  for (let i = 0; i < CASES; i++) {
    const g = new Generator(rng);
    const pickle = g.pickle();
    const form = rng.int(10);
    const bytes = form < 2
      ? legacyFile(rng, pickle, g.storages)
      : form < 5
      ? mutateZip(rng, members(pickle, g.records()))
      : concatBytes(buildZip(members(pickle, g.records())));
    counts[run(`case ${i} (${form < 2 ? "legacy" : form < 5 ? "mutated zip" : "zip"})`, bytes)]++;
  }
  // Structural zip mutations of files whose pickle and tensors are valid, so that every mutation is reached.
  for (let i = 0; i < 400; i++) {
    const n = 1 + rng.int(4096);
    const pickle = new PickleWriter().emptyDict().str("w").tensor("0", n, [n], [1]).setitem().stop();
    const bytes = mutateZip(rng, members(pickle, { "0": new Uint8Array(4 * n) }), i % 8);
    counts[run(`zip mutation ${i % 8} #${i}`, bytes)]++;
  }
  const seconds = (performance.now() - t0) / 1000;
  console.log(
    `${CASES + 400} files: ${counts.ok} loaded, ${counts.refused} refused in ${seconds.toFixed(1)} s; ` +
      `peak RSS ${peakMiB().toFixed(0)} MiB`,
  );
  // The grammar must produce both: files that load (so the bounds are tested on success paths) and refusals.
  assert(counts.ok > CASES / 10 && counts.refused > CASES / 5, JSON.stringify(counts));
});
