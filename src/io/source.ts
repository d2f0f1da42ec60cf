/**
 * Random-access byte sources: a file read on demand (so a 1.3 GB checkpoint is
 * never inflated into memory at once) or an in-memory buffer.
 * @module
 */
import { CheckpointError } from "../util/errors.ts";

/** Synchronous random access to bytes. */
export interface ByteSource {
  /** Name used in error messages (the file path). */
  readonly name: string;
  /** Total size in bytes. */
  readonly size: number;
  /** Reads exactly `length` bytes at `offset` into a new buffer; throws if out of range. */
  read(offset: number, length: number): Uint8Array;
  /** Releases the file handle, if any. */
  close(): void;
}

/**
 * A byte source over an in-memory buffer.
 * @param bytes the buffer
 * @param name names it in error messages
 * @returns a source whose reads are bounds-checked copies
 * @throws {CheckpointError} (from `read`) when a read runs past the end
 */
export function memorySource(bytes: Uint8Array, name = "<memory>"): ByteSource {
  return {
    name,
    size: bytes.length,
    read(offset, length) {
      if (offset < 0 || length < 0 || offset + length > bytes.length) {
        throw new CheckpointError(
          `${name}: read of ${length} bytes at offset ${offset} runs past the end (${bytes.length} bytes); the file is truncated or corrupt`,
        );
      }
      return bytes.slice(offset, offset + length);
    },
    close() {},
  };
}

/**
 * A byte source reading a file on demand. `close()` releases the handle; a
 * later `read` reopens the file (lazy tensors read their storage after the
 * reader returned) and refuses if the file was replaced or changed (size,
 * modification or change time, inode) since it was first opened.
 * @param path the file
 * @returns the source
 * @throws {CheckpointError} when the file is missing, unreadable or not a regular file
 */
export function fileSource(path: string): ByteSource {
  let file: Deno.FsFile | undefined;
  let size: number;
  let stamp: string;
  const stampOf = (st: Deno.FileInfo) => `${st.size}/${st.mtime?.getTime()}/${st.ino}/${st.ctime?.getTime()}`;
  try {
    file = Deno.openSync(path, { read: true });
    const stat = file.statSync();
    if (!stat.isFile) {
      file.close();
      throw new CheckpointError(`${path}: not a regular file`);
    }
    size = stat.size;
    stamp = stampOf(stat);
  } catch (err) {
    if (err instanceof CheckpointError) throw err;
    if (err instanceof Deno.errors.NotFound) throw new CheckpointError(`${path}: file not found`);
    throw new CheckpointError(`${path}: cannot open (${(err as Error).message})`, { cause: err });
  }
  const handle = (): Deno.FsFile => {
    if (file) return file;
    let f: Deno.FsFile;
    try {
      f = Deno.openSync(path, { read: true });
    } catch (err) {
      throw new CheckpointError(`${path}: cannot reopen to read tensor data (${(err as Error).message})`, {
        cause: err,
      });
    }
    const stat = f.statSync();
    if (stampOf(stat) !== stamp) {
      f.close();
      throw new CheckpointError(
        `${path}: the file changed after it was opened (tensor data are read when first used); read it again`,
      );
    }
    return (file = f);
  };
  return {
    name: path,
    size,
    read(offset, length) {
      if (offset < 0 || length < 0 || offset + length > size) {
        throw new CheckpointError(
          `${path}: read of ${length} bytes at offset ${offset} runs past the end (${size} bytes); the file is truncated or corrupt`,
        );
      }
      const out = new Uint8Array(length);
      const f = handle();
      f.seekSync(offset, Deno.SeekMode.Start);
      let got = 0;
      while (got < length) {
        const n = f.readSync(out.subarray(got));
        if (n === null || n === 0) {
          throw new CheckpointError(`${path}: unexpected end of file at offset ${offset + got}`);
        }
        got += n;
      }
      return out;
    },
    close() {
      try {
        file?.close();
      } catch { /* already closed */ }
      file = undefined;
    },
  };
}
