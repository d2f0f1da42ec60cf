/**
 * Weight files in the layouts the foundation models and BERT are released in,
 * mapped to this project's parameter names (timm names for the ViT, Hugging
 * Face names for BERT). See method notes §1.2, §1.7 and §2.2.
 * @module
 */
import { CheckpointError } from "../util/errors.ts";
import { readPth } from "./pth.ts";
import { readSafetensors } from "./safetensors.ts";
import { fileSource } from "./source.ts";
import { ZipReader } from "./zip.ts";
import { dirname, join } from "node:path";
import { isTensorData, type TensorData } from "./tensor.ts";

/** A short, bounded description of a non-tensor value found where a tensor was expected. */
function whatIsIt(v: unknown): string {
  if (v === null || v === undefined) return "None";
  if (v instanceof Map) return "a dict";
  if (Array.isArray(v)) return "a list or tuple";
  if (typeof v !== "object") return `a ${typeof v === "bigint" ? "number" : typeof v}`;
  const cls = (v as { __class__?: unknown }).__class__;
  if (cls === "numpy.ndarray") return "a numpy array (save torch tensors instead, e.g. torch.from_numpy)";
  return typeof cls === "string" ? `an object of class ${cls.slice(0, 80)}` : "an object that is not a tensor";
}

/** Source layouts recognised for a vision backbone. */
export type VisionLayout =
  | "retfound"
  | "mae-finetuned"
  | "dinov2"
  | "visionfm"
  | "urfound"
  | "timm"
  | "retfiner-backbone"
  | "lightning";

/** A state dict in project names, with what was dropped and why. */
export interface MappedWeights<L extends string = string> {
  /** The layout the file was recognised as. */
  layout: L;
  /** Tensors by project parameter name. */
  tensors: Map<string, TensorData>;
  /** Keys of the file that are not part of the model, each with the reason. */
  dropped: string[];
  /** The file they came from. */
  fileName: string;
  /** Where in the checkpoint the weights were found (container keys from the top). */
  container?: string[];
  /** Wrapper prefixes stripped, with how many keys each. */
  stripped?: Map<string, number>;
}

function isTensor(v: unknown): v is TensorData {
  return isTensorData(v); // only tensors made by this package's readers, not look-alike objects from a pickle
}

/** What a weight file (or a sharded checkpoint) holds, before any layout is recognised. */
export interface WeightFileContents {
  /** The top-level object (a Map): a state dict or a container of one. */
  top: Map<string, unknown>;
  /** safetensors metadata (merged over shards), or for a `.pth` this package wrote, its `retfiner.json` record. */
  metadata: Record<string, string>;
  /** The files actually read (one, or every shard of a sharded checkpoint). */
  files: string[];
}

const INDEX_NAMES = ["model.safetensors.index.json", "pytorch_model.bin.index.json"];
const SINGLE_NAMES = ["model.safetensors", "pytorch_model.bin"];
/** At most this many shards in one index (the largest public checkpoints have a few hundred). */
const MAX_SHARDS = 1024;
/** Largest shard index read (bert-base's is 20 kB, a 70B-parameter model's about 100 kB). */
const MAX_INDEX_BYTES = 64 << 20;

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Says what a file that is not a weight container is, from its first bytes, or returns undefined. */
function notWeightsReason(path: string, head: Uint8Array, size: number): string | undefined {
  const text = new TextDecoder("utf-8", { fatal: false }).decode(head).replace(/^\uFEFF/, "");
  if (text.startsWith("version https://git-lfs.github.com/spec/")) {
    const m = /\nsize (\d+)/.exec(text);
    return `${path}: this is a Git LFS pointer file (${size} bytes), not the weights` +
      (m ? ` (the real file has ${m[1]} bytes)` : "") +
      `. Fetch the real file: \`git lfs install && git lfs pull\` in the clone, or download it directly` +
      ` (on Hugging Face: the "resolve/main/…" URL, not "blob/main/…")`;
  }
  const t = text.trimStart().toLowerCase();
  if (t.startsWith("<!doctype html") || t.startsWith("<html") || t.startsWith("<?xml") || t.startsWith("<head")) {
    return `${path}: this is an HTML/XML page (${size} bytes), not weights — most likely a failed download ` +
      `(a login, consent or "file too large to scan" page was saved instead). Download the file again with a direct ` +
      `link (Google Drive: confirm the large-file warning; Hugging Face: use the "resolve/main/…" URL)`;
  }
  if (t.startsWith("{") || t.startsWith("[")) {
    return `${path}: this is a JSON text file, not weights (a config.json or index?); pass the weight file ` +
      `(.pth/.bin/.safetensors), a *.index.json of a sharded checkpoint, or the model folder`;
  }
  return undefined;
}

/** Reads a sharded Hugging Face checkpoint from its `*.index.json`: every shard, merged. */
function readSharded(indexPath: string): WeightFileContents {
  let index: unknown;
  try {
    const size = Deno.statSync(indexPath).size;
    if (size > MAX_INDEX_BYTES) throw new Error(`${size} bytes, more than a shard index needs (${MAX_INDEX_BYTES})`);
    index = JSON.parse(Deno.readTextFileSync(indexPath));
  } catch (err) {
    throw new CheckpointError(`${indexPath}: cannot read the shard index (${(err as Error).message})`);
  }
  const map = (index as { weight_map?: unknown })?.weight_map;
  if (!map || typeof map !== "object" || Array.isArray(map)) {
    throw new CheckpointError(`${indexPath}: a shard index needs a "weight_map" object (tensor name → shard file)`);
  }
  const wanted = new Map<string, string>(); // tensor → shard
  const shards: string[] = [];
  for (const [name, shard] of Object.entries(map as Record<string, unknown>)) {
    if (
      typeof shard !== "string" || !/^[A-Za-z0-9._-]+$/.test(shard) || shard.startsWith(".") || shard.endsWith(".json")
    ) {
      throw new CheckpointError(
        `${indexPath}: weight_map["${name}"] must be a shard file name in the same folder, got ${
          JSON.stringify(shard)
        }`,
      );
    }
    wanted.set(name, shard);
    if (!shards.includes(shard)) shards.push(shard);
    if (shards.length > MAX_SHARDS) throw new CheckpointError(`${indexPath}: more than ${MAX_SHARDS} shards`);
  }
  const dir = dirname(indexPath);
  const top = new Map<string, unknown>();
  const metadata: Record<string, string> = {};
  const files: string[] = [];
  for (const shard of shards) {
    const file = join(dir, shard);
    if (!isFile(file)) throw new CheckpointError(`${indexPath}: shard ${shard} is missing (looked for ${file})`);
    const part = readWeights(file);
    files.push(file);
    Object.assign(metadata, part.metadata);
    for (const [k, v] of part.top) {
      if (wanted.get(k) !== shard) {
        if (wanted.has(k)) {
          throw new CheckpointError(`${file}: holds "${k}", which the index puts in ${wanted.get(k)}`);
        }
        continue; // not listed in the index (HF ignores such entries too)
      }
      top.set(k, v);
    }
  }
  const absent = [...wanted.keys()].filter((k) => !top.has(k));
  if (absent.length) {
    throw new CheckpointError(
      `${indexPath}: ${absent.length} tensors listed in the index are not in their shards: ${
        absent.slice(0, 5).join(", ")
      }${absent.length > 5 ? ", …" : ""}`,
    );
  }
  return { top, metadata, files };
}

/**
 * The metadata this package's `.pth` exports keep in an archive record
 * `<archive>/retfiner.json` (beside `data.pkl`; `torch.load` ignores it).
 */
function pthRecordMetadata(path: string): Record<string, string> {
  const src = fileSource(path);
  try {
    const zip = ZipReader.open(src);
    const name = [...zip.entries.keys()].find((n) => /^[^/]+\/retfiner\.json$/.test(n));
    if (!name) return {};
    const entry = zip.entries.get(name)!;
    if (entry.size > 65536) {
      throw new CheckpointError(`${path}: ${name} is larger than 64 KiB`);
    }
    const json = JSON.parse(new TextDecoder().decode(zip.read(name)));
    const out: Record<string, string> = {};
    for (const key of ["retfiner.family", "retfiner.vit_config"]) {
      if (json?.[key] !== undefined) {
        if (typeof json[key] !== "string") throw new CheckpointError(`${path}: ${name}: "${key}" is not a string`);
        out[key] = json[key];
      }
    }
    return out;
  } catch (err) {
    if (err instanceof CheckpointError) throw err;
    throw new CheckpointError(`${path}: retfiner.json record is not valid JSON (${(err as Error).message})`);
  } finally {
    src.close();
  }
}

/**
 * Reads a weight file of any supported container and returns its top-level
 * object with the safetensors metadata: PyTorch `.pth`/`.bin`/`.ckpt` (zip or
 * legacy) or safetensors, decided by content, not extension; a sharded Hugging
 * Face checkpoint given by its `*.index.json`; or a Hugging Face model folder
 * (its index, `model.safetensors` or `pytorch_model.bin`).
 * @param path File, index or folder.
 * @returns The top-level object, metadata and the files read.
 * @throws {CheckpointError} for a Git LFS pointer, an HTML page, a JSON file, a folder without weights, or a corrupt
 *   file, each named with what it is and what to do.
 */
export function readWeights(path: string): WeightFileContents {
  let stat: Deno.FileInfo;
  try {
    stat = Deno.statSync(path);
  } catch {
    throw new CheckpointError(`${path}: file not found`);
  }
  if (stat.isDirectory) {
    for (const name of [...INDEX_NAMES, ...SINGLE_NAMES]) {
      if (isFile(join(path, name))) return readWeights(join(path, name));
    }
    throw new CheckpointError(
      `${path}: is a folder without weights; expected a weight file, or a Hugging Face model folder holding one of ${
        [...INDEX_NAMES, ...SINGLE_NAMES].join(", ")
      }`,
    );
  }
  if (path.endsWith(".index.json")) return readSharded(path);
  const src = fileSource(path);
  let head: Uint8Array;
  try {
    head = src.read(0, Math.min(512, src.size));
  } finally {
    src.close();
  }
  // safetensors: an 8-byte little-endian header length, then a JSON header ("{"). Checked first: a header length
  // whose low byte is 0x80 would otherwise look like a pickle's PROTO opcode.
  const headerLen = head.length >= 9 ? new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true) : 0n;
  const isSafetensors = head.length >= 9 && head[8] === 0x7b && headerLen + 8n <= BigInt(stat.size);
  const isZipOrPickle = !isSafetensors && ((head[0] === 0x50 && head[1] === 0x4b) || head[0] === 0x80);
  if (!isZipOrPickle && !isSafetensors) {
    const why = notWeightsReason(path, head, stat.size);
    if (why) throw new CheckpointError(why);
  }
  if (isZipOrPickle || head.length < 9) {
    const isZip = head[0] === 0x50 && head[1] === 0x4b;
    const top = readPth(path).value;
    if (!(top instanceof Map)) {
      throw new CheckpointError(
        `${path}: the checkpoint's top level is not a dict of tensors (a whole pickled model or another object?); ` +
          `save model.state_dict() instead`,
      );
    }
    return { top: top as Map<string, unknown>, metadata: isZip ? pthRecordMetadata(path) : {}, files: [path] };
  }
  const st = readSafetensors(path);
  return { top: st.tensors as Map<string, unknown>, metadata: st.metadata, files: [path] };
}

/**
 * Reads a weight file (see {@link readWeights}) and returns only its top-level object (a Map).
 * @param path File, `*.index.json` or Hugging Face folder.
 * @returns The top-level object.
 * @throws {CheckpointError} as {@link readWeights}.
 */
export function readWeightFile(path: string): Map<string, unknown> {
  return readWeights(path).top;
}

/** Keys of a container that never hold the weights (training state). */
const TRAINING_STATE =
  /^(optimizer|optimizer_states?|optim|scaler|lr_scheduler|lr_schedulers|scheduler|loops|callbacks|amp|epoch|iteration|global_step|best_.*|args|config|hyper_parameters|pytorch-lightning_version|_metadata)$/;

/** Containers a state dict is found in, most preferred first (DINO's teacher before its student, as VisionFM's loader). */
const CONTAINERS = [
  "teacher",
  "state_dict",
  "model",
  "model_state_dict",
  "module",
  "net",
  "network",
  "model_ema",
  "ema",
  "student",
];

/** Wrapper prefixes stripped from vision keys, repeatedly and in any order (timm's clean_state_dict, VisionFM's loader). */
const VISION_WRAPPERS = ["module.", "_orig_mod.", "backbone.", "encoder.", "model.", "vision_encoder.", "visual."];
/** Wrapper prefixes stripped from BERT keys ("encoder." is part of BERT's own names, so it is not one). */
const TEXT_WRAPPERS = ["module.", "_orig_mod.", "model.", "text_encoder."];

/** A state dict found inside a checkpoint, with wrapper prefixes stripped. */
export interface UnwrappedStateDict {
  /** Where it was found: container keys from the top, e.g. `["teacher"]`; empty for a flat state dict. */
  container: string[];
  /** Tensors by cleaned name. */
  tensors: Map<string, TensorData>;
  /** Original key of each cleaned name. */
  original: Map<string, string>;
  /** Wrapper prefixes stripped, with how many keys each. */
  stripped: Map<string, number>;
  /** Keys not taken, each with the reason. */
  dropped: string[];
}

/** A key as quoted in messages: at most 120 characters. */
function short(key: string): string {
  return key.length > 120 ? `${key.slice(0, 60)}…${key.slice(-50)} (${key.length} characters)` : key;
}

function stripWrappers(key: string, wrappers: string[], stripped: Map<string, number>): string {
  let at = 0; // an offset, so a key of many repeated prefixes costs its length, not its length squared
  for (let changed = true; changed;) {
    changed = false;
    for (const w of wrappers) {
      if (key.startsWith(w, at) && key.length > at + w.length) {
        at += w.length;
        stripped.set(w, (stripped.get(w) ?? 0) + 1);
        changed = true;
      }
    }
  }
  return at ? key.slice(at) : key;
}

/** At most this many candidate dicts are scored (a checkpoint has a handful; a crafted one could share one dict many times). */
const MAX_CANDIDATES = 64;

/**
 * Candidate state dicts: every Map reachable through container keys (depth ≤ 3), the top itself first. Each Map is
 * visited once however often it is shared, so the work is bounded by the file's own size.
 */
function candidates(top: Map<unknown, unknown>): { path: string[]; dict: Map<unknown, unknown> }[] {
  const out: { path: string[]; dict: Map<unknown, unknown> }[] = [{ path: [], dict: top }];
  const seen = new Set<Map<unknown, unknown>>([top]);
  const walk = (m: Map<unknown, unknown>, path: string[]) => {
    if (path.length >= 3 || out.length >= MAX_CANDIDATES) return;
    const keys = [...m.keys()].map(String);
    const ordered = [...CONTAINERS.filter((c) => keys.includes(c)), ...keys.filter((k) => !CONTAINERS.includes(k))];
    for (const k of ordered) {
      if (TRAINING_STATE.test(k)) continue;
      const v = m.get(k);
      if (v instanceof Map && !seen.has(v) && out.length < MAX_CANDIDATES) {
        seen.add(v);
        out.push({ path: [...path, k], dict: v });
        walk(v, [...path, k]);
      }
    }
  };
  walk(top, []);
  return out;
}

/**
 * Finds the state dict inside a checkpoint — at the top, or inside the usual
 * containers (`teacher`, `state_dict`, `model`, `module`, `student`, …, also
 * nested) — and strips wrapper prefixes (`module.`, `_orig_mod.`, `backbone.`,
 * `encoder.`, `model.`, …) repeatedly and in any order.
 * @param top The checkpoint's top-level object.
 * @param kind Which model's keys to look for: decides the wrappers and how candidates are scored.
 * @param file File name for messages.
 * @returns The best candidate (most keys of the wanted model), cleaned.
 * @throws {CheckpointError} when no candidate holds such keys, or two keys clean to the same name.
 */
export function unwrapStateDict(
  top: Map<string, unknown>,
  kind: "vision" | "text",
  file = "<weights>",
): UnwrappedStateDict {
  const wrappers = kind === "vision" ? VISION_WRAPPERS : TEXT_WRAPPERS;
  const wanted = kind === "vision"
    ? (k: string) => VIT_KEY.test(k) || /^blocks\.\d+\./.test(k)
    : (k: string) => /^(bert\.)?(embeddings|encoder\.layer\.\d+)\./.test(k);
  let best: { path: string[]; dict: Map<unknown, unknown>; score: number } | undefined;
  for (const c of candidates(top as Map<unknown, unknown>)) {
    let score = 0;
    const scratch = new Map<string, number>();
    for (const [k, v] of c.dict) if (isTensor(v) && wanted(stripWrappers(String(k), wrappers, scratch))) score++;
    if (score > 0 && (!best || score > best.score)) best = { ...c, score };
  }
  if (!best) {
    const hint = diagnoseNoWeights(top as Map<unknown, unknown>, kind, wanted, wrappers);
    if (hint) throw new CheckpointError(`${file}: no ${kind === "vision" ? "ViT" : "BERT"} weights found: ${hint}`);
    const keys = [...top.keys()].slice(0, 9).map((k) => short(String(k)));
    throw new CheckpointError(
      `${file}: no ${kind === "vision" ? "ViT" : "BERT"} weights found (top-level keys: ${keys.slice(0, 8).join(", ")}${
        top.size > 8 ? ", …" : ""
      }); expected a state dict (blocks.*, cls_token… / embeddings.*, encoder.layer.*), at the top or under ` +
        `${CONTAINERS.map((c) => `"${c}"`).join(", ")}`,
    );
  }
  const dropped: string[] = [];
  const where = best.path.length ? `${best.path.join(".")}.` : "";
  if (best.path.length) {
    for (const k of top.keys()) {
      if (k !== best.path[0]) dropped.push(`${k} (${TRAINING_STATE.test(k) ? "training state" : "not the weights"})`);
    }
  }
  const stripped = new Map<string, number>();
  const tensors = new Map<string, TensorData>();
  const original = new Map<string, string>();
  for (const [k0, v] of best.dict) {
    const k = String(k0);
    if (!isTensor(v)) {
      dropped.push(`${where}${k} (${k === "_metadata" ? "state-dict metadata" : `not a tensor: ${whatIsIt(v)}`})`);
      continue;
    }
    const clean = stripWrappers(k, wrappers, stripped);
    if (tensors.has(clean)) {
      throw new CheckpointError(
        `${file}: keys "${short(where + original.get(clean))}" and "${short(where + k)}" both become "${
          short(clean)
        }" once wrapper ` +
          `prefixes are stripped; which one is meant is unclear`,
      );
    }
    tensors.set(clean, v);
    original.set(clean, `${where}${k}`);
  }
  return { container: best.path, tensors, original, stripped, dropped };
}

/** At most this many keys are examined when explaining why no weights were found (bounded work on any file). */
const MAX_DIAGNOSED_KEYS = 200_000;

/**
 * Why no candidate held the wanted keys, when the file shows it: values under the model's names that are not
 * tensors (numpy arrays, objects), or tensors whose keys end in the model's names behind a prefix that is not a
 * known wrapper (`vit.`, Lightning's `net.`). Undefined when neither is seen.
 */
function diagnoseNoWeights(
  top: Map<unknown, unknown>,
  kind: "vision" | "text",
  wanted: (k: string) => boolean,
  wrappers: string[],
): string | undefined {
  const scratch = new Map<string, number>();
  const nonTensor = new Map<string, { n: number; example: string; where: string }>();
  const prefixes = new Map<string, { n: number; example: string; where: string }>();
  let seen = 0;
  for (const c of candidates(top)) {
    const where = c.path.length ? `under "${c.path.join(".")}"` : "at the top level";
    for (const [k0, v] of c.dict) {
      if (++seen > MAX_DIAGNOSED_KEYS) break;
      const k = String(k0);
      if (wanted(stripWrappers(k, wrappers, scratch))) {
        if (!isTensor(v)) {
          const what = whatIsIt(v);
          const e = nonTensor.get(what) ?? { n: 0, example: k, where };
          e.n++;
          nonTensor.set(what, e);
        }
        continue;
      }
      if (!isTensor(v)) continue;
      // The first few dots only: a crafted key of many dots costs a bounded number of passes.
      for (let at = k.indexOf("."), tries = 0; at > 0 && tries < 6; at = k.indexOf(".", at + 1), tries++) {
        if (wanted(stripWrappers(k.slice(at + 1), wrappers, scratch))) {
          const prefix = k.slice(0, at + 1);
          const e = prefixes.get(`${where}\0${prefix}`) ?? { n: 0, example: k, where };
          e.n++;
          prefixes.set(`${where}\0${prefix}`, e);
          break;
        }
      }
    }
  }
  const model = kind === "vision" ? "ViT" : "BERT";
  const [bad] = [...nonTensor].sort((a, b) => b[1].n - a[1].n);
  if (bad) {
    return `${bad[1].n} entr${bad[1].n === 1 ? "y" : "ies"} ${bad[1].where} under ${model} parameter names ` +
      `(e.g. "${short(bad[1].example)}") ${bad[1].n === 1 ? "is" : "are"} not a torch tensor but ${bad[0]}` +
      (bad[0].includes("torch.from_numpy") ? "" : "; save a state dict of torch tensors");
  }
  const [pre] = [...prefixes].sort((a, b) => b[1].n - a[1].n);
  if (pre) {
    const prefix = pre[0].split("\0")[1];
    return `${pre[1].n} tensor(s) ${pre[1].where} look like ${model} keys behind the unknown prefix "${
      short(prefix)
    }" ` +
      `(e.g. "${short(pre[1].example)}"); known wrapper prefixes are ${wrappers.map((w) => `"${w}"`).join(", ")}. ` +
      `Save the ${model}'s own state dict, or strip the prefix: ` +
      `{k.removeprefix("${short(prefix)}"): v for k, v in state_dict.items()}`;
  }
  return undefined;
}

/**
 * One line saying where the weights were found and which prefixes were stripped.
 * @param u the containers walked through (e.g. `["model"]`) and the key prefixes stripped, with their counts
 * @returns one line for a notice, e.g. `weights found under "model"; stripped "module." (150 keys)`
 */
export function describeUnwrap(u: { container: string[]; stripped: Map<string, number> }): string {
  const where = u.container.length ? `under "${u.container.join(".")}"` : "at the top level";
  const pre = [...u.stripped].map(([p, n]) => `"${p}" (${n} keys)`).join(", ");
  return `weights found ${where}${pre ? `; stripped ${pre}` : ""}`;
}

const VIT_KEY =
  /^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|blocks\.\d+\.(norm[12]\.(weight|bias)|attn\.(qkv|proj)\.(weight|bias)|mlp\.fc[12]\.(weight|bias)|ls[12]\.gamma)|(fc_)?norm\.(weight|bias)|proj\.(weight|bias))$/;

/**
 * Why a key of a vision checkpoint is not loaded. Every reason but the last
 * names a documented extra of a release; "not part of the vision backbone"
 * marks an unexpected key, which strict loading refuses as PyTorch does.
 */
function dropReason(k: string, layout: VisionLayout, original: string): string {
  if (layout === "lightning" && !/(^|\.)vision_encoder\./.test(original)) {
    return "RetFiner Lightning checkpoint: text encoder / heads";
  }
  if ((layout === "visionfm" || layout === "dinov2") && k.startsWith("head.")) {
    return "DINO/iBOT head (pretraining only)";
  }
  if (k.startsWith("decoder") || k === "mask_token") return "MAE decoder / masked-image token (pretraining only)";
  if (k === "masked_embed") return "iBOT masked-image token (pretraining only)";
  if (k.startsWith("head.") || k.startsWith("head_dist.")) return "classification head";
  if (k.startsWith("dino_head.") || k.startsWith("ibot_head.")) return "DINO/iBOT head (pretraining only)";
  if (k.startsWith("bert_")) return "UrFound text branch";
  if (/^blocks\.\d+\.attn\.relative_position/.test(k)) return "relative position bias (not supported)";
  return "not part of the vision backbone";
}

/**
 * Recognises the layout of a vision checkpoint's top-level dict.
 * @param top the checkpoint's top-level dict (after unwrapping)
 * @param file names the file in notices
 * @returns the layout recognised (`"retfound"`, `"mae-finetuned"`, `"dinov2"`…)
 */
export function detectVisionLayout(top: Map<string, unknown>, file = "<weights>"): VisionLayout {
  return classify(top, unwrapStateDict(top, "vision", file));
}

function classify(top: Map<string, unknown>, u: UnwrappedStateDict): VisionLayout {
  const keys = [...u.tensors.keys()];
  if (u.stripped.has("vision_encoder.")) return "lightning";
  if (keys.some((k) => /^blocks\.\d+\.ls[12]\.gamma$/.test(k))) return "dinov2";
  const c = u.container.at(-1);
  if (c === "teacher" || c === "student") return "visionfm";
  if (keys.some((k) => /^bert_(encoder|mlp)\./.test(k))) return "urfound";
  if (keys.includes("fc_norm.weight") && !keys.includes("norm.weight")) return "mae-finetuned";
  if (c === "model") return "retfound";
  if (keys.includes("proj.weight")) return "retfiner-backbone";
  void top;
  return "timm";
}

/**
 * Maps a vision checkpoint to timm parameter names. The state dict is found
 * and cleaned by {@link unwrapStateDict}; the layout is then recognised from
 * the keys:
 * - `retfound`: RETFound MAE release (`model`; decoder, `mask_token`, `head.*` dropped).
 * - `mae-finetuned`: RETFound's fine-tuning script with global pooling (`fc_norm.*`, no `norm.*`; `head.*` dropped).
 * - `dinov2`: RETFound's DINOv2 release (`teacher`, layer scale, `mask_token` and `dino_head` dropped;
 *   `mlp.w12`/`mlp.w3` renamed to `fc1`/`fc2` as RETFound's code does, when they are a plain MLP).
 * - `visionfm`: `teacher`, DINO/iBOT head and `masked_embed` dropped.
 * - `urfound`: `model`, MAE decoder and `bert_encoder.*` / `bert_mlp.*` dropped.
 * - `lightning`: RetFiner's Lightning checkpoint (`state_dict`, `model.vision_encoder.`).
 * - `retfiner-backbone` / `timm`: a flat state dict (with or without `proj`).
 * @param top The checkpoint's top-level object.
 * @param options `layout` forces a layout; `fileName` is used in messages.
 * @returns The tensors in timm names, the layout, and what was dropped and stripped.
 * @throws {CheckpointError} when no ViT weights are found or a SwiGLU MLP is met.
 */
export function mapVisionWeights(
  top: Map<string, unknown>,
  options: { layout?: VisionLayout; fileName?: string } = {},
): MappedWeights<VisionLayout> {
  const file = options.fileName ?? "<weights>";
  const u = unwrapStateDict(top, "vision", file);
  const layout = options.layout ?? classify(top, u);
  const dropped = [...u.dropped];
  const renamed = new Map<string, TensorData>();
  for (const [k, v] of u.tensors) {
    const m = /^(blocks\.\d+\.mlp\.)(w12|w3)\.(weight|bias)$/.exec(k);
    if (!m) {
      renamed.set(k, v);
      continue;
    }
    // RETFound's code renames w12 → fc1 and w3 → fc2; that is a plain GELU MLP only when w12 is not a fused SwiGLU.
    const w12 = u.tensors.get(`${m[1]}w12.weight`);
    const w3 = u.tensors.get(`${m[1]}w3.weight`);
    if (!w12 || !w3 || w12.shape[0] !== w3.shape[1]) {
      throw new CheckpointError(
        `${file}: ${
          u.original.get(k)
        } belongs to a SwiGLU MLP (w12 [${w12?.shape}] = two fused halves, w3 [${w3?.shape}]); ` +
          `SwiGLU blocks (DINOv2 ViT-g) are not supported — only the GELU MLP of ViT-B/L`,
      );
    }
    renamed.set(`${m[1]}${m[2] === "w12" ? "fc1" : "fc2"}.${m[3]}`, v);
  }
  const tensors = new Map<string, TensorData>();
  const keepProj = layout !== "visionfm" && layout !== "dinov2";
  for (const [k, v] of renamed) {
    if (VIT_KEY.test(k) && (keepProj || !k.startsWith("proj."))) tensors.set(k, v);
    else dropped.push(`${u.original.get(k) ?? k} (${dropReason(k, layout, u.original.get(k) ?? k)})`);
  }
  if (!tensors.has("cls_token") || !tensors.has("patch_embed.proj.weight")) {
    // Name values that sit under a ViT's parameter names but are not tensors (a forged object, a numpy array).
    const impostors = dropped.filter((d) => / \(not a tensor: /.test(d) && /(cls_token|patch_embed|blocks\.)/.test(d));
    throw new CheckpointError(
      `${file}: recognised as a ${layout} checkpoint (${describeUnwrap(u)}) but it has no cls_token / ` +
        `patch_embed.proj.weight tensor` +
        (impostors.length
          ? `; ${impostors.length} entr${impostors.length === 1 ? "y" : "ies"} under ViT parameter names ` +
            `${impostors.length === 1 ? "is" : "are"} not a tensor (${impostors.slice(0, 3).join("; ")}${
              impostors.length > 3 ? "; …" : ""
            })`
          : ""),
    );
  }
  return { layout, tensors, dropped, fileName: file, container: u.container, stripped: u.stripped };
}

/**
 * Maps a Hugging Face BERT checkpoint (`BertForMaskedLM`, `BertModel`,
 * `BertForSequenceClassification`, or a RetFiner Lightning checkpoint's text
 * encoder; containers and wrapper prefixes as {@link unwrapStateDict}) to
 * `BertForMaskedLM` names (`bert.embeddings.*`, `bert.encoder.layer.{i}.*`,
 * `cls.predictions.*`). TensorFlow-era `LayerNorm.gamma/beta` become
 * `weight/bias`. A file keeping only `cls.predictions.decoder.bias` (the tied
 * twin of `cls.predictions.bias`) gives `cls.predictions.bias`.
 * @param top The checkpoint's top-level object.
 * @param options `fileName` for messages.
 * @returns Tensors in `BertForMaskedLM` names and what was dropped.
 * @throws {CheckpointError} when no BERT embeddings are found.
 */
export function mapBertWeights(
  top: Map<string, unknown>,
  options: { fileName?: string } = {},
): MappedWeights<"hf-bert"> {
  const file = options.fileName ?? "<weights>";
  const u = unwrapStateDict(top, "text", file);
  const dropped = [...u.dropped];
  const tensors = new Map<string, TensorData>();
  for (const [k0, v] of u.tensors) {
    const orig = u.original.get(k0) ?? k0;
    let k = k0;
    if (k.startsWith("embeddings.") || k.startsWith("encoder.") || k.startsWith("pooler.")) k = `bert.${k}`;
    k = k.replace(/LayerNorm\.gamma$/, "LayerNorm.weight").replace(/LayerNorm\.beta$/, "LayerNorm.bias");
    if (k.startsWith("bert.pooler.")) dropped.push(`${orig} (pooler: RetFiner's BERT has none)`);
    else if (k === "bert.embeddings.position_ids" || k === "bert.embeddings.token_type_ids") {
      dropped.push(`${orig} (buffer)`);
    } else if (u.stripped.has("text_encoder.") && !/(^|\.)text_encoder\./.test(orig)) {
      dropped.push(`${orig} (RetFiner Lightning checkpoint: vision encoder / heads)`);
    } else if (k.startsWith("cls.seq_relationship")) dropped.push(`${orig} (next-sentence head)`);
    else if (k.startsWith("classifier.")) dropped.push(`${orig} (sequence-classification head)`);
    else if (k.startsWith("bert.") || k.startsWith("cls.predictions.")) tensors.set(k, v);
    else dropped.push(`${orig} (not part of BertForMaskedLM)`);
  }
  if (!tensors.has("cls.predictions.bias") && tensors.has("cls.predictions.decoder.bias")) {
    tensors.set("cls.predictions.bias", tensors.get("cls.predictions.decoder.bias")!);
  }
  return { layout: "hf-bert", tensors, dropped, fileName: file, container: u.container, stripped: u.stripped };
}
