/**
 * BERT with cross-attention in every layer — RetFiner's text/multimodal
 * encoder (method notes §1.4) — with Hugging Face `BertForMaskedLM` names
 * (`bert.embeddings.*`, `bert.encoder.layer.{i}.attention|crossattention|intermediate|output.*`,
 * `cls.predictions.*`).
 *
 * - Text-only (ITC): no image tokens, so cross-attention is skipped.
 * - Multimodal (ITM, MLM, GM): every layer cross-attends to the image tokens,
 *   with an all-ones encoder mask.
 * - A 2-D attention mask is padding only (the authors commented out the
 *   decoder's automatic causal mask); a 3-D mask is used as given (GM).
 * - The MLM head is tied to the word embeddings; it has no pooler.
 * @module
 */
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import { type RandomSource, Rng } from "../util/rng.ts";
import { EncoderError } from "../util/errors.ts";
import {
  attention,
  dropout as dropoutWithMask,
  gelu,
  initLayerNorm,
  layerNormP,
  linear,
  linearP,
  makeParam,
  mergeHeads,
  normalValues,
  param,
  type Params,
  residual,
  splitHeads,
  uniqueScope,
} from "./layers.ts";

/** BERT hyper-parameters, as in a Hugging Face `config.json`. */
export interface BertConfig {
  /** Vocabulary size. */
  vocabSize: number;
  /** Hidden width. */
  hiddenSize: number;
  /** Number of layers. */
  numHiddenLayers: number;
  /** Attention heads. */
  numAttentionHeads: number;
  /** FFN width. */
  intermediateSize: number;
  /** Longest sequence the position table covers. */
  maxPositionEmbeddings: number;
  /** Token-type vocabulary (2 in BERT). */
  typeVocabSize: number;
  /** LayerNorm epsilon (1e-12). */
  layerNormEps: number;
  /** Dropout on embeddings and sub-layer outputs during training (0.1). */
  hiddenDropoutProb: number;
  /** Dropout on attention probabilities during training (0.1). */
  attentionProbsDropoutProb: number;
  /** Whether every layer has a cross-attention block (RetFiner: yes). */
  addCrossAttention: boolean;
  /** Std of the N(0, σ²) initialisation of new weights (0.02). */
  initializerRange: number;
}

/** bert-base-uncased with cross-attention in all 12 layers (§1.4). */
export const BERT_BASE_CROSSATTN: BertConfig = {
  vocabSize: 30522,
  hiddenSize: 768,
  numHiddenLayers: 12,
  numAttentionHeads: 12,
  intermediateSize: 3072,
  maxPositionEmbeddings: 512,
  typeVocabSize: 2,
  layerNormEps: 1e-12,
  hiddenDropoutProb: 0.1,
  attentionProbsDropoutProb: 0.1,
  addCrossAttention: true,
  initializerRange: 0.02,
};

/** A BERT model: config and parameters by Hugging Face name. */
export interface BertModel {
  /** Hyper-parameters. */
  config: BertConfig;
  /** Parameters by `BertForMaskedLM` state-dict name. */
  params: Params;
  /** Prefix of the tfjs variable names. */
  scope: string;
}

/**
 * Reads a Hugging Face `config.json` object into a {@link BertConfig}; RetFiner forces cross-attention on.
 * @param json the parsed `config.json`
 * @param file names the file in error messages
 * @returns the config, with cross-attention on
 * @throws {EncoderError} for a missing or out-of-range field, or an activation other than exact GELU
 */
export function bertConfigFromJson(json: Record<string, unknown>, file = "config.json"): BertConfig {
  const num = (key: string, fallback?: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new EncoderError(`${file}: "${key}" is missing or not a number`);
    }
    return v;
  };
  if (json.hidden_act !== undefined && json.hidden_act !== "gelu") {
    throw new EncoderError(`${file}: hidden_act "${json.hidden_act}" is not supported (only exact "gelu")`);
  }
  // Sizes come from an untrusted file: checked before anything is allocated.
  const int = (key: string, lo: number, hi: number, fallback?: number): number => {
    const v = num(key, fallback);
    if (!Number.isInteger(v) || v < lo || v > hi) {
      throw new EncoderError(`${file}: "${key}" = ${v} is not an integer in [${lo}, ${hi}]`);
    }
    return v;
  };
  const frac = (key: string, fallback: number, lo: number, hi: number): number => {
    const v = num(key, fallback);
    if (!(v >= lo && v < hi)) throw new EncoderError(`${file}: "${key}" = ${v} is not in [${lo}, ${hi})`);
    return v;
  };
  const cfg: BertConfig = {
    vocabSize: int("vocab_size", 1, 1_000_000),
    hiddenSize: int("hidden_size", 1, 16384),
    numHiddenLayers: int("num_hidden_layers", 1, 256),
    numAttentionHeads: int("num_attention_heads", 1, 1024),
    intermediateSize: int("intermediate_size", 1, 65536),
    maxPositionEmbeddings: int("max_position_embeddings", 1, 65536, 512),
    typeVocabSize: int("type_vocab_size", 1, 1024, 2),
    layerNormEps: frac("layer_norm_eps", 1e-12, Number.MIN_VALUE, 1),
    hiddenDropoutProb: frac("hidden_dropout_prob", 0.1, 0, 1),
    attentionProbsDropoutProb: frac("attention_probs_dropout_prob", 0.1, 0, 1),
    addCrossAttention: true,
    initializerRange: frac("initializer_range", 0.02, 0, 10),
  };
  if (cfg.hiddenSize % cfg.numAttentionHeads !== 0) {
    throw new EncoderError(
      `${file}: "num_attention_heads" = ${cfg.numAttentionHeads} does not divide "hidden_size" = ${cfg.hiddenSize}`,
    );
  }
  return cfg;
}

/**
 * The inverse of {@link bertConfigFromJson}, for saving next to exported weights.
 * @param c the config
 * @returns a Hugging Face `config.json` object (`BertConfig` keys)
 */
export function bertConfigToJson(c: BertConfig): Record<string, unknown> {
  return {
    architectures: ["BertForMaskedLM"],
    model_type: "bert",
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    num_hidden_layers: c.numHiddenLayers,
    num_attention_heads: c.numAttentionHeads,
    intermediate_size: c.intermediateSize,
    max_position_embeddings: c.maxPositionEmbeddings,
    type_vocab_size: c.typeVocabSize,
    layer_norm_eps: c.layerNormEps,
    hidden_dropout_prob: c.hiddenDropoutProb,
    attention_probs_dropout_prob: c.attentionProbsDropoutProb,
    hidden_act: "gelu",
    add_cross_attention: c.addCrossAttention,
    is_decoder: true,
    initializer_range: c.initializerRange,
    pad_token_id: 0,
  };
}

/**
 * The parameter names and shapes of a BERT config, in state-dict order.
 * @param c the config
 * @returns `[name, shape]` pairs with Hugging Face's names (`bert.embeddings…`, `bert.encoder.layer.<i>…`, `cls.predictions…`)
 */
export function bertParamShapes(c: BertConfig): [string, number[]][] {
  const H = c.hiddenSize;
  const out: [string, number[]][] = [
    ["bert.embeddings.word_embeddings.weight", [c.vocabSize, H]],
    ["bert.embeddings.position_embeddings.weight", [c.maxPositionEmbeddings, H]],
    ["bert.embeddings.token_type_embeddings.weight", [c.typeVocabSize, H]],
    ["bert.embeddings.LayerNorm.weight", [H]],
    ["bert.embeddings.LayerNorm.bias", [H]],
  ];
  const attn = (p: string) => {
    for (const n of ["query", "key", "value"]) {
      out.push([`${p}.self.${n}.weight`, [H, H]], [`${p}.self.${n}.bias`, [H]]);
    }
    out.push([`${p}.output.dense.weight`, [H, H]], [`${p}.output.dense.bias`, [H]]);
    out.push([`${p}.output.LayerNorm.weight`, [H]], [`${p}.output.LayerNorm.bias`, [H]]);
  };
  for (let i = 0; i < c.numHiddenLayers; i++) {
    const p = `bert.encoder.layer.${i}`;
    attn(`${p}.attention`);
    if (c.addCrossAttention) attn(`${p}.crossattention`);
    out.push([`${p}.intermediate.dense.weight`, [c.intermediateSize, H]], [`${p}.intermediate.dense.bias`, [
      c.intermediateSize,
    ]]);
    out.push([`${p}.output.dense.weight`, [H, c.intermediateSize]], [`${p}.output.dense.bias`, [H]]);
    out.push([`${p}.output.LayerNorm.weight`, [H]], [`${p}.output.LayerNorm.bias`, [H]]);
  }
  out.push(["cls.predictions.bias", [c.vocabSize]]);
  out.push(["cls.predictions.transform.dense.weight", [H, H]], ["cls.predictions.transform.dense.bias", [H]]);
  out.push(["cls.predictions.transform.LayerNorm.weight", [H]], ["cls.predictions.transform.LayerNorm.bias", [H]]);
  return out;
}

/**
 * Creates a BERT with HF's initialisation: weights N(0, 0.02), biases 0,
 * LayerNorm 1/0 (`init: "zeros"` only allocates, for loading right after).
 * @param config the architecture
 * @param options the initialisation's generator, and `init: "zeros"` to only allocate before loading
 * @returns the model
 * @throws {EncoderError} when the width is not divisible by the head count
 */
export function createBert(config: BertConfig, options: { rng?: Rng; init?: "random" | "zeros" } = {}): BertModel {
  if (config.hiddenSize % config.numAttentionHeads !== 0) {
    throw new EncoderError(
      `hiddenSize ${config.hiddenSize} is not divisible by numAttentionHeads ${config.numAttentionHeads}`,
    );
  }
  const scope = uniqueScope("bert");
  const params: Params = new Map();
  const rng = options.rng ?? new Rng(0, "bert-init");
  for (const [name, shape] of bertParamShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (name.endsWith("LayerNorm.weight")) {
      initLayerNorm(params, scope, name.slice(0, -".weight".length), shape[0]);
      continue;
    }
    if (name.endsWith("LayerNorm.bias")) continue;
    const isWeight = name.endsWith(".weight");
    const values = isWeight && options.init !== "zeros"
      ? normalValues(rng, n, config.initializerRange)
      : new Float32Array(n);
    makeParam(params, scope, name, values, shape);
  }
  return { config, params, scope };
}

/** Inputs of a BERT forward pass. */
export interface BertInputs {
  /** Token ids `[B, L]` (int32). */
  inputIds: Tensor;
  /** `[B, L]` padding mask (1 = token, 0 = pad), or `[B, L, L]` full mask (GM's causal + padding). */
  attentionMask: Tensor;
  /** Image tokens `[B, N, hidden]` to cross-attend to; omit for text-only. */
  encoderHiddenStates?: Tensor;
  /**
   * Instead of `encoderHiddenStates`: the cross-attention keys and values of a set of images, projected once by
   * {@link crossKeyValues} and shared by several passes (RetFiner's ITM, MLM and GM attend to the same images; the
   * projections are the same whoever uses them). Each text row attends to the image `imageRows[row]` (default: row
   * `row`).
   */
  crossKeyValues?: CrossKeyValues;
  /** For `crossKeyValues`: which image each of the B text rows attends to (int32 `[B]`). */
  imageRows?: Tensor | Int32Array;
}

/** Every layer's cross-attention keys and values of a set of images, split into heads: `[B_img, heads, N, d]` each. */
export interface CrossKeyValues {
  /** Layer i's keys `[B_img, heads, N, d]`, one per layer. */
  keys: Tensor[];
  /** Layer i's values `[B_img, heads, N, d]`, one per layer. */
  values: Tensor[];
}

/**
 * Projects image tokens to every layer's cross-attention keys and values once, for passes that attend to the same
 * images ({@link BertInputs.crossKeyValues}). The same numbers as the projections inside {@link bertEncode}; their
 * gradients add up over the passes that use them.
 * @param model a BERT with cross-attention
 * @param image image tokens `[B_img, N, hidden]`
 * @returns per layer, keys and values `[B_img, heads, N, hidden / heads]`
 * @throws {EncoderError} when the model has no cross-attention or the tokens have the wrong shape
 */
export function crossKeyValues(model: BertModel, image: Tensor): CrossKeyValues {
  const c = model.config;
  if (!c.addCrossAttention) throw new EncoderError("this BERT has no cross-attention blocks");
  if (image.rank !== 3 || image.shape[2] !== c.hiddenSize) {
    throw new EncoderError(`image tokens must be [B, N, ${c.hiddenSize}] to cross-attend, got [${image.shape}]`);
  }
  const keys: Tensor[] = [];
  const values: Tensor[] = [];
  for (let i = 0; i < c.numHiddenLayers; i++) {
    const prefix = `bert.encoder.layer.${i}.crossattention.self`;
    keys.push(splitHeads(linearP(model.params, `${prefix}.key`, image), c.numAttentionHeads));
    values.push(splitHeads(linearP(model.params, `${prefix}.value`, image), c.numAttentionHeads));
  }
  return { keys, values };
}

/** Options of a BERT forward pass. */
export interface BertForwardOptions {
  /** Training mode: enables dropout (needs `rng`). */
  training?: boolean;
  /** Generator of dropout masks: one for the batch, or one per row (`[B]`, see `SampleStreams`). */
  rng?: RandomSource;
  /** Collect each layer's cross-attention probabilities `[B, heads, L, N]`. */
  crossAttentionOut?: Tensor[];
  /** Collect each layer's self-attention probabilities `[B, heads, L, L]`. */
  selfAttentionOut?: Tensor[];
}

function dropout(x: Tensor, rate: number, options: BertForwardOptions): Tensor {
  if (!options.training || rate <= 0) return x;
  if (!options.rng) throw new EncoderError("BERT dropout in training mode needs an rng");
  return dropoutWithMask(x, rate, options.rng);
}

/**
 * `(1 - mask) * -10000`, broadcastable to `[B, heads, Lq, Lk]` (HF's extended attention mask).
 * @param mask `[B, L]` padding mask or `[B, L, L]` full mask, 1 = attend, 0 = masked
 * @returns additive mask `[B, 1, 1, L]` or `[B, 1, L, L]`: 0 where attended, −10000 elsewhere
 * @throws {EncoderError} for a mask of another rank
 */
export function extendedAttentionMask(mask: Tensor): Tensor {
  const m = tf.cast(mask, "float32");
  const ext = m.rank === 2
    ? tf.reshape(m, [m.shape[0] as number, 1, 1, m.shape[1] as number])
    : m.rank === 3
    ? tf.expandDims(m, 1)
    : undefined;
  if (!ext) throw new EncoderError(`attention mask must be [B, L] or [B, L, L], got [${mask.shape}]`);
  return tf.mul(tf.sub(1, ext), -10000);
}

/** Projected keys and values `[rows, heads, N, d]` for `rows` consecutive query rows. */
interface KvPart {
  rows: number;
  k: Tensor;
  v: Tensor;
}

/**
 * An attention block; `kv` is the tokens keys and values are projected from, or projected keys and values for
 * consecutive parts of the batch (each part attends to its own; cross-attention with shared keys and values only).
 */
function attentionBlock(
  model: BertModel,
  prefix: string,
  hidden: Tensor,
  kv: Tensor | KvPart[],
  mask: Tensor | undefined,
  options: BertForwardOptions,
  probsOut?: Tensor[],
): Tensor {
  const p = model.params;
  const heads = model.config.numAttentionHeads;
  const q = splitHeads(linearP(p, `${prefix}.self.query`, hidden), heads);
  const parts = Array.isArray(kv) ? kv : [{
    rows: q.shape[0],
    k: splitHeads(linearP(p, `${prefix}.self.key`, kv), heads),
    v: splitHeads(linearP(p, `${prefix}.self.value`, kv), heads),
  }];
  if (parts.length > 1 && mask) throw new EncoderError("attention over parts of a batch takes no mask");
  const contexts: Tensor[] = [];
  const maps: Tensor[] = [];
  let row = 0;
  for (const part of parts) {
    const qp = parts.length === 1 ? q : tf.slice(q, [row, 0, 0, 0], [part.rows, -1, -1, -1]);
    // Per-row dropout generators follow their rows; one generator draws the parts in row order, as the whole batch.
    const rng = options.rng && !(options.rng instanceof Rng) ? options.rng.slice(row, row + part.rows) : options.rng;
    const { context, probs } = attention(
      qp,
      part.k,
      part.v,
      mask,
      (x) => dropout(x, model.config.attentionProbsDropoutProb, { ...options, rng }),
    );
    contexts.push(context);
    maps.push(probs);
    row += part.rows;
  }
  const context = contexts.length === 1 ? contexts[0] : tf.concat(contexts, 0);
  if (probsOut) probsOut.push(maps.length === 1 ? maps[0] : tf.concat(maps, 0));
  const out = dropout(
    linearP(p, `${prefix}.output.dense`, mergeHeads(context)),
    model.config.hiddenDropoutProb,
    options,
  );
  return layerNormP(p, `${prefix}.output.LayerNorm`, residual(hidden, out), model.config.layerNormEps);
}

/**
 * Splits B text rows into consecutive segments by the images they attend to: a run of `images` rows attending to
 * images 0, 1, …, images − 1 in order needs no gather; other rows are gathered (all of them when `rows` is a tensor,
 * which cannot be read synchronously on every backend).
 */
function imageSegments(
  rows: Tensor | Int32Array | undefined,
  B: number,
  images: number,
): { rows: number; gather?: Tensor | Int32Array }[] {
  if (!rows) return [{ rows: B }];
  if (!(rows instanceof Int32Array)) return [{ rows: B, gather: rows }];
  const out: { rows: number; gather?: Int32Array }[] = [];
  let start = 0; // first row of the pending gathered segment
  const identityAt = (s: number) => {
    if (s + images > B) return false;
    for (let j = 0; j < images; j++) if (rows[s + j] !== j) return false;
    return true;
  };
  for (let s = 0; s < B;) {
    if (identityAt(s)) {
      if (s > start) out.push({ rows: s - start, gather: rows.slice(start, s) });
      out.push({ rows: images });
      s += images;
      start = s;
    } else s++;
  }
  if (B > start) out.push({ rows: B - start, gather: rows.slice(start, B) });
  return out;
}

/**
 * Runs the encoder: `[B, L, hidden]` (HF `sequence_output`).
 * @param model the BERT
 * @param inputs token ids `[B, L]`, attention mask `[B, L]` or `[B, L, L]`, optional image tokens `[B, N, hidden]`
 * @param options training mode (dropout) and its generator; arrays to collect attention probabilities
 * @returns the last layer's hidden states `[B, L, hidden]`
 * @throws {EncoderError} when L exceeds `maxPositionEmbeddings`, image tokens have the wrong shape or the model has no
 *   cross-attention, or training has no `rng`
 */
export function bertEncode(model: BertModel, inputs: BertInputs, options: BertForwardOptions = {}): Tensor {
  const c = model.config;
  const p = model.params;
  const [B, L] = inputs.inputIds.shape;
  if (L > c.maxPositionEmbeddings) {
    throw new EncoderError(`sequence length ${L} exceeds max_position_embeddings ${c.maxPositionEmbeddings}`);
  }
  const ids = tf.cast(inputs.inputIds, "int32");
  const words = tf.gather(param(p, "bert.embeddings.word_embeddings.weight"), ids);
  const positions = tf.slice(param(p, "bert.embeddings.position_embeddings.weight"), [0, 0], [L, c.hiddenSize]);
  const types = tf.slice(param(p, "bert.embeddings.token_type_embeddings.weight"), [0, 0], [1, c.hiddenSize]);
  let h = tf.add(tf.add(words, positions), types);
  h = layerNormP(p, "bert.embeddings.LayerNorm", h, c.layerNormEps);
  h = dropout(h, c.hiddenDropoutProb, options);
  const selfMask = extendedAttentionMask(inputs.attentionMask);
  const image = inputs.encoderHiddenStates;
  const shared = inputs.crossKeyValues;
  if (image && shared) throw new EncoderError("give image tokens or their cross-attention keys and values, not both");
  if (image && (image.rank !== 3 || image.shape[0] !== B || image.shape[2] !== c.hiddenSize)) {
    throw new EncoderError(`image tokens must be [${B}, N, ${c.hiddenSize}] to cross-attend, got [${image.shape}]`);
  }
  if (image && !c.addCrossAttention) throw new EncoderError("this BERT has no cross-attention blocks");
  const rows = inputs.imageRows;
  if (shared && (shared.keys.length !== c.numHiddenLayers || (!rows && shared.keys[0].shape[0] !== B))) {
    throw new EncoderError(
      `cross-attention keys must be ${c.numHiddenLayers} layers of [${B}, ...] (or come with imageRows), got ` +
        `${shared.keys.length} of [${shared.keys[0]?.shape}]`,
    );
  }
  if (rows && (rows instanceof Int32Array ? rows.length : rows.size) !== B) {
    throw new EncoderError(`imageRows must name one image per text row (${B})`);
  }
  // Which rows attend to which images: runs of rows that attend to images 0…n−1 in order (ITM's positive pairs and
  // its pairs with a negative text) use the shared keys and values as they are; the rest gather theirs.
  const segments = shared ? imageSegments(rows, B, shared.keys[0].shape[0]) : [];
  /** Layer i's keys and values for this pass's rows. */
  const sharedKv = (i: number): KvPart[] =>
    segments.map((seg) => {
      const pick = (t: Tensor) => (seg.gather ? tf.gather(t, seg.gather) : t);
      return { rows: seg.rows, k: pick(shared!.keys[i]), v: pick(shared!.values[i]) };
    });
  for (let i = 0; i < c.numHiddenLayers; i++) {
    const lp = `bert.encoder.layer.${i}`;
    // One tidy per layer frees its intermediates when it is done (the tape keeps what gradients need). Attention
    // maps asked for are returned from the tidy so they stay in the caller's scope.
    const selfMaps: Tensor[] = [];
    const crossMaps: Tensor[] = [];
    const [next, ...maps] = tf.tidy(() => {
      let x = attentionBlock(model, `${lp}.attention`, h, h, selfMask, options, options.selfAttentionOut && selfMaps);
      // §1.4: cross-attention runs only when image tokens are given; the encoder mask is all ones.
      if (image || shared) {
        x = attentionBlock(
          model,
          `${lp}.crossattention`,
          x,
          image ?? sharedKv(i),
          undefined,
          options,
          options.crossAttentionOut && crossMaps,
        );
      }
      const inter = gelu(linearP(p, `${lp}.intermediate.dense`, x));
      const out = dropout(linearP(p, `${lp}.output.dense`, inter), c.hiddenDropoutProb, options);
      return [layerNormP(p, `${lp}.output.LayerNorm`, residual(x, out), c.layerNormEps), ...selfMaps, ...crossMaps];
    });
    if (options.selfAttentionOut) options.selfAttentionOut.push(...maps.slice(0, selfMaps.length));
    if (options.crossAttentionOut) options.crossAttentionOut.push(...maps.slice(selfMaps.length));
    h = next;
  }
  return h;
}

/**
 * The MLM head (`BertOnlyMLMHead`): dense → GELU → LayerNorm → decoder tied
 * to the word embeddings, plus `cls.predictions.bias`. `hidden` is `[..., H]`;
 * returns logits `[..., vocab]`.
 * @param model the BERT
 * @param hidden hidden states `[..., H]`
 * @returns vocabulary logits `[..., vocabSize]`
 */
export function mlmLogits(model: BertModel, hidden: Tensor): Tensor {
  const p = model.params;
  const t = layerNormP(
    p,
    "cls.predictions.transform.LayerNorm",
    gelu(linearP(p, "cls.predictions.transform.dense", hidden)),
    model.config.layerNormEps,
  );
  // The decoder is tied to the word embeddings (HF's `cls.predictions.decoder`).
  return linear(t, param(p, "bert.embeddings.word_embeddings.weight"), param(p, "cls.predictions.bias"));
}

/**
 * The last-layer `[CLS]` vector `[B, H]` of an encoder output.
 * @param sequence the encoder output `[B, L, H]`
 * @returns `[B, H]`, token 0 of each row
 */
export function clsToken(sequence: Tensor): Tensor {
  const [B, , H] = sequence.shape;
  return tf.reshape(tf.slice(sequence, [0, 0, 0], [B, 1, H]), [B, H]);
}
