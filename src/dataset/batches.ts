/**
 * Batching: seeded shuffling, and a prefetching loader that decodes the next
 * batch (sharp works on libuv threads) while the current one is computed,
 * with a bounded number of batches in flight. A decoding problem names the
 * file; with `skipBad` the image is dropped and reported instead.
 * @module
 */
import { DatasetError } from "../util/errors.ts";
import type { Rng } from "../util/rng.ts";
import { type GreyImage, loadGreyImage } from "./image.ts";
import { type PreprocessSpec, toModelInput } from "./preprocess.ts";

/**
 * Splits `0..n-1` into batches, shuffled with `rng` if given.
 * @param n the number of items
 * @param batchSize items per batch, ≥ 1
 * @param options `rng` to shuffle; `dropLast` to drop a last short batch
 * @returns the batches of indices
 * @throws {DatasetError} for a batch size below 1
 */
export function batchIndices(
  n: number,
  batchSize: number,
  options: { rng?: Rng; dropLast?: boolean } = {},
): number[][] {
  if (!(batchSize >= 1)) throw new DatasetError(`batch size must be >= 1, got ${batchSize}`);
  const order = options.rng ? options.rng.permutation(n) : Array.from({ length: n }, (_, i) => i);
  const out: number[][] = [];
  for (let i = 0; i < n; i += batchSize) {
    const b = order.slice(i, i + batchSize);
    if (options.dropLast && b.length < batchSize) break;
    out.push(b);
  }
  return out;
}

/**
 * Iterates `loaders` in order while keeping up to `depth` of them running
 * ahead, so the work of batch i+1 overlaps the compute of batch i.
 * @param loaders functions each producing one item
 * @param depth how many run ahead
 * @returns the items, in order
 */
export async function* prefetch<T>(loaders: Iterable<() => Promise<T>>, depth = 2): AsyncGenerator<T> {
  const queue: Promise<T>[] = [];
  const it = loaders[Symbol.iterator]();
  const fill = () => {
    while (queue.length < depth) {
      const next = it.next();
      if (next.done) return;
      const p = next.value();
      p.catch(() => {}); // handled when awaited
      queue.push(p);
    }
  };
  fill();
  while (queue.length) {
    const value = await queue.shift()!;
    fill();
    yield value;
  }
}

/** A batch of preprocessed images. */
export interface ImageBatch {
  /** `[n, 3, size, size]` normalised inputs. */
  data: Float32Array;
  /** Images in the batch (after skipping bad ones). */
  n: number;
  /** Indices (into the caller's list) of the images in `data`, in order. */
  indices: number[];
  /** Images that failed to load with `skipBad`: path and reason. */
  skipped: { path: string; reason: string }[];
}

/** A bounded in-memory cache of preprocessed model inputs keyed by path. */
export class InputCache {
  #map = new Map<string, Float32Array>();
  #bytes = 0;
  readonly #maxBytes: number;

  /**
   * Creates a cache holding at most `maxBytes` (default 1 GiB).
   * @param maxBytes the cache's capacity in bytes
   */
  constructor(maxBytes = 2 ** 30) {
    this.#maxBytes = maxBytes;
  }

  /**
   * A cached input, if present.
   * @param key the image path
   * @returns the preprocessed input `[3, S, S]`, or undefined
   */
  get(key: string): Float32Array | undefined {
    return this.#map.get(key);
  }

  /**
   * Stores an input unless the cache is full.
   * @param key the image path
   * @param value the preprocessed input (kept, not copied)
   */
  set(key: string, value: Float32Array): void {
    if (this.#map.has(key) || this.#bytes + value.byteLength > this.#maxBytes) return;
    this.#map.set(key, value);
    this.#bytes += value.byteLength;
  }
}

/** One image of a batch: decoded, taken from the cache, or (with `skipBad`) the reason it was skipped. */
type Decoded = { img?: GreyImage; cached?: Float32Array; error?: string };

/**
 * Loads and preprocesses images into one batch. `augment` (an Rng) applies
 * the probing augmentations; without it, inputs may be served from `cache`.
 * `origins[i]` (e.g. `manifest.csv:17`) prefixes the error of image `i`, so a
 * decoding failure names the manifest line as well as the file.
 * @param paths every image path of the dataset
 * @param indices which to load
 * @param spec the preprocessing recipe
 * @param options augmentation generator, `skipBad`, input cache, and origins for messages
 * @returns `data` `[n, 3, S, S]` float32, the count and indices loaded, and the images skipped with reasons
 * @throws {DatasetError} for an unreadable or invalid image, unless `skipBad`
 */
export async function loadImageBatch(
  paths: string[],
  indices: number[],
  spec: PreprocessSpec,
  options: { augment?: Rng; skipBad?: boolean; cache?: InputCache; origins?: readonly string[] } = {},
): Promise<ImageBatch> {
  const plane = 3 * spec.size * spec.size;
  const inputs: (Float32Array | undefined)[] = [];
  const skipped: { path: string; reason: string }[] = [];
  // Decode all images of the batch concurrently; augmentation draws happen afterwards, in order. allSettled, not
  // all: on an error every decode still finishes before it is thrown, so no native (sharp) work runs on after the
  // caller moved on (in-flight decodes left behind crashed the process at exit); the error is the first in batch order.
  const settled = await Promise.allSettled(indices.map(async (i): Promise<Decoded> => {
    const path = paths[i];
    if (!options.augment && options.cache?.get(path)) return { cached: options.cache.get(path)! };
    try {
      return { img: await loadGreyImage(path) };
    } catch (err) {
      if (!(err instanceof DatasetError)) throw err;
      // Name the manifest line too, when the caller knows it.
      const origin = options.origins?.[i];
      const e = origin ? new DatasetError(`${origin}: image ${err.message}`, { cause: err }) : err;
      if (options.skipBad) return { error: e.message };
      throw e;
    }
  }));
  const failed = settled.find((r) => r.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
  const decoded = settled.map((r) => (r as PromiseFulfilledResult<Decoded>).value);
  const kept: number[] = [];
  decoded.forEach((d, k) => {
    const path = paths[indices[k]];
    if ("error" in d) {
      skipped.push({ path, reason: d.error! });
      return;
    }
    const x = "cached" in d ? d.cached! : toModelInput(d.img!, spec, { augment: options.augment });
    if (!options.augment && !("cached" in d)) options.cache?.set(path, x);
    inputs.push(x);
    kept.push(indices[k]);
  });
  const data = new Float32Array(inputs.length * plane);
  inputs.forEach((x, k) => data.set(x!, k * plane));
  return { data, n: inputs.length, indices: kept, skipped };
}
