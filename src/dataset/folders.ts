/**
 * Labelled B-scan datasets for linear probing: the authors' ImageFolder layout
 * `root/{train,val,test}/<class>/<image>` (method notes §2.5), or a CSV with
 * `path,label,split` columns. Classes are sorted alphabetically, as
 * torchvision's ImageFolder sorts them; every split uses the train classes.
 *
 * Folders are read as torchvision's ImageFolder reads them: class folders are
 * walked recursively (e.g. one sub-folder per eye volume), symbolic links to
 * files and folders are followed, and files without an image extension are
 * ignored. A link to a folder is skipped at the link, with a notice, when it
 * leads back to an enclosing folder, into the dataset from inside a class
 * folder (those images are read where they are, under their own class), or to
 * a folder already read through another link; one rule for every walk (probe
 * datasets, task discovery, encode's folders). Files directly under a split
 * folder belong to no class: a notice says they are ignored.
 * Hidden entries (names starting with `.`, such as `.ipynb_checkpoints`,
 * `.DS_Store` and macOS `._*` AppleDouble files; `Thumbs.db`, `desktop.ini`,
 * `__MACOSX`) are never classes nor images. Split folders and split values are
 * matched case-insensitively (`Train`, `VAL`, `validation`). A class with no
 * training images, a class in val/test but not in train, and labels that
 * differ only by case are errors naming them; labels that differ only by
 * surrounding spaces are merged with a notice. Every image's header is checked
 * before probing starts ({@link inspectImage}).
 * @module
 */
import { basename, dirname, isAbsolute, join } from "node:path";
import { DatasetError } from "../util/errors.ts";
import { decodeText, headerDelimiterHint, parseCsv } from "./csv.ts";
import { checkImageFiles, type ImageSetOptions, isImagePath } from "./image.ts";

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
  /** `file:line` of the label CSV row it came from (none for folders), for messages. */
  origin?: string;
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

/** How probing datasets are read. */
export interface ProbeDatasetOptions {
  /** Check every image's header before returning (default true). */
  checkImages?: boolean;
  /** Decode options for the check; `slice: "all"` makes one item per B-scan of a volume. */
  image?: ImageSetOptions;
  /** Where notices go (default: stderr). */
  onNotice?: (message: string) => void;
}

/** Split names as folders and manifests spell them, lower-cased, to the split they mean. */
export const SPLIT_ALIASES: Record<string, Split> = {
  train: "train",
  training: "train",
  val: "val",
  valid: "val",
  validation: "val",
  test: "test",
  testing: "test",
};

/**
 * Whether a directory entry is hidden or system clutter that is never a class nor an image: names starting with
 * `.` (`.ipynb_checkpoints`, `.DS_Store`, `._*` AppleDouble), `Thumbs.db`, `desktop.ini`, `__MACOSX`.
 * @param name The entry's name.
 * @returns True when it is skipped.
 */
export function isHiddenEntry(name: string): boolean {
  const lower = name.toLowerCase();
  return name.startsWith(".") || lower === "thumbs.db" || lower === "desktop.ini" || name === "__MACOSX" ||
    name === "$RECYCLE.BIN";
}

interface Entry {
  name: string;
  path: string;
  isDirectory: boolean;
  isFile: boolean;
  /** The entry is a symbolic link. */
  isLink: boolean;
}

/** Visible entries of a folder, sorted by name, with symbolic links resolved. */
async function listDir(path: string): Promise<Entry[]> {
  const out: Entry[] = [];
  try {
    for await (const e of Deno.readDir(path)) {
      if (isHiddenEntry(e.name)) continue;
      const p = join(path, e.name);
      let isDirectory = e.isDirectory;
      let isFile = e.isFile;
      if (e.isSymlink) {
        try {
          const st = await Deno.stat(p);
          isDirectory = st.isDirectory;
          isFile = st.isFile;
        } catch {
          throw new DatasetError(`${p}: broken symbolic link (its target does not exist)`);
        }
      }
      out.push({ name: e.name, path: p, isDirectory, isFile, isLink: e.isSymlink });
    }
  } catch (err) {
    if (err instanceof DatasetError) throw err;
    if (err instanceof Deno.errors.NotFound) return [];
    throw new DatasetError(`${path}: cannot list (${(err as Error).message})`);
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

async function realPathOf(path: string): Promise<string> {
  try {
    return await Deno.realPath(path);
  } catch (err) {
    throw new DatasetError(`${path}: cannot read (${(err as Error).message})`);
  }
}

/** Whether real path `inner` is `outer` or lies inside it. */
function within(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(outer.endsWith("/") ? outer : `${outer}/`);
}

/**
 * The one rule every folder walk (probe datasets, task discovery, encode's folders) applies to a symbolic link to a
 * folder, decided at the link: it is skipped (the reason returned) when its target encloses the folder it sits in
 * (a loop: `up -> ..`, `back -> ../../train`), when its target lies inside one of the walk's `scopes` (the dataset
 * or input folder: those images are read where they are, and reading them again through the link would count them
 * twice or under another class), or when the walk already entered that folder through another link.
 * @param link The link's path, for messages.
 * @param here The real path of the folder holding the link.
 * @param scopes Real paths of the folders the walk covers.
 * @param entered Real paths of the folders the walk has entered (updated when the link is followed).
 * @returns Why the link is skipped, or `undefined` to follow it.
 */
async function skipLinkReason(
  link: string,
  here: string,
  scopes: readonly string[],
  entered: Set<string>,
): Promise<string | undefined> {
  const target = await realPathOf(link);
  if (within(here, target)) return `a link back to an enclosing folder (${target})`;
  const scope = scopes.find((s) => within(target, s));
  if (scope !== undefined) return `a link to ${target}, inside ${scope}, which is read where it is`;
  if (entered.has(target)) return `a second link to ${target}, already read`;
  entered.add(target);
  return undefined;
}

/** A link-guarded walk's state: the real folders it covers and has entered, and where notices go. */
interface WalkGuard {
  scopes: string[];
  entered: Set<string>;
  onNotice: (message: string) => void;
}

async function newGuard(roots: readonly string[], onNotice: (message: string) => void): Promise<WalkGuard> {
  const scopes = await Promise.all(roots.map(realPathOf));
  return { scopes, entered: new Set(scopes), onNotice };
}

/** Entries of a folder under the link rule ({@link skipLinkReason}); a skipped link prints a notice naming it. */
async function guardedEntries(dir: string, guard: WalkGuard): Promise<Entry[]> {
  const here = await realPathOf(dir);
  const out: Entry[] = [];
  for (const e of await listDir(dir)) {
    if (e.isLink && e.isDirectory) {
      const why = await skipLinkReason(e.path, here, guard.scopes, guard.entered);
      if (why) {
        guard.onNotice(`notice: ${e.path}: ${why}; not followed`);
        continue;
      }
    }
    out.push(e);
  }
  return out;
}

/**
 * Image files under a folder, recursively, in sorted path order: hidden entries skipped, files without an image
 * extension ignored (one notice), symbolic links to files followed, and symbolic links to folders followed unless
 * they lead back to an enclosing folder, into `scope` or the folder itself, or to a folder already read (skipped
 * at the link with a notice).
 * @param dir The folder.
 * @param onNotice Where notices go (default: stderr).
 * @param scope The folder the whole walk covers, e.g. the dataset root when `dir` is one class folder
 *   (default `dir`).
 * @returns The image paths.
 * @throws {DatasetError} for a broken link or an unreadable folder.
 */
export async function listImageFiles(
  dir: string,
  onNotice: (message: string) => void = (m) => console.error(m),
  scope: string = dir,
): Promise<string[]> {
  return await walkImages(dir, await newGuard(scope === dir ? [dir] : [scope, dir], onNotice));
}

async function walkImages(dir: string, guard: WalkGuard): Promise<string[]> {
  const out: string[] = [];
  const ignored: string[] = [];
  const walk = async (d: string) => {
    for (const e of await guardedEntries(d, guard)) {
      if (e.isDirectory) await walk(e.path);
      else if (e.isFile && isImagePath(e.name)) out.push(e.path);
      else if (e.isFile) ignored.push(e.path);
    }
  };
  await walk(dir);
  if (ignored.length) {
    guard.onNotice(
      `notice: ${dir}: ${ignored.length} file(s) without an image extension ignored (e.g. ${ignored[0]})`,
    );
  }
  return out.sort();
}

/**
 * The task folders of a benchmark's `tasks/` folder (or any folder of datasets), sorted: visible folders and links
 * to folders, under the same link rule as {@link listImageFiles} (a link back to an enclosing folder, into the
 * folder itself or to a folder already listed is skipped with a notice).
 * @param dir The folder holding one dataset folder per task.
 * @param onNotice Where notices go (default: stderr).
 * @returns The task folders' paths.
 * @throws {DatasetError} for a broken link or an unreadable folder.
 */
export async function listTaskFolders(
  dir: string,
  onNotice: (message: string) => void = (m) => console.error(m),
): Promise<string[]> {
  const guard = await newGuard([dir], onNotice);
  return (await guardedEntries(dir, guard)).filter((e) => e.isDirectory).map((e) => e.path);
}

/** The split folders of a root, matched case-insensitively (`Train`, `validation`). */
async function splitFolders(root: string, guard: WalkGuard): Promise<Map<Split, string>> {
  const found = new Map<Split, string>();
  for (const e of await guardedEntries(root, guard)) {
    const s = SPLIT_ALIASES[e.name.toLowerCase()];
    if (!s || !e.isDirectory) continue;
    if (found.has(s)) {
      throw new DatasetError(`${root}: both ${basename(found.get(s)!)}/ and ${e.name}/ look like the ${s} split`);
    }
    found.set(s, e.path);
  }
  return found;
}

/** Errors for class names that differ only by case or surrounding spaces. */
function checkLabelVariants(labels: Iterable<string>, where: string): void {
  const byKey = new Map<string, Set<string>>();
  for (const l of labels) {
    const k = l.trim().toLowerCase();
    if (!byKey.has(k)) byKey.set(k, new Set());
    byKey.get(k)!.add(l);
  }
  for (const variants of byKey.values()) {
    if (variants.size > 1) {
      throw new DatasetError(
        `${where}: classes ${[...variants].map((v) => JSON.stringify(v)).join(", ")} differ only by case or ` +
          `surrounding spaces; rename them to one name (or to clearly different names)`,
      );
    }
  }
}

/**
 * Reads `root/{train,val,test}/<class>/**` (images with a supported extension, found recursively).
 * @param root The dataset folder.
 * @param options Image checks and notices.
 * @returns The dataset, classes sorted.
 * @throws {DatasetError} for a missing split, a class with no training images, a class in val/test but not in
 *   train, classes that differ only by case, a broken link, or bad images (all listed).
 */
export async function readImageFolderDataset(root: string, options: ProbeDatasetOptions = {}): Promise<ProbeDataset> {
  const notify = options.onNotice ?? ((m: string) => console.error(m));
  // Split and class folders may be links anywhere but to an enclosing folder; below a class folder, a link into
  // the dataset is skipped too (those images are read where they are, under their own class).
  const top: WalkGuard = { scopes: [], entered: new Set(), onNotice: notify };
  const splits = await splitFolders(root, top);
  const classDirs = new Map<Split, Entry[]>();
  for (const split of SPLITS) {
    const splitDir = splits.get(split);
    if (!splitDir) continue;
    const entries = await guardedEntries(splitDir, { ...top, entered: new Set() });
    const files = entries.filter((e) => e.isFile);
    if (files.length) {
      const images = files.filter((e) => isImagePath(e.name));
      notify(
        `notice: ${splitDir}: ${files.length} file(s) directly under the split folder belong to no class and are ` +
          `ignored (${images.length} image(s); e.g. ${(images[0] ?? files[0]).name}); images go in ` +
          `${splitDir}/<class>/`,
      );
    }
    classDirs.set(split, entries.filter((e) => e.isDirectory));
  }
  const trainClasses = (classDirs.get("train") ?? []).map((e) => e.name);
  if (trainClasses.length === 0) {
    throw new DatasetError(`${root}: no class folders under train/ (expected ${root}/train/<class>/<image>)`);
  }
  checkLabelVariants(trainClasses, `${root}/train`);
  const guard = await newGuard([root], notify);
  const items: LabelledImage[] = [];
  for (const split of SPLITS) {
    const splitDir = splits.get(split);
    const dirs = classDirs.get(split) ?? [];
    if (dirs.length === 0) throw new DatasetError(`${root}/${split}: missing or empty split folder`);
    for (const d of dirs) {
      const label = trainClasses.indexOf(d.name);
      if (label < 0) {
        throw new DatasetError(
          `${splitDir}/${d.name}: class "${d.name}" does not exist in train/ (${trainClasses.join(", ")})`,
        );
      }
      const classReal = await realPathOf(d.path);
      const paths = await walkImages(d.path, { ...guard, scopes: [...guard.scopes, classReal] });
      if (split === "train" && paths.length === 0) {
        throw new DatasetError(`${d.path}: class "${d.name}" has no training images`);
      }
      for (const path of paths) items.push({ path, label, split });
    }
  }
  const ds = { name: basename(root), root, classes: trainClasses, items };
  return await checkDatasetImages(ds, options);
}

/** The header pre-pass over a dataset's images; volumes expanded with `slice: "all"`. */
async function checkDatasetImages(ds: ProbeDataset, options: ProbeDatasetOptions): Promise<ProbeDataset> {
  if (options.checkImages === false) return ds;
  const results = await checkImageFiles(ds.items.map((it) => it.path), options.image);
  const bad: string[] = [];
  const items: LabelledImage[] = [];
  results.forEach((res, k) => {
    const it = ds.items[k];
    if (res instanceof DatasetError) bad.push(it.origin ? `${it.origin}: image ${res.message}` : res.message);
    else for (const path of res) items.push(path === it.path ? it : { ...it, path });
  });
  if (bad.length) {
    bad.sort();
    throw new DatasetError(
      `${ds.root}: ${bad.length} image(s) cannot be used:\n  ${bad.slice(0, 20).join("\n  ")}` +
        (bad.length > 20 ? `\n  ... and ${bad.length - 20} more` : ""),
    );
  }
  return { ...ds, items };
}

/**
 * Reads a CSV with `path`, `label` and `split` columns (paths relative to the CSV). A BOM is ignored; split
 * values match case-insensitively; labels are trimmed (a notice lists labels that had surrounding spaces).
 * @param path The CSV file.
 * @param options Column names, image checks and notices.
 * @returns The dataset, classes sorted.
 * @throws {DatasetError} naming the line for an unknown split or a label absent from train; naming the labels
 *   that differ only by case; for missing columns, no train rows or bad images.
 */
export async function readLabelCsv(
  path: string,
  options: ProbeDatasetOptions & { pathColumn?: string; labelColumn?: string; splitColumn?: string } = {},
): Promise<ProbeDataset> {
  const notify = options.onNotice ?? ((m: string) => console.error(m));
  const pc = options.pathColumn ?? "path";
  const lc = options.labelColumn ?? "label";
  const sc = options.splitColumn ?? "split";
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    throw new DatasetError(`${path}: cannot read (${(err as Error).message})`);
  }
  const { header, rows } = parseCsv(decodeText(bytes, path), path);
  for (const c of [pc, lc, sc]) {
    if (!header.includes(c)) {
      throw new DatasetError(
        `${path}: missing column "${c}"; columns are: ${header.join(", ")}${headerDelimiterHint(header)}`,
      );
    }
  }
  const splitOf = (raw: string, line: number): Split => {
    const s = SPLIT_ALIASES[raw.trim().toLowerCase()];
    if (!s) {
      const found = [...new Set(rows.map((r) => r.values[sc]))].slice(0, 20).map((x) => JSON.stringify(x));
      throw new DatasetError(
        `${path}:${line}: split "${raw}" is not train, val(idation) or test (any case); the file's split values: ` +
          found.join(", "),
      );
    }
    return s;
  };
  const spaced = new Map<string, number[]>();
  for (const r of rows) {
    const l = r.values[lc];
    if (l !== l.trim()) spaced.set(JSON.stringify(l), [...(spaced.get(JSON.stringify(l)) ?? []), r.line]);
  }
  if (spaced.size) {
    notify(
      `notice: ${path}: labels with surrounding spaces were trimmed: ` +
        [...spaced].map(([l, lines]) => `${l} (line${lines.length > 1 ? "s" : ""} ${lines.slice(0, 5).join(", ")})`)
          .join(", "),
    );
  }
  checkLabelVariants(new Set(rows.map((r) => r.values[lc].trim())), path);
  const trainLabels = [
    ...new Set(
      rows.filter((r) => SPLIT_ALIASES[r.values[sc].trim().toLowerCase()] === "train").map((r) => r.values[lc].trim()),
    ),
  ].sort();
  if (trainLabels.length === 0) {
    const found = [...new Set(rows.map((r) => r.values[sc]))].slice(0, 20).map((x) => JSON.stringify(x));
    throw new DatasetError(`${path}: no train rows (split values found: ${found.join(", ") || "none"})`);
  }
  const items: LabelledImage[] = rows.map((r) => {
    const split = splitOf(r.values[sc], r.line);
    const name = r.values[lc].trim();
    const label = trainLabels.indexOf(name);
    if (label < 0) {
      throw new DatasetError(`${path}:${r.line}: label "${name}" does not occur in the train split`);
    }
    const p = r.values[pc].trim();
    if (!p) throw new DatasetError(`${path}:${r.line}: empty path`);
    return { path: isAbsolute(p) ? p : join(dirname(path), p), label, split, origin: `${path}:${r.line}` };
  });
  items.sort((a, b) =>
    SPLITS.indexOf(a.split) - SPLITS.indexOf(b.split) || a.label - b.label || (a.path < b.path ? -1 : 1)
  );
  const ds = { name: basename(path).replace(/\.csv$/i, ""), root: path, classes: trainLabels, items };
  return await checkDatasetImages(ds, options);
}

/**
 * Reads a probing dataset from a folder or a CSV.
 * @param path A dataset folder or a `.csv`.
 * @param options Image checks and notices.
 * @returns The dataset.
 * @throws {DatasetError} as {@link readImageFolderDataset} and {@link readLabelCsv} do.
 */
export function readProbeDataset(path: string, options: ProbeDatasetOptions = {}): Promise<ProbeDataset> {
  return path.toLowerCase().endsWith(".csv") ? readLabelCsv(path, options) : readImageFolderDataset(path, options);
}

/**
 * Images per class in each split: `counts[split][classIndex]`.
 * @param ds the dataset
 * @returns `counts[split][classIndex]`
 */
export function classCounts(ds: ProbeDataset): Record<Split, number[]> {
  const out = { train: [], val: [], test: [] } as Record<Split, number[]>;
  for (const s of SPLITS) out[s] = ds.classes.map(() => 0);
  for (const it of ds.items) out[it.split][it.label]++;
  return out;
}

/**
 * A plain-text table of per-split class counts.
 * @param ds the dataset
 * @returns the table, one line per class
 */
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
