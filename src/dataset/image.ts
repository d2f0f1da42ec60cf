/**
 * B-scan decoding: PNG, JPEG, 8/16-bit TIFF (via sharp), BMP (own decoder,
 * sharp's prebuilt libvips has no BMP loader) and `.npy` (uint8, uint16,
 * float32; 2-D). Everything becomes a grey float image in [0, 1]:
 * 8-bit / 255, 16-bit / 65535, float as stored (divided by 255 or 65535 only
 * when it exceeds 1, like the authors' `NaiveScalerChannel`, §2.5).
 * Colour images become grey with PIL's `convert("L")` (weights 0.299, 0.587, 0.114, rounded to 8 bits),
 * as the authors' `Grayscale(1)` does.
 * @module
 */
import sharp from "sharp";
import { parseNpy } from "../io/npy.ts";
import { DatasetError } from "../util/errors.ts";

/** A single-channel float image, row-major. */
export interface GreyImage {
  /** Columns. */
  width: number;
  /** Rows. */
  height: number;
  /** Intensities, nominally in [0, 1]. */
  data: Float32Array;
  /** Bits per sample of the source (8, 16, or 32 for float arrays), when known. */
  depth?: 8 | 16 | 32;
}

/** File extensions {@link loadGreyImage} accepts. */
export const IMAGE_EXTENSIONS: readonly string[] = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy"];

/** Whether a path has a supported image extension. */
export function isImagePath(path: string): boolean {
  const lower = path.toLowerCase();
  return IMAGE_EXTENSIONS.some((e) => lower.endsWith(e));
}

/** PIL's `convert("L")` on 8-bit RGB: ITU-R 601 weights in 16-bit fixed point, rounded. */
function luma(r: number, g: number, b: number): number {
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

/** Decodes an uncompressed BMP (8-bit paletted, 24-bit, 32-bit). */
export function decodeBmp(bytes: Uint8Array, name = "<bmp>"): GreyImage {
  const fail = (msg: string): never => {
    throw new DatasetError(`${name}: ${msg}`);
  };
  if (bytes.length < 54 || bytes[0] !== 0x42 || bytes[1] !== 0x4d) fail("not a BMP file");
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dataOffset = v.getUint32(10, true);
  const headerSize = v.getUint32(14, true);
  const width = v.getInt32(18, true);
  const rawHeight = v.getInt32(22, true);
  const bpp = v.getUint16(28, true);
  const compression = v.getUint32(30, true);
  const height = Math.abs(rawHeight);
  if (width <= 0 || height === 0 || width > 65535 || height > 65535) fail(`bad BMP size ${width}x${rawHeight}`);
  if (!(compression === 0 || (compression === 3 && bpp === 32))) {
    fail(`compressed BMP (compression ${compression}) is not supported`);
  }
  if (![8, 24, 32].includes(bpp)) fail(`${bpp}-bit BMP is not supported (8, 24 or 32 bits)`);
  const stride = Math.ceil((width * bpp) / 32) * 4;
  if (dataOffset + stride * height > bytes.length) fail("BMP pixel data is truncated");
  let palette: Float32Array | undefined;
  if (bpp === 8) {
    const colors = v.getUint32(46, true) || 256;
    const pStart = 14 + headerSize;
    palette = new Float32Array(256);
    for (let i = 0; i < colors && pStart + 4 * i + 3 <= bytes.length; i++) {
      palette[i] = luma(bytes[pStart + 4 * i + 2], bytes[pStart + 4 * i + 1], bytes[pStart + 4 * i]) / 255;
    }
  }
  const data = new Float32Array(width * height);
  for (let y = 0; y < height; y++) {
    const srcRow = rawHeight > 0 ? height - 1 - y : y;
    const base = dataOffset + srcRow * stride;
    for (let x = 0; x < width; x++) {
      let val: number;
      if (bpp === 8) val = palette![bytes[base + x]];
      else {
        const p = base + x * (bpp / 8);
        val = luma(bytes[p + 2], bytes[p + 1], bytes[p]) / 255;
      }
      data[y * width + x] = val;
    }
  }
  return { width, height, data, depth: 8 };
}

/** Scales float values like the authors' NaiveScalerChannel: / 255 or / 65535 only if they exceed 1. */
function naiveScale(data: Float32Array): Float32Array {
  let max = -Infinity;
  for (const x of data) if (x > max) max = x;
  if (max > 1) {
    const d = max > 255 ? 65535 : 255;
    for (let i = 0; i < data.length; i++) data[i] /= d;
  }
  return data;
}

/** Decodes `.npy` bytes holding a 2-D (or `[1, H, W]`) uint8, uint16 or float array. */
export function decodeNpyImage(bytes: Uint8Array, name = "<npy>"): GreyImage {
  let arr;
  try {
    arr = parseNpy(bytes, name);
  } catch (err) {
    throw new DatasetError((err as Error).message);
  }
  const shape = arr.shape.length === 3 && arr.shape[0] === 1 ? arr.shape.slice(1) : arr.shape;
  if (shape.length !== 2) throw new DatasetError(`${name}: expected a 2-D B-scan array, got shape (${arr.shape})`);
  const [height, width] = shape;
  const n = width * height;
  const data = new Float32Array(n);
  const src = arr.data;
  if (arr.descr === "<u1") { for (let i = 0; i < n; i++) data[i] = (src[i] as number) / 255; }
  else if (arr.descr === "<u2") { for (let i = 0; i < n; i++) data[i] = (src[i] as number) / 65535; }
  else if (arr.descr === "<f4" || arr.descr === "<f8") {
    for (let i = 0; i < n; i++) data[i] = src[i] as number;
    naiveScale(data);
  } else throw new DatasetError(`${name}: .npy dtype ${arr.descr} is not an image type (uint8, uint16, float32)`);
  const depth = arr.descr === "<u1" ? 8 : arr.descr === "<u2" ? 16 : 32;
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(data[i])) throw new DatasetError(`${name}: .npy image contains non-finite values`);
  }
  return { width, height, data, depth };
}

/** Decodes image bytes by content (PNG, JPEG, TIFF, BMP, .npy). */
export async function decodeGreyImage(bytes: Uint8Array, name = "<image>"): Promise<GreyImage> {
  if (bytes.length >= 6 && bytes[0] === 0x93 && bytes[1] === 0x4e && bytes[2] === 0x55) {
    return decodeNpyImage(bytes, name);
  }
  if (bytes.length >= 2 && bytes[0] === 0x42 && bytes[1] === 0x4d) return decodeBmp(bytes, name);
  try {
    const img = sharp(bytes, { failOn: "error" });
    const meta = await img.metadata();
    if (!meta.width || !meta.height) throw new Error("no image size");
    if (meta.depth === "ushort") {
      const { data, info } = await img.toColourspace("grey16").raw({ depth: "ushort" }).toBuffer({
        resolveWithObject: true,
      });
      const u16 = new Uint16Array(data.buffer, data.byteOffset, data.byteLength / 2);
      const out = new Float32Array(info.width * info.height);
      const c = info.channels;
      for (let i = 0; i < out.length; i++) out[i] = u16[i * c] / 65535;
      return { width: info.width, height: info.height, data: out, depth: 16 };
    }
    const { data, info } = await img.raw().toBuffer({ resolveWithObject: true });
    const c = info.channels;
    const out = new Float32Array(info.width * info.height);
    if (c <= 2) { for (let i = 0; i < out.length; i++) out[i] = data[i * c] / 255; }
    else for (let i = 0; i < out.length; i++) out[i] = luma(data[i * c], data[i * c + 1], data[i * c + 2]) / 255;
    return { width: info.width, height: info.height, data: out, depth: 8 };
  } catch (err) {
    throw new DatasetError(`${name}: cannot decode image (${(err as Error).message})`);
  }
}

/** Reads and decodes an image file into a grey float image. */
export async function loadGreyImage(path: string): Promise<GreyImage> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new DatasetError(`${path}: image file not found`);
    throw new DatasetError(`${path}: cannot read (${(err as Error).message})`);
  }
  if (bytes.length === 0) throw new DatasetError(`${path}: image file is empty`);
  return await decodeGreyImage(bytes, path);
}

/** Encodes a grey image in [0, 1] as an 8-bit PNG. */
export async function encodePng(img: GreyImage): Promise<Uint8Array> {
  const u8 = new Uint8Array(img.width * img.height);
  for (let i = 0; i < u8.length; i++) u8[i] = Math.max(0, Math.min(255, Math.round(img.data[i] * 255)));
  const buf = await sharp(u8, { raw: { width: img.width, height: img.height, channels: 1 } }).png({
    compressionLevel: 3,
  }).toBuffer();
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}
