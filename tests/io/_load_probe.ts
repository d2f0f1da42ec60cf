/**
 * Loads one weight file in a fresh process and prints, as one JSON line, what
 * happened and what it cost: used by tests that bound the time and resident
 * memory of loading hostile or huge files.
 *
 * deno run -A tests/io/_load_probe.ts <map|vit|pth> <file>
 * - map: readWeightFile + mapVisionWeights, then every kept tensor's data is read
 * - vit: loadVit (the path every task that takes --weights uses)
 * - pth: readPth, then every tensor's data is read
 */
import { RetfinerError } from "../../src/util/errors.ts";
import { isTensorData, mapVisionWeights, readPth, readWeightFile } from "../../src/io/mod.ts";
import { loadVit } from "../../src/encoders/load.ts";

const status = (key: string) =>
  Number(/(\d+) kB/.exec(Deno.readTextFileSync("/proc/self/status").split("\n").find((l) => l.startsWith(key))!)![1]) /
  1024;

function touch(v: unknown, seen = new Set<unknown>()): number {
  if (v === null || typeof v !== "object" || seen.has(v)) return 0;
  seen.add(v);
  if (isTensorData(v)) return v.data.byteLength;
  let n = 0;
  if (v instanceof Map) { for (const x of v.values()) n += touch(x, seen); }
  else if (Array.isArray(v)) { for (const x of v) n += touch(x, seen); }
  return n;
}

const [mode, file] = Deno.args;
const baseRss = status("VmRSS:");
const baseHwm = status("VmHWM:");
const t0 = performance.now();
const out: Record<string, unknown> = { mode, file };
try {
  if (mode === "map") {
    const mapped = mapVisionWeights(readWeightFile(file), { fileName: file });
    out.bytes = touch(mapped.tensors);
    out.kept = mapped.tensors.size;
  } else if (mode === "vit") {
    const { model } = loadVit(file, { log: null });
    out.width = model.config.embedDim;
    out.bytes = 0;
  } else {
    out.bytes = touch(readPth(file).value);
  }
  out.ok = true;
} catch (err) {
  out.ok = false;
  out.typed = err instanceof RetfinerError; // one of the package's typed errors
  out.error = (err as Error)?.constructor?.name;
  out.message = String((err as Error)?.message ?? err);
}
out.ms = performance.now() - t0;
out.baseRssMiB = baseRss;
out.baseHwmMiB = baseHwm;
out.hwmMiB = status("VmHWM:");
console.log(JSON.stringify(out));
