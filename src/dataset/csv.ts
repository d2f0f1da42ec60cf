/**
 * RFC 4180 CSV parsing with line numbers, for manifests.
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

/** Parses CSV text with a header row. Quoted fields may contain commas, quotes ("") and newlines. */
export function parseCsv(text: string, source = "<csv>"): { header: string[]; rows: CsvRow[] } {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const records: { line: number; fields: string[] }[] = [];
  let field = "";
  let fields: string[] = [];
  let line = 1;
  let recordLine = 1;
  let quoted = false;
  let i = 0;
  const endRecord = () => {
    fields.push(field);
    if (!(fields.length === 1 && fields[0] === "")) records.push({ line: recordLine, fields });
    fields = [];
    field = "";
  };
  while (i < text.length) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        quoted = false;
      } else {
        if (c === "\n") line++;
        field += c;
      }
      i++;
      continue;
    }
    if (c === '"' && field === "") quoted = true;
    else if (c === ",") {
      fields.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      endRecord();
      line++;
      recordLine = line;
    } else field += c;
    i++;
  }
  if (quoted) throw new DatasetError(`${source}:${recordLine}: unterminated quoted field`);
  if (field !== "" || fields.length) endRecord();
  if (records.length === 0) throw new DatasetError(`${source}: empty CSV (no header row)`);
  const header = records[0].fields.map((h) => h.trim());
  const rows: CsvRow[] = [];
  for (const r of records.slice(1)) {
    if (r.fields.length !== header.length) {
      throw new DatasetError(`${source}:${r.line}: row has ${r.fields.length} fields, the header has ${header.length}`);
    }
    const values: Record<string, string> = {};
    header.forEach((h, k) => (values[h] = r.fields[k]));
    rows.push({ line: r.line, values });
  }
  return { header, rows };
}

/** Decodes UTF-8 strictly, naming the file and line of the first invalid byte. */
export function decodeUtf8(bytes: Uint8Array, source: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    // Find the first undecodable byte to report its line.
    let line = 1;
    let start = 0;
    for (let i = 0; i < bytes.length; i++) {
      if (bytes[i] === 0x0a) {
        try {
          new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(start, i));
        } catch {
          break;
        }
        line++;
        start = i + 1;
      }
    }
    throw new DatasetError(`${source}:${line}: text is not valid UTF-8`);
  }
}
