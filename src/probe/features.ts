/**
 * Probing features: the `concat` representation of each model family
 * (method notes §2.2) for every image of a dataset, preprocessed with the
 * probing recipe (bilinear resize, §2.5). In `fast` mode features are computed
 * once in eval mode; in `faithful` mode training features are recomputed each
 * epoch with the augmentations and the backbone's stochastic depth active,
 * as the authors' `model.train(True)` does.
 *
 * Under `mpiexec -n N` ({@link FeatureOptions.collective}) the images are shared out by batch: the batches are the
 * single-process run's (`batchIndices(n, batchSize)`, in input order) and batch k is computed on rank k mod N; after
 * each round of N batches every rank's results are gathered ({@link gatherBatches}). Why by whole batches: every image
 * then goes through the same forward pass, in the same batch, as without MPI, so the gathered features equal the
 * single-process ones bit for bit (a GEMM's rounding can depend on how many rows it multiplies), and the
 * augmentation, keyed by each batch's first index, draws the same. Round-robin keeps the ranks within one batch of
 * each other; gathering per round bounds the buffers to N batches.
 * @module
 */
import { countNonFinite, firstNonFinite } from "../util/finite.ts";
import { tf } from "../backend/tf.ts";
import { batchIndices, type InputCache, loadImageBatch, prefetch } from "../dataset/batches.ts";
import { probingSpec } from "../dataset/preprocess.ts";
import { featureDim, imagesTensor, type VitConfig, vitFeatures, type VitModel } from "../encoders/vit.ts";
import type { ProgressCallback } from "../util/progress.ts";
import type { Rng } from "../util/rng.ts";
import { ProbeError } from "../util/errors.ts";
import { type Collective, SINGLE_PROCESS } from "../dist/mpi.ts";

/** Options of {@link extractFeatures}. */
export interface FeatureOptions {
  /** Images per forward pass (default 16). */
  batchSize?: number;
  /** Apply the probing augmentations with this generator. */
  augment?: Rng;
  /** Training mode: stochastic depth active, drawn from this generator. */
  dropPath?: Rng;
  /** Reuse preprocessed inputs (only without augmentation). */
  cache?: InputCache;
  /** Progress updates. */
  onProgress?: ProgressCallback;
  /** Progress phase label. */
  phase?: string;
  /**
   * The MPI world to share the batches over (default: one process). Every rank must call with the same paths and
   * options; every rank gets all the features. A rank that fails ends the job ({@link gatherBatches}).
   */
  collective?: Collective;
}

/**
 * The batches rank `rank` of `size` computes: batch k belongs to rank k mod size.
 * @param batchCount number of batches of the single-process run
 * @param rank this rank (0-based)
 * @param size number of ranks
 * @returns the indices of this rank's batches, ascending
 */
export function ownBatches(batchCount: number, rank: number, size: number): number[] {
  const own: number[] = [];
  for (let k = rank; k < batchCount; k += size) own.push(k);
  return own;
}

/**
 * Computes `perItem` float32 values for every item of `batches` (index lists covering 0…n−1, each contiguous and
 * ascending, as `batchIndices` makes them), sharing the batches over the ranks of `collective`: batch k on rank
 * k mod N, gathered after every round of N batches so that each rank returns the whole array. With one process
 * it is a plain loop with two batches loaded ahead.
 *
 * Why a failing rank aborts: the other ranks would wait in the next gather forever. So under MPI an error on any
 * rank (an unreadable image, a non-finite feature) prints `rank r of N failed, ending all ranks: …` and calls
 * `collective.abort(1)`, which ends every rank of the job.
 * @param batches the item indices of each batch, in the single-process order
 * @param perItem values per item
 * @param load reads a batch's inputs (started up to two batches ahead)
 * @param compute a loaded batch's values, `[batch.length, perItem]`
 * @param options `collective` (default one process), `onRows` (rows finished so far, all ranks together, after each
 *   batch or round)
 * @returns `[n, perItem]`, row i for item i
 * @throws whatever `load` or `compute` throws, with one process (under MPI the job is aborted instead)
 */
export async function gatherBatches<B>(
  batches: number[][],
  perItem: number,
  load: (indices: number[]) => Promise<B>,
  compute: (batch: B, indices: number[]) => Promise<Float32Array> | Float32Array,
  options: { collective?: Collective; onRows?: (done: number) => void } = {},
): Promise<Float32Array> {
  const world = options.collective ?? SINGLE_PROCESS;
  const n = batches.reduce((a, b) => a + b.length, 0);
  const out = new Float32Array(n * perItem);
  if (world.size === 1) {
    let done = 0;
    let k = 0;
    for await (const b of prefetch(batches.map((idx) => () => load(idx)), 2)) {
      const idx = batches[k++];
      out.set(await compute(b, idx), idx[0] * perItem);
      done += idx.length;
      options.onRows?.(done);
    }
    return out;
  }
  try {
    const own = ownBatches(batches.length, world.rank, world.size);
    const loaded = prefetch(own.map((k) => () => load(batches[k])), 2)[Symbol.asyncIterator]();
    const slot = Math.max(...batches.map((b) => b.length)) * perItem;
    const rounds = Math.ceil(batches.length / world.size);
    let done = 0;
    for (let t = 0; t < rounds; t++) {
      const mine = t * world.size + world.rank;
      const send = new Float32Array(slot);
      if (mine < batches.length) {
        const next = await loaded.next();
        const values = await compute(next.value as B, batches[mine]);
        if (values.length !== batches[mine].length * perItem) {
          throw new ProbeError(`a batch of ${batches[mine].length} gave ${values.length} values, not ${perItem} each`);
        }
        send.set(values);
      }
      const all = world.allgather(send);
      for (let q = 0; q < world.size; q++) {
        const k = t * world.size + q;
        if (k >= batches.length) break;
        const rows = batches[k].length;
        out.set(all.subarray(q * slot, q * slot + rows * perItem), batches[k][0] * perItem);
        done += rows;
      }
      options.onRows?.(done);
    }
    return out;
  } catch (err) {
    console.error(
      `rank ${world.rank} of ${world.size} failed, ending all ranks: ${(err as Error).message ?? String(err)}`,
    );
    world.abort(1);
    throw err;
  }
}

/**
 * Refuses a batch of features holding a NaN or infinite value, naming the image:
 * such a feature would make every later step (head, metrics) meaningless.
 * @param data features `[paths.length, dim]`
 * @param dim features per image
 * @param paths the image of each row
 * @throws {ProbeError} naming the first image with a non-finite feature
 */
export function checkFeatures(data: Float32Array, dim: number, paths: string[]): void {
  const i = firstNonFinite(data);
  if (i >= 0) {
    const row = Math.floor(i / dim);
    const bad = countNonFinite(data, row * dim, (row + 1) * dim);
    throw new ProbeError(
      `${paths[row]}: its features hold ${bad} non-finite value(s) of ${dim} (first: ${data[i]} at ${
        i - row * dim
      }); ` +
        `the weights or the image give NaN/Inf through the encoder`,
    );
  }
}

/** What a linear probe is fitted on: a frozen encoder's features, or a reference such as raw pixels. */
export interface FeatureSource {
  /** Features per image. */
  dim: number;
  /** The model family whose probe weight decay applies (§2.3); a reference takes its model's. */
  family: string;
  /** What the features are, for reports (e.g. "concat of a ViT 192×6", "raw pixels 28×28"). */
  kind: string;
  /**
   * Features `[paths.length, dim]`, row i for paths[i].
   * @throws {ProbeError} an image whose features are not all finite (named)
   */
  extract(paths: string[], options: FeatureOptions): Promise<Float32Array>;
}

/**
 * Runs `forward` over preprocessed batches of `paths` (the probing recipe at `size` with `stats`).
 * @returns `[paths.length, dim]` in input order
 */
function batchedFeatures(
  paths: string[],
  size: number,
  stats: { mean: readonly [number, number, number]; std: readonly [number, number, number] },
  dim: number,
  options: FeatureOptions,
  forward: (data: Float32Array, n: number) => Float32Array | Promise<Float32Array>,
): Promise<Float32Array> {
  const spec = probingSpec(size, stats);
  return gatherBatches(
    batchIndices(paths.length, options.batchSize ?? 16),
    dim,
    (idx) =>
      loadImageBatch(paths, idx, spec, {
        augment: options.augment?.fork(`batch/${idx[0]}`),
        cache: options.augment ? undefined : options.cache,
      }),
    async (b) => {
      const data = await forward(b.data, b.n);
      checkFeatures(data, dim, b.indices.map((i) => paths[i]));
      return data;
    },
    {
      collective: options.collective,
      onRows: (done) => options.onProgress?.({ phase: options.phase ?? "features", done, total: paths.length }),
    },
  );
}

/**
 * `concat` features `[paths.length, 2·D]` in input order.
 * @param vit the backbone
 * @param paths the images
 * @param options batch size, augmentation, training mode, cache, progress
 * @returns the features, row i for paths[i]
 * @throws {ProbeError} an image whose features are not all finite (named)
 */
export function extractFeatures(
  vit: VitModel,
  paths: string[],
  options: FeatureOptions = {},
): Promise<Float32Array> {
  return vitSource(vit).extract(paths, options);
}

/**
 * A frozen ViT's `concat` representation (§2.2) as a probe's input.
 * @param vit the backbone
 * @returns its feature source (`dim` = 2·D)
 */
export function vitSource(vit: VitModel): FeatureSource {
  const c = vit.config;
  const dim = featureDim(c, "concat");
  return {
    dim,
    family: c.family,
    kind: `concat of a ViT ${c.embedDim}×${c.depth}`,
    extract: (paths, options) => {
      if (options.dropPath && (options.collective?.size ?? 1) > 1) {
        // The drop-path generator runs through the batches in order: shared out, the draws would differ.
        return Promise.reject(
          new ProbeError("drop-path features are computed on one rank (give no collective with dropPath)"),
        );
      }
      return batchedFeatures(paths, c.imgSize, c, dim, options, async (data, n) => {
        const y = tf.tidy(() =>
          vitFeatures(
            vit,
            imagesTensor(data, n, c.imgSize),
            "concat",
            options.dropPath ? { training: true, rng: options.dropPath } : {},
          )
        );
        try {
          return (await y.data()) as Float32Array; // asynchronous: WebGPU has no synchronous read under Deno
        } finally {
          y.dispose();
        }
      });
    },
  };
}

/** Side of the raw-pixel reference's grid (28×28 = 784 features; 112 px inputs average 4×4 blocks). */
export const PIXEL_GRID = 28;

/**
 * The raw-pixel reference: each image through the same probing recipe (resize, augmentation, normalisation) as the
 * model it stands beside, then box-averaged to `grid × grid` (one channel: the three are copies of the grey plane).
 * What a linear probe gets from pixels alone; a foundation model's features should beat it.
 * @param model the compared model's input size, normalisation and family (its probe's weight decay)
 * @param grid output side; must divide `model.imgSize` (default {@link PIXEL_GRID}, or the input size itself)
 * @returns the feature source (`dim` = grid²)
 * @throws {ProbeError} when `grid` does not divide the input size
 */
export function pixelSource(
  model: Pick<VitConfig, "imgSize" | "mean" | "std" | "family">,
  grid: number = model.imgSize % PIXEL_GRID === 0 ? PIXEL_GRID : model.imgSize,
): FeatureSource {
  const S = model.imgSize;
  if (!Number.isInteger(grid) || grid < 1 || S % grid !== 0) {
    throw new ProbeError(`raw-pixel reference: a ${grid}×${grid} grid does not divide the ${S} px input`);
  }
  const f = S / grid;
  const dim = grid * grid;
  return {
    dim,
    family: model.family,
    kind: `raw pixels ${grid}×${grid}`,
    extract: (paths, options) =>
      batchedFeatures(paths, S, model, dim, options, (data, n) => {
        const out = new Float32Array(n * dim);
        for (let k = 0; k < n; k++) {
          const plane = data.subarray(k * 3 * S * S, k * 3 * S * S + S * S);
          for (let gy = 0; gy < grid; gy++) {
            for (let gx = 0; gx < grid; gx++) {
              let s = 0;
              for (let y = gy * f; y < (gy + 1) * f; y++) {
                for (let x = gx * f; x < (gx + 1) * f; x++) s += plane[y * S + x];
              }
              out[k * dim + gy * grid + gx] = s / (f * f);
            }
          }
        }
        return out;
      }),
  };
}
