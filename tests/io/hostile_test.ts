/**
 * Hostile and huge inputs (issue 17): every file of ../shared/cases/hostile (copied to tests/fixtures/hostile) and
 * crafted files of the same kinds are refused or loaded within 5 s and 500 MB of resident memory, with a typed error
 * naming the file. Resource bounds are measured in a fresh process (tests/io/_load_probe.ts).
 */
import { deflateRawSync } from "node:zlib";
import { assert, assertEquals, assertThrows } from "../_assert.ts";
import { CheckpointError } from "../../src/util/errors.ts";
import {
  buildZip,
  isTensorData,
  memorySource,
  parseNpy,
  PickleLimitError,
  type PyObject,
  readPth,
  readSafetensors,
  writeSafetensors,
  ZipReader,
} from "../../src/io/mod.ts";
import { concatBytes } from "../../src/util/bytes.ts";
import { PickleWriter, torchZip } from "./_pickle_gen.ts";
import { probe } from "./_probe.ts";

const hostile = new URL("../fixtures/hostile/", import.meta.url).pathname;
const CASES: Record<string, RegExp> = {
  "p08b_torch_size_huge_list.pth": /BUILD .* on a list or tuple is not allowed/,
  "p10d_dag_tuple_key.pth": /dict key is a tuple of more than \d+ elements when expanded/,
  "p09g_rebuild_stride0_amplify.pth": /repeats a 1-element storage as 134217728 elements/,
  "z08a_bomb_storage_declared_small.pth": /inflates to more than the 16 bytes its directory entry declares/,
  // The forged tensor is not a tensor: the file has no cls_token the ViT could use.
  "v01_vit_forged_namespace_tensor.pth": /cls_token.*not a tensor: an object of class argparse\.Namespace/,
};

for (const [name, why] of Object.entries(CASES)) {
  Deno.test(`hostile ${name}: refused in < 5 s and < 500 MB with a typed error naming the file`, () => {
    const file = `${hostile}${name}`;
    // pth: every tensor of the file is read; map: the path of every task that takes --weights.
    for (const mode of name.startsWith("v01") ? ["map"] : ["pth", "map"]) {
      const r = probe(mode, file);
      assert(!r.ok, `${mode}: ${name} loaded`);
      assert(r.typed, `${mode}: untyped ${r.error}: ${r.message}`);
      assert(r.message!.includes(file), `${mode}: error does not name the file: ${r.message}`);
      if (mode === "pth") assert(why.test(r.message!), `${mode}: ${r.message}`);
      assert(r.ms < 5000, `${mode}: took ${r.ms} ms`);
      assert(r.hwmMiB < 500, `${mode}: peak resident ${r.hwmMiB} MiB`);
    }
  });
}

Deno.test("hostile s10a: a stored config asking for a 2e21-wide projection is refused before allocating", () => {
  const file = `${hostile}s10a_meta_projdim_2e21.safetensors`;
  const r = probe("vit", file);
  assert(!r.ok, "s10a loaded");
  assert(r.typed, `untyped ${r.error}: ${r.message}`);
  assert(r.message!.includes(file), `error does not name the file: ${r.message}`);
  assert(/retfiner\.vit_config\.projDim = \d+ is not an integer in \[1, \d+\]/.test(r.message!), r.message);
  assert(r.ms < 5000, `took ${r.ms} ms`);
  assert(r.hwmMiB < 500, `peak resident ${r.hwmMiB} MiB`);
});

Deno.test("hostile v01: an object with dtype/shape/data fields is not a tensor", () => {
  const top = readPth(`${hostile}v01_vit_forged_namespace_tensor.pth`).value as Map<string, unknown>;
  const forged = top.get("cls_token") as PyObject;
  assertEquals(forged.__class__, "argparse.Namespace");
  assert("dtype" in forged && "shape" in forged && "data" in forged);
  assert(!isTensorData(forged), "the forged namespace passes as a tensor");
  assert(isTensorData(top.get("pos_embed")), "a real tensor of the same file is not recognised");
});

// ---- the pickle VM ----

function load(pickle: Uint8Array, storages: Record<string, Uint8Array> = {}) {
  return readPth(torchZip(pickle, storages)).value;
}

Deno.test("pickle: BUILD only on objects whose type takes state", () => {
  // BUILD on a list (p08b's mechanism), on a tuple, on an int, on a tensor.
  const onList = new PickleWriter().emptyList().emptyDict().str("length").int(2 ** 32 - 1).setitem().build().stop();
  assertThrows(() => load(onList), /BUILD .* on a list or tuple is not allowed/, CheckpointError);
  const onInt = new PickleWriter().int(3).emptyDict().build().stop();
  assertThrows(() => load(onInt), /BUILD .* on a number value/, CheckpointError);
  const onTensor = new PickleWriter().tensor("0", 1, [1], [1]).emptyDict().str("x").int(1).setitem().build().stop();
  assertThrows(() => load(onTensor, { "0": new Uint8Array(4) }), /BUILD .* not allowed/, CheckpointError);
  // argparse.Namespace takes state; a "__proto__" attribute stays an attribute.
  const ns = new PickleWriter().global("argparse", "Namespace").emptyTuple().reduce().emptyDict()
    .str("__proto__").emptyDict().setitem().str("lr").int(3).setitem().build().stop();
  const obj = load(ns) as PyObject;
  assertEquals(obj.lr, 3);
  assertEquals(Object.getPrototypeOf(obj), Object.prototype);
});

/** A `levels`-deep tuple DAG: t0 = (), t(i+1) = (ti, ti); 2^levels leaves in a few bytes per level. */
function dag(p: PickleWriter, levels: number): PickleWriter {
  p.emptyTuple().put(0).pop();
  for (let i = 0; i < levels; i++) p.get(i).get(i).tuple2().put(i + 1).pop();
  return p.get(levels);
}

Deno.test("pickle: shared structures cost work for their shared size, not their unshared size", () => {
  // As a dict key (p10d): refused by size.
  const key = dag(new PickleWriter().emptyDict(), 40).none().setitem().stop();
  assertThrows(() => load(key), /dict key is a tuple of more than 4096 elements/, CheckpointError);
  // A small shared key is fine and has Python's repr.
  const small = dag(new PickleWriter().emptyDict(), 2).int(5).setitem().stop();
  assertEquals([...(load(small) as Map<string, unknown>).keys()], ["(((), ()), ((), ()))"]);
  // As a value: 2^40 paths through 41 objects; refused by the result check, quickly.
  const t0 = performance.now();
  const value = dag(new PickleWriter().emptyDict().str("x"), 40).setitem().stop();
  assertThrows(() => load(value), /more than 20000000 objects when its shared parts are counted/, PickleLimitError);
  assert(performance.now() - t0 < 2000, `took ${performance.now() - t0} ms`);
});

Deno.test("pickle: a budget of work and of bytes, a typed error when exceeded", () => {
  // One 100k-element list handed to torch.Size 20k times: 2e9 copies of work from a 300 kB pickle.
  const p = new PickleWriter().emptyList().put(0).mark();
  for (let i = 0; i < 100_000; i++) p.int(1);
  p.appends().pop().emptyList();
  for (let i = 0; i < 20_000; i++) p.global("torch", "Size").get(0).tuple1().reduce().append();
  const bytes = p.stop();
  const t0 = performance.now();
  const err = assertThrows(
    () => load(bytes),
    /exceeds its budget of \d+ (work units|bytes of objects)/,
    PickleLimitError,
  );
  assert(err.message.includes("<memory>"), err.message);
  assert(performance.now() - t0 < 5000, `took ${performance.now() - t0} ms`);
  // A smaller budget, set by the caller.
  const ok = new PickleWriter().emptyList().mark().int(1).int(2).appends().stop();
  assertEquals(load(ok), [1, 2]);
  assertThrows(() => readPth(torchZip(ok), { limits: { maxWork: 3 } }), /budget of 3 work units/, PickleLimitError);
  assertThrows(() => readPth(torchZip(ok), { limits: { maxBytes: 16 } }), /budget of 16 bytes/, PickleLimitError);
  // Integers of thousands of digits cost quadratic time to convert: refused.
  const long4 = new PickleWriter().op(0x8b).u32(100_000).op(...new Uint8Array(100_000)).stop();
  assertThrows(() => load(long4), /integer of 100000 bytes/, CheckpointError);
});

Deno.test("pickle: self-containing and deeply nested results are refused", () => {
  const cycle = new PickleWriter().emptyList().put(0).get(0).append().stop();
  assertThrows(() => load(cycle), /contains itself/, PickleLimitError);
  const deep = new PickleWriter();
  for (let i = 0; i < 300; i++) deep.emptyList();
  for (let i = 0; i < 299; i++) deep.append();
  assertThrows(() => load(deep.stop()), /nests containers more than 256 deep/, PickleLimitError);
  const deepKey = new PickleWriter().emptyDict().emptyTuple();
  for (let i = 0; i < 20_000; i++) deepKey.tuple1();
  assertThrows(() => load(deepKey.none().setitem().stop()), /dict key is a tuple/, CheckpointError);
});

// ---- tensors ----

Deno.test("tensors: stride-0 and overlapping views are bounded, not copied out without limit", () => {
  const f32 = (n: number) => new Uint8Array(new Float32Array(n).fill(2).buffer);
  // A modest expanded tensor (position_ids-like) loads and reads as PyTorch's view would.
  const small = new PickleWriter().tensor("0", 3, [4, 3], [0, 1]).stop();
  const t = load(small, { "0": new Uint8Array(Float32Array.from([1, 2, 3]).buffer) }) as { data: Float32Array };
  assertEquals([...t.data], [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3]);
  // 2^27 elements from one: refused before anything is allocated.
  const huge = new PickleWriter().tensor("0", 1, [2 ** 27], [0]).stop();
  assertThrows(() => load(huge, { "0": f32(1) }), /repeats a 1-element storage as 134217728/, CheckpointError);
  // Overlapping windows (stride 1 over a 2-D shape) of the same size: also bounded.
  const overlap = new PickleWriter().tensor("0", 16, [2 ** 13, 2 ** 12], [1, 1]).stop();
  assertThrows(() => load(overlap, { "0": new Uint8Array(64) }), /reaches element|repeats/, CheckpointError);
  // Many tensors each under the per-tensor bound: bounded per file.
  const many = new PickleWriter().emptyList();
  for (let i = 0; i < 8; i++) many.tensor("0", 1, [2 ** 24 - 1], [0]).append(); // 64 MiB each
  assertThrows(() => load(many.stop(), { "0": f32(1) }), /per file/, CheckpointError);
});

Deno.test("tensors: storage type, declared size and record size must agree", () => {
  // The record holds 8 bytes; the pickle declares 4 floats (16 bytes).
  const short = new PickleWriter().tensor("0", 4, [4], [1]).stop();
  assertThrows(() => load(short, { "0": new Uint8Array(8) }), /has 8 bytes, but the pickle declares 4 F32/);
  // A larger record than declared is refused too (PyTorch writes exactly numel * itemsize bytes).
  assertThrows(() => load(short, { "0": new Uint8Array(32) }), /has 32 bytes, but the pickle declares 4 F32/);
  // One storage named as two types.
  const twoTypes = new PickleWriter().emptyList().tensor("0", 2, [2], [1]).append()
    .tensor("0", 4, [4], [1], 0, "HalfStorage").append().stop();
  assertThrows(() => load(twoTypes, { "0": new Uint8Array(8) }), /declared both as 2 F32 and as 4 F16/);
  // A storage type that is not a storage type.
  const notStorage = new PickleWriter().global("torch._utils", "_rebuild_tensor_v2").mark().mark().str("storage")
    .global("collections", "OrderedDict").str("0").str("cpu").int(1).tuple().binpersid().int(0).mark().int(1)
    .tuple().mark().int(1).tuple().op(0x89).global("collections", "OrderedDict").emptyTuple().reduce().tuple()
    .reduce().stop();
  assertThrows(() => load(notStorage, { "0": new Uint8Array(4) }), /unknown storage type/, CheckpointError);
});

Deno.test("tensors: data are read on first use, and a file changed since then is refused", () => {
  const dir = Deno.makeTempDirSync();
  const path = `${dir}/x.pth`;
  const p = new PickleWriter().emptyDict().str("a").tensor("0", 2, [2], [1]).setitem().stop();
  Deno.writeFileSync(path, torchZip(p, { "0": new Uint8Array(Float32Array.from([1.5, -2]).buffer) }));
  const first = (readPth(path).value as Map<string, { data: Float32Array }>).get("a")!;
  assertEquals([...first.data], [1.5, -2]);
  const lazy = (readPth(path).value as Map<string, { data: Float32Array }>).get("a")!;
  Deno.writeFileSync(path, torchZip(p, { "0": new Uint8Array(Float32Array.from([9, 9, 9]).buffer) }));
  assertThrows(() => lazy.data, /changed after it was opened/, CheckpointError);
  // Replaced by a file of the same size (an atomic save over it): refused too, not read as the new weights.
  Deno.writeFileSync(path, torchZip(p, { "0": new Uint8Array(Float32Array.from([1.5, -2]).buffer) }));
  const again = (readPth(path).value as Map<string, { data: Float32Array }>).get("a")!;
  Deno.writeFileSync(`${path}.tmp`, torchZip(p, { "0": new Uint8Array(Float32Array.from([7, 7]).buffer) }));
  Deno.renameSync(`${path}.tmp`, path);
  assertThrows(() => again.data, /changed after it was opened/, CheckpointError);
  Deno.removeSync(dir, { recursive: true });
});

Deno.test("safetensors: tensors are read on first use; a changed file is refused", async () => {
  const dir = Deno.makeTempDirSync();
  const path = `${dir}/x.safetensors`;
  const t = { dtype: "F32" as const, shape: [2], data: Float32Array.from([1, 2]) };
  await writeSafetensors(path, new Map([["a", t]]));
  const back = readSafetensors(path).tensors.get("a")!;
  assert(isTensorData(back));
  await writeSafetensors(path, new Map([["a", t], ["b", t]]));
  assertThrows(() => back.data, /changed after it was opened/, CheckpointError);
  Deno.removeSync(dir, { recursive: true });
});

// ---- zip ----

const SIG_CENTRAL = 0x02014b50;

/** Offsets of the central-directory entries of a zip. */
function centralEntries(zip: Uint8Array): number[] {
  const v = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  const out: number[] = [];
  for (let i = 0; i + 4 <= zip.length; i++) if (v.getUint32(i, true) === SIG_CENTRAL) out.push(i);
  return out;
}

const member = (name: string, text: string) => ({ name, chunks: [new TextEncoder().encode(text)] });

Deno.test("zip: duplicate names are refused, naming the name and the file", () => {
  const zip = concatBytes(buildZip([member("a/data.pkl", "x"), member("a/data.pkl", "y")]));
  const err = assertThrows(
    () => ZipReader.open(memorySource(zip, "dup.pth")),
    /dup\.pth: zip archive has two members named "a\/data\.pkl"/,
    CheckpointError,
  );
  assert(err.message.includes("PyTorch takes the first"), err.message);
});

Deno.test("zip: overlapping records are refused, naming both", () => {
  const zip = concatBytes(buildZip([member("one", "aaaa"), member("two", "bbbb")]));
  const [c1, c2] = centralEntries(zip);
  const v = new DataView(zip.buffer);
  // The second directory entry points at the first record.
  const same = zip.slice();
  new DataView(same.buffer).setUint32(c2 + 42, v.getUint32(c1 + 42, true), true);
  assertThrows(() => ZipReader.open(memorySource(same, "o.zip")), /o\.zip: zip members "one" and "two" overlap/);
  // The first record claims to run into the second.
  const long = zip.slice();
  const lv = new DataView(long.buffer);
  lv.setUint32(c1 + 20, 10, true);
  lv.setUint32(c1 + 24, 10, true);
  assertThrows(() => ZipReader.open(memorySource(long, "o.zip")), /o\.zip: zip members "one" and "two" overlap/);
});

Deno.test("zip: a deflated record is inflated with its declared size as a hard cap", () => {
  const bomb = deflateRawSync(new Uint8Array(64 * 2 ** 20)); // 64 MiB of zeros in ~64 kB
  const zip = concatBytes(buildZip([{ name: "r", chunks: [new Uint8Array(bomb)] }]));
  const [c] = centralEntries(zip);
  const v = new DataView(zip.buffer);
  v.setUint16(c + 10, 8, true); // method deflate
  v.setUint32(c + 24, 16, true); // declared size 16 bytes
  v.setUint16(8, 8, true); // local header method
  const reader = ZipReader.open(memorySource(zip, "bomb.zip"));
  const t0 = performance.now();
  assertThrows(() => reader.read("r"), /bomb\.zip: member "r" inflates to more than the 16 bytes/, CheckpointError);
  assert(performance.now() - t0 < 1000, `took ${performance.now() - t0} ms`);
  // Every zip error names the file, also a truncated archive.
  assertThrows(() => ZipReader.open(memorySource(zip.subarray(0, 40), "cut.zip")), /^cut\.zip: /, CheckpointError);
});

// ---- .npy ----

function npy(header: string, data = new Uint8Array(8)): Uint8Array {
  const h = header + " ".repeat((64 - ((10 + header.length + 1) % 64)) % 64) + "\n";
  const out = new Uint8Array(10 + h.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(out.buffer).setUint16(8, h.length, true);
  out.set(new TextEncoder().encode(h), 10);
  out.set(data, 10 + h.length);
  return out;
}

Deno.test(".npy: extra, missing or repeated header keys are refused (numpy refuses or reads them differently)", () => {
  const ok = parseNpy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"), "ok.npy");
  assertEquals(ok.shape, [2]);
  assertThrows(
    () => parseNpy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}"), "x.npy"),
    /x\.npy: malformed \.npy header \(numpy requires exactly the keys/,
    CheckpointError,
  );
  assertThrows(
    () => parseNpy(npy("{'descr': '<f4', 'shape': (2,)}"), "x.npy"),
    /numpy requires exactly the keys/,
    CheckpointError,
  );
  // Python keeps the last of a repeated key, this package's old reader the first: refused.
  assertThrows(
    () => parseNpy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (1,)}"), "x.npy"),
    /key 'shape' appears twice/,
    CheckpointError,
  );
  assertThrows(
    () => parseNpy(npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}"), "x.npy"),
    /'fortran_order' is not True or False/,
  );
  assertThrows(() => parseNpy(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}")), /non-negative/);
  assertThrows(() => parseNpy(npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}")), /structured/);
});

Deno.test("safetensors: a header larger than 16 MiB is refused before it is parsed", () => {
  const n = 17 * 2 ** 20;
  const bytes = new Uint8Array(8 + n);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(n), true);
  bytes.fill(0x20, 8);
  assertThrows(
    () => readSafetensors(bytes),
    /<memory>: safetensors header of 17825792 bytes is larger/,
    CheckpointError,
  );
});

Deno.test("pickle: tuple keys are bounded in text, not only in elements", () => {
  // 4000 references to one 100 kB string: 400 MB of key text if it were built.
  const p = new PickleWriter().emptyDict().str("x".repeat(100_000)).put(0).pop().mark();
  for (let i = 0; i < 4000; i++) p.get(0);
  const bytes = p.tuple().none().setitem().stop();
  assertThrows(() => load(bytes), /dict key's text is longer than/, CheckpointError);
  const withDict = new PickleWriter().emptyDict().emptyDict().tuple1().none().setitem().stop();
  assertThrows(() => load(withDict), /holding a dict, set or object/, CheckpointError);
  const ok = new PickleWriter().emptyDict().str("a").int(1).none().op(0x87).int(2).setitem().stop();
  assertEquals([...(load(ok) as Map<string, unknown>).keys()], ['("a", 1, None)']);
});

Deno.test("pickle: errors about a hostile value never walk it (a 2^40-path DAG in every argument position)", () => {
  const t0 = performance.now();
  const calls: [string, string][] = [["torch", "device"], ["numpy", "dtype"], ["torch", "Size"], ["builtins", "set"]];
  for (const [module, name] of calls) {
    const p = dag(new PickleWriter(), 40);
    p.put(200).pop().global(module, name).get(200).tuple1().reduce();
    try {
      load(p.stop());
    } catch (err) {
      assert(err instanceof CheckpointError, `${name}: ${err}`);
    }
  }
  // The DAG as a tensor's size, and as its storage's element count.
  const size = dag(new PickleWriter(), 40).put(200).pop();
  size.global("torch._utils", "_rebuild_tensor_v2").mark().mark().str("storage").global("torch", "FloatStorage")
    .str("0").str("cpu").int(1).tuple().binpersid().int(0).get(200).get(200).op(0x89).none().tuple().reduce();
  assertThrows(() => load(size.stop(), { "0": new Uint8Array(4) }), /size is not a tuple/, CheckpointError);
  const numel = dag(new PickleWriter(), 40).put(200).pop();
  numel.mark().str("storage").global("torch", "FloatStorage").str("0").str("cpu").get(200).tuple().binpersid();
  assertThrows(() => load(numel.stop()), /invalid size a tuple\/list of 2 items/, CheckpointError);
  assert(performance.now() - t0 < 2000, `took ${performance.now() - t0} ms`);
});
