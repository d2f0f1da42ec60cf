/**
 * The RetFiner model: a vision encoder (any of the three families), the BERT
 * text/multimodal encoder with cross-attention in every layer, the ITC/ITM
 * heads, and the tokenizer. The factory builds it from weight files or presets.
 * @module
 */
import type { Variable } from "../backend/tf.ts";
import type { TextTokenizer } from "../dataset/tokenizer.ts";
import { type BertConfig, type BertModel, createBert } from "../encoders/bert.ts";
import type { Params } from "../encoders/layers.ts";
import { refineTokenDim, type VitModel } from "../encoders/vit.ts";
import { createHeads } from "../losses/heads.ts";
import { EncoderError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";

/** Everything refinement trains. */
export interface RetfinerModel {
  /** Vision encoder (refined, then exported). */
  vit: VitModel;
  /** Text / multimodal encoder. */
  bert: BertModel;
  /** `contra_head_v`, `contra_head_t`, `itm_head.*`. */
  heads: Params;
  /** Tokenizer matching `bert`'s vocabulary. */
  tokenizer: TextTokenizer;
}

/** Contrastive embedding width of the authors' heads. */
export const CONTRA_DIM = 512;

/**
 * Assembles a model, checking that the image tokens the BERT cross-attends to
 * have its hidden width (RETFound needs its 1024→768 `proj` for that, §1.4).
 */
export function assembleModel(
  vit: VitModel,
  bert: BertModel,
  tokenizer: TextTokenizer,
  options: { heads?: Params; seed?: number; contraDim?: number } = {},
): RetfinerModel {
  const tokenDim = refineTokenDim(vit.config);
  if (tokenDim !== bert.config.hiddenSize) {
    throw new EncoderError(
      `the vision encoder's refinement tokens are ${tokenDim}-d but the BERT is ${bert.config.hiddenSize}-d; cross-attention ` +
        `needs them equal (RETFound uses a new proj ${vit.config.embedDim}→${bert.config.hiddenSize})`,
    );
  }
  if (bert.config.vocabSize < tokenizer.vocabSize) {
    throw new EncoderError(
      `the tokenizer has ${tokenizer.vocabSize} tokens but the BERT's vocabulary is ${bert.config.vocabSize}`,
    );
  }
  const heads = options.heads ?? createHeads(
    {
      visionWidth: tokenDim,
      textWidth: bert.config.hiddenSize,
      embedDim: options.contraDim ?? Math.min(CONTRA_DIM, bert.config.hiddenSize),
    },
    new Rng(options.seed ?? 0, "heads-init"),
  );
  return { vit, bert, heads, tokenizer };
}

/** A BERT initialised from scratch for a tokenizer (when no pretrained text weights are given). */
export function createTextEncoder(config: BertConfig, tokenizer: TextTokenizer, seed = 0): BertModel {
  return createBert({ ...config, vocabSize: tokenizer.vocabSize }, { rng: new Rng(seed, "bert-init") });
}

/** Every trainable parameter, prefixed as in the authors' Lightning module (`vision_encoder.`, `text_encoder.`, `heads.`). */
export function modelParams(model: RetfinerModel): Map<string, Variable> {
  const out = new Map<string, Variable>();
  for (const [k, v] of model.vit.params) out.set(`vision_encoder.${k}`, v);
  for (const [k, v] of model.bert.params) out.set(`text_encoder.${k}`, v);
  for (const [k, v] of model.heads) out.set(`heads.${k}`, v);
  return out;
}
