/**
 * Probing features: the `concat` representation of each model family
 * (method notes §2.2) for every image of a dataset, preprocessed with the
 * probing recipe (bilinear resize, §2.5). In `fast` mode features are computed
 * once in eval mode; in `faithful` mode training features are recomputed each
 * epoch with the augmentations and the backbone's stochastic depth active,
 * as the authors' `model.train(True)` does.
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
async function batchedFeatures(
  paths: string[],
  size: number,
  stats: { mean: readonly [number, number, number]; std: readonly [number, number, number] },
  dim: number,
  options: FeatureOptions,
  forward: (data: Float32Array, n: number) => Float32Array | Promise<Float32Array>,
): Promise<Float32Array> {
  const spec = probingSpec(size, stats);
  const out = new Float32Array(paths.length * dim);
  const batches = batchIndices(paths.length, options.batchSize ?? 16);
  let done = 0;
  const loaders = batches.map((idx) => () =>
    loadImageBatch(paths, idx, spec, {
      augment: options.augment?.fork(`batch/${idx[0]}`),
      cache: options.augment ? undefined : options.cache,
    })
  );
  for await (const b of prefetch(loaders, 2)) {
    const data = await forward(b.data, b.n);
    checkFeatures(data, dim, b.indices.map((i) => paths[i]));
    out.set(data, b.indices[0] * dim);
    done += b.n;
    options.onProgress?.({ phase: options.phase ?? "features", done, total: paths.length });
  }
  return out;
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
    extract: (paths, options) =>
      batchedFeatures(paths, c.imgSize, c, dim, options, async (data, n) => {
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
      }),
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
