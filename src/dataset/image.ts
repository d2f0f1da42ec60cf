/**
 * B-scan decoding, by content: PNG, JPEG, TIFF (8/16-bit via sharp; signed
 * 8/16-bit and float32/float64 grey TIFFs, uncompressed or Deflate, by this
 * module's own bounded reader), BMP (own decoder) and `.npy` (uint8, uint16,
 * int16, float32, float64). Everything becomes a grey float image in [0, 1]:
 * 8-bit / 255, 16-bit / 65535, float as stored (divided by 255 or 65535 only
 * when it exceeds 1, like the authors' `NaiveScalerChannel`, §2.5), or
 * `(x - lo) / (hi - lo)` with an explicit intensity range.
 * Colour images become grey with PIL's `convert("L")` (weights 0.299, 0.587, 0.114, rounded to 8 bits),
 * as the authors' `Grayscale(1)` does.
 *
 * Bounds: the format is sniffed from the first bytes and must agree with the
 * file's extension; GIF, WebP, SVG, DICOM, Git LFS pointers and anything else
 * are refused by name. Width x height is checked against a pixel limit
 * ({@link DEFAULT_MAX_PIXELS}, `RETFINER_MAX_PIXELS`, {@link setImageDefaults})
 * from the header, before any pixel is decoded. Volumes (multi-page TIFF,
 * 3-D `.npy`) are an error unless a slice is chosen; `path#slice=k` names one
 * B-scan of a volume. NaN or infinite values are an error in every format, and negative
 * values (signed or float data) need an explicit intensity range. An aspect ratio beyond 20:1 prints a notice
 * (resizing to a square stretches it). Doubtful data (16-bit samples that never exceed 12 bits,
 * near-black images) print a notice.
 * @module
 */
import sharp from "sharp";
import { inflateSync } from "node:zlib";
import { NPY_HEADER_BYTES, type NpyHeader, parseNpy, parseNpyHeader } from "../io/npy.ts";
import { CheckpointError, DatasetError } from "../util/errors.ts";

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

/** Raster formats that carry OCT B-scans. */
export type ImageFormat = "png" | "jpeg" | "tiff" | "bmp" | "npy";

/** Which B-scan of a volume to take: an index, or `first`, `middle`, `last`. */
export type VolumeSlice = number | "first" | "middle" | "last";

/** How images are decoded. Unset fields take {@link imageDefaults}. */
export interface ImageOptions {
  /** Largest width x height accepted, checked from the header before decoding. */
  maxPixels?: number;
  /** Raw sample values mapped to 0 and 1 (clamped), instead of the type's scaling. */
  intensityRange?: readonly [number, number];
  /** The B-scan of a volume (multi-page TIFF, 3-D `.npy`) to use; without it a volume is an error. */
  slice?: VolumeSlice;
}

/** What the header says about an image, read without decoding its pixels. */
export interface ImageInfo {
  /** Format, by content. */
  format: ImageFormat;
  /** Columns. */
  width: number;
  /** Rows. */
  height: number;
  /** B-scans in the file (TIFF pages, the first axis of a 3-D `.npy`); 1 for a plain image. */
  slices: number;
  /** Sample type, e.g. `uint8`, `uint16`, `int16`, `float32`. */
  sample: string;
}

/** The default pixel limit: 4096 x 4096 (a B-scan is at most a few thousand pixels a side). */
export const DEFAULT_MAX_PIXELS: number = 4096 * 4096;

/** Files larger than this are not read into memory (2 GiB). */
const MAX_FILE_BYTES = 2 ** 31;

/** File extensions {@link loadGreyImage} accepts, and the format each must hold. */
const EXTENSION_FORMAT: Record<string, ImageFormat> = {
  ".png": "png",
  ".jpg": "jpeg",
  ".jpeg": "jpeg",
  ".tif": "tiff",
  ".tiff": "tiff",
  ".bmp": "bmp",
  ".npy": "npy",
};

/** File extensions {@link loadGreyImage} accepts. */
export const IMAGE_EXTENSIONS: readonly string[] = Object.keys(EXTENSION_FORMAT);

/**
 * Whether a path has a supported image extension (case-insensitive).
 * @param path A file path or name.
 * @returns True for `.png`, `.jpg`, `.jpeg`, `.tif`, `.tiff`, `.bmp`, `.npy`.
 */
export function isImagePath(path: string): boolean {
  return extensionFormat(path) !== undefined;
}

function extensionFormat(path: string): ImageFormat | undefined {
  const m = /\.[A-Za-z0-9]+$/.exec(splitSlicePath(path).file);
  return m ? EXTENSION_FORMAT[m[0].toLowerCase()] : undefined;
}

function envMaxPixels(): number | undefined {
  let raw: string | undefined;
  try {
    raw = Deno.env.get("RETFINER_MAX_PIXELS");
  } catch {
    return undefined;
  }
  if (raw === undefined || raw === "") return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) {
    throw new DatasetError(`RETFINER_MAX_PIXELS must be a positive integer, got "${raw}"`);
  }
  return n;
}

let defaults: ImageOptions = {};

/**
 * Sets the options every decode uses unless a call overrides them (the tasks' `--max-pixels`,
 * `--intensity-range` and `--slice` flags set these).
 * @param options Fields to set; `undefined` fields are left as they are.
 * @throws {DatasetError} when a value is invalid.
 */
export function setImageDefaults(options: ImageOptions): void {
  const next = { ...defaults };
  for (const [k, v] of Object.entries(options)) if (v !== undefined) (next as Record<string, unknown>)[k] = v;
  validateOptions(next);
  defaults = next;
}

/**
 * The options decodes use by default.
 * @returns The current defaults, with the pixel limit resolved (`RETFINER_MAX_PIXELS` or {@link DEFAULT_MAX_PIXELS}).
 */
export function imageDefaults(): ImageOptions & { maxPixels: number } {
  return { ...defaults, maxPixels: defaults.maxPixels ?? envMaxPixels() ?? DEFAULT_MAX_PIXELS };
}

function validateOptions(o: ImageOptions): void {
  if (o.maxPixels !== undefined && !(Number.isInteger(o.maxPixels) && o.maxPixels >= 1)) {
    throw new DatasetError(`the pixel limit must be a positive integer, got ${o.maxPixels}`);
  }
  if (o.intensityRange) {
    const [lo, hi] = o.intensityRange;
    if (!(Number.isFinite(lo) && Number.isFinite(hi) && hi > lo)) {
      throw new DatasetError(`the intensity range must be two finite numbers lo < hi, got ${lo},${hi}`);
    }
  }
  if (typeof o.slice === "number" && !(Number.isInteger(o.slice) && o.slice >= 0)) {
    throw new DatasetError(`a volume slice must be an index >= 0 or first, middle, last; got ${o.slice}`);
  }
}

/**
 * Parses a `--slice` value.
 * @param text `first`, `middle`, `last`, `all` or an index.
 * @returns The slice, or `"all"`.
 * @throws {DatasetError} for anything else.
 */
export function parseVolumeSlice(text: string): VolumeSlice | "all" {
  const t = text.trim().toLowerCase();
  if (t === "first" || t === "middle" || t === "last" || t === "all") return t;
  if (/^\d+$/.test(t)) return Number(t);
  throw new DatasetError(`--slice must be an index, first, middle, last or all; got "${text}"`);
}

/**
 * Parses an `--intensity-range lo,hi` value.
 * @param text Two numbers separated by a comma, e.g. `0,4095`.
 * @returns `[lo, hi]`.
 * @throws {DatasetError} when it is not two finite numbers with lo < hi.
 */
export function parseIntensityRange(text: string): [number, number] {
  const parts = text.split(",").map((s) => Number(s.trim()));
  if (parts.length !== 2 || !parts.every(Number.isFinite) || !(parts[1] > parts[0])) {
    throw new DatasetError(`--intensity-range must be lo,hi with lo < hi (e.g. 0,4095), got "${text}"`);
  }
  return [parts[0], parts[1]];
}

/**
 * The path naming B-scan `k` of a volume file (`file#slice=k`), accepted by {@link loadGreyImage}.
 * @param path The volume file.
 * @param k Zero-based slice index.
 * @returns `path#slice=k`.
 */
export function volumeSlicePath(path: string, k: number): string {
  return `${path}#slice=${k}`;
}

/**
 * Splits `file#slice=k` into the file and the slice.
 * @param path A path, possibly with a `#slice=k` suffix.
 * @returns The file path and the slice index, if any.
 */
export function splitSlicePath(path: string): { file: string; slice?: number } {
  const m = /#slice=(\d+)$/.exec(path);
  return m ? { file: path.slice(0, m.index), slice: Number(m[1]) } : { file: path };
}

// ---------------------------------------------------------------------------------------------------------------
// Notices: doubtful but decodable data is reported once per kind, naming the first file.

let noticeHandler: (message: string) => void = (m) => console.error(m);
const noticed = new Map<string, number>();

/**
 * Replaces where image notices go (default: stderr), e.g. to collect them in a test or a log.
 * @param fn Receives each notice's text; `null` restores the default.
 */
export function setImageNoticeHandler(fn: ((message: string) => void) | null): void {
  noticeHandler = fn ?? ((m) => console.error(m));
  noticed.clear();
}

function notice(kind: string, file: string, message: string): void {
  const n = (noticed.get(kind) ?? 0) + 1;
  noticed.set(kind, n);
  if (n === 1) noticeHandler(`notice: ${file}: ${message} (further images like this are not listed)`);
}

// ---------------------------------------------------------------------------------------------------------------
// Sniffing.

function startsWith(b: Uint8Array, sig: number[], at = 0): boolean {
  return b.length >= at + sig.length && sig.every((x, i) => b[at + i] === x);
}

function asciiHead(b: Uint8Array, n = 512): string {
  let s = "";
  for (let i = 0; i < Math.min(n, b.length); i++) s += String.fromCharCode(b[i]);
  return s;
}

/**
 * The raster format of image bytes, from their first bytes.
 * @param head The first bytes of the file (at least 132 for DICOM detection).
 * @param name The file, for messages.
 * @returns The format.
 * @throws {DatasetError} naming what the content is when it is not PNG, JPEG, TIFF, BMP or `.npy`.
 */
export function sniffImageFormat(head: Uint8Array, name = "<image>"): ImageFormat {
  if (startsWith(head, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return "png";
  if (startsWith(head, [0xff, 0xd8, 0xff])) return "jpeg";
  if (startsWith(head, [0x49, 0x49, 0x2a, 0x00]) || startsWith(head, [0x4d, 0x4d, 0x00, 0x2a])) return "tiff";
  if (startsWith(head, [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59])) return "npy";
  if (startsWith(head, [0x42, 0x4d]) && head.length >= 26) return "bmp";
  const refuse = (what: string): never => {
    throw new DatasetError(`${name}: ${what}; B-scans must be PNG, JPEG, TIFF, BMP or .npy`);
  };
  const text = asciiHead(head);
  if (head.length === 0) refuse("the file is empty");
  if (startsWith(head, [0x49, 0x49, 0x2b, 0x00]) || startsWith(head, [0x4d, 0x4d, 0x00, 0x2b])) {
    refuse("BigTIFF is not supported (save as a classic TIFF, PNG or .npy)");
  }
  if (text.startsWith("version https://git-lfs")) {
    refuse("this is a Git LFS pointer, not the image (run `git lfs pull`)");
  }
  if (text.startsWith("GIF87a") || text.startsWith("GIF89a")) {
    refuse("GIF content (an animated/paletted format) is refused");
  }
  if (text.startsWith("RIFF") && text.slice(8, 12) === "WEBP") refuse("WebP content is refused");
  if (text.slice(4, 8) === "ftyp") refuse("HEIF/AVIF/MP4 content is refused");
  if (startsWith(head, [0, 0, 0, 0x0c, 0x6a, 0x50, 0x20, 0x20]) || startsWith(head, [0xff, 0x4f, 0xff, 0x51])) {
    refuse("JPEG 2000 is not supported");
  }
  if (text.slice(128, 132) === "DICM") refuse("DICOM is not supported (export the B-scans as PNG, TIFF or .npy)");
  if (text.startsWith("%PDF")) refuse("PDF content is refused");
  if (text.startsWith("PK\x03\x04")) refuse("a ZIP archive is not an image");
  const trimmed = text.replace(/^\ufeff|^\xef\xbb\xbf/, "").trimStart().toLowerCase();
  if (trimmed.startsWith("<svg") || (trimmed.startsWith("<?xml") && trimmed.includes("<svg"))) {
    refuse("SVG (vector) content is refused");
  }
  if (trimmed.startsWith("<!doctype html") || trimmed.startsWith("<html")) {
    refuse("this is an HTML page (a failed download?), not an image");
  }
  if (trimmed.startsWith("<")) refuse("XML/text content is refused");
  const hex = [...head.subarray(0, 8)].map((x) => x.toString(16).padStart(2, "0")).join(" ");
  return refuse(`unrecognised content (first bytes ${hex})`);
}

function checkExtension(name: string, format: ImageFormat): void {
  const byName = extensionFormat(name);
  if (byName && byName !== format) {
    const ext = /\.[A-Za-z0-9]+$/.exec(splitSlicePath(name).file)![0];
    throw new DatasetError(
      `${name}: the content is ${format.toUpperCase()} but the name says ${ext}; content and extension must agree`,
    );
  }
}

/** Width:height (or height:width) beyond which an image is not B-scan-like and a notice says it is stretched. */
export const MAX_ASPECT_RATIO = 20;

function checkPixels(name: string, width: number, height: number, maxPixels: number): void {
  if (!(width >= 1 && height >= 1)) throw new DatasetError(`${name}: bad image size ${width}x${height}`);
  if (width * height > maxPixels) {
    throw new DatasetError(
      `${name}: ${width}x${height} = ${width * height} pixels exceeds the limit of ${maxPixels} ` +
        `(a B-scan is at most a few thousand pixels a side; raise it with --max-pixels or RETFINER_MAX_PIXELS)`,
    );
  }
  const ratio = Math.max(width / height, height / width);
  if (ratio > MAX_ASPECT_RATIO) {
    notice(
      "aspect",
      name,
      `${width}x${height} has an aspect ratio of ${ratio >= 100 ? Math.round(ratio) : ratio.toFixed(1)}:1 ` +
        `(beyond ${MAX_ASPECT_RATIO}:1): resizing to the model's square input stretches it; is it a B-scan?`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Byte sources: header parsing reads only what it needs, from memory or from a file.

interface ByteSource {
  size: number;
  read(offset: number, length: number): Uint8Array;
}

function memorySource(bytes: Uint8Array): ByteSource {
  return {
    size: bytes.length,
    read: (o, n) => bytes.subarray(Math.min(o, bytes.length), Math.min(o + n, bytes.length)),
  };
}

function fileSource(file: Deno.FsFile, size: number): ByteSource {
  return {
    size,
    read(o, n) {
      const len = Math.max(0, Math.min(n, size - o));
      const buf = new Uint8Array(len);
      file.seekSync(o, Deno.SeekMode.Start);
      let got = 0;
      while (got < len) {
        const r = file.readSync(buf.subarray(got));
        if (r === null || r === 0) break;
        got += r;
      }
      return buf.subarray(0, got);
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Headers.

function pngInfo(src: ByteSource, name: string): ImageInfo {
  const h = src.read(0, 33);
  if (h.length < 33 || asciiHead(h.subarray(12, 16)) !== "IHDR") {
    throw new DatasetError(`${name}: truncated or corrupt PNG header (no IHDR)`);
  }
  const v = new DataView(h.buffer, h.byteOffset, h.byteLength);
  return {
    format: "png",
    width: v.getUint32(16),
    height: v.getUint32(20),
    slices: 1,
    sample: h[24] === 16 ? "uint16" : "uint8",
  };
}

const SOF = new Set([0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf]);

function jpegInfo(src: ByteSource, name: string): ImageInfo {
  let pos = 2;
  for (let guard = 0; guard < 10000; guard++) {
    const m = src.read(pos, 10);
    if (m.length < 4) break;
    if (m[0] !== 0xff) throw new DatasetError(`${name}: corrupt JPEG (bad marker at byte ${pos})`);
    const marker = m[1];
    if (marker === 0xff) {
      pos++;
      continue;
    }
    const len = (m[2] << 8) | m[3];
    if (SOF.has(marker)) {
      if (m.length < 9) break;
      const precision = m[4];
      return {
        format: "jpeg",
        width: (m[7] << 8) | m[8],
        height: (m[5] << 8) | m[6],
        slices: 1,
        sample: precision > 8 ? `uint${precision}` : "uint8",
      };
    }
    if (marker === 0xd9 || marker === 0xda) break;
    pos += 2 + len;
  }
  throw new DatasetError(`${name}: truncated or corrupt JPEG (no frame header)`);
}

function bmpInfo(src: ByteSource, name: string): ImageInfo {
  const h = src.read(0, 54);
  if (h.length < 54) throw new DatasetError(`${name}: truncated BMP header`);
  const v = new DataView(h.buffer, h.byteOffset, h.byteLength);
  const width = v.getInt32(18, true);
  const height = Math.abs(v.getInt32(22, true));
  const bpp = v.getUint16(28, true);
  const stride = Math.ceil((width * bpp) / 32) * 4;
  if (width > 0 && v.getUint32(10, true) + stride * height > src.size) {
    throw new DatasetError(`${name}: BMP pixel data is truncated`);
  }
  return { format: "bmp", width, height, slices: 1, sample: "uint8" };
}

interface NpyImageHeader extends NpyHeader {
  itemSize: number;
}

const NPY_IMAGE_TYPES: Record<string, string> = {
  u1: "uint8",
  u2: "uint16",
  i2: "int16",
  f4: "float32",
  f8: "float64",
};

function npyHeader(src: ByteSource, name: string): NpyImageHeader {
  // The header is parsed as numpy checks it, by the package's one .npy header parser.
  let header: NpyHeader;
  try {
    header = parseNpyHeader(src.read(0, NPY_HEADER_BYTES), name);
  } catch (err) {
    if (err instanceof CheckpointError) throw new DatasetError(err.message, { cause: err });
    throw err;
  }
  const { descr, shape, dataStart } = header;
  const sample = NPY_IMAGE_TYPES[descr.slice(1)];
  if (!sample || !"<>|=".includes(descr[0])) {
    throw new DatasetError(
      `${name}: .npy dtype ${descr} is not an image type (uint8, uint16, int16, float32, float64)`,
    );
  }
  const itemSize = Number(descr.slice(2));
  const n = shape.reduce((a, b) => a * b, 1);
  if (dataStart + n * itemSize > src.size) {
    throw new DatasetError(`${name}: .npy data is truncated (${src.size - dataStart} bytes, needs ${n * itemSize})`);
  }
  return { ...header, itemSize };
}

/** `[slices, height, width]` of an image array: 2-D, `[1,H,W]`, `[H,W,1]` or a `[D,H,W]` volume. */
function npyGeometry(shape: number[], name: string): [number, number, number] {
  if (shape.length === 2) return [1, shape[0], shape[1]];
  if (shape.length === 3 && shape[2] === 1) return [1, shape[0], shape[1]];
  if (shape.length === 3 && (shape[2] === 3 || shape[2] === 4) && shape[0] > 4 && shape[1] > 4) {
    throw new DatasetError(
      `${name}: shape (${shape}) looks like a channels-last colour image; save the B-scan as a 2-D grey array ` +
        `(a volume is [slices, height, width])`,
    );
  }
  if (shape.length === 3) return [shape[0], shape[1], shape[2]];
  throw new DatasetError(
    `${name}: expected a 2-D B-scan or a 3-D volume [slices, height, width], got shape (${shape})`,
  );
}

function npyInfo(src: ByteSource, name: string): ImageInfo {
  const h = npyHeader(src, name);
  const [slices, height, width] = npyGeometry(h.shape, name);
  return { format: "npy", width, height, slices, sample: NPY_IMAGE_TYPES[h.descr.slice(1)] };
}

// TIFF: a bounded IFD reader (page count, sizes, sample format, strip extents).

interface TiffPage {
  width: number;
  height: number;
  bits: number;
  sampleFormat: number;
  samplesPerPixel: number;
  compression: number;
  photometric: number;
  predictor: number;
  planar: number;
  tiled: boolean;
  strips: { offset: number; count: number }[];
}

const TIFF_TYPE_SIZE: Record<number, number> = { 1: 1, 2: 1, 3: 2, 4: 4, 6: 1, 7: 1, 8: 2, 9: 4, 11: 4, 12: 8, 13: 4 };
const MAX_TIFF_PAGES = 100_000;

function readTiff(src: ByteSource, name: string, wantStrips: number | "none" | "all"): TiffPage[] {
  const fail = (msg: string): never => {
    throw new DatasetError(`${name}: corrupt TIFF (${msg})`);
  };
  const h = src.read(0, 8);
  if (h.length < 8) fail("truncated header");
  // Tables may overlap or be shared between pages: bound the bytes read for them by the file's size.
  let budget = 2 * src.size + (1 << 20);
  const read = (offset: number, length: number): Uint8Array => {
    budget -= length;
    if (budget < 0) fail("its tables take more than twice the file's size to read (overlapping IFDs?)");
    return src.read(offset, length);
  };
  const le = h[0] === 0x49;
  let dv = new DataView(h.buffer, h.byteOffset, h.byteLength);
  let next = dv.getUint32(4, le);
  const pages: TiffPage[] = [];
  const seen = new Set<number>();
  while (next !== 0) {
    if (seen.has(next)) fail(`IFD loop at byte ${next}`);
    if (pages.length >= MAX_TIFF_PAGES) fail(`more than ${MAX_TIFF_PAGES} pages`);
    seen.add(next);
    if (next + 2 > src.size) fail(`IFD offset ${next} is past the end of the file (${src.size} bytes): truncated?`);
    const cntB = read(next, 2);
    const count = le ? cntB[0] | (cntB[1] << 8) : (cntB[0] << 8) | cntB[1];
    if (count === 0 || count > 4096) fail(`IFD with ${count} entries`);
    const ifd = read(next, 2 + count * 12 + 4);
    if (ifd.length < 2 + count * 12 + 4) fail("truncated IFD");
    dv = new DataView(ifd.buffer, ifd.byteOffset, ifd.byteLength);
    const tags = new Map<number, { type: number; n: number; at: number }>();
    for (let i = 0; i < count; i++) {
      const e = 2 + i * 12;
      tags.set(dv.getUint16(e, le), { type: dv.getUint16(e + 2, le), n: dv.getUint32(e + 4, le), at: e + 8 });
    }
    const pageIndex = pages.length;
    const values = (tag: number, limit: number): number[] => {
      const t = tags.get(tag);
      if (!t) return [];
      const size = TIFF_TYPE_SIZE[t.type];
      if (!size || ![1, 3, 4].includes(t.type)) fail(`tag ${tag} has type ${t.type}`);
      if (t.n > limit) fail(`tag ${tag} has ${t.n} values`);
      let bytes: Uint8Array;
      if (size * t.n <= 4) bytes = ifd.subarray(t.at, t.at + 4);
      else {
        const off = dv.getUint32(t.at, le);
        if (off + size * t.n > src.size) fail(`tag ${tag} points past the end of the file: truncated?`);
        bytes = read(off, size * t.n);
      }
      const bv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      const out: number[] = new Array(t.n);
      for (let i = 0; i < t.n; i++) {
        out[i] = size === 1 ? bv.getUint8(i) : size === 2 ? bv.getUint16(2 * i, le) : bv.getUint32(4 * i, le);
      }
      return out;
    };
    const one = (tag: number, dflt: number): number => values(tag, 16)[0] ?? dflt;
    const width = one(256, 0);
    const height = one(257, 0);
    const spp = one(277, 1);
    const page: TiffPage = {
      width,
      height,
      bits: one(258, 1),
      sampleFormat: one(339, 1),
      samplesPerPixel: spp,
      compression: one(259, 1),
      photometric: one(262, 1),
      predictor: one(317, 1),
      planar: one(284, 1),
      tiled: tags.has(322),
      strips: [],
    };
    const needStrips = wantStrips === "all" || wantStrips === pageIndex;
    if (needStrips && !page.tiled) {
      const maxStrips = Math.max(1, height) * Math.max(1, spp);
      const offs = values(273, maxStrips);
      const counts = values(279, maxStrips);
      if (offs.length === 0 || offs.length !== counts.length) fail(`page ${pageIndex}: bad strip tables`);
      for (let i = 0; i < offs.length; i++) {
        if (offs[i] + counts[i] > src.size) {
          fail(
            `page ${pageIndex}: image data ends at byte ${offs[i] + counts[i]}, the file has ${src.size}: truncated`,
          );
        }
        page.strips.push({ offset: offs[i], count: counts[i] });
      }
    }
    pages.push(page);
    next = dv.getUint32(2 + count * 12, le);
  }
  if (pages.length === 0) fail("no pages");
  return pages;
}

function tiffSample(p: TiffPage): string {
  const kind = p.sampleFormat === 2 ? "int" : p.sampleFormat === 3 ? "float" : "uint";
  return `${kind}${p.bits <= 8 && kind === "uint" ? 8 : p.bits}`;
}

/** Whether sharp decodes this page faithfully (unsigned 1-16-bit); other sample formats use the own reader. */
function sharpDecodesTiff(p: TiffPage): boolean {
  return p.sampleFormat === 1 && p.bits <= 16;
}

function pickSlice(
  name: string,
  slices: number,
  kind: string,
  o: ImageOptions,
  explicit: boolean,
  quiet = false,
): number {
  if (slices === 1) {
    if (explicit && typeof o.slice === "number" && o.slice !== 0) {
      throw new DatasetError(`${name}: slice ${o.slice} requested, the image has one`);
    }
    return 0;
  }
  if (o.slice === undefined) {
    throw new DatasetError(
      `${name}: a volume of ${slices} B-scans (${kind}); choose one with --slice <index|first|middle|last>, ` +
        `or take every B-scan with --slice all`,
    );
  }
  const k = o.slice === "first" ? 0 : o.slice === "last" ? slices - 1 : o.slice === "middle" ? slices >> 1 : o.slice;
  if (k >= slices) throw new DatasetError(`${name}: slice ${k} requested, the volume has ${slices} (0-${slices - 1})`);
  if (!explicit && !quiet) {
    notice(`slice:${String(o.slice)}`, name, `a volume of ${slices} B-scans: using slice ${k} (--slice ${o.slice})`);
  }
  return k;
}

function infoFrom(src: ByteSource, name: string, format: ImageFormat): ImageInfo {
  switch (format) {
    case "png":
      return pngInfo(src, name);
    case "jpeg":
      return jpegInfo(src, name);
    case "bmp":
      return bmpInfo(src, name);
    case "npy":
      return npyInfo(src, name);
    case "tiff": {
      const pages = readTiff(src, name, "all");
      const p = pages[0];
      return { format, width: p.width, height: p.height, slices: pages.length, sample: tiffSample(p) };
    }
  }
}

/**
 * Checks an image file from its header and size, without decoding its pixels: the format by content (agreeing
 * with the extension), the pixel limit, the sample type, the volume slice, and truncation (TIFF strips, BMP
 * rows and `.npy` data must lie inside the file; a PNG without its end chunk or a JPEG without its end marker
 * is decoded fully to confirm). Float samples (`.npy` float32/float64, float TIFF) are also decoded and scanned,
 * since only the values show NaN, infinity or negative data: every value of a float B-scan is checked before
 * training. This is the pre-pass manifests and folders run before training.
 * @param path The image file, optionally with `#slice=k`.
 * @param options Decode options (pixel limit, slice); unset fields take {@link imageDefaults}.
 * @returns What the header says.
 * @throws {DatasetError} naming the file and what is wrong.
 */
export async function inspectImage(path: string, options: ImageOptions = {}): Promise<ImageInfo> {
  const o = { ...imageDefaults(), ...options };
  const { file: name, slice } = splitSlicePath(path);
  let file: Deno.FsFile;
  let size: number;
  try {
    file = await Deno.open(name, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new DatasetError(`${name}: image file not found`);
    throw new DatasetError(`${name}: cannot read (${(err as Error).message})`);
  }
  let info: ImageInfo;
  let suspicious = false;
  let picked = 0;
  try {
    const st = file.statSync();
    if (!st.isFile) throw new DatasetError(`${name}: not a file`);
    size = st.size;
    if (size === 0) throw new DatasetError(`${name}: image file is empty`);
    const src = fileSource(file, size);
    const format = sniffImageFormat(src.read(0, 512), name);
    checkExtension(name, format);
    info = infoFrom(src, name, format);
    checkPixels(name, info.width, info.height, o.maxPixels);
    if (info.format === "jpeg" && info.sample !== "uint8") {
      throw new DatasetError(`${name}: ${info.sample.slice(4)}-bit JPEG is not supported`);
    }
    if (info.format === "tiff") {
      const page = readTiff(src, name, "none")[0];
      if (!sharpDecodesTiff(page)) ownTiffCheck(page, name);
    }
    const kind = info.format === "npy" ? ".npy" : "TIFF pages";
    picked = pickSlice(name, info.slices, kind, slice !== undefined ? { ...o, slice } : o, slice !== undefined, true);
    const tail = src.read(Math.max(0, size - 64), 64);
    if (info.format === "jpeg") suspicious = !hasJpegEnd(tail);
    if (info.format === "png") {
      suspicious = asciiHead(tail.subarray(Math.max(0, tail.length - 8), tail.length - 4), 4) !== "IEND";
    }
  } finally {
    file.close();
  }
  if (suspicious) {
    try {
      await sharp(name, { failOn: "truncated", limitInputPixels: o.maxPixels }).raw().toBuffer();
    } catch (err) {
      throw new DatasetError(`${name}: truncated or corrupt ${info.format.toUpperCase()} (${(err as Error).message})`);
    }
  }
  if (info.sample.startsWith("float")) await checkFloatValues(name, info.slices, [picked], o);
  return info;
}

/**
 * The pre-pass's value check for float images, whose NaN, infinite, negative or out-of-scale values only the
 * samples show (integer samples are always finite and their scaling is fixed by the type): the slices are decoded
 * as training decodes them, from one read of the file. A float B-scan costs one decode more in the pre-pass.
 */
async function checkFloatValues(
  name: string,
  slices: number,
  ks: readonly number[],
  o: ImageOptions,
): Promise<void> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(name);
  } catch (err) {
    throw new DatasetError(`${name}: cannot read (${(err as Error).message})`);
  }
  for (const k of ks) {
    try {
      await decodeGreyImage(bytes, slices > 1 ? volumeSlicePath(name, k) : name, { ...o, slice: k });
    } catch (err) {
      if (!(err instanceof DatasetError) || slices === 1) throw err;
      const m = err.message.startsWith(`${name}: `) ? err.message.slice(name.length + 2) : err.message;
      throw new DatasetError(`${volumeSlicePath(name, k)}: ${m}`, { cause: err });
    }
  }
}

function hasJpegEnd(tail: Uint8Array): boolean {
  for (let i = tail.length - 2; i >= 0; i--) if (tail[i] === 0xff && tail[i + 1] === 0xd9) return true;
  return false;
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding.

/** PIL's `convert("L")` on 8-bit RGB: ITU-R 601 weights in 16-bit fixed point, rounded. */
function luma(r: number, g: number, b: number): number {
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

/**
 * Decodes an uncompressed BMP (8-bit paletted, 24-bit, 32-bit).
 * @param bytes The file's bytes.
 * @param name The file, for messages.
 * @returns The grey image.
 * @throws {DatasetError} for anything else or a truncated file.
 */
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
    for (let i = 0; i < colors && i < 256 && pStart + 4 * i + 3 <= bytes.length; i++) {
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

/** Smallest and largest finite value, how many values are NaN or infinite, and the first such index (-1: none). */
function minMax(data: ArrayLike<number>): { lo: number; hi: number; bad: number; firstBad: number } {
  let lo = Infinity;
  let hi = -Infinity;
  let bad = 0;
  let firstBad = -1;
  for (let i = 0; i < data.length; i++) {
    const x = data[i];
    if (!Number.isFinite(x)) {
      if (bad++ === 0) firstBad = i;
      continue;
    }
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
  return { lo, hi, bad, firstBad };
}

/**
 * Scales raw samples to [0, 1]: the explicit range when given, else by type: unsigned integers by the type's
 * maximum (a notice when 16-bit data never exceed 12 bits), signed 16-bit by 32767 when no value is negative,
 * float as the authors' NaiveScalerChannel (/255 or /65535 only above 1). Negative values need an explicit
 * range in every signed or float type; a NaN or infinite value is an error in every type (the first is named).
 */
function scaleSamples(
  raw: ArrayLike<number>,
  sample: string,
  name: string,
  o: ImageOptions,
  pick: (i: number) => number = (i) => i,
  n = raw.length,
  width = 0,
): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = raw[pick(i)];
  const { lo, hi, bad, firstBad } = minMax(out);
  if (bad > 0) {
    const x = out[firstBad];
    const where = width ? ` (the first, ${x}, at row ${Math.floor(firstBad / width)}, column ${firstBad % width})` : "";
    throw new DatasetError(
      `${name}: ${bad} of ${n} values are NaN or infinite${where}; a B-scan must hold finite values`,
    );
  }
  if (o.intensityRange) {
    const [a, b] = o.intensityRange;
    if (hi > b || lo < a) {
      notice("range-clip", name, `values ${lo}..${hi} fall outside --intensity-range ${a},${b} and are clipped`);
    }
    for (let i = 0; i < n; i++) out[i] = Math.min(1, Math.max(0, (out[i] - a) / (b - a)));
    return out;
  }
  let div = 1;
  if (sample === "uint8") div = 255;
  else if (sample === "uint16" || sample === "int16") {
    if (lo < 0) {
      throw new DatasetError(
        `${name}: signed 16-bit data with negative values (${lo}..${hi}) have no standard scaling; ` +
          `give --intensity-range lo,hi`,
      );
    }
    div = sample === "uint16" ? 65535 : 32767;
    if (hi > 0 && hi < 4096) {
      const bits = Math.max(1, Math.ceil(Math.log2(hi + 1)));
      notice(
        `bits:${sample}`,
        name,
        `${sample} samples never exceed ${hi} (${bits}-bit data?): scaled by /${div}, so the image is dark; ` +
          `give --intensity-range 0,${2 ** bits - 1} to use the full range`,
      );
    }
  } else if (sample.startsWith("float")) {
    if (lo < 0) {
      throw new DatasetError(
        `${name}: ${sample} data with negative values (${lo}..${hi}) have no standard scaling; ` +
          `give --intensity-range lo,hi`,
      );
    }
    if (hi > 65535) {
      throw new DatasetError(`${name}: float data up to ${hi} have no standard scaling; give --intensity-range lo,hi`);
    }
    div = hi > 255 ? 65535 : hi > 1 ? 255 : 1;
  } else throw new DatasetError(`${name}: sample type ${sample} is not supported`);
  if (div !== 1) { for (let i = 0; i < n; i++) out[i] /= div; }
  if (hi / div < 1 / 32) {
    notice(
      "dark",
      name,
      `the brightest pixel is ${(hi / div).toPrecision(3)} of full scale: the image is nearly black`,
    );
  }
  return out;
}

/**
 * Decodes `.npy` bytes holding a 2-D image (`[H, W]`, `[1, H, W]`, `[H, W, 1]`) or a `[D, H, W]` volume of
 * uint8, uint16, int16, float32 or float64.
 * @param bytes The file's bytes.
 * @param name The file, for messages.
 * @param options Decode options; a volume needs `slice`.
 * @returns The grey image.
 * @throws {DatasetError} for other shapes or dtypes, non-finite values, or a volume without a slice.
 */
export function decodeNpyImage(bytes: Uint8Array, name = "<npy>", options: ImageOptions = {}): GreyImage {
  return decodeNpy(bytes, name, { ...imageDefaults(), ...options }, typeof options.slice === "number");
}

function decodeNpy(
  bytes: Uint8Array,
  name: string,
  o: ImageOptions & { maxPixels: number },
  explicit: boolean,
): GreyImage {
  const info = npyInfo(memorySource(bytes), name);
  checkPixels(name, info.width, info.height, o.maxPixels);
  const k = pickSlice(name, info.slices, `.npy shape ${info.slices}x${info.height}x${info.width}`, o, explicit);
  let arr;
  try {
    arr = parseNpy(bytes, name);
  } catch (err) {
    throw new DatasetError((err as Error).message);
  }
  const n = info.width * info.height;
  const data = scaleSamples(arr.data as ArrayLike<number>, info.sample, name, o, (i) => k * n + i, n, info.width);
  const depth = info.sample === "uint8" ? 8 : info.sample.endsWith("16") ? 16 : 32;
  return { width: info.width, height: info.height, data, depth };
}

function ownTiffCheck(p: TiffPage, name: string): void {
  const what = `${tiffSample(p)} TIFF`;
  if (!["int8", "int16", "float32", "float64"].includes(tiffSample(p))) {
    throw new DatasetError(`${name}: ${what} samples are not supported (8/16-bit unsigned, int16, float32/64)`);
  }
  if (p.samplesPerPixel !== 1) {
    throw new DatasetError(`${name}: ${what} with ${p.samplesPerPixel} channels is not supported (grey only)`);
  }
  if (p.tiled) throw new DatasetError(`${name}: tiled ${what} is not supported (save it in strips)`);
  if (![1, 8, 32946].includes(p.compression)) {
    throw new DatasetError(`${name}: ${what} with compression ${p.compression} is not supported (none or Deflate)`);
  }
  if (p.predictor !== 1) throw new DatasetError(`${name}: ${what} with a predictor is not supported`);
}

function decodeOwnTiff(bytes: Uint8Array, page: TiffPage, name: string, o: ImageOptions): GreyImage {
  ownTiffCheck(page, name);
  const le = bytes[0] === 0x49;
  const bps = page.bits / 8;
  const n = page.width * page.height;
  const buf = new Uint8Array(n * bps);
  let at = 0;
  for (const s of page.strips) {
    let chunk = bytes.subarray(s.offset, s.offset + s.count);
    if (page.compression !== 1) {
      try {
        chunk = new Uint8Array(inflateSync(chunk, { maxOutputLength: buf.length - at }));
      } catch (err) {
        throw new DatasetError(`${name}: corrupt Deflate strip (${(err as Error).message})`);
      }
    }
    const take = Math.min(chunk.length, buf.length - at);
    buf.set(chunk.subarray(0, take), at);
    at += take;
  }
  if (at < buf.length) throw new DatasetError(`${name}: TIFF strips hold ${at} bytes, the image needs ${buf.length}`);
  const dv = new DataView(buf.buffer);
  const sample = tiffSample(page);
  const get = sample === "float32"
    ? (i: number) => dv.getFloat32(4 * i, le)
    : sample === "float64"
    ? (i: number) => dv.getFloat64(8 * i, le)
    : sample === "int16"
    ? (i: number) => dv.getInt16(2 * i, le)
    : (i: number) => dv.getInt8(i);
  const raw = new Float64Array(n);
  for (let i = 0; i < n; i++) raw[i] = get(i);
  const data = scaleSamples(raw, sample === "int8" ? "int16" : sample, name, o, (i) => i, n, page.width);
  if (page.photometric === 0) { for (let i = 0; i < n; i++) data[i] = 1 - data[i]; }
  return { width: page.width, height: page.height, data, depth: sample.startsWith("float") ? 32 : 16 };
}

async function decodeWithSharp(
  bytes: Uint8Array,
  name: string,
  o: ImageOptions & { maxPixels: number },
  page = 0,
): Promise<GreyImage> {
  try {
    const img = sharp(bytes, { failOn: "error", limitInputPixels: o.maxPixels, page });
    const meta = await img.metadata();
    if (!meta.width || !meta.height) throw new Error("no image size");
    if (meta.depth === "ushort") {
      const { data, info } = await img.toColourspace("grey16").raw({ depth: "ushort" }).toBuffer({
        resolveWithObject: true,
      });
      const u16 = new Uint16Array(data.buffer, data.byteOffset, data.byteLength / 2);
      const c = info.channels;
      const out = scaleSamples(u16, "uint16", name, o, (i) => i * c, info.width * info.height, info.width);
      return { width: info.width, height: info.height, data: out, depth: 16 };
    }
    if (meta.depth !== "uchar") throw new DatasetError(`${name}: ${meta.depth} samples are not supported`);
    const { data, info } = await img.raw().toBuffer({ resolveWithObject: true });
    const c = info.channels;
    const n = info.width * info.height;
    const grey = new Uint8Array(n);
    if (c <= 2) { for (let i = 0; i < n; i++) grey[i] = data[i * c]; }
    else for (let i = 0; i < n; i++) grey[i] = luma(data[i * c], data[i * c + 1], data[i * c + 2]);
    return { width: info.width, height: info.height, data: scaleSamples(grey, "uint8", name, o), depth: 8 };
  } catch (err) {
    if (err instanceof DatasetError) throw err;
    throw new DatasetError(`${name}: cannot decode image (${(err as Error).message})`);
  }
}

/**
 * Decodes image bytes by content (PNG, JPEG, TIFF, BMP, `.npy`), after checking the format against the name's
 * extension and the size against the pixel limit.
 * @param bytes The file's bytes.
 * @param name The file (optionally with `#slice=k`), for messages and the extension check.
 * @param options Decode options; unset fields take {@link imageDefaults}.
 * @returns The grey image in [0, 1].
 * @throws {DatasetError} naming the file and the problem.
 */
export async function decodeGreyImage(
  bytes: Uint8Array,
  name = "<image>",
  options: ImageOptions = {},
): Promise<GreyImage> {
  const { file, slice } = splitSlicePath(name);
  const o = { ...imageDefaults(), ...options, ...(slice !== undefined ? { slice } : {}) };
  validateOptions(o);
  const explicit = slice !== undefined || typeof options.slice === "number";
  const format = sniffImageFormat(bytes.subarray(0, 512), file);
  checkExtension(file, format);
  const src = memorySource(bytes);
  if (format === "npy") return decodeNpy(bytes, file, o, explicit);
  if (format === "tiff") {
    const pages = readTiff(src, file, "none");
    const k = pickSlice(file, pages.length, "TIFF pages", o, explicit);
    const page = readTiff(src, file, k)[k];
    checkPixels(file, page.width, page.height, o.maxPixels);
    if (!sharpDecodesTiff(page)) return decodeOwnTiff(bytes, page, file, o);
    return await decodeWithSharp(bytes, file, o, k);
  }
  const info = infoFrom(src, file, format);
  checkPixels(file, info.width, info.height, o.maxPixels);
  pickSlice(file, 1, "", o, explicit);
  if (format === "bmp") {
    const img = decodeBmp(bytes, file);
    if (o.intensityRange) {
      const u8 = Uint8Array.from(img.data, (x) => Math.round(x * 255));
      img.data = scaleSamples(u8, "uint8", file, o);
    }
    return img;
  }
  return await decodeWithSharp(bytes, file, o);
}

/**
 * Reads and decodes an image file into a grey float image.
 * @param path The file, optionally with `#slice=k` to take one B-scan of a volume.
 * @param options Decode options; unset fields take {@link imageDefaults}.
 * @returns The grey image in [0, 1].
 * @throws {DatasetError} naming the file when it is missing, empty, too large, refused or undecodable.
 */
export async function loadGreyImage(path: string, options: ImageOptions = {}): Promise<GreyImage> {
  const { file } = splitSlicePath(path);
  let bytes: Uint8Array;
  try {
    const st = await Deno.stat(file);
    if (st.size > MAX_FILE_BYTES) throw new DatasetError(`${file}: ${st.size} bytes is too large for an image file`);
    bytes = await Deno.readFile(file);
  } catch (err) {
    if (err instanceof DatasetError) throw err;
    if (err instanceof Deno.errors.NotFound) throw new DatasetError(`${file}: image file not found`);
    throw new DatasetError(`${file}: cannot read (${(err as Error).message})`);
  }
  if (bytes.length === 0) throw new DatasetError(`${file}: image file is empty`);
  return await decodeGreyImage(bytes, path, options);
}

/**
 * Expands image paths that are volumes into one path per B-scan (`file#slice=k`), reading only headers.
 * Only `.tif`/`.tiff`/`.npy` files can be volumes; other paths pass through.
 * @param paths Image paths.
 * @param options Decode options (the pixel limit applies).
 * @returns The paths, volumes replaced by their slices in order.
 * @throws {DatasetError} when a header cannot be read.
 */
export async function expandVolumes(paths: readonly string[], options: ImageOptions = {}): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    if (!/\.(tiff?|npy)$/i.test(p)) {
      out.push(p);
      continue;
    }
    const info = await inspectImage(p, { ...options, slice: "first" });
    if (info.slices > 1 && info.sample.startsWith("float")) {
      const o = { ...imageDefaults(), ...options };
      await checkFloatValues(p, info.slices, Array.from({ length: info.slices - 1 }, (_, k) => k + 1), o);
    }
    if (info.slices === 1) out.push(p);
    else for (let k = 0; k < info.slices; k++) out.push(volumeSlicePath(p, k));
  }
  return out;
}

/** Image options where `slice` may also be `"all"`: every B-scan of a volume becomes its own image. */
export type ImageSetOptions = Omit<ImageOptions, "slice"> & { slice?: VolumeSlice | "all" };

/**
 * The header pre-pass over many images, run before training or probing so that a bad file stops (or is skipped)
 * before any work is done: each file is checked by {@link inspectImage} (float images are also scanned for
 * non-finite values), `concurrency` files at a time, and with `slice: "all"` a volume is expanded to its B-scans
 * ({@link volumeSlicePath}). One implementation for manifests, probing folders and `encode`.
 * @param paths The image files.
 * @param options Decoding options; `slice: "all"` expands volumes.
 * @param concurrency Files checked at a time (default 16).
 * @returns Per path, in input order: the paths it contributes (itself, or its slices), or the `DatasetError` that
 *   makes it unusable.
 * @throws Any error that is not a `DatasetError` (a bug, not a bad file).
 */
export async function checkImageFiles(
  paths: readonly string[],
  options: ImageSetOptions = {},
  concurrency = 16,
): Promise<(string[] | DatasetError)[]> {
  const { slice, ...image } = options;
  const opts: ImageOptions = {
    ...image,
    ...(slice === "all" ? { slice: "first" as const } : slice !== undefined ? { slice } : {}),
  };
  const results: (string[] | DatasetError)[] = new Array(paths.length);
  let unexpected: unknown;
  let next = 0;
  const worker = async () => {
    while (next < paths.length && unexpected === undefined) {
      const k = next++;
      try {
        await inspectImage(paths[k], opts);
        results[k] = slice === "all" ? await expandVolumes([paths[k]], image) : [paths[k]];
      } catch (err) {
        if (err instanceof DatasetError) results[k] = err;
        else unexpected ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  if (unexpected !== undefined) throw unexpected;
  return results;
}

/**
 * Encodes a grey image in [0, 1] as an 8-bit PNG.
 * @param img The image.
 * @returns PNG bytes.
 */
export async function encodePng(img: GreyImage): Promise<Uint8Array> {
  const u8 = new Uint8Array(img.width * img.height);
  for (let i = 0; i < u8.length; i++) u8[i] = Math.max(0, Math.min(255, Math.round(img.data[i] * 255)));
  const buf = await sharp(u8, { raw: { width: img.width, height: img.height, channels: 1 } }).png({
    compressionLevel: 3,
  }).toBuffer();
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}
