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
import { featureDim, imagesTensor, vitFeatures, type VitModel } from "../encoders/vit.ts";
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

/**
 * `concat` features `[paths.length, 2·D]` in input order.
 * @param vit the backbone
 * @param paths the images
 * @param options batch size, augmentation, training mode, cache, progress
 * @returns the features, row i for paths[i]
 * @throws {ProbeError} an image whose features are not all finite (named)
 */
export async function extractFeatures(
  vit: VitModel,
  paths: string[],
  options: FeatureOptions = {},
): Promise<Float32Array> {
  const c = vit.config;
  const spec = probingSpec(c.imgSize, { mean: c.mean, std: c.std });
  const dim = featureDim(c, "concat");
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
    const y = tf.tidy(() =>
      vitFeatures(
        vit,
        imagesTensor(b.data, b.n, c.imgSize),
        "concat",
        options.dropPath ? { training: true, rng: options.dropPath } : {},
      )
    );
    const data = y.dataSync() as Float32Array;
    y.dispose();
    checkFeatures(data, dim, b.indices.map((i) => paths[i]));
    out.set(data, b.indices[0] * dim);
    done += b.n;
    options.onProgress?.({ phase: options.phase ?? "features", done, total: paths.length });
  }
  return out;
}
