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
import { type CsvRow, decodeUtf8, parseCsv } from "./csv.ts";

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
  /** Check that every image file exists (default true). */
  checkFiles?: boolean;
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

/** Reads a CSV or JSONL pair manifest. */
export async function readPairManifest(path: string, options: ManifestOptions = {}): Promise<Manifest> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    throw new DatasetError(`${path}: cannot read manifest (${(err as Error).message})`);
  }
  const text = decodeUtf8(bytes, path);
  const rows: CsvRow[] = [];
  let columns: string[];
  if (path.toLowerCase().endsWith(".jsonl") || path.toLowerCase().endsWith(".ndjson")) {
    const keys = new Set<string>();
    text.split(/\r?\n/).forEach((lineText, i) => {
      if (!lineText.trim()) return;
      let obj: unknown;
      try {
        obj = JSON.parse(lineText);
      } catch (err) {
        throw new DatasetError(`${path}:${i + 1}: invalid JSON (${(err as Error).message})`);
      }
      if (!obj || typeof obj !== "object" || Array.isArray(obj)) {
        throw new DatasetError(`${path}:${i + 1}: each line must be a JSON object`);
      }
      const values: Record<string, string> = {};
      for (const [k, v] of Object.entries(obj)) {
        values[k] = v === null || v === undefined ? "" : String(v);
        keys.add(k);
      }
      rows.push({ line: i + 1, values });
    });
    columns = [...keys];
  } else {
    const csv = parseCsv(text, path);
    columns = csv.header;
    rows.push(...csv.rows);
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
      throw new DatasetError(`${path}: missing column "${col}" (${why}); columns are: ${columns.join(", ")}`);
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
      const report = (v[textCol] ?? "").trim();
      if (!report) throw new DatasetError(`${origin}: empty report in column "${textCol}"`);
      const full = resolvePath(base, image.trim());
      if (o.checkFiles) {
        try {
          if (!(await Deno.stat(full)).isFile) throw new Error("not a file");
        } catch {
          throw new DatasetError(`${origin}: image file ${full} not found`);
        }
      }
      const split = columns.includes(o.splitColumn) ? v[o.splitColumn]?.trim() || undefined : undefined;
      if (split && !["train", "val", "test"].includes(split)) {
        throw new DatasetError(`${origin}: split "${split}" is not train, val or test`);
      }
      const patient = columns.includes(o.patientColumn) ? v[o.patientColumn]?.trim() || undefined : undefined;
      records.push({ image: full, report, split, patient, origin });
    } catch (err) {
      if (!o.skipBad || !(err instanceof DatasetError)) throw err;
      skipped.push({ origin, reason: err.message.replace(`${origin}: `, "") });
    }
  }
  if (records.length === 0) {
    throw new DatasetError(`${path}: no usable rows${skipped.length ? ` (${skipped.length} skipped)` : ""}`);
  }
  return { records, skipped };
}

/**
 * Assigns a split to records that have none: by patient when ids are present
 * (all scans of a patient land in the same split), else by record. Records
 * that already have a split keep it.
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
  return records;
}
