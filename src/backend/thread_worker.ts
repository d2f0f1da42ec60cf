/**
 * A worker of the `cpu` backend's thread pool (`threads.ts`): waits for a job in its slot of the shared buffer, runs
 * the kernel of `range_kernels.ts` it names over its range, on arrays it sees through their addresses, marks it done.
 * @module
 */
import { workerData } from "node:worker_threads";
import { RANGE_KERNEL_NAMES, RANGE_KERNELS } from "./range_kernels.ts";
import { ARRAY_TYPES, CTRL, ERROR_BYTES, JOB, MAX_ARRAYS, MAX_SCALARS } from "./threads.ts";

const { sab, base } = workerData as { sab: SharedArrayBuffer; base: number };
const ctrl = new Int32Array(sab, base, 8);
const job = new Float64Array(sab, base + 32, JOB.first + 3 * MAX_ARRAYS + MAX_SCALARS);
const error = new Uint8Array(sab, job.byteOffset + job.byteLength, ERROR_BYTES);
const kernels = RANGE_KERNEL_NAMES.map((name) => RANGE_KERNELS[name]);
const scalars = job.subarray(JOB.first + 3 * MAX_ARRAYS);
/** Polls for the next job this many times before sleeping: kernels of a training step come tens of µs apart. */
const SPINS = 2000;

function view(i: number): ArrayBufferView {
  const o = JOB.first + 3 * i;
  const addr = job[o], bytes = job[o + 1]; // no `| 0`: arrays may exceed 2 GiB
  const T = ARRAY_TYPES[job[o + 2] | 0];
  if (bytes === 0) return new T(0);
  const buffer = new Deno.UnsafePointerView(Deno.UnsafePointer.create(BigInt(addr))!).getArrayBuffer(bytes);
  return new T(buffer);
}

function run(): void {
  const arrays: ArrayBufferView[] = [];
  for (let i = 0, n = job[JOB.arrays] | 0; i < n; i++) arrays.push(view(i));
  kernels[job[JOB.kernel] | 0](arrays, scalars, job[JOB.lo] | 0, job[JOB.hi] | 0);
}

Atomics.store(ctrl, CTRL.ready, 1);
let seq = 0;
for (;;) {
  for (let s = 0; s < SPINS && Atomics.load(ctrl, CTRL.seq) === seq; s++);
  Atomics.wait(ctrl, CTRL.seq, seq);
  const next = Atomics.load(ctrl, CTRL.seq);
  if (next < 0) break;
  if (next === seq) continue;
  seq = next;
  try {
    run();
  } catch (err) {
    error.fill(0);
    new TextEncoder().encodeInto(String((err as Error)?.stack ?? err).slice(0, ERROR_BYTES / 4), error);
    Atomics.store(ctrl, CTRL.failed, 1);
  }
  Atomics.store(ctrl, CTRL.done, seq);
  Atomics.notify(ctrl, CTRL.done);
}
