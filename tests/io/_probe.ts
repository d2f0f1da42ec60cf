/** Runs tests/io/_load_probe.ts in a fresh process: what loading a file did, and what it cost. */
import { assert } from "../_assert.ts";

const probeScript = new URL("./_load_probe.ts", import.meta.url).pathname;

/** What one probe run reports. */
export interface Probe {
  ok: boolean;
  bytes?: number;
  baseRssMiB: number;
  typed?: boolean;
  error?: string;
  message?: string;
  ms: number;
  hwmMiB: number;
  baseHwmMiB: number;
}

/** Loads `file` in a fresh process (`mode`: pth, map or vit) and returns what happened and what it cost. */
export function probe(mode: string, file: string): Probe {
  const out = new Deno.Command(Deno.execPath(), { args: ["run", "-A", probeScript, mode, file] }).outputSync();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
  assert(out.success && text.startsWith("{"), `probe failed: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(text) as Probe;
}
