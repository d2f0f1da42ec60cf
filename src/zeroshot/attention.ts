/** Cross-attention maps of report tokens over a B-scan, their peakedness, and heat overlays. */
import sharp from "sharp";
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import type { GreyImage } from "../dataset/image.ts";
import { resizeGrey } from "../dataset/resize.ts";
import { bertEncode } from "../encoders/bert.ts";
import { vitRefineTokens } from "../encoders/vit.ts";
import type { RetfinerModel } from "../model/model.ts";

/**
 * The last cross-attention layer's maps from each word piece of `report` to the image patches (read asynchronously,
 * so every backend works).
 * @param model the RetFiner model
 * @param images one image `[1, 3, S, S]`, preprocessed
 * @param report the report text
 * @returns the word pieces, their maps row-major `[tokens, grid, grid]` and the grid side
 */
export async function crossAttentionMaps(
  model: RetfinerModel,
  images: Tensor,
  report: string,
): Promise<{ tokens: string[]; maps: Float32Array; grid: number }> {
  const a = attentionMapsTensor(model, images, report);
  try {
    return a.finish((await a.maps.data()) as Float32Array);
  } finally {
    a.maps.dispose();
  }
}

/** The maps as a tensor `[tokens, grid²]`, and how to turn their values into the result. */
function attentionMapsTensor(
  model: RetfinerModel,
  images: Tensor,
  report: string,
): { maps: Tensor; finish: (data: Float32Array) => { tokens: string[]; maps: Float32Array; grid: number } } {
  const c = model.vit.config;
  const tok = model.tokenizer.encodeBatch([report]);
  const L = tok.attentionMask.reduce((a, b) => a + b, 0);
  const grid = c.imgSize / c.patchSize;
  const probs: Tensor[] = [];
  const maps = tf.tidy(() => {
    const tokens = vitRefineTokens(model.vit, images);
    bertEncode(model.bert, {
      inputIds: tf.tensor(tok.inputIds, [1, tok.length], "int32"),
      attentionMask: tf.tensor(tok.attentionMask, [1, tok.length], "int32"),
      encoderHiddenStates: tokens,
    }, { crossAttentionOut: probs });
    // [layers, 1, heads, L, 1 + N] → mean over layers and heads, drop the CLS column.
    const m = tf.mean(tf.stack(probs), [0, 1, 2]) as Tensor;
    return tf.slice(m, [0, 1], [tok.length, grid * grid]);
  });
  const finish = (data: Float32Array) => {
    const values = data.slice(0, L * grid * grid);
    const pieces = Array.from(
      tok.inputIds.subarray(0, L),
      (id) =>
        model.tokenizer.decode([id]) ||
        (id === model.tokenizer.clsId ? "[CLS]" : id === model.tokenizer.sepId ? "[SEP]" : String(id)),
    );
    return { tokens: pieces, maps: values, grid };
  };
  return { maps, finish };
}

/**
 * How peaked an attention map is: its maximum over its mean (1 = uniform over
 * the patches; `grid²` = all mass on one patch). Overlays are stretched from
 * the map's minimum to its maximum, so read them together with this number.
 * @param map one token's map (grid² values)
 * @returns max / mean, in [1, grid²]
 */
export function attentionPeak(map: ArrayLike<number>): number {
  let max = -Infinity;
  let sum = 0;
  for (let i = 0; i < map.length; i++) {
    max = Math.max(max, map[i]);
    sum += map[i];
  }
  return sum > 0 ? max / (sum / map.length) : 0;
}

/**
 * Renders an attention map `[grid, grid]` over a grey image as a PNG heat
 * overlay, the map stretched from its minimum (clear) to its maximum (red-yellow).
 * @param image the grey image
 * @param map one token's map, row-major `[grid, grid]`
 * @param grid the map's side
 * @param size the PNG's side in pixels
 * @returns PNG bytes
 */
export async function attentionOverlayPng(
  image: GreyImage,
  map: Float32Array,
  grid: number,
  size = 256,
): Promise<Uint8Array> {
  const base = resizeGrey(image, size, size, "bilinear").data;
  const heat = resizeGrey({ width: grid, height: grid, data: map }, size, size, "bilinear").data;
  let max = -Infinity;
  let min = Infinity;
  for (const v of heat) {
    max = Math.max(max, v);
    min = Math.min(min, v);
  }
  const range = max - min;
  const rgb = new Uint8Array(size * size * 3);
  for (let i = 0; i < size * size; i++) {
    const h = range > 0 ? (heat[i] - min) / range : 0;
    const g = Math.min(1, Math.max(0, base[i]));
    // Grey scan, with attention in red-yellow (alpha grows with attention).
    const a = 0.6 * h;
    rgb[3 * i] = Math.round(255 * ((1 - a) * g + a * 1));
    rgb[3 * i + 1] = Math.round(255 * ((1 - a) * g + a * h));
    rgb[3 * i + 2] = Math.round(255 * (1 - a) * g);
  }
  const png = await sharp(rgb, { raw: { width: size, height: size, channels: 3 } }).png().toBuffer();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}
