/**
 * Builds a RetFiner model from weight files (or from scratch for the text
 * side), like open_clip's factory builds a model from a named preset.
 * @module
 */
import { buildWordPieceVocab, loadTokenizer, type TextTokenizer, tokenizerFromVocab } from "../dataset/tokenizer.ts";
import { type BertConfig, bertConfigFromJson } from "../encoders/bert.ts";
import { loadBert, loadVit } from "../encoders/load.ts";
import { bertPreset } from "../encoders/presets.ts";
import { refineTokenDim, type VitConfig, type VitFamily, type VitModel } from "../encoders/vit.ts";
import { EncoderError, UsageError } from "../util/errors.ts";
import { dirname, join } from "node:path";
import { assembleModel, checkVocabulary, createTextEncoder, type RetfinerModel } from "./model.ts";

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
