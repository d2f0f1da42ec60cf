/**
 * Resampling that matches the authors' two resizes (method notes §1.3, §2.5):
 * - refinement: torchvision `Resize(BICUBIC)` on a float tensor. The authors' environment (torch 2.4.1, so
 *   torchvision ≥ 0.17) antialiases it by default: `F.interpolate(mode="bicubic", align_corners=False,
 *   antialias=True)`, a separable filter with Keys' a = −0.5 stretched by the shrink factor (`bicubic`). Older
 *   torchvision did not: cubic convolution with a = −0.75 on four edge-clamped taps (`bicubic-noaa`);
 * - probing: torchvision `Resize(BILINEAR)` on a PIL image = PIL's bilinear
 *   (triangle) filter, antialiased when shrinking.
 * @module
 */
import type { GreyImage } from "./image.ts";

/**
 * Resize kernels: `bicubic` = PyTorch's antialiased bicubic (torchvision ≥ 0.17's default for tensors),
 * `bicubic-noaa` = PyTorch's bicubic without antialiasing (torchvision < 0.17), `bilinear` = PIL's bilinear.
 */
export type ResizeMode = "bicubic" | "bicubic-noaa" | "bilinear";

/**
 * PyTorch's cubic convolution weights (a = −0.75, `upsample_bicubic2d`) of the four taps around a sample at fraction
 * `t` past the left-centre tap. The one copy of the kernel: image resizing and the ViT's position-embedding
 * interpolation both use it.
 * @param t fractional offset in [0, 1)
 * @returns the weights of taps −1, 0, +1, +2 (they sum to 1)
 */
export function torchCubicWeights(t: number): [number, number, number, number] {
  const A = -0.75;
  const w0 = ((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A;
  const w1 = ((A + 2) * t - (A + 3)) * t * t + 1;
  const w2 = ((A + 2) * (1 - t) - (A + 3)) * (1 - t) * (1 - t) + 1;
  return [w0, w1, w2, 1 - w0 - w1 - w2];
}

/** Per-output-index taps `{index, weight}` along one axis. */
type Taps = { idx: Int32Array; w: Float32Array; n: number };

function torchBicubicTaps(inSize: number, outSize: number): Taps {
  const idx = new Int32Array(outSize * 4);
  const w = new Float32Array(outSize * 4);
  const scale = inSize / outSize;
  for (let o = 0; o < outSize; o++) {
    const src = (o + 0.5) * scale - 0.5;
    const f = Math.floor(src);
    const ws = torchCubicWeights(src - f);
    for (let k = 0; k < 4; k++) {
      idx[o * 4 + k] = Math.min(inSize - 1, Math.max(0, f - 1 + k));
      w[o * 4 + k] = ws[k];
    }
  }
  return { idx, w, n: 4 };
}

/** Keys' cubic with a = −0.5: the filter of PyTorch's antialiased bicubic (`aa_filter` in `UpSampleKernel.cpp`). */
function keysCubic(x: number): number {
  const a = -0.5;
  x = Math.abs(x);
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

/**
 * The separable antialiased resampling coefficients PIL's `ImagingResample` and PyTorch's antialiased
 * `interpolate` (`_compute_indices_min_size_weights_aa`, align_corners=False) share: `filter` of radius `radius`
 * stretched by the shrink factor, only in-range taps, normalised to sum 1.
 */
function antialiasTaps(inSize: number, outSize: number, filter: (x: number) => number, radius: number): Taps {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = radius * filterscale;
  const n = Math.ceil(support) * 2 + 1;
  const idx = new Int32Array(outSize * n);
  const w = new Float32Array(outSize * n);
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    // Both truncate toward zero (C casts), then clamp to the image.
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
    const ww: number[] = [];
    let total = 0;
    for (let x = xmin; x < xmax; x++) {
      const v = filter((x - center + 0.5) / filterscale);
      ww.push(v);
      total += v;
    }
    for (let k = 0; k < n; k++) {
      idx[o * n + k] = Math.min(inSize - 1, xmin + k);
      w[o * n + k] = k < ww.length && total !== 0 ? ww[k] / total : 0;
    }
  }
  return { idx, w, n };
}

/** PIL's bilinear (triangle) filter. */
function triangle(x: number): number {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

function resample(img: GreyImage, outW: number, outH: number, tx: Taps, ty: Taps, round8bit: boolean): GreyImage {
  const { width: W, height: H, data } = img;
  const tmp = new Float32Array(outW * H);
  for (let y = 0; y < H; y++) {
    for (let o = 0; o < outW; o++) {
      let s = 0;
      for (let k = 0; k < tx.n; k++) s += tx.w[o * tx.n + k] * data[y * W + tx.idx[o * tx.n + k]];
      tmp[y * outW + o] = round8bit ? Math.min(1, Math.max(0, Math.round(s * 255) / 255)) : s;
    }
  }
  const out = new Float32Array(outW * outH);
  for (let o = 0; o < outH; o++) {
    for (let x = 0; x < outW; x++) {
      let s = 0;
      for (let k = 0; k < ty.n; k++) s += ty.w[o * ty.n + k] * tmp[ty.idx[o * ty.n + k] * outW + x];
      out[o * outW + x] = round8bit ? Math.min(1, Math.max(0, Math.round(s * 255) / 255)) : s;
    }
  }
  return { width: outW, height: outH, data: out };
}

/**
 * Resizes a grey image. `bicubic` follows PyTorch's antialiased tensor interpolation (torchvision ≥ 0.17),
 * `bicubic-noaa` the one without antialiasing; `bilinear` follows PIL (set `pil8bit` to round each pass to 8 bits, as PIL
 * does for an 8-bit "L" image).
 * @param img the image (values in [0, 1])
 * @param width target width in pixels
 * @param height target height in pixels
 * @param mode `bicubic` (refinement, docs/method.md §1.3), `bicubic-noaa` (torchvision < 0.17) or `bilinear`
 *   (probing, §2.5)
 * @param options `pil8bit`: round each pass to 8 bits as PIL does
 * @returns a new image (a copy when the size is unchanged)
 */
export function resizeGrey(
  img: GreyImage,
  width: number,
  height: number,
  mode: ResizeMode,
  options: { pil8bit?: boolean } = {},
): GreyImage {
  if (img.width === width && img.height === height) return { width, height, data: img.data.slice() };
  if (mode === "bicubic") {
    return resample(
      img,
      width,
      height,
      antialiasTaps(img.width, width, keysCubic, 2),
      antialiasTaps(img.height, height, keysCubic, 2),
      false,
    );
  }
  if (mode === "bicubic-noaa") {
    return resample(
      img,
      width,
      height,
      torchBicubicTaps(img.width, width),
      torchBicubicTaps(img.height, height),
      false,
    );
  }
  // PIL resamples horizontally first only if the width changes, then vertically.
  return resample(
    img,
    width,
    height,
    antialiasTaps(img.width, width, triangle, 1),
    antialiasTaps(img.height, height, triangle, 1),
    !!options.pil8bit,
  );
}
