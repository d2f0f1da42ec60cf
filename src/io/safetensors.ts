/**
 * safetensors reader and writer. The header is validated before any data is
 * trusted: known dtypes, shapes whose byte size matches the offsets, offsets
 * inside the file, no overlaps and no holes.
 * @module
 */
import { CheckpointError } from "../util/errors.ts";
import { concatBytes } from "../util/bytes.ts";
import { writeChunksAtomic } from "../util/fs.ts";
import { type ByteSource, fileSource, memorySource } from "./source.ts";
import { type DType, DTYPE_SIZE, lazyTensor, numel, tensorBytes, type TensorData, typedView } from "./tensor.ts";

/**
 * Largest header read. The format allows 100 MB, but parsing that much JSON
 * costs gigabytes; real headers are kilobytes (a 70B-parameter model's is
 * about 100 kB), so this reader stops at 16 MiB.
 */
const MAX_HEADER = 16 * 2 ** 20;

/** What {@link readSafetensors} returns. */
export interface SafetensorsContents {
  /** Tensors by name, in file order. */
  tensors: Map<string, TensorData>;
  /** The `__metadata__` string map. */
  metadata: Record<string, string>;
}

interface HeaderEntry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

function parseHeader(src: ByteSource): { entries: HeaderEntry[]; metadata: Record<string, string>; dataStart: number } {
  const file = src.name;
  if (src.size < 8) throw new CheckpointError(`${file}: too short for a safetensors header (${src.size} bytes)`);
  const n = Number(new DataView(src.read(0, 8).buffer).getBigUint64(0, true));
  if (n > MAX_HEADER && n + 8 <= src.size) {
    throw new CheckpointError(
      `${file}: safetensors header of ${n} bytes is larger than this reader allows (${MAX_HEADER} bytes; real ` +
        `headers are kilobytes); refused`,
    );
  }
  if (n + 8 > src.size) {
    throw new CheckpointError(
      `${file}: safetensors header length ${n} is larger than the file (${src.size} bytes) allows; truncated or not safetensors`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(src.read(8, n)));
  } catch (err) {
    throw new CheckpointError(`${file}: safetensors header is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    throw new CheckpointError(`${file}: safetensors header is not a JSON object`);
  }
  const dataStart = 8 + n;
  const dataSize = src.size - dataStart;
  const metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const [name, raw] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (!raw || typeof raw !== "object") throw new CheckpointError(`${file}: __metadata__ is not an object`);
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== "string") throw new CheckpointError(`${file}: __metadata__["${k}"] is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e?.dtype !== "string" || !(e.dtype in DTYPE_SIZE)) {
      throw new CheckpointError(`${file}: tensor "${name}" has unsupported dtype ${JSON.stringify(e?.dtype)}`);
    }
    if (!Array.isArray(e.shape) || e.shape.length > 64 || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new CheckpointError(`${file}: tensor "${name}" has invalid shape ${JSON.stringify(e.shape)}`);
    }
    if (
      !Array.isArray(e.data_offsets) || e.data_offsets.length !== 2 ||
      !e.data_offsets.every((d) => Number.isSafeInteger(d) && d >= 0)
    ) {
      throw new CheckpointError(`${file}: tensor "${name}" has invalid data_offsets ${JSON.stringify(e.data_offsets)}`);
    }
    const [begin, end] = e.data_offsets as [number, number];
    const dtype = e.dtype as DType;
    const shape = e.shape as number[];
    if (begin > end || end > dataSize) {
      throw new CheckpointError(
        `${file}: tensor "${name}" data_offsets [${begin}, ${end}] lie outside the ${dataSize}-byte data section`,
      );
    }
    const expected = numel(shape) * DTYPE_SIZE[dtype];
    if (end - begin !== expected) {
      throw new CheckpointError(
        `${file}: tensor "${name}" is ${dtype}[${shape}] = ${expected} bytes but its offsets span ${end - begin}`,
      );
    }
    entries.push({ name, dtype, shape, begin, end });
  }
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const e of sorted) {
    if (e.begin < cursor) throw new CheckpointError(`${file}: tensor "${e.name}" overlaps the tensor before it`);
    if (e.begin > cursor) {
      throw new CheckpointError(
        `${file}: hole in the data section before tensor "${e.name}" (bytes ${cursor}..${e.begin})`,
      );
    }
    cursor = e.end;
  }
  if (cursor !== dataSize) {
    throw new CheckpointError(`${file}: ${dataSize - cursor} trailing bytes after the last tensor`);
  }
  return { entries, metadata, dataStart };
}

/**
 * Reads a safetensors file (or bytes). The whole header is checked before
 * anything else; each tensor's data is read from the file when its `.data` is
 * first used (tensors that are dropped are never read).
 * @param input a path or the file's bytes
 * @param options `headerOnly` returns no tensors, only the metadata
 * @returns the tensors by name, in file order, and the `__metadata__` map
 * @throws {CheckpointError} naming the file when the header is malformed or disagrees with the data section
 */
export function readSafetensors(
  input: string | Uint8Array,
  options: { headerOnly?: boolean } = {},
): SafetensorsContents {
  const src = typeof input === "string" ? fileSource(input) : memorySource(input);
  try {
    const { entries, metadata, dataStart } = parseHeader(src);
    const tensors = new Map<string, TensorData>();
    if (options.headerOnly) return { tensors, metadata };
    for (const e of entries) {
      tensors.set(
        e.name,
        lazyTensor(e.dtype, e.shape, () => {
          try {
            return typedView(e.dtype, src.read(dataStart + e.begin, e.end - e.begin));
          } finally {
            src.close(); // lazy reads reopen the file; no handle is kept between them
          }
        }, `${src.name}: tensor "${e.name}"`),
      );
    }
    return { tensors, metadata };
  } finally {
    src.close();
  }
}

/** The chunks of a safetensors file (header + tensor views, no data copies). */
export function safetensorsChunks(
  tensors: Map<string, TensorData>,
  metadata: Record<string, string> = {},
): Uint8Array[] {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let offset = 0;
  const chunks: Uint8Array[] = [];
  for (const [name, t] of tensors) {
    const bytes = tensorBytes(t);
    if (t.data.length !== numel(t.shape)) {
      throw new CheckpointError(
        `safetensors: tensor "${name}" data (${t.data.length}) does not match shape [${t.shape}]`,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
    chunks.push(bytes);
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((json.length + 8) % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  return [len, headerBytes, ...chunks];
}

/**
 * Encodes tensors as safetensors bytes.
 * @param tensors tensors by name, written in this order
 * @param metadata string pairs stored as the header's `__metadata__` (omitted when empty)
 * @returns the file's bytes: 8-byte header length, JSON header, then the data, little-endian
 * @example
 * ```ts
 * import { encodeSafetensors, readSafetensors } from "./safetensors.ts";
 * import { float32Tensor } from "./tensor.ts";
 * const bytes = encodeSafetensors(new Map([["w", float32Tensor(new Float32Array([1, 2, 3, 4]), [2, 2])]]), {
 *   format: "pt",
 * });
 * const back = readSafetensors(bytes);
 * const w = back.tensors.get("w")!;
 * if (w.shape.join() !== "2,2" || w.data[3] !== 4 || back.metadata.format !== "pt") throw new Error("round trip");
 * ```
 */
export function encodeSafetensors(tensors: Map<string, TensorData>, metadata: Record<string, string> = {}): Uint8Array {
  return concatBytes(safetensorsChunks(tensors, metadata));
}

/**
 * Writes tensors to a safetensors file atomically.
 * @param path the file to write (replaced atomically: a temporary file, then a rename)
 * @param tensors tensors by name, written in this order
 * @param metadata string pairs stored as the header's `__metadata__`
 * @returns when the file is written
 */
export async function writeSafetensors(
  path: string,
  tensors: Map<string, TensorData>,
  metadata: Record<string, string> = {},
): Promise<void> {
  await writeChunksAtomic(path, safetensorsChunks(tensors, metadata));
}
