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
import type { TensorData } from "./tensor.ts";

/** Source layouts recognised for a vision backbone. */
export type VisionLayout = "retfound" | "visionfm" | "urfound" | "timm" | "retfiner-backbone" | "lightning";

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
}

function isTensor(v: unknown): v is TensorData {
  return !!v && typeof v === "object" && "dtype" in v && "shape" in v && "data" in v;
}

/**
 * Reads a weight file of any supported container: PyTorch `.pth`/`.bin`/
 * `.ckpt` (zip or legacy) or safetensors, decided by content, not extension.
 * Returns the top-level object (a Map).
 */
export function readWeightFile(path: string): Map<string, unknown> {
  const src = fileSource(path);
  let head: Uint8Array;
  try {
    head = src.read(0, Math.min(16, src.size));
  } finally {
    src.close();
  }
  const isZipOrPickle = (head[0] === 0x50 && head[1] === 0x4b) || head[0] === 0x80;
  const top = isZipOrPickle || head.length < 9 ? readPth(path).value : readSafetensors(path).tensors;
  if (!(top instanceof Map)) throw new CheckpointError(`${path}: the checkpoint's top level is not a dict`);
  return top as Map<string, unknown>;
}

/** A dict of tensors from a Map, dropping (and listing) non-tensor entries. */
function tensorDict(map: Map<unknown, unknown>, where: string, dropped: string[]): Map<string, TensorData> {
  const out = new Map<string, TensorData>();
  for (const [k, v] of map) {
    if (isTensor(v)) out.set(String(k), v);
    else dropped.push(`${where}${String(k)} (not a tensor)`);
  }
  return out;
}

function subDict(top: Map<string, unknown>, key: string, file: string): Map<unknown, unknown> {
  const v = top.get(key);
  if (!(v instanceof Map)) throw new CheckpointError(`${file}: key "${key}" is not a dict`);
  return v;
}

const VIT_KEY =
  /^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|blocks\.\d+\..+|norm\.(weight|bias)|proj\.(weight|bias))$/;

function keepVitKeys(tensors: Map<string, TensorData>, dropped: string[], keepProj: boolean): Map<string, TensorData> {
  const out = new Map<string, TensorData>();
  for (const [k, v] of tensors) {
    if (VIT_KEY.test(k) && (keepProj || !k.startsWith("proj."))) out.set(k, v);
    else {
      const why = k.startsWith("decoder") || k === "mask_token"
        ? "MAE decoder"
        : k.startsWith("head.")
        ? "classification head"
        : k.startsWith("bert_")
        ? "UrFound text branch"
        : "not part of the vision backbone";
      dropped.push(`${k} (${why})`);
    }
  }
  return out;
}

function stripPrefix(tensors: Map<string, TensorData>, prefix: string, dropped: string[]): Map<string, TensorData> {
  const out = new Map<string, TensorData>();
  for (const [k, v] of tensors) {
    if (k.startsWith(prefix)) out.set(k.slice(prefix.length), v);
    else dropped.push(`${k} (outside "${prefix}")`);
  }
  return out;
}

/** Recognises the layout of a vision checkpoint's top-level dict. */
export function detectVisionLayout(top: Map<string, unknown>, file = "<weights>"): VisionLayout {
  if (top.get("teacher") instanceof Map) return "visionfm";
  const sd = top.get("state_dict");
  if (sd instanceof Map && [...sd.keys()].some((k) => String(k).includes("vision_encoder."))) return "lightning";
  const model = top.get("model");
  if (model instanceof Map) {
    return [...model.keys()].some((k) => /^bert_(encoder|mlp)\./.test(String(k))) ? "urfound" : "retfound";
  }
  const keys = [...top.keys()].map(String);
  const flat = keys.map((k) => k.replace(/^(module\.|backbone\.)/, ""));
  if (flat.some((k) => k.startsWith("blocks.0."))) return flat.includes("proj.weight") ? "retfiner-backbone" : "timm";
  throw new CheckpointError(
    `${file}: cannot tell which vision checkpoint layout this is (top-level keys: ${keys.slice(0, 8).join(", ")}${
      keys.length > 8 ? ", …" : ""
    }); ` +
      `expected a RETFound/UrFound "model" dict, a VisionFM "teacher" dict, or a timm state dict with blocks.*`,
  );
}

/**
 * Maps a vision checkpoint to timm parameter names.
 * - RETFound: `model`, drop `decoder_*`, `mask_token`, `head.*`.
 * - VisionFM: `teacher`, strip `backbone.`, drop the DINO `head.*` and `masked_embed`.
 * - UrFound: `model`, drop the MAE decoder and `bert_encoder.*` / `bert_mlp.*`.
 * - timm / RetFiner backbone export: flat state dict (`module.`/`backbone.` stripped).
 * - Lightning refinement checkpoint (§1.7): `state_dict`, keys under `model.vision_encoder.`.
 */
export function mapVisionWeights(
  top: Map<string, unknown>,
  options: { layout?: VisionLayout; fileName?: string } = {},
): MappedWeights<VisionLayout> {
  const file = options.fileName ?? "<weights>";
  const layout = options.layout ?? detectVisionLayout(top, file);
  const dropped: string[] = [];
  let tensors: Map<string, TensorData>;
  switch (layout) {
    case "retfound":
    case "urfound":
      for (const k of top.keys()) if (k !== "model") dropped.push(`${k} (training state)`);
      tensors = keepVitKeys(tensorDict(subDict(top, "model", file), "model.", dropped), dropped, true);
      break;
    case "visionfm":
      for (const k of top.keys()) if (k !== "teacher") dropped.push(`${k} (training state)`);
      tensors = keepVitKeys(
        stripPrefix(tensorDict(subDict(top, "teacher", file), "teacher.", dropped), "backbone.", dropped),
        dropped,
        false,
      );
      break;
    case "lightning": {
      for (const k of top.keys()) if (k !== "state_dict") dropped.push(`${k} (training state)`);
      const all = tensorDict(subDict(top, "state_dict", file), "state_dict.", dropped);
      // §1.7: the prefix is model.vision_encoder. (model.vision_encoder.model. for MAE-style wrappers).
      const prefix = [...all.keys()].some((k) => k.startsWith("model.vision_encoder.model."))
        ? "model.vision_encoder.model."
        : "model.vision_encoder.";
      tensors = keepVitKeys(stripPrefix(all, prefix, dropped), dropped, true);
      break;
    }
    case "timm":
    case "retfiner-backbone": {
      const flat = new Map<string, TensorData>();
      for (const [k, v] of tensorDict(top, "", dropped)) flat.set(k.replace(/^(module\.|backbone\.)/, ""), v);
      tensors = keepVitKeys(flat, dropped, true);
      break;
    }
  }
  if (!tensors.has("cls_token") || !tensors.has("patch_embed.proj.weight")) {
    throw new CheckpointError(
      `${file}: recognised as a ${layout} checkpoint but it has no cls_token / patch_embed.proj.weight`,
    );
  }
  return { layout, tensors, dropped, fileName: file };
}

/**
 * Maps a Hugging Face BERT checkpoint (`pytorch_model.bin` or
 * `model.safetensors`, `BertForMaskedLM` or `BertModel`, or a RetFiner
 * Lightning checkpoint's text encoder) to `BertForMaskedLM` names
 * (`bert.embeddings.*`, `bert.encoder.layer.{i}.*`, `cls.predictions.*`).
 * TensorFlow-era `LayerNorm.gamma/beta` become `weight/bias`.
 */
export function mapBertWeights(
  top: Map<string, unknown>,
  options: { fileName?: string } = {},
): MappedWeights<"hf-bert"> {
  const file = options.fileName ?? "<weights>";
  const dropped: string[] = [];
  let source: Map<unknown, unknown> = top;
  if (top.get("state_dict") instanceof Map) source = top.get("state_dict") as Map<unknown, unknown>;
  const raw = tensorDict(source, "", dropped);
  const prefixes = ["model.text_encoder.", "text_encoder.", "module.", ""];
  const prefix = prefixes.find((p) =>
    [...raw.keys()].some((k) => k.startsWith(`${p}bert.embeddings.`) || k.startsWith(`${p}embeddings.word_embeddings`))
  );
  if (prefix === undefined) {
    throw new CheckpointError(
      `${file}: no BERT embeddings found (expected keys like bert.embeddings.word_embeddings.weight)`,
    );
  }
  const tensors = new Map<string, TensorData>();
  for (const [k0, v] of raw) {
    if (!k0.startsWith(prefix)) {
      dropped.push(`${k0} (not part of the text encoder)`);
      continue;
    }
    let k = k0.slice(prefix.length);
    if (k.startsWith("embeddings.") || k.startsWith("encoder.") || k.startsWith("pooler.")) k = `bert.${k}`;
    k = k.replace(/LayerNorm\.gamma$/, "LayerNorm.weight").replace(/LayerNorm\.beta$/, "LayerNorm.bias");
    if (k.startsWith("bert.pooler.")) dropped.push(`${k0} (pooler: RetFiner's BERT has none)`);
    else if (k === "bert.embeddings.position_ids") dropped.push(`${k0} (buffer)`);
    else if (k.startsWith("cls.seq_relationship")) dropped.push(`${k0} (next-sentence head)`);
    else if (k.startsWith("bert.") || k.startsWith("cls.predictions.")) tensors.set(k, v);
    else dropped.push(`${k0} (not part of BertForMaskedLM)`);
  }
  return { layout: "hf-bert", tensors, dropped, fileName: file };
}
