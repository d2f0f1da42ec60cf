/**
 * Named presets for the three foundation models and small CPU-sized configs,
 * plus inference of a generic timm ViT config from its weights.
 * @module
 */
import type { TensorData } from "../io/tensor.ts";
import { EncoderError } from "../util/errors.ts";
import { BERT_BASE_CROSSATTN, type BertConfig } from "./bert.ts";
import { IMAGENET_MEAN, IMAGENET_STD, VISIONFM_MEAN, VISIONFM_STD, type VitConfig, type VitFamily } from "./vit.ts";

/** Names of the vision presets. */
export type VitPresetName = "retfound" | "visionfm" | "urfound";

/** The real foundation models' architectures (method notes §1.2). */
export const VIT_PRESETS: Record<VitPresetName, VitConfig> = {
  /** RETFound: ViT-L/16 + final norm + new proj 1024→768; drop_path 0.1; ImageNet stats. */
  retfound: {
    family: "retfound",
    imgSize: 224,
    patchSize: 16,
    inChans: 3,
    embedDim: 1024,
    depth: 24,
    numHeads: 16,
    mlpRatio: 4,
    qkvBias: true,
    eps: 1e-6,
    dropPathRate: 0.1,
    projDim: 768,
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
  },
  /** VisionFM: ViT-B/16 (iBOT-style), all tokens after the final norm; drop_path 0; OCT stats. */
  visionfm: {
    family: "visionfm",
    imgSize: 224,
    patchSize: 16,
    inChans: 3,
    embedDim: 768,
    depth: 12,
    numHeads: 12,
    mlpRatio: 4,
    qkvBias: true,
    eps: 1e-6,
    dropPathRate: 0,
    projDim: null,
    mean: VISIONFM_MEAN,
    std: VISIONFM_STD,
  },
  /** UrFound: ViT-B/16, raw last-block tokens (no final norm); drop_path 0.1; ImageNet stats. */
  urfound: {
    family: "urfound",
    imgSize: 224,
    patchSize: 16,
    inChans: 3,
    embedDim: 768,
    depth: 12,
    numHeads: 12,
    mlpRatio: 4,
    qkvBias: true,
    eps: 1e-6,
    dropPathRate: 0.1,
    projDim: null,
    mean: IMAGENET_MEAN,
    std: IMAGENET_STD,
  },
};

/**
 * A preset with overrides, e.g. `vitPreset("retfound", { imgSize: 112 })`.
 * @param name `retfound`, `visionfm` or `urfound` (the real models' architectures, method notes §1.2)
 * @param overrides fields to change
 * @returns the config
 * @throws {EncoderError} for an unknown preset name or an invalid field
 */
export function vitPreset(name: VitPresetName, overrides: Partial<VitConfig> = {}): VitConfig {
  const base = VIT_PRESETS[name];
  if (!base) throw new EncoderError(`unknown ViT preset "${name}"; choose retfound, visionfm or urfound`);
  return { ...base, ...overrides };
}

/**
 * Normalisation statistics per family: VisionFM's OCT stats, ImageNet otherwise (§1.3, §2.5).
 * @param family the ViT family
 * @returns per-channel mean and std (RGB) used to normalise images in [0, 1]
 */
export function familyStats(family: VitFamily): { mean: [number, number, number]; std: [number, number, number] } {
  return family === "visionfm"
    ? { mean: VISIONFM_MEAN, std: VISIONFM_STD }
    : { mean: IMAGENET_MEAN, std: IMAGENET_STD };
}

/**
 * Infers a ViT config from timm-named weights: width from `cls_token`, depth
 * from the highest block index, patch size and channels from the patch
 * projection, image size from `pos_embed`, MLP ratio from `fc1`, qkv bias and
 * `proj` from their presence. The head count is not stored in the weights; it
 * defaults to width/64 (true for ViT-B/16 and ViT-L/16) unless given.
 * @param tensors the weights, timm names
 * @param family the family (sets the defaults that weights cannot show, e.g. the refinement recipe)
 * @param options `numHeads` when the width is unusual; `fileName` for messages
 * @returns the inferred config
 * @throws {EncoderError} when a needed key is missing, `pos_embed` is not 1 + a square grid, there are no blocks, or
 *  the head count cannot be inferred
 */
export function inferVitConfig(
  tensors: Map<string, TensorData>,
  family: VitFamily,
  options: { numHeads?: number; fileName?: string } = {},
): VitConfig {
  const file = options.fileName ?? "<weights>";
  const shape = (k: string): number[] => {
    const t = tensors.get(k);
    if (!t) throw new EncoderError(`${file}: cannot infer the ViT config: "${k}" is missing`);
    return t.shape;
  };
  const embedDim = shape("cls_token").at(-1)!;
  const [, inChans, patchSize] = shape("patch_embed.proj.weight");
  const tokens = shape("pos_embed")[1];
  const grid = Math.round(Math.sqrt(tokens - 1));
  if (grid * grid !== tokens - 1) {
    throw new EncoderError(`${file}: pos_embed has ${tokens} tokens, not 1 + a square grid`);
  }
  let depth = 0;
  for (const k of tensors.keys()) {
    const m = /^blocks\.(\d+)\./.exec(k);
    if (m) depth = Math.max(depth, Number(m[1]) + 1);
  }
  if (depth === 0) throw new EncoderError(`${file}: no blocks.* weights found`);
  const hidden = shape("blocks.0.mlp.fc1.weight")[0];
  const numHeads = options.numHeads ?? Math.max(1, Math.round(embedDim / 64));
  if (options.numHeads === undefined && embedDim % numHeads !== 0) {
    throw new EncoderError(`${file}: cannot infer the head count for width ${embedDim}; pass numHeads`);
  }
  const projDim = tensors.has("proj.weight") ? shape("proj.weight")[0] : family === "retfound" ? 768 : null;
  const stats = familyStats(family);
  return {
    family,
    imgSize: grid * patchSize,
    patchSize,
    inChans,
    embedDim,
    depth,
    numHeads,
    mlpRatio: hidden / embedDim,
    qkvBias: tensors.has("blocks.0.attn.qkv.bias"),
    eps: 1e-6,
    dropPathRate: family === "visionfm" ? 0 : family === "timm" ? 0 : 0.1,
    projDim,
    mean: stats.mean,
    std: stats.std,
    layerScale: tensors.has("blocks.0.ls1.gamma"),
    globalPool: tensors.has("fc_norm.weight") && !tensors.has("norm.weight"),
  };
}

/** Width, depth and heads of timm's named ViT sizes. */
const VIT_SIZES: Record<string, { embedDim: number; depth: number; numHeads: number }> = {
  tiny: { embedDim: 192, depth: 12, numHeads: 3 },
  small: { embedDim: 384, depth: 12, numHeads: 6 },
  base: { embedDim: 768, depth: 12, numHeads: 12 },
  large: { embedDim: 1024, depth: 24, numHeads: 16 },
  huge: { embedDim: 1280, depth: 32, numHeads: 16 },
  giant: { embedDim: 1408, depth: 40, numHeads: 16 },
  giant2: { embedDim: 1536, depth: 40, numHeads: 24 },
};

/**
 * Reads a timm-style architecture name (`vit_large_patch16`, `vit_base_patch16_224`,
 * `vit_large_patch14_dinov2`, `RETFound_mae` → ViT-L/16, `RETFound_dinov2` → ViT-L/14) as stored in checkpoints'
 * `args.model` / `args.arch` or a `config.json`.
 * @param name The stored name.
 * @returns Width, depth, heads and (when named) patch size, or undefined for a name it does not know.
 */
export function vitArchFromName(
  name: string,
): { embedDim: number; depth: number; numHeads: number; patchSize?: number } | undefined {
  const n = name.toLowerCase();
  if (n === "retfound_mae") return { ...VIT_SIZES.large, patchSize: 16 };
  if (n === "retfound_dinov2") return { ...VIT_SIZES.large, patchSize: 14 };
  const m = /vit_(tiny|small|base|large|huge|giant2|giant)_patch(\d+)/.exec(n) ??
    /vit_(tiny|small|base|large|huge|giant2|giant)\b/.exec(n);
  if (!m) return undefined;
  return { ...VIT_SIZES[m[1]], ...(m[2] ? { patchSize: Number(m[2]) } : {}) };
}

const FAMILIES = ["retfound", "visionfm", "urfound", "timm"];

/**
 * Checks a ViT configuration (from a file's metadata, a stored config, or
 * shapes) before anything is allocated: a known family, positive integer sizes
 * within sane bounds, heads dividing the width, finite statistics.
 * @param config The configuration to check.
 * @param where The file (and field prefix) named in errors, e.g. `x.safetensors: retfiner.vit_config`.
 * @returns The same config.
 * @throws {EncoderError} naming the file and the field at fault.
 */
export function validateVitConfig(config: VitConfig, where: string): VitConfig {
  const bad = (field: string, value: unknown, want: string): never => {
    throw new EncoderError(`${where}.${field} = ${JSON.stringify(value)} is not ${want}`);
  };
  const int = (field: keyof VitConfig, lo: number, hi: number) => {
    const v = config[field] as unknown;
    if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) {
      bad(field, v, `an integer in [${lo}, ${hi}]`);
    }
  };
  if (!FAMILIES.includes(config.family as string)) bad("family", config.family, `one of ${FAMILIES.join(", ")}`);
  int("imgSize", 1, 8192);
  int("patchSize", 1, 1024);
  int("inChans", 1, 16);
  int("embedDim", 1, 16384);
  int("depth", 1, 256);
  int("numHeads", 1, 1024);
  if (config.embedDim % config.numHeads !== 0) {
    bad("numHeads", config.numHeads, `a divisor of embedDim ${config.embedDim}`);
  }
  if (config.imgSize % config.patchSize !== 0) {
    bad("imgSize", config.imgSize, `a multiple of patchSize ${config.patchSize}`);
  }
  const grid = config.imgSize / config.patchSize;
  if (grid * grid > 65536) bad("imgSize", config.imgSize, `at most 256 patches a side at patch ${config.patchSize}`);
  const hidden = config.embedDim * config.mlpRatio;
  if (
    typeof config.mlpRatio !== "number" || !Number.isFinite(config.mlpRatio) || config.mlpRatio <= 0 || hidden > 65536
  ) {
    bad("mlpRatio", config.mlpRatio, "a positive finite ratio giving an MLP width of at most 65536");
  }
  if (config.projDim !== null) int("projDim", 1, 16384);
  if (typeof config.eps !== "number" || !(config.eps > 0 && config.eps < 1)) bad("eps", config.eps, "in (0, 1)");
  if (typeof config.dropPathRate !== "number" || !(config.dropPathRate >= 0 && config.dropPathRate < 1)) {
    bad("dropPathRate", config.dropPathRate, "in [0, 1)");
  }
  for (const field of ["mean", "std"] as const) {
    const v = config[field] as unknown;
    if (
      !Array.isArray(v) || v.length !== 3 ||
      v.some((x) => typeof x !== "number" || !Number.isFinite(x) || Math.abs(x) > 1e3 || (field === "std" && x <= 0))
    ) bad(field, v, `three finite numbers${field === "std" ? " > 0" : ""}`);
  }
  for (const field of ["qkvBias", "layerScale", "globalPool"] as const) {
    const v = config[field] as unknown;
    if (v !== undefined && typeof v !== "boolean") bad(field, v, "true or false");
  }
  return config;
}

/** Names of the BERT presets. */
export type BertPresetName = "bert-base-crossattn" | "small";

/**
 * BERT presets: the authors' bert-base with cross-attention, and a small one for tests and the CPU demo.
 * @param name `bert-base-crossattn` (the authors') or `small` (tests and the CPU demo)
 * @param overrides fields to change
 * @returns the config
 * @throws {EncoderError} for an unknown preset name or an invalid field
 */
export function bertPreset(name: BertPresetName, overrides: Partial<BertConfig> = {}): BertConfig {
  if (name === "bert-base-crossattn") return { ...BERT_BASE_CROSSATTN, ...overrides };
  if (name === "small") {
    return {
      ...BERT_BASE_CROSSATTN,
      hiddenSize: 192,
      numHiddenLayers: 4,
      numAttentionHeads: 4,
      intermediateSize: 768,
      maxPositionEmbeddings: 64,
      vocabSize: 1024,
      ...overrides,
    };
  }
  throw new EncoderError(`unknown BERT preset "${name}"`);
}
