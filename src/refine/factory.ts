/**
 * Builds a RetFiner model from weight files (or from scratch for the text
 * side), like open_clip's factory builds a model from a named preset.
 * @module
 */
import { buildWordPieceVocab, loadTokenizer, type TextTokenizer, tokenizerFromVocab } from "../dataset/tokenizer.ts";
import type { BertConfig } from "../encoders/bert.ts";
import { loadBert, loadVit } from "../encoders/load.ts";
import { bertPreset } from "../encoders/presets.ts";
import { refineTokenDim, type VitConfig, type VitFamily, type VitModel } from "../encoders/vit.ts";
import { EncoderError } from "../util/errors.ts";
import { assembleModel, createTextEncoder, type RetfinerModel } from "./model.ts";

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
}

/** Builds the model; the vision file's family decides the token recipe (§1.2). */
export function buildRetfinerModel(options: BuildOptions): RetfinerModel {
  const seed = options.seed ?? 0;
  const vit = typeof options.vision === "string"
    ? loadVit(options.vision, { arch: options.arch, numHeads: options.numHeads, overrides: options.visionOverrides })
      .model
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
  let bert;
  if (options.textWeights) {
    if (!options.textConfig) throw new EncoderError("--text-weights needs --text-config (the BERT config.json)");
    bert = loadBert(options.textWeights, options.textConfig).model;
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
  return assembleModel(vit, bert, tokenizer, { seed });
}
