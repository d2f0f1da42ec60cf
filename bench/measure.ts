/** Timing and memory helpers shared by the benchmark scripts (no tfjs import, so child processes stay lean). */

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median wall time of `fn` over `repeats` runs after one warm-up. */
export async function timeIt(fn: () => unknown | Promise<unknown>, repeats: number): Promise<number> {
  await fn();
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    await fn();
    times.push((performance.now() - t0) / 1000);
  }
  return median(times);
}

/** Peak resident set size of this process so far (VmHWM), MiB. */
export function peakRssMiB(): number {
  return Number(/VmHWM:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/self/status"))![1]) / 1024;
}

/** The environment that sizes every library's thread pool to `n` (ours, OpenBLAS, OpenMP, MKL). */
export const THREAD_ENV = (n: number): Record<string, string> => ({
  RETFINER_THREADS: String(n),
  OPENBLAS_NUM_THREADS: String(n),
  OMP_NUM_THREADS: String(n),
  MKL_NUM_THREADS: String(n),
});
