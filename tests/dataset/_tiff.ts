/**
 * A minimal uncompressed TIFF writer for tests: grey pages of any sample format
 * (unsigned, signed, float) and width, one strip per page, little or big endian.
 * @module
 */

/** One page's samples. */
export type TiffSamples = Uint8Array | Uint16Array | Int16Array | Float32Array | Float64Array | Int8Array;

function kind(d: TiffSamples): { bits: number; format: number } {
  if (d instanceof Uint8Array) return { bits: 8, format: 1 };
  if (d instanceof Int8Array) return { bits: 8, format: 2 };
  if (d instanceof Uint16Array) return { bits: 16, format: 1 };
  if (d instanceof Int16Array) return { bits: 16, format: 2 };
  if (d instanceof Float32Array) return { bits: 32, format: 3 };
  return { bits: 64, format: 3 };
}

/** Encodes grey pages (all `width` x `height`) as a baseline TIFF. */
export function encodeTiff(pages: TiffSamples[], width: number, height: number, bigEndian = false): Uint8Array {
  const le = !bigEndian;
  const entries = 10;
  const ifdSize = 2 + entries * 12 + 4;
  const parts: { ifd: number; data: number; k: ReturnType<typeof kind>; page: TiffSamples }[] = [];
  let off = 8;
  for (const page of pages) {
    const k = kind(page);
    const ifd = off;
    const data = ifd + ifdSize;
    off = data + width * height * (k.bits / 8);
    off += off % 2;
    parts.push({ ifd, data, k, page });
  }
  const out = new Uint8Array(off);
  const v = new DataView(out.buffer);
  out.set(le ? [0x49, 0x49] : [0x4d, 0x4d]);
  v.setUint16(2, 42, le);
  v.setUint32(4, 8, le);
  parts.forEach((p, i) => {
    const bytes = width * height * (p.k.bits / 8);
    const tags: [number, number, number][] = [
      [256, 4, width],
      [257, 4, height],
      [258, 3, p.k.bits],
      [259, 3, 1],
      [262, 3, 1],
      [273, 4, p.data],
      [277, 3, 1],
      [278, 4, height],
      [279, 4, bytes],
      [339, 3, p.k.format],
    ];
    v.setUint16(p.ifd, entries, le);
    tags.forEach(([tag, type, value], j) => {
      const e = p.ifd + 2 + j * 12;
      v.setUint16(e, tag, le);
      v.setUint16(e + 2, type, le);
      v.setUint32(e + 4, 1, le);
      if (type === 3) v.setUint16(e + 8, value, le);
      else v.setUint32(e + 8, value, le);
    });
    v.setUint32(p.ifd + 2 + entries * 12, i + 1 < parts.length ? parts[i + 1].ifd : 0, le);
    const n = width * height;
    for (let j = 0; j < n; j++) {
      const x = p.page[j];
      const at = p.data + j * (p.k.bits / 8);
      if (p.page instanceof Uint8Array) v.setUint8(at, x);
      else if (p.page instanceof Int8Array) v.setInt8(at, x);
      else if (p.page instanceof Uint16Array) v.setUint16(at, x, le);
      else if (p.page instanceof Int16Array) v.setInt16(at, x, le);
      else if (p.page instanceof Float32Array) v.setFloat32(at, x, le);
      else v.setFloat64(at, x, le);
    }
  });
  return out;
}
