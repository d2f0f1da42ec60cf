/**
 * glibc's allocator, told to give large buffers back to the system, and large fresh buffers backed by huge pages.
 *
 * A training step allocates and frees gigabytes of large `ArrayBuffer`s (tfjs kernels' outputs that the buffer pool
 * does not recycle, ONNX Runtime's result copies). glibc serves an allocation from its heap once the size is below
 * its mmap threshold, and that threshold rises by itself (up to 32 MiB on 64-bit) each time a mapped block is freed,
 * so after a few steps most large buffers come from the heap, where freed memory stays resident. Fixing the threshold
 * at 1 MiB (`mallopt(M_MMAP_THRESHOLD)`, which also stops the adjustment) maps every large buffer and unmaps it on
 * free. Measured on the ViT-B/16 + BERT-base refinement step here: peak RSS 8.41 -> 7.91 GB, the same speed.
 *
 * Returning buffers costs page faults when they are allocated again: the kernel zeroes every 4 KiB page on first
 * touch, a few microseconds each on these virtual machines (up to 12 µs measured), about a million times per ViT-B +
 * BERT-base step. {@link adviseHugePages} asks for transparent huge pages (`madvise(MADV_HUGEPAGE)`) on each new large
 * buffer before it is first written, so one fault maps 2 MiB: measured on that step (2 threads, 2026-12-02), faults
 * per step 0.98 M -> 0.42 M and 24.7 -> 16.6-18.5 s (about what `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` gives, which
 * only works when set before the process starts). {@link releasePages} hands the pages of buffers the pool drops back
 * at once. Only where the kernel offers huge pages on request
 * (`/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` or `always`).
 *
 * Linux with glibc only, and only with FFI permission; a threshold the user set (`MALLOC_MMAP_THRESHOLD_`) is kept.
 * @module
 */

const M_MMAP_THRESHOLD = -3;
const MADV_DONTNEED = 4;
const MADV_HUGEPAGE = 14;
/** x86-64's and arm64's (4 KiB-page kernels') transparent huge page. */
const HUGE_PAGE_BYTES = 2 ** 21;
const PAGE_BYTES = 4096;

/** The threshold set, in bytes. */
export const MMAP_THRESHOLD_BYTES = 1 << 20;

let applied: boolean | undefined;

/**
 * Fixes glibc's mmap threshold at {@link MMAP_THRESHOLD_BYTES} (once per process).
 * @returns whether the threshold is now set by this call or an earlier one (false: not glibc, no FFI permission,
 *  or the user's own `MALLOC_MMAP_THRESHOLD_`)
 */
export function returnLargeBuffersToSystem(): boolean {
  if (applied !== undefined) return applied;
  applied = false;
  if (Deno.build.os !== "linux" || Deno.env.get("MALLOC_MMAP_THRESHOLD_") !== undefined) return applied;
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return applied;
  try {
    const libc = Deno.dlopen("libc.so.6", { mallopt: { parameters: ["i32", "i32"], result: "i32" } });
    applied = libc.symbols.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) === 1; // mallopt returns 1 on success
  } catch {
    // Not glibc (musl names its library otherwise): nothing to tune.
  }
  return applied;
}

let madvise: ((addr: Deno.PointerValue, len: bigint, advice: number) => number) | null | undefined;

let hugePages = false;

/**
 * Turns on {@link adviseHugePages} and {@link releasePages} (once per process): opens libc's `madvise`. Huge pages
 * are asked for only where the kernel offers them on request and `RETFINER_HUGE_PAGES` is not `0`.
 * @returns whether huge pages will be asked for (false: not Linux/glibc, no FFI permission, THP off, or turned off)
 */
export function enableHugePages(): boolean {
  if (madvise !== undefined) return hugePages;
  madvise = null;
  if (Deno.build.os !== "linux") return false;
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return false;
  try {
    const libc = Deno.dlopen("libc.so.6", { madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" } });
    madvise = (addr, len, advice) => libc.symbols.madvise(addr, len, advice);
    const mode = Deno.readTextFileSync("/sys/kernel/mm/transparent_hugepage/enabled");
    hugePages = /\[(always|madvise)\]/.test(mode) && Deno.env.get("RETFINER_HUGE_PAGES") !== "0";
  } catch {
    // Not glibc, or no THP knob (a container without /sys): 4 KiB pages it is.
  }
  return hugePages;
}

/**
 * Asks for transparent huge pages over the whole pages of a new, not yet written array of at least 2 MiB. Advice
 * only: memory use is unchanged (the kernel maps a huge page only where an aligned 2 MiB lies inside the array), and a
 * refusal is ignored. A no-op unless {@link enableHugePages} returned true.
 * @param array a freshly allocated array
 */
export function adviseHugePages(array: ArrayBufferView): void {
  if (hugePages && array.byteLength >= HUGE_PAGE_BYTES) advise(array, MADV_HUGEPAGE);
}

/**
 * Gives the whole pages of an array that nothing will read again back to the system now, rather than when V8
 * collects it (which may be several hundred MB of garbage later). The array stays valid and reads as zeros. A no-op
 * until {@link enableHugePages} has opened `madvise` (whether or not huge pages are on).
 * @param array an array no one holds but the caller, about to be dropped
 */
export function releasePages(array: ArrayBufferView): void {
  if (array.byteLength >= 16 * PAGE_BYTES) advise(array, MADV_DONTNEED);
}

function advise(array: ArrayBufferView, advice: number): void {
  if (!madvise) return;
  const start = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(array)));
  const page = BigInt(PAGE_BYTES);
  const from = (start + page - 1n) / page * page;
  const to = (start + BigInt(array.byteLength)) / page * page;
  if (to > from) madvise(Deno.UnsafePointer.create(from), to - from, advice);
}
