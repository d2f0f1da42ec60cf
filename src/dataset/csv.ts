/**
 * RFC 4180 CSV parsing with line numbers, for manifests; and text decoding that says what it found (a BOM is
 * dropped; UTF-16 with a BOM is decoded; UTF-16 without one, cp1252/Latin-1 and other non-UTF-8 text are errors
 * naming the encoding it looks like). Fields are sliced out of the text, never built a character at a time, and
 * rows are collected without spreading them into a call, so large manifests (hundreds of thousands of rows,
 * cells of many megabytes) parse in time and memory proportional to their size.
 * @module
 */
import { DatasetError } from "../util/errors.ts";

/** One data row with the 1-based line it starts on. */
export interface CsvRow {
  /** Line number of the row's first character in the file. */
  line: number;
  /** Values by column name. */
  values: Record<string, string>;
}

/** Options of {@link parseCsv}. */
export interface CsvOptions {
  /** Field delimiter (default `,`). */
  delimiter?: string;
}

const OTHER_DELIMITERS: [string, string][] = [[";", "semicolon"], ["\t", "tab"], ["|", "pipe"]];

/** At a line start: a field without quotes or line ends that ends in an image extension, and what follows it. */
const ROW_START = /[^"\r\n,;\t|]{0,1000}\.(?:png|jpe?g|tiff?|bmp|npy)(?:#slice=\d+)?([,;\t|])/iy;

/**
 * Parses CSV text with a header row. Quoted fields may contain delimiters, quotes (`""`) and newlines; CR, LF
 * and CRLF line ends are accepted; a leading BOM is dropped. Header names are trimmed.
 * @param text The file's text.
 * @param source The file, for messages.
 * @param options The delimiter.
 * @returns The header and the rows, each with its line.
 * @throws {DatasetError} naming the file and line for an unterminated quote (a quoted field that runs to the end
 *   of the file, or that runs over a line starting like a new row: an image path then the delimiter, as an
 *   unclosed quote merging rows does), a row whose field count differs
 *   from the header's (saying when the file looks semicolon- or tab-delimited), a duplicated column name, or an
 *   empty file. An unnamed column (pandas' index) is called `Unnamed: <k>`, as pandas calls it.
 * @example
 * ```ts
 * import { parseCsv } from "./csv.ts";
 * const { header, rows } = parseCsv('image,report\r\na.png,"drusen, ""small""\nno fluid"\r\nb.png,normal\r\n');
 * if (header.join() !== "image,report" || rows.length !== 2) throw new Error("two rows");
 * if (rows[0].values.report !== 'drusen, "small"\nno fluid' || rows[1].line !== 4) throw new Error("quoted field");
 * ```
 */
export function parseCsv(
  text: string,
  source = "<csv>",
  options: CsvOptions = {},
): { header: string[]; rows: CsvRow[] } {
  const delim = options.delimiter ?? ",";
  if (delim.length !== 1 || delim === '"' || delim === "\n" || delim === "\r") {
    throw new DatasetError(`${source}: bad CSV delimiter ${JSON.stringify(delim)}`);
  }
  const d = delim.charCodeAt(0);
  const n = text.length;
  let header: string[] | undefined;
  const rows: CsvRow[] = [];
  let line = 1;
  let fields: string[] = [];
  let recordLine = 1;
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  const endRecord = () => {
    if (!(fields.length === 1 && fields[0] === "")) {
      if (!header) header = checkHeader(fields, source);
      else {
        if (fields.length !== header.length) {
          throw new DatasetError(
            `${source}:${recordLine}: row has ${fields.length} fields, the header has ${header.length}` +
              delimiterHint(header, delim),
          );
        }
        const values: Record<string, string> = {};
        for (let k = 0; k < header.length; k++) values[header[k]] = fields[k];
        rows.push({ line: recordLine, values });
      }
    }
    fields = [];
  };
  while (i <= n) {
    // One field starting at i.
    if (i < n && text.charCodeAt(i) === 34) {
      // Quoted: collect slices between doubled quotes.
      const quoteLine = line;
      const parts: string[] = [];
      let j = i + 1;
      for (;;) {
        const q = text.indexOf('"', j);
        if (q < 0) {
          throw new DatasetError(
            `${source}:${quoteLine}: unterminated quoted field: the quote opened on line ${quoteLine} is never ` +
              `closed (the field runs to the end of the file); close it or remove it`,
          );
        }
        parts.push(text.slice(j, q));
        for (let k = j; k < q; k++) {
          if (text.charCodeAt(k) !== 10) continue;
          line++;
          // A line inside the quoted field that starts like a row (an image path, then the delimiter): the quote
          // opened on quoteLine was most likely never closed, and the rows after it are merged into one field.
          ROW_START.lastIndex = k + 1;
          const m = ROW_START.exec(text);
          if (m && m[1] === delim) {
            throw new DatasetError(
              `${source}:${quoteLine}: unterminated quoted field? the quote opened on line ${quoteLine} runs on to ` +
                `line ${line}, which starts ` +
                `like a new row (${JSON.stringify(m[0].slice(0, 80))}); an unclosed quote would merge those rows ` +
                `into one field: close the quote on line ${quoteLine}`,
            );
          }
        }
        if (text.charCodeAt(q + 1) === 34) {
          parts.push('"');
          j = q + 2;
          continue;
        }
        j = q + 1;
        break;
      }
      // Text after the closing quote up to the delimiter is kept, as Python's csv module does.
      let e = j;
      while (e < n) {
        const c = text.charCodeAt(e);
        if (c === d || c === 10 || c === 13) break;
        e++;
      }
      if (e > j) parts.push(text.slice(j, e));
      fields.push(parts.length === 1 ? parts[0] : parts.join(""));
      i = e;
    } else {
      let e = i;
      while (e < n) {
        const c = text.charCodeAt(e);
        if (c === d || c === 10 || c === 13) break;
        e++;
      }
      fields.push(text.slice(i, e));
      i = e;
    }
    if (i >= n) {
      endRecord();
      break;
    }
    const c = text.charCodeAt(i);
    if (c === d) {
      i++;
      if (i === n) {
        fields.push("");
        endRecord();
        break;
      }
      continue;
    }
    // Line end.
    i += c === 13 && text.charCodeAt(i + 1) === 10 ? 2 : 1;
    endRecord();
    line++;
    recordLine = line;
    if (i === n) break;
  }
  if (!header) throw new DatasetError(`${source}: empty CSV (no header row)`);
  return { header, rows };
}

function checkHeader(fields: string[], source: string): string[] {
  // An unnamed column (pandas' index) is named as pandas names it.
  const header = fields.map((h, k) => h.trim() || (fields.length > 1 ? `Unnamed: ${k}` : ""));
  const seen = new Map<string, number>();
  header.forEach((h, k) => {
    if (seen.has(h)) {
      throw new DatasetError(`${source}:1: column "${h}" appears twice (columns ${seen.get(h)! + 1} and ${k + 1})`);
    }
    seen.set(h, k);
  });
  return header;
}

function delimiterHint(header: string[], delim: string): string {
  if (delim !== ",") return "";
  const joined = header.join(",");
  for (const [c, name] of OTHER_DELIMITERS) {
    if (header.length <= 2 && joined.includes(c)) {
      return ` (the header "${joined}" looks ${name}-delimited; save the file comma-separated)`;
    }
  }
  return "";
}

/**
 * Says which delimiter a parsed header looks like it uses: when it is one field that splits cleanly on `;`, tab or
 * `|` into non-empty names, e.g. `image\treport\tpatient`. For "missing column" errors.
 * @param header The header's column names.
 * @returns A hint like ` (the header "image\treport" looks tab-delimited; ...)`, or `""`.
 */
export function headerDelimiterHint(header: readonly string[]): string {
  if (header.length !== 1) return "";
  for (const [c, name] of OTHER_DELIMITERS) {
    const parts = header[0].split(c);
    if (parts.length > 1 && parts.every((x) => x.trim() !== "")) {
      return ` (the header ${JSON.stringify(header[0])} looks ${name}-delimited: ${parts.length} names separated ` +
        `by ${name === "tab" ? "tabs" : `"${c}"`}; save the file comma-separated)`;
    }
  }
  return "";
}

/**
 * Says which delimiter a header line looks like it uses when it has no commas.
 * @param headerLine The first line.
 * @returns A hint like ` (looks semicolon-delimited ...)`, or `""`.
 */
export function otherDelimiterHint(headerLine: string): string {
  if (headerLine.includes(",")) return "";
  for (const [c, name] of OTHER_DELIMITERS) {
    if (headerLine.includes(c)) {
      return ` (the header "${headerLine}" looks ${name}-delimited; save the file comma-separated)`;
    }
  }
  return "";
}

/**
 * Decodes a text file, saying what it found: a UTF-8 BOM is dropped; UTF-16 with a BOM is decoded; UTF-16
 * without a BOM, cp1252/Latin-1 and other invalid UTF-8 are errors naming the encoding and the first bad line.
 * @param bytes The file's bytes.
 * @param source The file, for messages.
 * @returns The text, without a BOM.
 * @throws {DatasetError} for text that is not UTF-8 or BOM-marked UTF-16.
 */
export function decodeText(bytes: Uint8Array, source: string): string {
  if (bytes.length >= 2 && bytes[0] === 0xff && bytes[1] === 0xfe) {
    return new TextDecoder("utf-16le").decode(bytes.subarray(2));
  }
  if (bytes.length >= 2 && bytes[0] === 0xfe && bytes[1] === 0xff) {
    return new TextDecoder("utf-16be").decode(bytes.subarray(2));
  }
  // UTF-16 without a BOM: every other byte of ASCII text is zero.
  const probe = bytes.subarray(0, 4096);
  let zeros = 0;
  for (const b of probe) if (b === 0) zeros++;
  if (probe.length >= 4 && zeros > probe.length / 4) {
    throw new DatasetError(
      `${source}: the text looks like UTF-16 without a byte-order mark (${zeros} zero bytes in the first ` +
        `${probe.length}); save it as UTF-8`,
    );
  }
  const text = decodeUtf8(bytes, source);
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/**
 * Decodes UTF-8 strictly, naming the file and line of the first invalid byte, and the encoding the bytes look
 * like (cp1252/Latin-1 when the bad bytes are single high bytes).
 * @param bytes The file's bytes.
 * @param source The file, for messages.
 * @returns The text (a BOM, if any, is kept; {@link decodeText} drops it).
 * @throws {DatasetError} when the bytes are not UTF-8.
 */
export function decodeUtf8(bytes: Uint8Array, source: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    // Find the first undecodable byte to report its line.
    let line = 1;
    let start = 0;
    let bad = bytes.length;
    for (let i = 0; i < bytes.length; i++) {
      if (bytes[i] === 0x0a) {
        try {
          new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(start, i));
        } catch {
          bad = start;
          break;
        }
        line++;
        start = i + 1;
      }
    }
    let sample = "";
    for (let i = bad; i < Math.min(bytes.length, bad + 200) && bytes[i] !== 0x0a; i++) {
      if (bytes[i] >= 0x80) {
        sample = new TextDecoder("windows-1252").decode(bytes.subarray(Math.max(bad, i - 12), i + 12));
        break;
      }
    }
    const hint = sample
      ? ` (it looks like cp1252/Latin-1, e.g. "${sample.replace(/[\r\n]/g, " ").trim()}"; save it as UTF-8)`
      : "";
    throw new DatasetError(`${source}:${line}: text is not valid UTF-8${hint}`);
  }
}
