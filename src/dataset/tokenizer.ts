/**
 * Text tokenization through `@huggingface/tokenizers` (WordPiece inference is
 * the library's, never ours): load a `tokenizer.json` or a BERT `vocab.txt`,
 * pad and truncate to the authors' `max_length` 30 (method notes §1.4), and
 * build a WordPiece vocabulary from a report corpus for users without one.
 * @module
 */
import { Tokenizer } from "@huggingface/tokenizers";
import { dirname, join } from "node:path";
import { DatasetError } from "../util/errors.ts";
import { AUTHORS } from "../params.ts";

/** The authors' text length: `padding="max_length", truncation=True, max_length=30` (`AUTHORS.refine.maxLength`). */
export const DEFAULT_MAX_LENGTH: number = AUTHORS.refine.maxLength;

/** A batch of token ids and masks, row-major `[batch, length]`. */
export interface TokenBatch {
  /** Token ids; `[CLS] … [SEP] [PAD]…`. */
  inputIds: Int32Array;
  /** 1 for tokens (including `[CLS]`/`[SEP]`), 0 for padding. */
  attentionMask: Int32Array;
  /** Rows. */
  batch: number;
  /** Columns (`maxLength`). */
  length: number;
}

/** A BERT-style tokenizer with the special ids the objectives need. */
export interface TextTokenizer {
  /** Vocabulary size. */
  vocabSize: number;
  /** `[PAD]` id (0 in BERT; the token masker treats it as padding). */
  padId: number;
  /** `[CLS]` id. */
  clsId: number;
  /** `[SEP]` id. */
  sepId: number;
  /** `[MASK]` id. */
  maskId: number;
  /** `[UNK]` id. */
  unkId: number;
  /**
   * Range `[low, high]` (inclusive) of ids the masker draws random replacements
   * from; bert-base-uncased: [106, 30521] (§1.5, `range(106, 30522)`).
   */
  randomTokenRange: [number, number];
  /** Pads/truncates texts to `maxLength` (default 30). */
  encodeBatch(texts: string[], maxLength?: number): TokenBatch;
  /** Word pieces of a text, without special tokens. */
  tokenize(text: string): string[];
  /** Ids back to text (special tokens dropped). */
  decode(ids: ArrayLike<number>): string;
  /** The `tokenizer.json` object, for saving beside a model. */
  tokenizerJson: Record<string, unknown>;
}

const SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/**
 * A standard BERT `tokenizer.json` for a WordPiece vocabulary (ids = positions).
 * @param vocab the WordPiece vocabulary; a token's id is its position; it must hold [PAD], [UNK], [CLS], [SEP], [MASK]
 * @param options BertNormalizer settings: `lowercase` (default true), `stripAccents` (null: follow `lowercase`)
 * @returns the `tokenizer.json` object (BertNormalizer, BertPreTokenizer, `[CLS] $A [SEP]` template, WordPiece)
 * @throws {DatasetError} when a special token is missing from the vocabulary
 */
export function bertTokenizerJson(
  vocab: string[],
  options: { lowercase?: boolean; stripAccents?: boolean | null } = {},
): Record<string, unknown> {
  const ids = new Map<string, number>();
  vocab.forEach((t, i) => {
    if (!ids.has(t)) ids.set(t, i);
  });
  for (const s of SPECIALS) {
    if (!ids.has(s)) throw new DatasetError(`vocabulary has no ${s} token`);
  }
  const special = (t: string) => ({ id: t, type_id: 0 });
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: vocab.flatMap((content, id) =>
      /^\[(PAD|UNK|CLS|SEP|MASK)\]$/.test(content)
        ? [{ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }]
        : []
    ),
    normalizer: {
      type: "BertNormalizer",
      clean_text: true,
      handle_chinese_chars: true,
      strip_accents: options.stripAccents ?? null,
      lowercase: options.lowercase ?? true,
    },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: special("[CLS]") }, { Sequence: { id: "A", type_id: 0 } }, {
        SpecialToken: special("[SEP]"),
      }],
      pair: [
        { SpecialToken: special("[CLS]") },
        { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: special("[SEP]") },
        { Sequence: { id: "B", type_id: 1 } },
        { SpecialToken: { id: "[SEP]", type_id: 1 } },
      ],
      special_tokens: Object.fromEntries(["[CLS]", "[SEP]"].map((t) => [t, { id: t, ids: [ids.get(t)], tokens: [t] }])),
    },
    decoder: { type: "WordPiece", prefix: "##", cleanup: true },
    model: {
      type: "WordPiece",
      unk_token: "[UNK]",
      continuing_subword_prefix: "##",
      max_input_chars_per_word: 100,
      vocab: Object.fromEntries(ids),
    },
  };
}

/**
 * Wraps a `tokenizer.json` object.
 * @param json a Hugging Face `tokenizer.json` object (WordPiece model)
 * @param config the `tokenizer_config.json` object, if any (e.g. `model_max_length`)
 * @param source names the file in error messages
 * @returns the tokenizer
 * @throws {DatasetError} when the object is no usable tokenizer or its vocabulary lacks a special token;
 *   `encodeBatch` throws it for a `maxLength` below 2
 */
export function tokenizerFromJson(
  json: Record<string, unknown>,
  config: Record<string, unknown> = {},
  source = "tokenizer.json",
): TextTokenizer {
  let tk: Tokenizer;
  try {
    tk = new Tokenizer(json, config);
  } catch (err) {
    throw new DatasetError(`${source}: not a usable tokenizer (${(err as Error).message})`);
  }
  const id = (t: string) => {
    const v = tk.token_to_id(t);
    if (v === undefined) throw new DatasetError(`${source}: vocabulary has no ${t} token`);
    return v;
  };
  const vocab = ((json.model as { vocab?: Record<string, number> })?.vocab) ?? {};
  // Added tokens (tokenizer.add_tokens) get ids after the vocabulary: they count in the size the model must have.
  const added = Array.isArray(json.added_tokens) ? json.added_tokens as { id?: unknown }[] : [];
  let maxId = -1;
  for (const v of Object.values(vocab)) if (typeof v === "number" && v > maxId) maxId = v;
  for (const t of added) if (typeof t?.id === "number" && t.id > maxId) maxId = t.id;
  const vocabSize = maxId + 1;
  const padId = id("[PAD]");
  const clsId = id("[CLS]");
  const sepId = id("[SEP]");
  const maskId = id("[MASK]");
  const unkId = id("[UNK]");
  // bert-base-uncased reserves ids < 106 for [PAD], [unused*], [UNK], [CLS], [SEP], [MASK] and more [unused*].
  const firstRegular = Object.entries(vocab)
    .filter(([t]) => !/^\[.*\]$/.test(t))
    .reduce((m, [, i]) => Math.min(m, i), Infinity);
  const low = vocabSize === 30522 ? 106 : Number.isFinite(firstRegular) ? firstRegular : 0;
  return {
    vocabSize,
    padId,
    clsId,
    sepId,
    maskId,
    unkId,
    randomTokenRange: [low, vocabSize - 1],
    tokenizerJson: json,
    tokenize: (text) => tk.tokenize(text, { add_special_tokens: false }),
    decode: (ids) => tk.decode(Array.from(ids), { skip_special_tokens: true }),
    encodeBatch(texts, maxLength = DEFAULT_MAX_LENGTH) {
      if (maxLength < 2) throw new DatasetError(`maxLength must be at least 2, got ${maxLength}`);
      const inputIds = new Int32Array(texts.length * maxLength).fill(padId);
      const attentionMask = new Int32Array(texts.length * maxLength);
      texts.forEach((text, row) => {
        const body = encodePrefix(tk, text, maxLength - 2);
        const ids = [clsId, ...body, sepId];
        for (let j = 0; j < ids.length; j++) {
          inputIds[row * maxLength + j] = ids[j];
          attentionMask[row * maxLength + j] = 1;
        }
      });
      return { inputIds, attentionMask, batch: texts.length, length: maxLength };
    },
  };
}

/**
 * The first `keep` token ids of `text`, tokenizing only as much of it as that
 * needs: a prefix cut at whitespace holds whole words, whose tokens are those
 * of the full text, so once the prefix gives more than `keep` tokens the rest
 * cannot change the result. The prefix doubles until then (a 50 MB report
 * costs a few kB of tokenizing, not gigabytes).
 */
function encodePrefix(tk: Tokenizer, text: string, keep: number): number[] {
  let budget = Math.max(256, keep * 32);
  for (;;) {
    if (budget >= text.length) return tk.encode(text, { add_special_tokens: false }).ids.slice(0, keep);
    let cut = budget;
    while (cut > 0 && !/\s/.test(text[cut])) cut--;
    if (cut > 0) {
      const ids = tk.encode(text.slice(0, cut), { add_special_tokens: false }).ids;
      if (ids.length > keep) return ids.slice(0, keep);
    }
    budget *= 4;
  }
}

/**
 * A tokenizer from a BERT `vocab.txt` (one token per line, id = line number).
 * @param vocab the tokens, one per id (a `vocab.txt`'s lines)
 * @param options BertNormalizer settings as for {@link bertTokenizerJson}, and `source` for messages
 * @returns the tokenizer
 * @throws {DatasetError} when a special token is missing from the vocabulary
 * @example
 * ```ts
 * import { tokenizerFromVocab } from "./tokenizer.ts";
 * const tok = tokenizerFromVocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "drusen", "fluid", "##s", "no"]);
 * const { inputIds, attentionMask } = tok.encodeBatch(["No fluids"], 6);
 * if (inputIds.join() !== "2,8,6,7,3,0" || attentionMask.join() !== "1,1,1,1,1,0") throw new Error(`${inputIds}`);
 * if (tok.decode(inputIds) !== "no fluids") throw new Error(tok.decode(inputIds));
 * ```
 */
export function tokenizerFromVocab(
  vocab: string[],
  options: { lowercase?: boolean; stripAccents?: boolean | null; source?: string } = {},
): TextTokenizer {
  return tokenizerFromJson(bertTokenizerJson(vocab, options), {}, options.source ?? "vocab.txt");
}

/**
 * Loads a tokenizer from a `tokenizer.json`, a `vocab.txt`, or a directory
 * holding either (with `tokenizer_config.json` if present).
 * @param path a `tokenizer.json`, a `vocab.txt`, or a folder holding either
 * @returns the tokenizer
 * @throws {DatasetError} when the path is missing, holds neither file, or a file is unreadable or unusable
 * @example
 * ```ts
 * import { loadTokenizer } from "./tokenizer.ts";
 * // The BERT stand-in shipped in data/models/ (a small vocabulary built from the synthetic reports).
 * const tok = loadTokenizer(new URL("../../data/models/bert-standin/tokenizer.json", import.meta.url).pathname);
 * const batch = tok.encodeBatch(["drusen in the outer retina"], 30);
 * if (batch.inputIds[0] !== tok.clsId || batch.length !== 30) throw new Error("[CLS] first, padded to 30");
 * ```
 */
export function loadTokenizer(path: string): TextTokenizer {
  let stat: Deno.FileInfo;
  try {
    stat = Deno.statSync(path);
  } catch {
    throw new DatasetError(`${path}: tokenizer not found`);
  }
  const readJson = (p: string) => {
    try {
      return JSON.parse(Deno.readTextFileSync(p));
    } catch (err) {
      throw new DatasetError(`${p}: cannot read JSON (${(err as Error).message})`);
    }
  };
  if (stat.isDirectory) {
    const has = (f: string) => {
      try {
        return Deno.statSync(join(path, f)).isFile;
      } catch {
        return false;
      }
    };
    const config = has("tokenizer_config.json") ? readJson(join(path, "tokenizer_config.json")) : {};
    if (has("tokenizer.json")) {
      return tokenizerFromJson(readJson(join(path, "tokenizer.json")), config, join(path, "tokenizer.json"));
    }
    if (has("vocab.txt")) return loadTokenizer(join(path, "vocab.txt"));
    throw new DatasetError(`${path}: directory has neither tokenizer.json nor vocab.txt`);
  }
  if (path.endsWith(".json")) return tokenizerFromJson(readJson(path), {}, path);
  // A vocab.txt: BertTokenizer's settings come from the tokenizer_config.json beside it (lowercasing by default).
  const cfgPath = join(dirname(path), "tokenizer_config.json");
  let cfg: Record<string, unknown> = {};
  try {
    if (Deno.statSync(cfgPath).isFile) cfg = readJson(cfgPath);
  } catch (err) {
    if (err instanceof DatasetError) throw err;
  }
  const flag = (key: string): boolean | null | undefined => {
    const v = cfg[key];
    if (v === undefined || v === null) return v as undefined | null;
    if (typeof v !== "boolean") {
      throw new DatasetError(`${cfgPath}: "${key}" must be true, false or null, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const lines = Deno.readTextFileSync(path).split(/\r?\n/);
  if (lines.at(-1) === "") lines.pop();
  return tokenizerFromVocab(lines, {
    source: path,
    lowercase: flag("do_lower_case") ?? true,
    stripAccents: flag("strip_accents") ?? null,
  });
}

/**
 * Builds a WordPiece vocabulary from a corpus: special tokens, then every
 * character seen (as word start and as `##` continuation, so any word in the
 * corpus can be spelled), then whole words and frequent `##` suffixes by
 * frequency, up to `vocabSize`. Words are split with the library's own BERT
 * normaliser and pre-tokeniser.
 * @param corpus the texts (e.g. the reports)
 * @param options `vocabSize` (default 2048), `minFrequency` of a word or suffix to be kept, `lowercase` (default true)
 * @returns the vocabulary, special tokens first (ids 0–4: [PAD], [UNK], [CLS], [SEP], [MASK])
 */
export function buildWordPieceVocab(
  corpus: Iterable<string>,
  options: { vocabSize?: number; minFrequency?: number; lowercase?: boolean } = {},
): string[] {
  const vocabSize = options.vocabSize ?? 2048;
  const minFrequency = options.minFrequency ?? 2;
  const splitter = new Tokenizer(bertTokenizerJson(SPECIALS, { lowercase: options.lowercase ?? true }), {});
  const words = new Map<string, number>();
  for (const text of corpus) {
    const normalized = splitter.normalizer ? splitter.normalizer.normalize(text) : text;
    const pieces = splitter.pre_tokenizer ? splitter.pre_tokenizer.pre_tokenize(normalized) : normalized.split(/\s+/);
    for (const w of pieces) if (w) words.set(w, (words.get(w) ?? 0) + 1);
  }
  const vocab = [...SPECIALS];
  const seen = new Set(vocab);
  const add = (t: string) => {
    if (!seen.has(t) && vocab.length < vocabSize) {
      seen.add(t);
      vocab.push(t);
    }
  };
  const chars = new Set<string>();
  for (const c of "abcdefghijklmnopqrstuvwxyz0123456789.,;:()/-%+") chars.add(c);
  for (const w of words.keys()) for (const c of w) chars.add(c);
  for (const c of [...chars].sort()) add(c);
  for (const c of [...chars].sort()) add(`##${c}`);
  const suffixes = new Map<string, number>();
  for (const [w, n] of words) {
    for (let i = 1; i < w.length - 1; i++) {
      const s = w.slice(i);
      if (s.length >= 2) suffixes.set(s, (suffixes.get(s) ?? 0) + n);
    }
  }
  const byFreq = [...words].filter(([, n]) => n >= minFrequency).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  for (const [w] of byFreq) add(w);
  const sufByFreq = [...suffixes].filter(([, n]) => n >= minFrequency).sort((a, b) =>
    b[1] - a[1] || (a[0] < b[0] ? -1 : 1)
  );
  for (const [s] of sufByFreq) add(`##${s}`);
  return vocab;
}
