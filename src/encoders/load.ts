/**
 * Loading weight files into models and reading models back out as state
 * dicts. Loading is a name lookup: the files' names are the models' names.
 * @module
 */
import {
  mapBertWeights,
  type MappedWeights,
  mapVisionWeights,
  readWeightFile,
  type VisionLayout,
} from "../io/weights.ts";
import { readSafetensors } from "../io/safetensors.ts";
import { numel, type TensorData, toFloat32 } from "../io/tensor.ts";
import { EncoderError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";
import { type BertConfig, bertConfigFromJson, type BertModel, createBert } from "./bert.ts";
import { assignValues, initLinearDefault, normalValues, type Params } from "./layers.ts";
import { inferVitConfig } from "./presets.ts";
import { createVit, gridSize, resizePosEmbed, type VitConfig, type VitFamily, type VitModel } from "./vit.ts";

/** What {@link loadStateDict} found. */
export interface LoadReport {
  /** Model parameters the weights did not provide. */
  missing: string[];
  /** Weights the model has no parameter for. */
  unexpected: string[];
  /** Weights whose shape differs from the parameter's: `name: file [..] vs model [..]`. */
  mismatched: string[];
}

/** Options of {@link loadStateDict}. */
export interface LoadOptions {
  /** Fail on any missing, unexpected or mis-shaped key (default true). `false` must be asked for. */
  strict?: boolean;
  /** Parameters that may be missing even in strict mode (they keep their initial values). */
  allowMissing?: (name: string) => boolean;
  /** File name for messages. */
  fileName?: string;
}

/**
 * Copies `tensors` into `params` by name (converting to float32). With
 * `strict` (the default) any missing, unexpected or wrongly shaped key is an
 * {@link EncoderError} that lists them all.
 */
export function loadStateDict(params: Params, tensors: Map<string, TensorData>, options: LoadOptions = {}): LoadReport {
  const strict = options.strict ?? true;
  const report: LoadReport = { missing: [], unexpected: [], mismatched: [] };
  for (const [name, t] of tensors) {
    const p = params.get(name);
    if (!p) report.unexpected.push(name);
    else if (p.shape.length !== t.shape.length || p.shape.some((d, i) => d !== t.shape[i])) {
      report.mismatched.push(`${name}: file [${t.shape}] vs model [${p.shape}]`);
    }
  }
  for (const name of params.keys()) {
    if (!tensors.has(name) && !options.allowMissing?.(name)) report.missing.push(name);
  }
  const bad = report.missing.length + report.unexpected.length + report.mismatched.length;
  if (strict && bad > 0) {
    const list = (label: string, xs: string[]) =>
      xs.length ? `\n  ${label} (${xs.length}): ${xs.slice(0, 12).join(", ")}${xs.length > 12 ? ", …" : ""}` : "";
    throw new EncoderError(
      `${options.fileName ?? "weights"} do not match the model:` + list("missing", report.missing) +
        list("unexpected", report.unexpected) +
        list("wrong shape", report.mismatched) +
        `\n  (pass strict: false / --no-strict to load the matching keys only)`,
    );
  }
  for (const [name, t] of tensors) {
    const p = params.get(name);
    if (!p || report.mismatched.some((m) => m.startsWith(`${name}:`))) continue;
    // Copy: the optimiser updates parameters in place, and the caller may still hold `tensors`.
    assignValues(p, toFloat32(t).slice());
  }
  return report;
}

/** Reads every parameter into float32 tensors, in parameter order (for export). */
export function stateDict(params: Params): Map<string, TensorData> {
  const out = new Map<string, TensorData>();
  for (const [name, p] of params) {
    out.set(name, { dtype: "F32", shape: [...p.shape], data: p.dataSync() as Float32Array });
  }
  return out;
}

/** A loaded vision encoder and where it came from. */
export interface LoadedVit {
  /** The model. */
  model: VitModel;
  /** The layout the file was recognised as, and what was dropped. */
  mapped: MappedWeights<VisionLayout>;
  /** Parameters not in the file that were freshly initialised (RETFound's `proj`). */
  newlyInitialised: string[];
}

/** Options of {@link loadVit}. */
export interface LoadVitOptions {
  /** Family to use, or `auto` (metadata, then release layout, then the authors' path-substring rule). */
  arch?: VitFamily | "auto";
  /** Input size; the position embedding is interpolated bicubically if it differs from the file's. */
  imgSize?: number;
  /** Attention heads (not stored in weights; default width/64). */
  numHeads?: number;
  /** Strict key matching (default true). */
  strict?: boolean;
  /** Generator for freshly initialised parameters (RETFound's `proj`). */
  rng?: Rng;
  /** Overrides applied to the inferred config (e.g. `dropPathRate`). */
  overrides?: Partial<VitConfig>;
}

function familyFromPath(path: string): VitFamily | undefined {
  // §1.2: the authors pick the model by substring of the weights path.
  const p = path.toLowerCase();
  if (p.includes("retfound")) return "retfound";
  if (p.includes("visionfm") || p.includes("vfm")) return "visionfm";
  if (p.includes("urfound")) return "urfound";
  return undefined;
}

/** The ViT config stored in a safetensors file's metadata by this project's exports, if any. */
function safetensorsConfig(path: string): Partial<VitConfig> | undefined {
  try {
    const raw = readSafetensors(path, { headerOnly: true }).metadata["retfiner.vit_config"];
    return raw ? JSON.parse(raw) as Partial<VitConfig> : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Loads a vision encoder from a weight file in any supported layout.
 *
 * @example
 * ```ts
 * import { loadVit } from "./load.ts";
 * const { model, mapped } = loadVit("RETFound_oct_weights.pth", { arch: "auto" });
 * console.log(mapped.layout, model.config.embedDim);
 * ```
 */
export function loadVit(path: string, options: LoadVitOptions = {}): LoadedVit {
  const top = readWeightFile(path);
  const mapped = mapVisionWeights(top, { fileName: path });
  const stored = safetensorsConfig(path);
  let family: VitFamily;
  if (options.arch && options.arch !== "auto") family = options.arch;
  else {
    const byLayout: Partial<Record<VisionLayout, VitFamily>> = {
      retfound: "retfound",
      visionfm: "visionfm",
      urfound: "urfound",
    };
    family = stored?.family ?? byLayout[mapped.layout] ?? familyFromPath(path) ??
      (mapped.layout === "retfiner-backbone" ? "retfound" : "timm");
  }
  const inferred = inferVitConfig(mapped.tensors, family, {
    numHeads: options.numHeads ?? stored?.numHeads,
    fileName: path,
  });
  // Settings the weights cannot show (projection width without its weights, drop-path rate, input
  // statistics) come from the config this project stores in its safetensors metadata.
  const fromFile: Partial<VitConfig> = stored
    ? {
      dropPathRate: stored.dropPathRate ?? inferred.dropPathRate,
      mean: stored.mean ?? inferred.mean,
      std: stored.std ?? inferred.std,
      projDim: stored.projDim !== undefined ? stored.projDim : inferred.projDim,
      eps: stored.eps ?? inferred.eps,
    }
    : {};
  const config: VitConfig = {
    ...inferred,
    ...fromFile,
    family,
    ...options.overrides,
    ...(options.imgSize ? { imgSize: options.imgSize } : {}),
  };
  const tensors = new Map(mapped.tensors);
  const fileGrid = inferred.imgSize / inferred.patchSize;
  const grid = gridSize(config);
  if (grid !== fileGrid) {
    const pe = tensors.get("pos_embed")!;
    tensors.set("pos_embed", {
      dtype: "F32",
      shape: [1, 1 + grid * grid, config.embedDim],
      data: resizePosEmbed(toFloat32(pe), config.embedDim, fileGrid, grid),
    });
  }
  const model = createVit(config, { init: "zeros" });
  const newlyInitialised: string[] = [];
  const fresh = (name: string) => config.projDim !== null && name.startsWith("proj.") && !tensors.has(name);
  loadStateDict(model.params, tensors, { strict: options.strict, allowMissing: fresh, fileName: path });
  if (config.projDim !== null && !tensors.has("proj.weight")) {
    // §1.2: RETFound's projection is new, with nn.Linear's default init.
    const tmp: Params = new Map();
    initLinearDefault(
      tmp,
      `${model.scope}_init`,
      "proj",
      config.embedDim,
      config.projDim,
      options.rng ?? new Rng(0, "proj-init"),
    );
    for (const [name, v] of tmp) {
      model.params.get(name)!.assign(v);
      v.dispose();
      newlyInitialised.push(name);
    }
  }
  return { model, mapped, newlyInitialised };
}

/** A loaded BERT. */
export interface LoadedBert {
  /** The model. */
  model: BertModel;
  /** What was dropped from the file. */
  mapped: MappedWeights<"hf-bert">;
  /** Parameters absent from the file and initialised N(0, 0.02) (the cross-attention blocks of a plain BERT). */
  newlyInitialised: string[];
}

/**
 * Loads a Hugging Face BERT (`pytorch_model.bin` / `model.safetensors` +
 * `config.json`) with cross-attention in every layer. Cross-attention blocks
 * absent from the file (plain bert-base-uncased) are initialised as HF does:
 * weights N(0, 0.02), biases 0, LayerNorm 1/0 (§1.4).
 */
export function loadBert(
  weightsPath: string,
  config: BertConfig | string,
  options: { strict?: boolean; rng?: Rng } = {},
): LoadedBert {
  let cfg: BertConfig;
  if (typeof config === "string") {
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(Deno.readTextFileSync(config));
    } catch (err) {
      throw new EncoderError(`${config}: cannot read BERT config (${(err as Error).message})`);
    }
    cfg = bertConfigFromJson(json, config);
  } else cfg = config;
  const mapped = mapBertWeights(readWeightFile(weightsPath), { fileName: weightsPath });
  const tensors = new Map(mapped.tensors);
  // The MLM decoder is tied to the word embeddings; its bias is cls.predictions.bias.
  for (const tied of ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]) {
    if (tensors.delete(tied)) mapped.dropped.push(`${tied} (tied)`);
  }
  const model = createBert(cfg, { init: "zeros" });
  const isCross = (name: string) => name.includes(".crossattention.");
  loadStateDict(model.params, tensors, { strict: options.strict, allowMissing: isCross, fileName: weightsPath });
  const newlyInitialised = [...model.params.keys()].filter((n) => isCross(n) && !tensors.has(n));
  const rng = options.rng ?? new Rng(0, "bert-crossattn-init");
  for (const name of newlyInitialised) {
    const p = model.params.get(name)!;
    const values = name.endsWith("LayerNorm.weight")
      ? new Float32Array(p.size).fill(1)
      : name.endsWith(".weight")
      ? normalValues(rng, p.size, cfg.initializerRange)
      : new Float32Array(p.size);
    assignValues(p, values);
  }
  return { model, mapped, newlyInitialised };
}

/** A state dict for Hugging Face: adds the tied decoder weight and bias back. */
export function bertStateDictForExport(model: BertModel): Map<string, TensorData> {
  const sd = stateDict(model.params);
  sd.set("cls.predictions.decoder.weight", sd.get("bert.embeddings.word_embeddings.weight")!);
  sd.set("cls.predictions.decoder.bias", sd.get("cls.predictions.bias")!);
  return sd;
}

/** Number of parameters a state dict holds. */
export function stateDictSize(tensors: Map<string, TensorData>): number {
  let n = 0;
  for (const t of tensors.values()) n += numel(t.shape);
  return n;
}
