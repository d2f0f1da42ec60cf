/**
 * Builds a RetFiner model from weight files (or from scratch for the text
 * side), like open_clip's factory builds a model from a named preset:
 * {@link buildRetfinerModel} is the one builder; {@link loadVision} and
 * {@link buildModel} are the two-step form the experiment and the notebooks
 * use (the vision encoder first, probed as the baseline, then the model
 * around it).
 * @module
 */
import { buildWordPieceVocab, loadTokenizer, type TextTokenizer, tokenizerFromVocab } from "../dataset/tokenizer.ts";
import { type BertConfig, bertConfigFromJson } from "../encoders/bert.ts";
import { initLinearDefault } from "../encoders/layers.ts";
import { loadBert, loadVit } from "../encoders/load.ts";
import { bertPreset } from "../encoders/presets.ts";
import { refineTokenDim, type VitConfig, type VitFamily, type VitModel } from "../encoders/vit.ts";
import { EncoderError, UsageError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";
import { dirname, join } from "node:path";
import { assembleModel, checkVocabulary, createTextEncoder, type RetfinerModel } from "./model.ts";
import { standinPath, TEXT_STANDIN } from "./paths.ts";

/** Options of {@link buildRetfinerModel}. */
export interface BuildOptions {
  /** Vision encoder weights (any supported layout), or an already built model. */
  vision: string | VitModel;
  /** Vision family (`auto`: from the file). */
  arch?: VitFamily | "auto";
  /** Attention heads if the weights do not say (default width/64). */
  numHeads?: number;
  /** Overrides of the vision config (e.g. `dropPathRate`, `imgSize`). */
  visionOverrides?: Partial<VitConfig>;
  /** Pretrained BERT weights (`pytorch_model.bin` / `model.safetensors`); needs `textConfig` and `tokenizer`. */
  textWeights?: string;
  /** BERT `config.json`. */
  textConfig?: string;
  /** Tokenizer (`tokenizer.json`, `vocab.txt` or a folder). */
  tokenizer?: string | TextTokenizer;
  /** Reports to build a WordPiece vocabulary from when no tokenizer is given. */
  reports?: string[];
  /** Vocabulary size for a built tokenizer. */
  vocabSize?: number;
  /** Config of a BERT trained from scratch (default: the `small` preset at the vision token width). */
  textFromScratch?: Partial<BertConfig>;
  /** Seed of new weights. */
  seed?: number;
  /**
   * Strict key matching of the weight files (default true). With `false` the matching keys load and the missing,
   * unexpected, mis-shaped and dropped keys are printed, as PyTorch's `load_state_dict` returns them.
   */
  strict?: boolean;
  /** What a strict-mode key mismatch suggests, e.g. "pass --no-strict" (default none). */
  strictHint?: string;
  /** How the caller sets the head count, named when it is a guess (default "pass numHeads"; "" for none). */
  headsHint?: string;
  /** Where loading notices go (default `console.error`; `null`: nowhere). */
  log?: ((line: string) => void) | null;
}

/**
 * Builds the model; the vision file's family decides the token recipe (§1.2).
 * @param options See {@link BuildOptions}.
 * @returns The vision encoder, the BERT, new ITC/ITM heads and the tokenizer.
 * @throws {EncoderError} for missing text files, weights that do not match (strict), or a tokenizer larger than the
 * BERT's vocabulary (named with both files, before any training).
 * @throws {CheckpointError} for unreadable weight files.
 * @example
 * ```ts
 * import { buildRetfinerModel } from "@retfiner/retfiner/model";
 * // const model = buildRetfinerModel({ vision: "RETFound_oct_weights.pth", textWeights, textConfig, tokenizer });
 * ```
 */
export function buildRetfinerModel(options: BuildOptions): RetfinerModel {
  const seed = options.seed ?? 0;
  // The text config is read first: a new RETFound proj is made at the BERT's width.
  const textConfig = options.textWeights && options.textConfig ? readBertConfig(options.textConfig) : undefined;
  const vit = typeof options.vision === "string"
    ? loadVit(options.vision, {
      arch: options.arch,
      numHeads: options.numHeads,
      overrides: options.visionOverrides,
      newProjDim: textConfig?.hiddenSize,
      strict: options.strict,
      strictHint: options.strictHint,
      headsHint: options.headsHint,
      log: options.log,
    }).model
    : options.vision;
  let tokenizer: TextTokenizer;
  if (typeof options.tokenizer === "string") tokenizer = loadTokenizer(options.tokenizer);
  else if (options.tokenizer) tokenizer = options.tokenizer;
  else {
    if (options.textWeights) throw new EncoderError("pretrained text weights need their tokenizer (--tokenizer)");
    if (!options.reports?.length) {
      throw new EncoderError("no tokenizer given and no reports to build a vocabulary from");
    }
    tokenizer = tokenizerFromVocab(
      buildWordPieceVocab(options.reports, { vocabSize: options.vocabSize ?? 2048, minFrequency: 2 }),
    );
  }
  const sources = {
    tokenizer: typeof options.tokenizer === "string" ? options.tokenizer : undefined,
    textWeights: options.textWeights,
    textConfig: options.textConfig,
  };
  let bert;
  if (options.textWeights) {
    if (!options.textConfig) throw new EncoderError("--text-weights needs --text-config (the BERT config.json)");
    // The vocabulary is checked from the config before the weights are read: the cheaper, clearer error first.
    checkVocabulary(tokenizer, textConfig!.vocabSize, sources);
    bert = loadBert(options.textWeights, options.textConfig, {
      strict: options.strict,
      strictHint: options.strictHint,
      log: options.log,
    }).model;
  } else {
    const width = refineTokenDim(vit.config);
    const heads = Math.max(1, Math.round(width / 64));
    bert = createTextEncoder(
      bertPreset("small", {
        hiddenSize: width,
        numAttentionHeads: width % heads === 0 ? heads : 1,
        intermediateSize: 4 * width,
        ...options.textFromScratch,
      }),
      tokenizer,
      seed,
    );
  }
  // A vision encoder given built, whose RETFound proj loadVision made new, gets it at the BERT's width.
  if (typeof options.vision !== "string") {
    fitFreshProj(vit, bert.config.hiddenSize, options.log === undefined ? (line) => console.error(line) : options.log);
  }
  return assembleModel(vit, bert, tokenizer, { seed, sources });
}

/**
 * Reads and validates a BERT `config.json` (no weights).
 * @param path The file.
 * @returns The config.
 * @throws {EncoderError} for an unreadable file or invalid values.
 */
export function readBertConfig(path: string): BertConfig {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(Deno.readTextFileSync(path));
  } catch (err) {
    throw new EncoderError(`${path}: cannot read BERT config (${(err as Error).message})`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new EncoderError(`${path}: a BERT config.json must hold a JSON object`);
  }
  return bertConfigFromJson(json, path);
}

/**
 * Checks a pretrained text side from its files alone (tokenizer and `config.json`, not the weights), so that a
 * tokenizer the BERT cannot embed is an error before a benchmark is generated or a baseline probed.
 * @param text The BERT weights (named in the error), its `config.json` and its tokenizer.
 * @returns The BERT's config (its hidden size is the width a new RETFound proj needs).
 * @throws {EncoderError} for an unreadable or invalid config, or a tokenizer larger than the BERT's vocabulary.
 * @throws {DatasetError} for an unreadable tokenizer.
 */
export function checkTextFiles(text: { weights: string; config: string; tokenizer: string }): BertConfig {
  const config = readBertConfig(text.config);
  checkVocabulary(loadTokenizer(text.tokenizer), config.vocabSize, {
    tokenizer: text.tokenizer,
    textWeights: text.weights,
    textConfig: text.config,
  });
  return config;
}

/**
 * The text side's files when `--text-config` or `--tokenizer` is left out: a Hugging Face model folder (the
 * `--text-weights` folder, or the folder of its file or `*.index.json`) holds `config.json` and `tokenizer.json` or
 * `vocab.txt`; those are used, and each choice is returned as a line to print.
 * @param weights The `--text-weights` path (file, index or folder).
 * @param config The `--text-config` given, if any.
 * @param tokenizer The `--tokenizer` given, if any.
 * @returns The three paths and the notices saying which were taken from the folder.
 * @throws {UsageError} when one is missing and the folder does not hold it.
 */
export function resolveTextFiles(
  weights: string,
  config?: string,
  tokenizer?: string,
): { weights: string; config: string; tokenizer: string; notices: string[] } {
  let folder: string;
  try {
    folder = Deno.statSync(weights).isDirectory ? weights : dirname(weights);
  } catch {
    folder = dirname(weights); // a missing file is named by the loader
  }
  const isFile = (p: string) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  };
  const notices: string[] = [];
  if (!config) {
    const c = join(folder, "config.json");
    if (!isFile(c)) {
      throw new UsageError(`--text-weights ${weights} needs --text-config (the BERT config.json): none in ${folder}`);
    }
    config = c;
    notices.push(`--text-config not given: using ${c}, beside --text-weights`);
  }
  if (!tokenizer) {
    const t = ["tokenizer.json", "vocab.txt"].map((f) => join(folder, f)).find(isFile);
    if (!t) {
      throw new UsageError(
        `--text-weights ${weights} needs --tokenizer (tokenizer.json or vocab.txt): neither is in ${folder}`,
      );
    }
    tokenizer = t;
    notices.push(`--tokenizer not given: using ${t}, beside --text-weights`);
  }
  return { weights, config, tokenizer, notices };
}

/** How weight files are matched to the model (the tasks' `--no-strict` and `--heads`). */
export interface WeightLoading {
  /**
   * Strict key matching (default true). With `false` the matching keys load and the missing, unexpected,
   * mis-shaped and dropped keys are printed, as PyTorch's `load_state_dict` returns them.
   */
  strict?: boolean;
  /** Attention heads of real vision weights (not stored in plain weights; default: stored config, else width/64). */
  numHeads?: number;
  /** What a strict key mismatch suggests, e.g. "pass --no-strict" (default none). */
  strictHint?: string;
  /** How the caller sets the head count, named when it is a guess (default "pass numHeads"; "" for none). */
  headsHint?: string;
  /**
   * Width of a projection the vision file does not have (RETFound's new `proj`): the BERT's hidden size (default 768;
   * the experiment sets it from the text config).
   */
  newProjDim?: number;
  /** Where the text weights' loading notices go (default `console.error`; `null`: nowhere). */
  log?: ((line: string) => void) | null;
}

/**
 * Loads the vision encoder: real weights with the given family's recipe (the
 * tasks decide and print the family first), or the family's stand-in.
 * @param family The family whose recipe the weights follow.
 * @param weights Real weights; default the family's stand-in.
 * @param log Where loading notices go (default: nowhere; the tasks print the decision once).
 * @param loading Strictness and head count for real weights (the stand-ins store theirs and load strictly).
 * @returns The model.
 * @throws {EncoderError} for keys that do not match in strict mode.
 * @throws {CheckpointError} for unreadable or unrecognised files.
 */
export function loadVision(
  family: "retfound" | "visionfm" | "urfound",
  weights?: string,
  log: ((line: string) => void) | null = null,
  loading: WeightLoading = {},
): VitModel {
  if (!weights) return loadVit(standinPath(family), { arch: "auto", log, strictHint: "" }).model;
  const loaded = loadVit(weights, {
    arch: family,
    log,
    strict: loading.strict,
    numHeads: loading.numHeads,
    newProjDim: loading.newProjDim,
    strictHint: loading.strictHint ?? "",
    headsHint: loading.headsHint,
  });
  if (loaded.newlyInitialised.includes("proj.weight")) freshProj.add(loaded.model);
  return loaded.model;
}

/** Vision encoders whose RETFound proj {@link loadVision} made new (none in the file): {@link buildModel} may resize it. */
const freshProj = new WeakSet<VitModel>();

/**
 * Remakes a new RETFound proj at the text encoder's width, as loadVit's `newProjDim` would have made it (same init,
 * same seed), when the vision encoder was loaded without knowing the text side.
 */
function fitFreshProj(vit: VitModel, width: number, log: ((line: string) => void) | null): void {
  const { embedDim, projDim } = vit.config;
  if (!freshProj.has(vit) || projDim === null || projDim === width) return;
  for (const name of ["proj.weight", "proj.bias"]) {
    vit.params.get(name)?.dispose();
    vit.params.delete(name);
  }
  initLinearDefault(vit.params, `${vit.scope}_proj${width}`, "proj", embedDim, width, new Rng(0, "proj-init"));
  vit.config = { ...vit.config, projDim: width };
  log?.(
    `new proj ${embedDim}→${width} (RETFound's refinement projection, not in the weights file: nn.Linear's default ` +
      `init, sized to the text encoder's width instead of ${projDim})`,
  );
}

/**
 * Builds the RetFiner model around a vision encoder with the given (or stand-in) text side: {@link buildRetfinerModel}
 * with pretrained text files.
 * @param vit The vision encoder.
 * @param text BERT weights, config and tokenizer; default the text stand-in.
 * @param seed Seed of the new heads.
 * @param loading Strictness of the text weights (the head count is in their config.json).
 * @returns The model.
 * @throws {EncoderError} for keys that do not match in strict mode, or a tokenizer the BERT cannot embed.
 */
export function buildModel(
  vit: VitModel,
  text?: { weights: string; config: string; tokenizer: string },
  seed = 0,
  loading: WeightLoading = {},
): RetfinerModel {
  const t = text ?? TEXT_STANDIN;
  return buildRetfinerModel({
    vision: vit,
    textWeights: t.weights,
    textConfig: t.config,
    tokenizer: t.tokenizer,
    seed,
    strict: loading.strict,
    strictHint: loading.strictHint ?? "",
    log: loading.log,
  });
}
