/**
 * Labelled B-scan datasets for linear probing: the authors' ImageFolder layout
 * `root/{train,val,test}/<class>/<image>` (method notes §2.5), or a CSV with
 * `path,label,split` columns. Classes are sorted alphabetically, as
 * torchvision's ImageFolder sorts them; every split uses the train classes.
 * @module
 */
import { basename, dirname, join } from "node:path";
import { DatasetError } from "../util/errors.ts";
import { decodeUtf8, parseCsv } from "./csv.ts";
import { isImagePath } from "./image.ts";

/** The three splits. */
export type Split = "train" | "val" | "test";

/** The splits, in order. */
export const SPLITS: readonly Split[] = ["train", "val", "test"];

/** One labelled image. */
export interface LabelledImage {
  /** Image path. */
  path: string;
  /** Class index into {@link ProbeDataset.classes}. */
  label: number;
  /** Split. */
  split: Split;
}

/** A probing dataset. */
export interface ProbeDataset {
  /** Dataset name (folder or CSV name). */
  name: string;
  /** Where it came from. */
  root: string;
  /** Class names, sorted. */
  classes: string[];
  /** All images, sorted by split, class, then path. */
  items: LabelledImage[];
}

async function listDir(path: string): Promise<Deno.DirEntry[]> {
  const out: Deno.DirEntry[] = [];
  try {
    for await (const e of Deno.readDir(path)) out.push(e);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw new DatasetError(`${path}: cannot list (${(err as Error).message})`);
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Reads `root/{train,val,test}/<class>/*` (images with a supported extension). */
export async function readImageFolderDataset(root: string): Promise<ProbeDataset> {
  const trainClasses = (await listDir(join(root, "train"))).filter((e) => e.isDirectory).map((e) => e.name);
  if (trainClasses.length === 0) {
    throw new DatasetError(`${root}: no class folders under train/ (expected ${root}/train/<class>/<image>)`);
  }
  const items: LabelledImage[] = [];
  for (const split of SPLITS) {
    const dirs = (await listDir(join(root, split))).filter((e) => e.isDirectory);
    if (dirs.length === 0) throw new DatasetError(`${root}/${split}: missing or empty split folder`);
    for (const d of dirs) {
      const label = trainClasses.indexOf(d.name);
      if (label < 0) {
        throw new DatasetError(
          `${root}/${split}/${d.name}: class "${d.name}" does not exist in train/ (${trainClasses.join(", ")})`,
        );
      }
      for (const f of await listDir(join(root, split, d.name))) {
        if (f.isFile && isImagePath(f.name)) items.push({ path: join(root, split, d.name, f.name), label, split });
      }
    }
  }
  return { name: basename(root), root, classes: trainClasses, items };
}

/** Reads a CSV with `path`, `label` and `split` columns (paths relative to the CSV). */
export async function readLabelCsv(
  path: string,
  options: { pathColumn?: string; labelColumn?: string; splitColumn?: string } = {},
): Promise<ProbeDataset> {
  const pc = options.pathColumn ?? "path";
  const lc = options.labelColumn ?? "label";
  const sc = options.splitColumn ?? "split";
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    throw new DatasetError(`${path}: cannot read (${(err as Error).message})`);
  }
  const { header, rows } = parseCsv(decodeUtf8(bytes, path), path);
  for (const c of [pc, lc, sc]) {
    if (!header.includes(c)) {
      throw new DatasetError(`${path}: missing column "${c}"; columns are: ${header.join(", ")}`);
    }
  }
  const trainLabels = [...new Set(rows.filter((r) => r.values[sc] === "train").map((r) => r.values[lc]))].sort();
  if (trainLabels.length === 0) throw new DatasetError(`${path}: no train rows`);
  const items: LabelledImage[] = rows.map((r) => {
    const split = r.values[sc] as Split;
    if (!SPLITS.includes(split)) {
      throw new DatasetError(`${path}:${r.line}: split "${r.values[sc]}" is not train, val or test`);
    }
    const label = trainLabels.indexOf(r.values[lc]);
    if (label < 0) {
      throw new DatasetError(`${path}:${r.line}: label "${r.values[lc]}" does not occur in the train split`);
    }
    const p = r.values[pc];
    if (!p) throw new DatasetError(`${path}:${r.line}: empty path`);
    return { path: p.startsWith("/") ? p : join(dirname(path), p), label, split };
  });
  items.sort((a, b) =>
    SPLITS.indexOf(a.split) - SPLITS.indexOf(b.split) || a.label - b.label || (a.path < b.path ? -1 : 1)
  );
  return { name: basename(path).replace(/\.csv$/i, ""), root: path, classes: trainLabels, items };
}

/** Reads a probing dataset from a folder or a CSV. */
export function readProbeDataset(path: string): Promise<ProbeDataset> {
  return path.toLowerCase().endsWith(".csv") ? readLabelCsv(path) : readImageFolderDataset(path);
}

/** Images per class in each split: `counts[split][classIndex]`. */
export function classCounts(ds: ProbeDataset): Record<Split, number[]> {
  const out = { train: [], val: [], test: [] } as Record<Split, number[]>;
  for (const s of SPLITS) out[s] = ds.classes.map(() => 0);
  for (const it of ds.items) out[it.split][it.label]++;
  return out;
}

/** A plain-text table of per-split class counts. */
export function formatClassCounts(ds: ProbeDataset): string {
  const counts = classCounts(ds);
  const w = Math.max(5, ...ds.classes.map((c) => c.length));
  const lines = [`${ds.name}: ${ds.classes.length} classes`, `${"class".padEnd(w)}  train    val   test`];
  ds.classes.forEach((c, i) => {
    lines.push(
      `${c.padEnd(w)} ${String(counts.train[i]).padStart(6)} ${String(counts.val[i]).padStart(6)} ${
        String(counts.test[i]).padStart(6)
      }`,
    );
  });
  return lines.join("\n");
}
