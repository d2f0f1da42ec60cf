/**
 * The authors' probing-time augmentations (method notes §2.5), applied to a
 * resized grey image in this order: horizontal flip (p 0.5); intensity × U(0.8, 1.2)
 * clamped to [0, 1]; and with p 0.9 a random affine (±10°, translate ±10 %,
 * scale 0.9–1.1, x-shear ±5°, bilinear, fill 0) computed as torchvision's
 * tensor `F.affine` does. Draws come from a seeded {@link Rng}.
 * @module
 */
import type { Rng } from "../util/rng.ts";
import type { GreyImage } from "./image.ts";

/** Parameters of one affine transform (torchvision `RandomAffine.get_params`). */
export interface AffineParams {
  /** Rotation in degrees (counter-clockwise). */
  angle: number;
  /** Translation in whole pixels [x, y]. */
  translate: [number, number];
  /** Isotropic scale. */
  scale: number;
  /** Shear in degrees [x, y]. */
  shear: [number, number];
}

/**
 * torchvision's `_get_inverse_affine_matrix` about the image centre.
 * @param p angle and shear in degrees, translation in pixels, scale
 * @returns the 6 coefficients of the 2×3 matrix mapping output to input coordinates (relative to the centre)
 */
export function inverseAffineMatrix(p: AffineParams): number[] {
  const rot = (p.angle * Math.PI) / 180;
  const sx = (p.shear[0] * Math.PI) / 180;
  const sy = (p.shear[1] * Math.PI) / 180;
  const [tx, ty] = p.translate;
  const a = Math.cos(rot - sy) / Math.cos(sy);
  const b = (-Math.cos(rot - sy) * Math.tan(sx)) / Math.cos(sy) - Math.sin(rot);
  const c = Math.sin(rot - sy) / Math.cos(sy);
  const d = (-Math.sin(rot - sy) * Math.tan(sx)) / Math.cos(sy) + Math.cos(rot);
  const m = [d, -b, 0, -c, a, 0].map((x) => x / p.scale);
  m[2] += m[0] * -tx + m[1] * -ty;
  m[5] += m[3] * -tx + m[4] * -ty;
  return m;
}

/**
 * Applies an affine transform with bilinear sampling and fill 0, exactly as torchvision's tensor `F.affine(..., fill=0)`.
 * @param img the image
 * @param p the transform (see {@link sampleAffine})
 * @returns a new image of the same size
 */
export function affine(img: GreyImage, p: AffineParams): GreyImage {
  const { width: W, height: H, data } = img;
  const m = inverseAffineMatrix(p);
  const out = new Float32Array(W * H);
  const at = (x: number, y: number) => (x >= 0 && x < W && y >= 0 && y < H ? data[y * W + x] : 0);
  for (let i = 0; i < H; i++) {
    const yo = i - H / 2 + 0.5;
    for (let j = 0; j < W; j++) {
      const xo = j - W / 2 + 0.5;
      const xs = m[0] * xo + m[1] * yo + m[2] + W / 2 - 0.5;
      const ys = m[3] * xo + m[4] * yo + m[5] + H / 2 - 0.5;
      const x0 = Math.floor(xs);
      const y0 = Math.floor(ys);
      const fx = xs - x0;
      const fy = ys - y0;
      const w00 = (1 - fy) * (1 - fx), w01 = (1 - fy) * fx, w10 = fy * (1 - fx), w11 = fy * fx;
      const value = w00 * at(x0, y0) + w01 * at(x0 + 1, y0) + w10 * at(x0, y0 + 1) + w11 * at(x0 + 1, y0 + 1);
      // torchvision resamples an all-ones mask alongside and blends the fill with it; for fill 0 the
      // border pixels are therefore attenuated by the mask a second time.
      const inside = (x: number, y: number) => (x >= 0 && x < W && y >= 0 && y < H ? 1 : 0);
      const mask = w00 * inside(x0, y0) + w01 * inside(x0 + 1, y0) + w10 * inside(x0, y0 + 1) +
        w11 * inside(x0 + 1, y0 + 1);
      out[i * W + j] = value * mask;
    }
  }
  return { width: W, height: H, data: out };
}

/**
 * Draws affine parameters like torchvision `RandomAffine(10, (0.1, 0.1), (0.9, 1.1), 5)`.
 * @param rng the generator
 * @param width image width (translations are up to 10 % of it)
 * @param height image height
 * @returns angle in [−10°, 10°], translation rounded to whole pixels, scale in [0.9, 1.1], x-shear in [−5°, 5°]
 */
export function sampleAffine(rng: Rng, width: number, height: number): AffineParams {
  const angle = rng.uniformRange(-10, 10);
  const tx = Math.round(rng.uniformRange(-0.1 * width, 0.1 * width));
  const ty = Math.round(rng.uniformRange(-0.1 * height, 0.1 * height));
  const scale = rng.uniformRange(0.9, 1.1);
  const shearX = rng.uniformRange(-5, 5);
  return { angle, translate: [tx, ty], scale, shear: [shearX, 0] };
}

/**
 * The full probing augmentation: flip → intensity → affine (p 0.9).
 * @param img the image, values in [0, 1]
 * @param rng the generator
 * @returns the augmented image, same size (docs/method.md §2.5)
 */
export function augmentProbe(img: GreyImage, rng: Rng): GreyImage {
  const { width: W, height: H } = img;
  const data = img.data.slice();
  if (rng.uniform() < 0.5) {
    for (let y = 0; y < H; y++) data.subarray(y * W, (y + 1) * W).reverse();
  }
  let max = -Infinity;
  for (const v of data) if (v > max) max = v;
  const factor = rng.uniformRange(0.8, 1.2);
  if (max > 0) { for (let i = 0; i < data.length; i++) data[i] = Math.min(1, Math.max(0, data[i] * factor)); }
  let out: GreyImage = { width: W, height: H, data };
  if (rng.uniform() < 0.9) out = affine(out, sampleAffine(rng, W, H));
  return out;
}
