/**
 * Per-model preprocessing (method notes §1.3, §2.5): grey [0, 1] image →
 * resize (bicubic for refinement, bilinear for probing) → optional probing
 * augmentation → repeat to 3 channels → normalise with the model's mean/std.
 * @module
 */
import type { Rng } from "../util/rng.ts";
import { augmentProbe } from "./augment.ts";
import type { GreyImage } from "./image.ts";
import { resizeGrey, type ResizeMode } from "./resize.ts";

/** How images are turned into model inputs. */
export interface PreprocessSpec {
  /** Output height and width. */
  size: number;
  /** Resize kernel. */
  resize: ResizeMode;
  /** Per-channel mean. */
  mean: readonly [number, number, number];
  /** Per-channel std. */
  std: readonly [number, number, number];
  /** Round each bilinear pass to 8 bits for 8-bit sources, as PIL resizes an "L" image (probing, §2.5). */
  pil8bit?: boolean;
}

/**
 * The refinement recipe (§1.3): bicubic resize, no augmentation.
 * @param size the model's input side S in pixels
 * @param stats per-channel mean and std (see `familyStats`)
 * @returns the recipe
 */
export function refinementSpec(
  size: number,
  stats: { mean: readonly [number, number, number]; std: readonly [number, number, number] },
): PreprocessSpec {
  return { size, resize: "bicubic", mean: stats.mean, std: stats.std };
}

/**
 * The probing recipe (§2.5): bilinear resize.
 * @param size the model's input side S in pixels
 * @param stats per-channel mean and std (see `familyStats`)
 * @returns the recipe
 */
export function probingSpec(
  size: number,
  stats: { mean: readonly [number, number, number]; std: readonly [number, number, number] },
): PreprocessSpec {
  return { size, resize: "bilinear", mean: stats.mean, std: stats.std, pil8bit: true };
}

/**
 * Writes one preprocessed image as `[3, size, size]` into `out` at `offset`
 * (or a new array). With `augment` (an Rng), applies the probing augmentations.
 * @param img the grey image, values in [0, 1]
 * @param spec the recipe (size, resize mode, normalisation)
 * @param options the augmentation's generator; the batch array and offset to write into
 * @returns `out` (or a new `[3, S, S]` array), the grey plane repeated over 3 normalised channels
 */
export function toModelInput(
  img: GreyImage,
  spec: PreprocessSpec,
  options: { augment?: Rng; out?: Float32Array; offset?: number } = {},
): Float32Array {
  let g = resizeGrey(img, spec.size, spec.size, spec.resize, { pil8bit: !!spec.pil8bit && img.depth === 8 });
  if (options.augment) g = augmentProbe(g, options.augment);
  const plane = spec.size * spec.size;
  const out = options.out ?? new Float32Array(3 * plane);
  const off = options.offset ?? 0;
  for (let c = 0; c < 3; c++) {
    const m = spec.mean[c];
    const s = spec.std[c];
    const base = off + c * plane;
    for (let i = 0; i < plane; i++) out[base + i] = (g.data[i] - m) / s;
  }
  return out;
}
