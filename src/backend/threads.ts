/**
 * A pool of worker threads for the `cpu` backend's elementwise and row-wise kernels (LayerNorm and its gradient,
 * dropout, residuals, attention heads, softmax's gradient, sums, AdamW): one call is cut into contiguous ranges,
 * the calling thread runs the first and each worker one of the others, over the same memory.
 *
 * Why workers and not ONNX Runtime, which already runs GELU, softmax and large Add/Sub/Mul/Div on every core: its
 * inference build has no LayerNorm or softmax gradients, and a graph of its primitive ops reads and writes a whole
 * tensor per op where these kernels make one or two passes. Why not WebAssembly SIMD: each call would copy its
 * operands into the module's memory and back.
 *
 * How: a worker sees a kernel's arrays through pointers (Deno FFI's `UnsafePointerView.getArrayBuffer`, no copy); the
 * caller writes a job (kernel, pointers, sizes, scalars, range) into a `SharedArrayBuffer`, wakes the worker with
 * `Atomics.notify`, runs its own range, then waits for the worker to mark the job done. The caller holds every array
 * until then, so none can be collected while a worker reads it. Workers spin briefly for the next job before they
 * sleep (a futex wake costs 20–50 µs on these virtual machines, about a small kernel's run time) and are `unref`'d so
 * they never keep a process alive.
 *
 * Results do not depend on the number of threads: each kernel (`range_kernels.ts`) writes every output element from
 * one range and in serial order. Threads: `RETFINER_THREADS` (what ONNX Runtime and OpenBLAS get), else one per core;
 * with 1, or without FFI permission, every kernel runs on the calling thread.
 * @module
 */
import { Worker } from "node:worker_threads";
import { BackendError } from "../util/errors.ts";
import { RANGE_KERNEL_NAMES, RANGE_KERNELS, type RangeKernelName } from "./range_kernels.ts";

/** Most arrays one job carries. */
export const MAX_ARRAYS = 8;
/** Most scalars one job carries. */
export const MAX_SCALARS = 8;
/** Int32 slots of a worker's control block: job sequence number, done sequence, ready flag, error flag. */
export const CTRL = { seq: 0, done: 1, ready: 2, failed: 3 } as const;
const CTRL_INTS = 8;
/** Float64 slots of a job: kernel, lo, hi, array count, then (address, byte length, type) per array, then scalars. */
export const JOB = { kernel: 0, lo: 1, hi: 2, arrays: 3, first: 4 } as const;
const JOB_DOUBLES = JOB.first + 3 * MAX_ARRAYS + MAX_SCALARS;
/** Bytes of a failed job's error message. */
export const ERROR_BYTES = 512;
/** A worker's slice of the shared buffer: control ints, job doubles, error text. */
export const SLOT_BYTES = CTRL_INTS * 4 + JOB_DOUBLES * 8 + ERROR_BYTES;

/** Typed-array kinds a job can carry, by code. */
export const ARRAY_TYPES = [Float32Array, Float64Array, Int32Array, Uint8Array] as const;

interface PoolWorker {
  worker: Worker;
  ctrl: Int32Array;
  job: Float64Array;
  error: Uint8Array;
  seq: number;
}

let workers: PoolWorker[] = [];
let wanted = 1;
let jobsShared = 0;

/**
 * How many ranges the workers have run since the process started (the calling thread's not counted): whether the
 * pool is doing anything.
 * @returns ranges handed to workers
 */
export function sharedJobs(): number {
  return jobsShared;
}

/**
 * Starts (or resizes to) a pool of `threads − 1` workers; the calling thread is the last one. Returns at once: a
 * worker takes jobs once its module has loaded (tens of milliseconds), and until then the others, or the calling
 * thread, run them.
 * @param threads threads in all, the caller included (0 or undefined: one per core); 1 stops the pool
 * @returns the threads that will share kernels (1 without FFI permission)
 */
export function startThreads(threads?: number): number {
  const n = threads && threads > 0 ? Math.floor(threads) : navigator.hardwareConcurrency || 1;
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    stopThreads();
    return 1;
  }
  if (n === wanted && workers.length === n - 1) return n;
  stopThreads();
  wanted = n;
  const sab = new SharedArrayBuffer(SLOT_BYTES * (n - 1));
  for (let k = 0; k < n - 1; k++) {
    const base = k * SLOT_BYTES;
    const worker = new Worker(new URL("./thread_worker.ts", import.meta.url), { workerData: { sab, base } });
    worker.unref();
    const w: PoolWorker = {
      worker,
      ctrl: new Int32Array(sab, base, CTRL_INTS),
      job: new Float64Array(sab, base + CTRL_INTS * 4, JOB_DOUBLES),
      error: new Uint8Array(sab, base + CTRL_INTS * 4 + JOB_DOUBLES * 8, ERROR_BYTES),
      seq: 0,
    };
    // A worker that cannot start (its module did not load) leaves the pool, and says so: kernels run on fewer threads.
    worker.on("error", (err: unknown) => {
      Atomics.store(w.ctrl, CTRL.ready, 0);
      workers = workers.filter((x) => x !== w);
      console.error(`thread pool: a worker stopped (${(err as Error)?.message ?? err}); kernels use fewer threads`);
    });
    workers.push(w);
  }
  return n;
}

/** Stops the pool's workers; kernels then run on the calling thread. */
export function stopThreads(): void {
  for (const w of workers) {
    Atomics.store(w.ctrl, CTRL.seq, -1);
    Atomics.notify(w.ctrl, CTRL.seq);
    w.worker.terminate();
  }
  workers = [];
  wanted = 1;
}

/**
 * Threads that share a kernel now: the calling thread and the workers that have loaded.
 * @returns at least 1
 */
export function threadCount(): number {
  let n = 1;
  for (const w of workers) if (Atomics.load(w.ctrl, CTRL.ready) === 1) n++;
  return n;
}

/** A typed array a worker can see: one of {@link ARRAY_TYPES}, off V8's heap (longer than 64 bytes) or empty. */
function shareable(a: ArrayBufferView): boolean {
  return (a.byteLength === 0 || a.byteLength > 64) && ARRAY_TYPES.some((T) => a instanceof T);
}

/**
 * An input a worker can see: `a` itself, or when V8 may keep it on its heap (64 bytes or fewer: drop-path's factors
 * for a batch of 16), a copy padded past that size. Only for inputs: a worker's writes to a copy would be lost.
 * @param a a kernel's input
 * @returns `a`, or a longer copy whose first `a.length` values are `a`'s
 */
export function offHeap(a: Float32Array): Float32Array {
  if (a.byteLength === 0 || a.byteLength > 64) return a;
  const copy = new Float32Array(32);
  copy.set(a);
  return copy;
}

function address(a: ArrayBufferView): number {
  if (a.byteLength === 0) return 0;
  return Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(a)));
}

function post(
  w: PoolWorker,
  kernel: number,
  arrays: readonly ArrayBufferView[],
  scalars: ArrayLike<number>,
  lo: number,
  hi: number,
) {
  const job = w.job;
  job[JOB.kernel] = kernel;
  job[JOB.lo] = lo;
  job[JOB.hi] = hi;
  job[JOB.arrays] = arrays.length;
  for (let i = 0; i < arrays.length; i++) {
    const a = arrays[i];
    const type = ARRAY_TYPES.findIndex((T) => a instanceof T);
    job[JOB.first + 3 * i] = address(a);
    job[JOB.first + 3 * i + 1] = a.byteLength;
    job[JOB.first + 3 * i + 2] = type;
  }
  const s0 = JOB.first + 3 * MAX_ARRAYS;
  for (let i = 0; i < scalars.length; i++) job[s0 + i] = scalars[i];
  w.seq = (w.seq % 0x3fffffff) + 1; // stays positive: a negative sequence number tells the worker to stop
  Atomics.store(w.ctrl, CTRL.seq, w.seq);
  Atomics.notify(w.ctrl, CTRL.seq);
}

/**
 * Elements (or element-sized steps of work) worth a thread of their own: about 10–30 µs of a kernel's work, several
 * times a job's hand-over (a few µs while the worker spins, 20–50 µs to wake it).
 */
export const PARALLEL_GRAIN = 16384;

/**
 * The same for kernels that only move memory (copies, dropout, residual sums): a waking worker costs as much as
 * copying about 100k floats, and in a training step it is usually asleep (ONNX Runtime's products ran in between).
 * Measured on the stand-ins' step (2 threads): head split/merge went from 6 to 8–11 ms per step when shared at 16k.
 */
export const COPY_GRAIN = 1 << 17;

/**
 * The fewest items worth a thread for {@link parallelFor}, given each item's size.
 * @param perItem elements per item (a row's length, a column's height; 1 for elementwise kernels)
 * @returns items per thread, at least 1
 */
export function grain(perItem: number): number {
  return Math.max(1, Math.ceil(PARALLEL_GRAIN / Math.max(1, perItem)));
}

/** How long the caller waits for a worker before it reports the pool broken. */
const WAIT_LIMIT_MS = 120_000;

function wait(w: PoolWorker): void {
  // Stopped by another worker's timeout: no use waiting for this one's answer.
  if (!workers.includes(w)) throw new BackendError("thread pool: stopped while a job was running");
  let spins = 0;
  while (Atomics.load(w.ctrl, CTRL.done) !== w.seq) {
    if (++spins < 1 << 16) continue;
    // A long job (AdamW over millions of values): sleep on the done slot instead of spinning.
    const t0 = performance.now();
    while (Atomics.load(w.ctrl, CTRL.done) !== w.seq) {
      Atomics.wait(w.ctrl, CTRL.done, Atomics.load(w.ctrl, CTRL.done), 10);
      if (performance.now() - t0 > WAIT_LIMIT_MS) {
        stopThreads();
        throw new BackendError(`thread pool: a worker did not finish a job in ${WAIT_LIMIT_MS / 1000} s; pool stopped`);
      }
    }
  }
  if (Atomics.load(w.ctrl, CTRL.failed) === 1) {
    const text = new TextDecoder().decode(w.error.slice()).replace(/\0+$/, "");
    Atomics.store(w.ctrl, CTRL.failed, 0);
    throw new BackendError(`thread pool: a worker failed: ${text}`);
  }
}

/**
 * Runs `kernel` over `[0, n)`, cut into one contiguous range per thread with at least `grain` items each (fewer
 * threads when `n` is small; the calling thread alone below `2·grain`). Blocks until every range is done.
 *
 * @param kernel a kernel of `range_kernels.ts`
 * @param arrays its arrays (at most {@link MAX_ARRAYS}; with any but a Float32Array, Float64Array, Int32Array or
 *   Uint8Array, or an array of 64 bytes or fewer (V8 may keep those on its heap, where they can move), the calling
 *   thread runs it all)
 * @param scalars its numbers (at most {@link MAX_SCALARS})
 * @param n the items (rows, columns or elements, as the kernel defines)
 * @param grain the fewest items worth a thread of their own
 * @throws {BackendError} a worker's kernel threw (its message), or a worker stopped answering
 */
export function parallelFor(
  kernel: RangeKernelName,
  arrays: readonly ArrayBufferView[],
  scalars: ArrayLike<number>,
  n: number,
  grain: number,
): void {
  const fn = RANGE_KERNELS[kernel];
  const ready = workers.length ? workers.filter((w) => Atomics.load(w.ctrl, CTRL.ready) === 1) : workers;
  const t = Math.min(ready.length + 1, Math.floor(n / Math.max(1, grain)));
  if (!(t > 1) || !arrays.every(shareable) || arrays.length > MAX_ARRAYS || scalars.length > MAX_SCALARS) {
    fn(arrays, scalars, 0, n);
    return;
  }
  const id = RANGE_KERNEL_NAMES.indexOf(kernel);
  const bound = (k: number) => Math.floor((n * k) / t);
  for (let k = 1; k < t; k++) post(ready[k - 1], id, arrays, scalars, bound(k), bound(k + 1));
  jobsShared += t - 1;
  let failure: unknown;
  try {
    fn(arrays, scalars, 0, bound(1));
  } catch (err) {
    failure = err;
  }
  // Wait for every worker even when one range failed: the arrays must outlive their readers.
  for (let k = 1; k < t; k++) {
    try {
      wait(ready[k - 1]);
    } catch (err) {
      failure ??= err;
    }
  }
  if (failure) throw failure;
}
