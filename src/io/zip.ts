/**
 * Zip archives as PyTorch writes them (stored records, 64-byte aligned data,
 * zip64 for large files): a reader that touches only the records asked for,
 * and a writer.
 * @module
 */
import { inflateRawSync } from "node:zlib";
import { CheckpointError } from "../util/errors.ts";
import { crc32 } from "./crc32.ts";
import type { ByteSource } from "./source.ts";

/** One member of a zip archive. */
export interface ZipEntry {
  /** Path inside the archive. */
  name: string;
  /** 0 = stored, 8 = deflate. */
  method: number;
  /** Bytes in the file. */
  compressedSize: number;
  /** Bytes after decompression. */
  size: number;
  /** CRC-32 of the uncompressed bytes. */
  crc32: number;
  /** Offset of the local file header. */
  localHeaderOffset: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_EOCD64 = 0x06064b50;
const SIG_EOCD64_LOCATOR = 0x07064b50;

/** True when the first bytes are a zip local-file or end-of-archive signature. */
export function looksLikeZip(head: Uint8Array): boolean {
  if (head.length < 4) return false;
  const sig = head[0] | (head[1] << 8) | (head[2] << 16) | (head[3] << 24);
  return sig === SIG_LOCAL || sig === SIG_EOCD;
}

/**
 * Reads a zip's central directory and, on request, single members. Opening
 * checks the whole layout before any member is read: every record lies inside
 * the file and before the central directory, no two records overlap, no name
 * occurs twice, and each local header agrees with its directory entry.
 */
export class ZipReader {
  /** Members by name. */
  readonly entries: Map<string, ZipEntry> = new Map();
  readonly #source: ByteSource;
  readonly #dataOffsets = new Map<string, number>();

  private constructor(source: ByteSource) {
    this.#source = source;
  }

  /**
   * Parses and checks the central directory of `source`.
   * @param source the archive's bytes
   * @returns the reader
   * @throws {CheckpointError} naming the file when the archive is malformed, truncated, has duplicate names or
   * overlapping records
   */
  static open(source: ByteSource): ZipReader {
    const zip = new ZipReader(source);
    zip.#parse();
    return zip;
  }

  #fail(message: string): never {
    throw new CheckpointError(`${this.#source.name}: ${message}`);
  }

  #u64(view: DataView, off: number, what: string): number {
    if (off < 0 || off + 8 > view.byteLength) this.#fail(`zip ${what} field is cut off`);
    const v = view.getBigUint64(off, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.#fail(`zip ${what} ${v} is too large`);
    return Number(v);
  }

  #parse(): void {
    const src = this.#source;
    if (src.size < 22) this.#fail(`not a zip archive (${src.size} bytes, too short for an end-of-archive record)`);
    const tailLen = Math.min(src.size, 65557);
    const tail = src.read(src.size - tailLen, tailLen);
    const tv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
    let eocd = -1;
    for (let i = tailLen - 22; i >= 0; i--) {
      if (tv.getUint32(i, true) === SIG_EOCD) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) this.#fail("zip end-of-archive record not found; the file is truncated or not a zip");
    let count = tv.getUint16(eocd + 10, true);
    let cdSize = tv.getUint32(eocd + 12, true);
    let cdOffset = tv.getUint32(eocd + 16, true);
    const eocdAbs = src.size - tailLen + eocd;
    if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
      if (eocdAbs < 20) this.#fail("zip64 locator missing");
      const loc = src.read(eocdAbs - 20, 20);
      const lv = new DataView(loc.buffer, loc.byteOffset, loc.byteLength);
      if (lv.getUint32(0, true) !== SIG_EOCD64_LOCATOR) this.#fail("zip64 end-of-archive locator missing or corrupt");
      const rec64Off = this.#u64(lv, 8, "zip64 record offset");
      if (rec64Off + 56 > eocdAbs) this.#fail(`zip64 end-of-archive record offset ${rec64Off} is out of range`);
      const rec = src.read(rec64Off, 56);
      const rv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
      if (rv.getUint32(0, true) !== SIG_EOCD64) this.#fail("zip64 end-of-archive record corrupt");
      count = this.#u64(rv, 32, "entry count");
      cdSize = this.#u64(rv, 40, "central directory size");
      cdOffset = this.#u64(rv, 48, "central directory offset");
    }
    if (cdOffset + cdSize > src.size) {
      this.#fail(`central directory (offset ${cdOffset}, ${cdSize} bytes) lies outside the file; it is truncated`);
    }
    if (count * 46 > cdSize) {
      this.#fail(`zip directory claims ${count} entries, more than its ${cdSize} bytes can hold`);
    }
    const cd = src.read(cdOffset, cdSize);
    const cv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
    let p = 0;
    const decoder = new TextDecoder("utf-8", { fatal: false });
    for (let i = 0; i < count; i++) {
      if (p + 46 > cd.length || cv.getUint32(p, true) !== SIG_CENTRAL) {
        this.#fail(`central directory entry ${i} is corrupt`);
      }
      const method = cv.getUint16(p + 10, true);
      const crc = cv.getUint32(p + 16, true);
      let compressedSize = cv.getUint32(p + 20, true);
      let size = cv.getUint32(p + 24, true);
      const nameLen = cv.getUint16(p + 28, true);
      const extraLen = cv.getUint16(p + 30, true);
      const commentLen = cv.getUint16(p + 32, true);
      let localHeaderOffset = cv.getUint32(p + 42, true);
      if (p + 46 + nameLen + extraLen > cd.length) this.#fail(`central directory entry ${i} runs past the directory`);
      const name = decoder.decode(cd.subarray(p + 46, p + 46 + nameLen));
      let e = p + 46 + nameLen;
      const extraEnd = e + extraLen;
      while (e + 4 <= extraEnd) {
        const id = cv.getUint16(e, true);
        const len = cv.getUint16(e + 2, true);
        if (e + 4 + len > extraEnd) this.#fail(`extra field of "${name}" runs past its entry`);
        if (id === 0x0001) {
          const field = new DataView(cd.buffer, cd.byteOffset + e + 4, len);
          let q = 0;
          const next = (what: string) => {
            const v = this.#u64(field, q, `zip64 ${what} of "${name}"`);
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = next("size");
          if (compressedSize === 0xffffffff) compressedSize = next("compressed size");
          if (localHeaderOffset === 0xffffffff) localHeaderOffset = next("offset");
        }
        e += 4 + len;
      }
      if (this.entries.has(name)) {
        this.#fail(
          `zip archive has two members named "${name}"; readers disagree on which one counts (PyTorch takes the ` +
            `first), so the file is refused`,
        );
      }
      this.entries.set(name, { name, method, compressedSize, size, crc32: crc, localHeaderOffset });
      p += 46 + nameLen + extraLen + commentLen;
    }
    // Every record must lie before the central directory, and no two may share bytes.
    const byOffset = [...this.entries.values()].sort((a, b) => a.localHeaderOffset - b.localHeaderOffset);
    let prevEnd = 0;
    let prevName = "";
    for (const entry of byOffset) {
      const name = entry.name;
      if (entry.localHeaderOffset < prevEnd) {
        this.#fail(`zip members "${prevName}" and "${name}" overlap (byte ${entry.localHeaderOffset}); refused`);
      }
      if (entry.localHeaderOffset + 30 > cdOffset) this.#fail(`local header of "${name}" lies outside the data area`);
      const header = src.read(entry.localHeaderOffset, 30);
      const hv = new DataView(header.buffer, header.byteOffset, header.byteLength);
      if (hv.getUint32(0, true) !== SIG_LOCAL) this.#fail(`local header of "${name}" is corrupt`);
      const nameLen = hv.getUint16(26, true);
      const dataOffset = entry.localHeaderOffset + 30 + nameLen + hv.getUint16(28, true);
      if (dataOffset + entry.compressedSize > cdOffset) {
        this.#fail(
          `member "${name}" (${entry.compressedSize} bytes at offset ${dataOffset}) runs past the data area ` +
            `(the central directory starts at ${cdOffset}); the file is truncated or corrupt`,
        );
      }
      const localName = decoder.decode(src.read(entry.localHeaderOffset + 30, nameLen));
      if (localName !== name) {
        this.#fail(`local header of "${name}" names "${localName}"; the archive is inconsistent`);
      }
      if (entry.method === 0 && entry.compressedSize !== entry.size) {
        this.#fail(`stored member "${name}" has ${entry.compressedSize} bytes, the directory says ${entry.size}`);
      }
      this.#dataOffsets.set(name, dataOffset);
      prevEnd = dataOffset + entry.compressedSize;
      prevName = name;
    }
  }

  /**
   * Reads one member's bytes (stored or deflated), verifying its CRC-32 unless told not to. A deflated member is
   * inflated with its declared size as a hard cap: a record that inflates to more is refused once it passes it.
   * @param name the member's path inside the archive
   * @param options `verifyCrc: false` skips the CRC check
   * @returns the member's bytes
   * @throws {CheckpointError} naming the file and member when it is missing, corrupt or larger than declared
   */
  read(name: string, options: { verifyCrc?: boolean } = {}): Uint8Array {
    const entry = this.entries.get(name);
    if (!entry) this.#fail(`archive has no member "${name}"`);
    const dataOffset = this.#dataOffsets.get(name)!;
    let data = this.#source.read(dataOffset, entry.compressedSize);
    if (entry.method === 8) {
      try {
        // maxOutputLength stops inflating as soon as the output passes the declared size (a zip bomb costs nothing).
        data = new Uint8Array(inflateRawSync(data, { maxOutputLength: Math.max(1, entry.size) }));
      } catch (err) {
        if ((err as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") {
          this.#fail(`member "${name}" inflates to more than the ${entry.size} bytes its directory entry declares`);
        }
        this.#fail(`member "${name}" does not inflate: ${(err as Error).message}`);
      }
    } else if (entry.method !== 0) {
      this.#fail(
        `member "${name}" uses zip compression method ${entry.method}; only stored (0) and deflate (8) are supported`,
      );
    }
    if (data.length !== entry.size) {
      this.#fail(`member "${name}" has ${data.length} bytes, the directory says ${entry.size}`);
    }
    if (options.verifyCrc !== false && crc32(data) !== entry.crc32) {
      this.#fail(`member "${name}" fails its CRC-32 check; the file is corrupt`);
    }
    return data;
  }
}

/** A member to write: its name and bytes (possibly in several chunks). */
export interface ZipInput {
  /** Path inside the archive. */
  name: string;
  /** Contents. */
  chunks: Uint8Array[];
}

/**
 * Lays out a stored (uncompressed) zip archive with each member's data aligned
 * to `align` bytes, as PyTorch does, using zip64 records when needed.
 * Returns the chunks to write, in order; member data is not copied.
 * @param members the files: path inside the archive and contents as chunks, stored uncompressed
 * @param align the alignment of each member's data in bytes (PyTorch: 64)
 * @returns the archive's chunks, to write in order
 */
export function buildZip(members: ZipInput[], align = 64): Uint8Array[] {
  const out: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  const enc = new TextEncoder();
  let offset = 0;
  for (const m of members) {
    const name = enc.encode(m.name);
    const size = m.chunks.reduce((s, c) => s + c.length, 0);
    let crc = 0;
    for (const c of m.chunks) crc = crc32(c, crc);
    const big = size >= 0xffffffff || offset >= 0xffffffff;
    const zip64Local = big ? 20 : 0;
    const base = offset + 30 + name.length + zip64Local;
    const pad = (align - ((base + 4) % align)) % align;
    const padField = 4 + pad;
    const local = new Uint8Array(30 + name.length + zip64Local + padField);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, SIG_LOCAL, true);
    lv.setUint16(4, big ? 45 : 20, true);
    lv.setUint16(8, 0, true);
    lv.setUint32(14, crc, true);
    lv.setUint32(18, big ? 0xffffffff : size, true);
    lv.setUint32(22, big ? 0xffffffff : size, true);
    lv.setUint16(26, name.length, true);
    lv.setUint16(28, zip64Local + padField, true);
    local.set(name, 30);
    let q = 30 + name.length;
    if (big) {
      lv.setUint16(q, 0x0001, true);
      lv.setUint16(q + 2, 16, true);
      lv.setBigUint64(q + 4, BigInt(size), true);
      lv.setBigUint64(q + 12, BigInt(size), true);
      q += 20;
    }
    lv.setUint16(q, 0x4246, true); // "FB": PyTorch's alignment padding field
    lv.setUint16(q + 2, pad, true);
    local.fill(0x5a, q + 4, q + 4 + pad);
    out.push(local, ...m.chunks);
    const cExtra = big ? 28 : 0;
    const cen = new Uint8Array(46 + name.length + cExtra);
    const cv = new DataView(cen.buffer);
    cv.setUint32(0, SIG_CENTRAL, true);
    cv.setUint16(4, big ? 45 : 20, true);
    cv.setUint16(6, big ? 45 : 20, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, big ? 0xffffffff : size, true);
    cv.setUint32(24, big ? 0xffffffff : size, true);
    cv.setUint16(28, name.length, true);
    cv.setUint16(30, cExtra, true);
    cv.setUint32(42, big ? 0xffffffff : offset, true);
    cen.set(name, 46);
    if (big) {
      const e = 46 + name.length;
      cv.setUint16(e, 0x0001, true);
      cv.setUint16(e + 2, 24, true);
      cv.setBigUint64(e + 4, BigInt(size), true);
      cv.setBigUint64(e + 12, BigInt(size), true);
      cv.setBigUint64(e + 20, BigInt(offset), true);
    }
    central.push(cen);
    offset += local.length + size;
  }
  const cdOffset = offset;
  const cdSize = central.reduce((s, c) => s + c.length, 0);
  out.push(...central);
  const count = members.length;
  const need64 = cdOffset + cdSize >= 0xffffffff || count >= 0xffff;
  if (need64) {
    const rec = new Uint8Array(56);
    const rv = new DataView(rec.buffer);
    rv.setUint32(0, SIG_EOCD64, true);
    rv.setBigUint64(4, 44n, true);
    rv.setUint16(12, 45, true);
    rv.setUint16(14, 45, true);
    rv.setBigUint64(24, BigInt(count), true);
    rv.setBigUint64(32, BigInt(count), true);
    rv.setBigUint64(40, BigInt(cdSize), true);
    rv.setBigUint64(48, BigInt(cdOffset), true);
    const loc = new Uint8Array(20);
    const lv = new DataView(loc.buffer);
    lv.setUint32(0, SIG_EOCD64_LOCATOR, true);
    lv.setBigUint64(8, BigInt(cdOffset + cdSize), true);
    lv.setUint32(16, 1, true);
    out.push(rec, loc);
  }
  const eocd = new Uint8Array(22);
  const ev = new DataView(eocd.buffer);
  ev.setUint32(0, SIG_EOCD, true);
  ev.setUint16(8, need64 ? 0xffff : count, true);
  ev.setUint16(10, need64 ? 0xffff : count, true);
  ev.setUint32(12, need64 ? 0xffffffff : cdSize, true);
  ev.setUint32(16, need64 ? 0xffffffff : cdOffset, true);
  out.push(eocd);
  return out;
}
