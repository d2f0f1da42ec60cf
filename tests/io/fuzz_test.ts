/**
 * Fuzz-style robustness: hundreds of mutated and truncated weight files must
 * each either load or fail with a CheckpointError naming the problem — never
 * another exception, never a hang.
 */
import { assert } from "../_assert.ts";
import { CheckpointError } from "../../src/util/errors.ts";
import {
  buildZip,
  encodeNpy,
  encodeSafetensors,
  isTensorData,
  memorySource,
  parseNpy,
  readPth,
  readSafetensors,
  ZipReader,
} from "../../src/io/mod.ts";
import { concatBytes } from "../../src/util/bytes.ts";
import { Rng } from "../../src/util/rng.ts";
import { writerSample } from "./_sample.ts";

const dir = new URL("../fixtures/io/", import.meta.url).pathname;

function mutate(rng: Rng, src: Uint8Array): Uint8Array {
  const kind = rng.int(4);
  if (kind === 0) return src.slice(0, rng.int(src.length)); // truncate
  const out = src.slice();
  if (kind === 1) {
    for (let i = 0, n = 1 + rng.int(8); i < n; i++) out[rng.int(out.length)] = rng.int(256); // random bytes
    return out;
  }
  if (kind === 2) {
    const at = rng.int(out.length); // flip one bit
    out[at] ^= 1 << rng.int(8);
    return out;
  }
  const a = rng.int(out.length); // delete a span
  const b = Math.min(out.length, a + 1 + rng.int(32));
  return concatBytes([out.subarray(0, a), out.subarray(b)]);
}

/** Reads every tensor's data (storages are read lazily, on first use). */
function touch(v: unknown, seen = new Set<unknown>()): unknown {
  if (v === null || typeof v !== "object" || seen.has(v)) return v;
  seen.add(v);
  if (isTensorData(v)) void v.data.length;
  else if (v instanceof Map) { for (const x of v.values()) touch(x, seen); }
  else if (Array.isArray(v)) { for (const x of v) touch(x, seen); }
  return v;
}

function expectCleanFailure(label: string, fn: () => unknown): "ok" | "error" {
  const t0 = performance.now();
  try {
    fn();
    return "ok";
  } catch (err) {
    assert(
      err instanceof CheckpointError,
      `${label}: threw ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`,
    );
    return "error";
  } finally {
    assert(performance.now() - t0 < 2000, `${label}: took ${performance.now() - t0} ms`);
  }
}

for (const file of ["all_dtypes.pth", "all_dtypes_legacy.pth", "written_by_retfiner.pth"]) {
  Deno.test(`fuzz: 400 mutations of ${file} load or fail cleanly`, () => {
    const original = Deno.readFileSync(`${dir}${file}`);
    const rng = new Rng(7, file);
    let errors = 0;
    for (let i = 0; i < 400; i++) {
      const bytes = mutate(rng, original);
      const verifyCrc = i % 2 === 0;
      if (expectCleanFailure(`${file} #${i}`, () => touch(readPth(bytes, { verifyCrc }).value)) === "error") errors++;
    }
    assert(errors > 100, `only ${errors} of 400 mutations were detected`);
  });
}

Deno.test("fuzz: 600 mutated pickles inside a valid zip fail cleanly", () => {
  const original = Deno.readFileSync(`${dir}all_dtypes.pth`);
  const zip = ZipReader.open(memorySource(original));
  const members = [...zip.entries.keys()].map((name) => ({ name, chunks: [zip.read(name)] }));
  const pklIndex = members.findIndex((m) => m.name.endsWith("data.pkl"));
  const rng = new Rng(8);
  for (let i = 0; i < 600; i++) {
    const mutated = members.map((m, j) => (j === pklIndex ? { name: m.name, chunks: [mutate(rng, m.chunks[0])] } : m));
    const bytes = concatBytes(buildZip(mutated));
    expectCleanFailure(`pickle #${i}`, () => touch(readPth(bytes).value));
  }
});

Deno.test("fuzz: 500 mutations of a safetensors file and of a .npy file fail cleanly", () => {
  const st = encodeSafetensors(writerSample(), { a: "b" });
  const npy = encodeNpy({ dtype: "F32", shape: [3, 4], data: new Float32Array(12).fill(1.5) });
  const rng = new Rng(9);
  for (let i = 0; i < 500; i++) {
    expectCleanFailure(`safetensors #${i}`, () => touch(readSafetensors(mutate(rng, st)).tensors));
    expectCleanFailure(`npy #${i}`, () => parseNpy(mutate(rng, npy)));
  }
});
