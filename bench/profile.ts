/**
 * Per-kernel time breakdown (`deno task bench --profile`): runs a piece of work
 * under `tf.profile` and sums the kernels' wall times by kernel name, so one
 * can see where a refinement step or an encoding batch spends its time.
 */
import { tf } from "../src/backend/tf.ts";

/** Time spent in one kernel, summed over its calls. */
export interface KernelRow {
  kernel: string;
  calls: number;
  ms: number;
}

/** The profile of one piece of work. */
export interface KernelProfile {
  /** Wall time of the whole work, ms (kernels plus everything outside them). */
  wallMs: number;
  /** Kernels by total time, descending. */
  rows: KernelRow[];
  /**
   * tfjs's peak tensor-byte count during the work. tfjs counts every tensor, so a reshape view of a buffer counts
   * again: an upper bound on live tensor memory, not a measurement of it (the bench's peak RSS is that).
   */
  peakBytes: number;
}

/** Runs `fn` once under `tf.profile` and groups the kernel times by name. */
export async function profileKernels(fn: () => void): Promise<KernelProfile> {
  const t0 = performance.now();
  const info = await tf.profile(() => {
    fn();
  });
  const wallMs = performance.now() - t0;
  const by = new Map<string, KernelRow>();
  for (const k of info.kernels) {
    // `<op>__op` entries are custom-gradient op scopes whose time is already counted in the kernels they call; so are
    // custom gradients called outside an op (`unnamed scope`: the linear layers of src/encoders/layers.ts).
    if (k.name.endsWith("__op") || k.name === "unnamed scope") continue;
    const ms = typeof k.kernelTimeMs === "number" ? k.kernelTimeMs : 0;
    const row = by.get(k.name) ?? { kernel: k.name, calls: 0, ms: 0 };
    row.calls++;
    row.ms += ms;
    by.set(k.name, row);
  }
  return { wallMs, rows: [...by.values()].sort((a, b) => b.ms - a.ms), peakBytes: info.peakBytes };
}

/** A plain-text table of the `top` kernels, with the time outside kernels (JS glue, optimiser, profiler). */
export function formatProfile(title: string, p: KernelProfile, top = 20): string {
  const kernelMs = p.rows.reduce((a, r) => a + r.ms, 0);
  const lines = [
    `${title}: ${p.wallMs.toFixed(0)} ms wall, ${kernelMs.toFixed(0)} ms in kernels, tfjs peak tensor count ${
      (p.peakBytes / 2 ** 20).toFixed(0)
    } MiB (views counted again)`,
    `  ${"kernel".padEnd(28)} ${"calls".padStart(6)} ${"ms".padStart(9)} ${"share".padStart(6)}`,
  ];
  for (const r of p.rows.slice(0, top)) {
    lines.push(
      `  ${r.kernel.padEnd(28)} ${String(r.calls).padStart(6)} ${r.ms.toFixed(1).padStart(9)} ${
        (100 * r.ms / p.wallMs).toFixed(1).padStart(5)
      }%`,
    );
  }
  const rest = p.rows.slice(top).reduce((a, r) => a + r.ms, 0);
  if (p.rows.length > top) {
    lines.push(`  ${`(${p.rows.length - top} more kernels)`.padEnd(35)} ${rest.toFixed(1).padStart(9)}`);
  }
  lines.push(
    `  ${"outside kernels".padEnd(35)} ${(p.wallMs - kernelMs).toFixed(1).padStart(9)} ${
      (100 * (p.wallMs - kernelMs) / p.wallMs).toFixed(1).padStart(5)
    }%`,
  );
  return lines.join("\n");
}
