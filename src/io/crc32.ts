/**
 * CRC-32 (IEEE 802.3, as zip uses), slice-by-8.
 * @module
 */

const TABLES: Uint32Array[] = (() => {
  const t = Array.from({ length: 8 }, () => new Uint32Array(256));
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[0][i] = c >>> 0;
  }
  for (let i = 0; i < 256; i++) {
    for (let s = 1; s < 8; s++) t[s][i] = (t[0][t[s - 1][i] & 0xff] ^ (t[s - 1][i] >>> 8)) >>> 0;
  }
  return t;
})();

/**
 * Continues a CRC-32 over `bytes` (start with `crc = 0`).
 * @param bytes the bytes to add
 * @param crc the CRC of the bytes before them (0 to start)
 * @returns the CRC-32 (IEEE, as zlib's `crc32`), an unsigned 32-bit integer
 * @example
 * ```ts
 * import { crc32 } from "./crc32.ts";
 * const text = new TextEncoder().encode("123456789");
 * if (crc32(text) !== 0xcbf43926) throw new Error("check value");
 * if (crc32(text.subarray(4), crc32(text.subarray(0, 4))) !== 0xcbf43926) throw new Error("continuation");
 * ```
 */
export function crc32(bytes: Uint8Array, crc = 0): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES;
  let c = ~crc >>> 0;
  let i = 0;
  const n = bytes.length;
  const end8 = n - (n % 8);
  while (i < end8) {
    const a = (bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24)) ^ c;
    c = t7[a & 0xff] ^ t6[(a >>> 8) & 0xff] ^ t5[(a >>> 16) & 0xff] ^ t4[a >>> 24] ^
      t3[bytes[i + 4]] ^ t2[bytes[i + 5]] ^ t1[bytes[i + 6]] ^ t0[bytes[i + 7]];
    i += 8;
  }
  while (i < n) c = t0[(c ^ bytes[i++]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}
