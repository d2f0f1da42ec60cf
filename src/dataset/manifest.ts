/**
 * Image-report pair manifests (CSV or JSONL): an image path and report text
 * per row, optionally a split and a patient id. The authors' CSV layout
 * (`scan`, `eye`, `OD_OCT` / `OS_OCT`; method notes §1.3) is supported by
 * column options ({@link AUTHORS_LAYOUT}). Splits are made by patient when a
 * patient id is present. Bad rows are errors naming the file and line, or,
 * with `skipBad`, are skipped and listed.
 * @module
 */
import { dirname, isAbsolute, join } from "node:path";
import { DatasetError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";
import { type CsvRow, decodeText, headerDelimiterHint, parseCsv } from "./csv.ts";
import { checkImageFiles, type ImageSetOptions } from "./image.ts";
import { SPLIT_ALIASES } from "./folders.ts";

/** One image-report pair. */
export interface PairRecord {
  /** Absolute or manifest-relative-resolved image path. */
  image: string;
  /** Report text. */
  report: string;
  /** `train`, `val` or `test`, when known. */
  split?: string;
  /** Patient id, when known. */
  patient?: string;
  /** Manifest file and line, for error messages. */
  origin: string;
}

/** A row that was skipped with `skipBad`, and why. */
export interface SkippedRow {
  /** `file:line`. */
  origin: string;
  /** What was wrong. */
  reason: string;
}

/** How to read a manifest's columns. */
export interface ManifestOptions {
  /** Column with the image path (default `image`). */
  imageColumn?: string;
  /** Builds the image path from columns, e.g. `bscan/{scan}.npy` (overrides `imageColumn`). */
  imageTemplate?: string;
  /** Column with the report (default `report`). */
  textColumn?: string;
  /** Column naming the eye; with `eyeTextColumns`, picks the report column per row. */
  eyeColumn?: string;
  /** Report column per eye value, e.g. `{ left: "OS_OCT", right: "OD_OCT" }`. */
  eyeTextColumns?: Record<string, string>;
  /** Column with the split (default `split`, used if present). */
  splitColumn?: string;
  /** Column with the patient id (default `patient`, used if present). */
  patientColumn?: string;
  /** Directory image paths are relative to (default: the manifest's). */
  baseDir?: string;
  /** Skip bad rows (and list them) instead of failing. */
  skipBad?: boolean;
  /**
   * Check every image before anything else runs (default true): one pass over the headers, in parallel, that
   * finds missing, empty, truncated, refused (GIF, SVG, LFS pointers, ...) and over-sized images and volumes
   * without a slice ({@link inspectImage}). A bad image is an error naming the manifest line, or with `skipBad`
   * a skipped row.
   */
  checkFiles?: boolean;
  /** Decode options for the image check (pixel limit, slice); `slice: "all"` makes one pair per B-scan of a volume. */
  image?: ImageSetOptions;
  /** Images checked at once (default 16). */
  concurrency?: number;
}

/**
 * The authors' VIBES CSV layout: `scan` names `<scan>.npy`, `eye` is
 * left/right, and the report is in `OS_OCT` (left) or `OD_OCT` (right).
 */
export const AUTHORS_LAYOUT: ManifestOptions = {
  imageTemplate: "{scan}.npy",
  eyeColumn: "eye",
  eyeTextColumns: { left: "OS_OCT", right: "OD_OCT", os: "OS_OCT", od: "OD_OCT", OS: "OS_OCT", OD: "OD_OCT" },
};

/** Result of reading a manifest. */
export interface Manifest {
  /** The usable pairs. */
  records: PairRecord[];
  /** Rows skipped with `skipBad`. */
  skipped: SkippedRow[];
}

function resolvePath(base: string, p: string): string {
  return isAbsolute(p) ? p : join(base, p);
}

/**
 * Reads a CSV or JSONL pair manifest.
 * @param path a `.csv` or `.jsonl` manifest; image paths are relative to its folder
 * @param options column names, the authors' layout, `skipBad`, …, see {@link ManifestOptions}
 * @returns the records (image, report, split, patient, origin line) and the rows skipped with reasons
 * @throws {DatasetError} naming the file and line for an unreadable file, invalid JSON or CSV, a missing column, an
 *   empty image or report, or no usable rows
 */
export async function readPairManifest(path: string, options: ManifestOptions = {}): Promise<Manifest> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    throw new DatasetError(`${path}: cannot read manifest (${(err as Error).message})`);
  }
  const text = decodeText(bytes, path);
  const rows: CsvRow[] = [];
  /** Columns whose JSONL value was not a string, by line: reports and paths must be strings. */
  const nonString = new Map<number, Map<string, string>>();
  let columns: string[];
  if (path.toLowerCase().endsWith(".jsonl") || path.toLowerCase().endsWith(".ndjson")) {
    const keys = new Set<string>();
    let lineNo = 0;
    let pos = 0;
    while (pos <= text.length) {
      let end = text.indexOf("\n", pos);
      if (end < 0) end = text.length;
      lineNo++;
      const lineText = text.slice(pos, end);
      pos = end + 1;
      if (!lineText.trim()) continue;
      let obj: unknown;
      try {
        obj = JSON.parse(lineText);
      } catch (err) {
        throw new DatasetError(`${path}:${lineNo}: invalid JSON (${(err as Error).message})`);
      }
      if (!obj || typeof obj !== "object" || Array.isArray(obj)) {
        throw new DatasetError(`${path}:${lineNo}: each line must be a JSON object`);
      }
      const values: Record<string, string> = {};
      for (const [k, v] of Object.entries(obj)) {
        if (typeof v === "string") values[k] = v;
        else {
          values[k] = typeof v === "number" || typeof v === "boolean" ? String(v) : "";
          const kind = v === null
            ? "null"
            : Array.isArray(v)
            ? "an array"
            : typeof v === "object"
            ? "an object"
            : `a ${typeof v}`;
          if (!nonString.has(lineNo)) nonString.set(lineNo, new Map());
          nonString.get(lineNo)!.set(k, kind);
        }
        keys.add(k);
      }
      rows.push({ line: lineNo, values });
    }
    columns = [...keys];
  } else {
    const csv = parseCsv(text, path);
    columns = csv.header;
    for (const r of csv.rows) rows.push(r);
  }
  const o = {
    imageColumn: "image",
    textColumn: "report",
    splitColumn: "split",
    patientColumn: "patient",
    checkFiles: true,
    ...options,
  };
  const base = o.baseDir ?? dirname(path);
  const need = (col: string, why: string) => {
    if (!columns.includes(col)) {
      throw new DatasetError(
        `${path}: missing column "${col}" (${why}); columns are: ${columns.join(", ")}${headerDelimiterHint(columns)}`,
      );
    }
  };
  const templateCols = o.imageTemplate ? [...o.imageTemplate.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]) : [];
  if (o.imageTemplate) templateCols.forEach((c) => need(c, `used by image template ${o.imageTemplate}`));
  else need(o.imageColumn, "image path");
  if (o.eyeColumn && o.eyeTextColumns) {
    need(o.eyeColumn, "eye");
    if (!Object.values(o.eyeTextColumns).some((c) => columns.includes(c))) {
      throw new DatasetError(
        `${path}: none of the report columns ${[...new Set(Object.values(o.eyeTextColumns))].join(", ")} exist`,
      );
    }
  } else need(o.textColumn, "report text");
  const records: PairRecord[] = [];
  const skipped: SkippedRow[] = [];
  for (const row of rows) {
    const origin = `${path}:${row.line}`;
    try {
      const v = row.values;
      const bad = nonString.get(row.line);
      for (const col of o.imageTemplate ? templateCols : [o.imageColumn]) {
        if (bad?.has(col)) {
          throw new DatasetError(
            `${origin}: "${col}" is ${bad.get(col)}, not a string (reports and paths must be text)`,
          );
        }
      }
      const image = o.imageTemplate ? o.imageTemplate.replace(/\{([^}]+)\}/g, (_, c) => v[c] ?? "") : v[o.imageColumn];
      if (!image?.trim()) throw new DatasetError(`${origin}: empty image path`);
      let textCol = o.textColumn;
      if (o.eyeColumn && o.eyeTextColumns) {
        const eye = (v[o.eyeColumn] ?? "").trim();
        const col = o.eyeTextColumns[eye] ?? o.eyeTextColumns[eye.toLowerCase()];
        if (!col) {
          throw new DatasetError(
            `${origin}: eye "${eye}" has no report column (known: ${Object.keys(o.eyeTextColumns).join(", ")})`,
          );
        }
        if (!columns.includes(col)) {
          throw new DatasetError(`${origin}: report column "${col}" for eye "${eye}" is missing`);
        }
        textCol = col;
      }
      for (const col of [textCol]) {
        if (bad?.has(col)) {
          throw new DatasetError(
            `${origin}: "${col}" is ${bad.get(col)}, not a string (reports and paths must be text)`,
          );
        }
      }
      const report = (v[textCol] ?? "").trim();
      if (!report) throw new DatasetError(`${origin}: empty report in column "${textCol}"`);
      const full = resolvePath(base, image.trim());
      const rawSplit = columns.includes(o.splitColumn) ? v[o.splitColumn]?.trim() || undefined : undefined;
      const split = rawSplit === undefined ? undefined : SPLIT_ALIASES[rawSplit.toLowerCase()];
      if (rawSplit !== undefined && !split) {
        const found = [...new Set(rows.map((r) => (r.values[o.splitColumn] ?? "").trim()))].slice(0, 20);
        throw new DatasetError(
          `${origin}: split "${rawSplit}" is not train, val(idation) or test (any case); the file's split values: ` +
            found.map((x) => JSON.stringify(x)).join(", "),
        );
      }
      const patient = columns.includes(o.patientColumn) ? v[o.patientColumn]?.trim() || undefined : undefined;
      records.push({ image: full, report, split, patient, origin });
    } catch (err) {
      if (!o.skipBad || !(err instanceof DatasetError)) throw err;
      skipped.push({ origin, reason: err.message.replace(`${origin}: `, "") });
    }
  }
  let kept = records;
  if (o.checkFiles) kept = await checkImages(records, skipped, o);
  if (kept.length === 0) {
    throw new DatasetError(`${path}: no usable rows${skipped.length ? ` (${skipped.length} skipped)` : ""}`);
  }
  skipped.sort((a, b) => originLine(a.origin) - originLine(b.origin));
  return { records: kept, skipped };
}

function originLine(origin: string): number {
  return Number(/:(\d+)$/.exec(origin)?.[1] ?? 0);
}

/** The image pre-pass: every record's image header, `concurrency` at a time, in manifest order. */
async function checkImages(
  records: PairRecord[],
  skipped: SkippedRow[],
  o: ManifestOptions,
): Promise<PairRecord[]> {
  const results = await checkImageFiles(records.map((r) => r.image), o.image, o.concurrency ?? 16);
  const kept: PairRecord[] = [];
  records.forEach((r, k) => {
    const res = results[k];
    if (res instanceof DatasetError) {
      const msg = `image ${res.message.startsWith(r.image) ? res.message : `${r.image}: ${res.message}`}`;
      if (!o.skipBad) throw new DatasetError(`${r.origin}: ${msg}`, { cause: res });
      skipped.push({ origin: r.origin, reason: msg });
      return;
    }
    for (const image of res) kept.push(image === r.image ? r : { ...r, image });
  });
  return kept;
}

/**
 * Checks that a validation split can give a loss: ITC/ITM compare each pair with the others of its batch, so a
 * validation split of one pair gives no loss (`val NaN`) and would silently turn early stopping off.
 * @param records Pairs with their splits assigned.
 * @throws {DatasetError} when the validation split holds exactly one pair.
 */
export function checkValidationSplit(records: readonly PairRecord[]): void {
  let n = 0;
  let first = "";
  for (const r of records) {
    if (r.split === "val") {
      n++;
      first ||= r.origin;
    }
  }
  if (n === 1) {
    throw new DatasetError(
      `the validation split has 1 pair (${first}): the contrastive losses need at least 2 pairs to compare, so ` +
        `no validation loss could be computed and early stopping would be off; give it at least 2 pairs, ` +
        `or none (--val-fraction 0)`,
    );
  }
}

/**
 * Assigns a split to records that have none: by patient when ids are present
 * (all scans of a patient land in the same split), else by record. Records
 * that already have a split keep it. A drawn validation split of a single pair takes one more patient (or
 * pair), since one pair gives no contrastive loss; a validation split of one pair given in the manifest is an
 * error ({@link checkValidationSplit}).
 * @param records the records; those without a split get one (in place)
 * @param fractions the validation share and optional test share, of patients (or records)
 * @param seed seed of the `splits` stream
 * @returns `records`
 * @throws {DatasetError} when the validation split ends up with a single pair
 */
export function assignSplits(records: PairRecord[], fractions: { val: number; test?: number }, seed = 0): PairRecord[] {
  const unassigned = records.filter((r) => !r.split);
  const groups = new Map<string, PairRecord[]>();
  unassigned.forEach((r, i) => {
    const key = r.patient ?? `#${i}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(r);
  });
  const keys = new Rng(seed, "splits").shuffle([...groups.keys()].sort());
  const nVal = Math.round(keys.length * fractions.val);
  const nTest = Math.round(keys.length * (fractions.test ?? 0));
  keys.forEach((k, i) => {
    const split = i < nVal ? "val" : i < nVal + nTest ? "test" : "train";
    for (const r of groups.get(k)!) r.split = split;
  });
  // One validation pair gives no contrastive loss: a drawn validation split of one pair takes one more group.
  const count = (split: string) => records.reduce((n, r) => n + (r.split === split ? 1 : 0), 0);
  const extra = keys[nVal + nTest];
  if (nVal > 0 && count("val") === 1 && extra !== undefined && count("train") - groups.get(extra)!.length >= 2) {
    for (const r of groups.get(extra)!) r.split = "val";
  }
  checkValidationSplit(records);
  return records;
}
