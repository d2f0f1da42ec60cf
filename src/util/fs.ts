/**
 * File-system helpers: atomic writes (temp file + rename) so an interrupted
 * run never leaves a half-written checkpoint, report or dataset file.
 * @module
 */
import { dirname } from "node:path";

/** Writes bytes or text to `path` atomically: a sibling temp file is written, synced, then renamed. */
export function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  return writeChunksAtomic(path, [typeof data === "string" ? new TextEncoder().encode(data) : data]);
}

/** Writes several byte chunks to `path` atomically, without concatenating them in memory. */
export async function writeChunksAtomic(path: string, chunks: Iterable<Uint8Array>): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      for (const chunk of chunks) {
        let off = 0;
        while (off < chunk.length) off += await file.write(chunk.subarray(off));
      }
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
}

/** Writes JSON (pretty-printed) atomically. */
export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeFileAtomic(path, JSON.stringify(value, null, 2) + "\n");
}

/** True when `path` exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}
