/**
 * A pool of float32 output buffers for the accelerated `cpu` kernels.
 *
 * Why: a refinement step allocates tens of GB of short-lived `Float32Array`s.
 * V8 counts every ArrayBuffer as external memory and starts a full
 * mark-compact each time about 64 MB more has been allocated since the last
 * one: measured on ViT-B/16 + BERT-base at batch 8, 647 collections and 19 s of
 * pauses in a 57 s step. Reusing the buffers of disposed tensors removes most
 * of those allocations (and their page faults).
 *
 * Safety: a buffer goes back to the pool only when nothing else can see it. It
 * must have come from {@link allocFloat32}, be let go by the last tfjs data
 * entry that held it, never have been returned by `readSync`
 * (`dataSync()`, `data()`, `array()` hand out the backing array itself on the
 * `cpu` backend), and never have had a view of it stored as another tensor's
 * values (tfjs's contiguous `slice` does that). Anything else is left to V8.
 * @module
 */
import { BackendError } from "../util/errors.ts";
import { adviseHugePages, releasePages } from "./malloc.ts";

type DataEntry = { values?: unknown; refCount: number };
type CpuBackendInternals = {
  data: { get(id: object): DataEntry | undefined };
  write(values: unknown, shape: number[], dtype: string): object;
  move(dataId: object, values: unknown, shape: number[], dtype: string, refCount: number): void;
  disposeData(dataId: object, force?: boolean): boolean;
  readSync(dataId: object): unknown;
};

/** Arrays shorter than this are left to V8 (their allocation is cheap and small). */
const MIN_POOLED = 1 << 14;
/** The least the pool may hold when it follows the working set. */
const FLOOR_BYTES = 256 * 2 ** 20;

/**
 * Buffers in use plus buffers pooled are kept within the most the workload has itself had in use at once (its
 * high-water mark): a training step frees its activations during the backward pass and allocates the same shapes
 * again in the next forward pass, so pooling up to that much makes the next step nearly allocation-free without
 * raising its peak footprint. Oldest buffers are evicted first, so shapes that stop recurring age out.
 */
function currentLimit(): number {
  return fixedLimit ?? Math.max(FLOOR_BYTES, liveHighWater);
}

const free = new Map<number, Float32Array[]>();
/** Every pooled array, oldest first (a Set keeps insertion order), for eviction. */
const byAge = new Set<Float32Array>();
/** Arrays from {@link allocFloat32} that may still return to the pool. */
const poolable = new WeakSet<Float32Array>();
/** The poolable array owning each buffer, to recognise views of it. */
const ownerOf = new WeakMap<ArrayBufferLike, Float32Array>();
/** How many live data entries hold each poolable array. */
const holders = new WeakMap<Float32Array, number>();
let pooledBytes = 0;
/** Bytes of poolable arrays handed out and not yet back: the workload's own working set. */
let liveBytes = 0;
let liveHighWater = 0;
/** A fixed limit (RETFINER_POOL_MIB or installBufferPool's argument), or undefined to follow the working set. */
let fixedLimit: number | undefined;
let installedOn: { backend: CpuBackendInternals; originals: Partial<CpuBackendInternals> } | undefined;
const counters = { hits: 0, misses: 0, returned: 0, dropped: 0 };

/** Counters of the pool since it was installed. */
export interface BufferPoolStats {
  /** Allocations served from the pool. */
  hits: number;
  /** Allocations that made a new array. */
  misses: number;
  /** Arrays returned to the pool by disposed tensors. */
  returned: number;
  /** Arrays not kept because the pool was at its limit. */
  dropped: number;
  /** Bytes held by the pool now. */
  pooledBytes: number;
  /** The pool's limit in bytes now. */
  limitBytes: number;
  /** The most bytes of pooled-size arrays that were in use at once. */
  liveHighWater: number;
  /** Bytes of pooled-size arrays in use now (handed out, not yet back). */
  liveBytes: number;
}

/**
 * The pool's counters.
 * @returns buffers reused (hits), newly allocated (misses), returned to the pool and dropped
 */
export function bufferPoolStats(): BufferPoolStats {
  return { ...counters, pooledBytes, limitBytes: currentLimit(), liveHighWater, liveBytes };
}

/**
 * A float32 array of length `n` for a kernel's output. Its contents are
 * arbitrary (a reused buffer is not cleared) unless `zero` is set.
 * @param n the length
 * @param zero clear a reused buffer (new buffers are zero anyway)
 * @returns a buffer of exactly `n` elements
 */
export function allocFloat32(n: number, zero = false): Float32Array {
  if (!installedOn || n < MIN_POOLED) return new Float32Array(n);
  liveBytes += 4 * n;
  if (liveBytes > liveHighWater) liveHighWater = liveBytes;
  const reused = free.get(n)?.pop();
  if (reused) {
    byAge.delete(reused);
    pooledBytes -= reused.byteLength;
    counters.hits++;
    poolable.add(reused);
    if (zero) reused.fill(0);
    return reused;
  }
  counters.misses++;
  evictUntil(currentLimit() - liveBytes);
  const fresh = new Float32Array(n);
  adviseHugePages(fresh); // before its first write: one fault per 2 MiB instead of per 4 KiB
  poolable.add(fresh);
  ownerOf.set(fresh.buffer, fresh);
  return fresh;
}

/**
 * A new array of `like`'s type and length `n`: float32 ones come from {@link allocFloat32} (so their contents are
 * arbitrary unless `zero`), other types are new (and zeroed).
 */
export function allocLike<T extends ArrayBufferView>(like: T, n: number, zero = false): T {
  if (like instanceof Float32Array) return allocFloat32(n, zero) as unknown as T;
  return new (like.constructor as new (n: number) => T)(n);
}

/** Marks a handed-out array as never coming back (it was exposed or viewed). */
function retire(values: Float32Array): void {
  if (poolable.delete(values)) liveBytes -= values.byteLength;
}

/** Drops the oldest pooled buffers until the pool holds at most `bytes`. */
function evictUntil(bytes: number): void {
  while (pooledBytes > Math.max(0, bytes) && byAge.size) {
    const oldest = byAge.values().next().value!;
    byAge.delete(oldest);
    const list = free.get(oldest.length)!;
    list.splice(list.indexOf(oldest), 1);
    pooledBytes -= oldest.byteLength;
    counters.dropped++;
    releasePages(oldest);
  }
}

function giveBack(values: Float32Array): void {
  retire(values);
  // Invariant: buffers in use plus buffers pooled stay within the limit, so the pool never raises the footprint
  // above the workload's own high-water mark.
  const room = currentLimit() - liveBytes;
  if (values.byteLength > room) {
    counters.dropped++;
    releasePages(values);
    return;
  }
  evictUntil(room - values.byteLength);
  let list = free.get(values.length);
  if (!list) free.set(values.length, list = []);
  list.push(values);
  byAge.add(values);
  pooledBytes += values.byteLength;
  counters.returned++;
}

function noteHeld(values: unknown): void {
  if (!(values instanceof Float32Array)) return;
  const owner = ownerOf.get(values.buffer);
  if (!owner) return;
  if (owner !== values) {
    // A view of a pooled buffer: the owner can never be recycled safely.
    retire(owner);
    return;
  }
  holders.set(values, (holders.get(values) ?? 0) + 1);
}

/**
 * Hooks `backend` (tfjs's `cpu` backend) so that the buffers of disposed
 * tensors are reused by {@link allocFloat32}. Idempotent. By default the pool
 * keeps at most the working set's high-water mark (at least 256 MiB);
 * `limitMiB` (or `RETFINER_POOL_MIB`) fixes the cap instead, and 0 turns
 * pooling off.
 * @param backend tfjs's `cpu` backend object
 * @param limitMiB the pool's cap in MiB (0: off; default: `RETFINER_POOL_MIB`, else the high-water mark)
 * @throws {BackendError} when the cap (or `RETFINER_POOL_MIB`) is not a number ≥ 0
 */
export function installBufferPool(backend: object, limitMiB?: number): void {
  const env = Deno.env.get("RETFINER_POOL_MIB");
  const mib = limitMiB ?? (env !== undefined && env !== "" ? Number(env) : undefined);
  if (mib !== undefined && (!Number.isFinite(mib) || mib < 0)) {
    throw new BackendError(`RETFINER_POOL_MIB must be a number of MiB ≥ 0, got "${env}"`);
  }
  fixedLimit = mib === undefined ? undefined : mib * 2 ** 20;
  if (installedOn?.backend === backend) return;
  uninstallBufferPool();
  if (mib === 0) return;
  const b = backend as CpuBackendInternals;
  const originals = { write: b.write, move: b.move, disposeData: b.disposeData, readSync: b.readSync };
  b.write = function (values, shape, dtype) {
    noteHeld(values);
    return originals.write.call(this, values, shape, dtype);
  };
  b.move = function (dataId, values, shape, dtype, refCount) {
    noteHeld(values);
    return originals.move.call(this, dataId, values, shape, dtype, refCount);
  };
  b.readSync = function (dataId) {
    const values = this.data.get(dataId)?.values;
    if (values instanceof Float32Array) retire(values); // handed to user code: never reuse
    return originals.readSync.call(this, dataId);
  };
  b.disposeData = function (dataId, force = false) {
    const entry = this.data.get(dataId);
    const values = entry?.values;
    const freed = originals.disposeData.call(this, dataId, force);
    if (freed && entry && values instanceof Float32Array && holders.has(values)) {
      const left = holders.get(values)! - 1;
      if (left > 0) holders.set(values, left);
      else {
        holders.delete(values);
        if (poolable.has(values)) giveBack(values);
      }
    }
    return freed;
  };
  installedOn = { backend: b, originals };
}

/** Removes the hooks and empties the pool. */
export function uninstallBufferPool(): void {
  if (installedOn) Object.assign(installedOn.backend, installedOn.originals);
  installedOn = undefined;
  drainBufferPool();
}

/** Drops every pooled buffer (V8 frees them at its next collection) and forgets the working set's size. */
export function drainBufferPool(): void {
  free.clear();
  byAge.clear();
  pooledBytes = 0;
  liveHighWater = liveBytes;
}
