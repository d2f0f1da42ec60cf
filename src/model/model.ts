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
import { createHeads } from "./heads.ts";
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

/** Where the text side came from, named by the vocabulary check. */
export interface TextSources {
  /** The tokenizer (`tokenizer.json`, `vocab.txt` or folder). */
  tokenizer?: string;
  /** The BERT weights. */
  textWeights?: string;
  /** The BERT `config.json`. */
  textConfig?: string;
}

/**
 * Tokens added to a `tokenizer.json` with `add_tokens` beyond its WordPiece
 * vocabulary (specials that are also in the vocabulary do not count).
 * @param tokenizer The tokenizer.
 * @returns The added tokens with their ids, in id order.
 */
export function addedTokens(tokenizer: TextTokenizer): { content: string; id: number }[] {
  const json = tokenizer.tokenizerJson;
  const vocab = (json.model as { vocab?: Record<string, number> } | undefined)?.vocab ?? {};
  const inVocab = new Set(Object.values(vocab));
  const added = Array.isArray(json.added_tokens) ? json.added_tokens as { id?: unknown; content?: unknown }[] : [];
  return added
    .filter((t) => typeof t?.id === "number" && !inVocab.has(t.id))
    .map((t) => ({ content: String(t.content), id: t.id as number }))
    .sort((a, b) => a.id - b.id);
}

/**
 * Checks, before any training, that every id the tokenizer can produce has a
 * row in the BERT's word embeddings (a larger tokenizer would index past the
 * table at the first batch that uses an added word).
 * @param tokenizer The tokenizer.
 * @param bertVocabSize The BERT's `vocab_size` (rows of its word embeddings).
 * @param sources The files, named in the error.
 * @throws {EncoderError} naming the files, the sizes, the added tokens and what to do, when the tokenizer is larger.
 */
export function checkVocabulary(tokenizer: TextTokenizer, bertVocabSize: number, sources: TextSources = {}): void {
  if (bertVocabSize >= tokenizer.vocabSize) return;
  const added = addedTokens(tokenizer);
  const beyond = added.filter((t) => t.id >= bertVocabSize);
  const base = tokenizer.vocabSize - added.length;
  const show = (xs: { content: string; id: number }[]) =>
    xs.slice(0, 8).map((t) => `${JSON.stringify(t.content)} (id ${t.id})`).join(", ") + (xs.length > 8 ? ", …" : "");
  const tkName = sources.tokenizer ? `the tokenizer ${sources.tokenizer}` : "the tokenizer";
  const bertName = [
    sources.textWeights ? `weights ${sources.textWeights}` : "",
    sources.textConfig ? `config ${sources.textConfig}` : "",
  ].filter(Boolean).join(", ");
  throw new EncoderError(
    `the tokenizer has ${tokenizer.vocabSize} tokens but the BERT's vocabulary is ${bertVocabSize}: ` +
      `${tkName} has ` +
      (added.length
        ? `${base} in its vocabulary + ${added.length} added with add_tokens (${show(added)})`
        : `${tokenizer.vocabSize} in its vocabulary and no added tokens`) +
      `; the BERT${bertName ? ` (${bertName})` : ""} has ${bertVocabSize} word embeddings, so ` +
      `${beyond.length ? show(beyond) : `ids ${bertVocabSize}–${tokenizer.vocabSize - 1}`} would index past them. ` +
      `Resize the model's embeddings to ${tokenizer.vocabSize} (Hugging Face: ` +
      `model.resize_token_embeddings(len(tokenizer)), then model.save_pretrained(...) writes the weights and a ` +
      `config.json with vocab_size ${tokenizer.vocabSize}) and pass those files, or pass the tokenizer the BERT was ` +
      `trained with`,
  );
}

/**
 * Assembles a model, checking that the image tokens the BERT cross-attends to
 * have its hidden width (RETFound needs its 1024→768 `proj` for that, §1.4)
 * and that the BERT has an embedding for every token id ({@link checkVocabulary}).
 * @param vit The vision encoder.
 * @param bert The text / multimodal encoder.
 * @param tokenizer The tokenizer matching the BERT.
 * @param options Heads to reuse (else new ones from `seed`), the contrastive width, and the text files for messages.
 * @returns The model.
 * @throws {EncoderError} when the widths or the vocabularies do not match.
 */
export function assembleModel(
  vit: VitModel,
  bert: BertModel,
  tokenizer: TextTokenizer,
  options: { heads?: Params; seed?: number; contraDim?: number; sources?: TextSources } = {},
): RetfinerModel {
  const tokenDim = refineTokenDim(vit.config);
  if (tokenDim !== bert.config.hiddenSize) {
    const c = vit.config;
    throw new EncoderError(
      `the vision encoder's refinement tokens are ${tokenDim}-d but the BERT is ${bert.config.hiddenSize}-d; cross-attention ` +
        `needs them equal: ` +
        (c.family !== "urfound" && c.projDim
          ? `the tokens go through the ViT's proj ${c.embedDim}→${c.projDim}; a new proj (one the weights file does ` +
            `not have) is made at the BERT's width when the loader is given it (loadVit's newProjDim, as the tasks ` +
            `do), a proj from the file fixes the width: use a ${c.projDim}-d BERT`
          : `this ${c.family} ViT has no projection: use a ${tokenDim}-d BERT`),
    );
  }
  checkVocabulary(tokenizer, bert.config.vocabSize, options.sources);
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

/**
 * A BERT initialised from scratch for a tokenizer (when no pretrained text weights are given).
 * @param config the BERT architecture (its vocabulary size is set to the tokenizer's)
 * @param tokenizer the tokenizer
 * @param seed seed of the initialisation stream
 * @returns a randomly initialised BERT with cross-attention
 */
export function createTextEncoder(config: BertConfig, tokenizer: TextTokenizer, seed = 0): BertModel {
  return createBert({ ...config, vocabSize: tokenizer.vocabSize }, { rng: new Rng(seed, "bert-init") });
}

/**
 * Every trainable parameter, prefixed as in the authors' Lightning module (`vision_encoder.`, `text_encoder.`, `heads.`).
 * @param model the RetFiner model
 * @returns the trainable variables by prefixed name
 */
export function modelParams(model: RetfinerModel): Map<string, Variable> {
  const out = new Map<string, Variable>();
  for (const [k, v] of model.vit.params) out.set(`vision_encoder.${k}`, v);
  for (const [k, v] of model.bert.params) out.set(`text_encoder.${k}`, v);
  for (const [k, v] of model.heads) out.set(`heads.${k}`, v);
  return out;
}
