/**
 * Data: tokenization of clinical reports (images, manifests and the synthetic
 * OCT benchmark follow in this module).
 *
 * @example
 * ```ts
 * import { buildWordPieceVocab, tokenizerFromVocab } from "@retfiner/retfiner/dataset";
 * const tk = tokenizerFromVocab(buildWordPieceVocab(["No subretinal fluid.", "Mild drusen."], { minFrequency: 1 }));
 * const batch = tk.encodeBatch(["Mild drusen."]); // padded to 30 tokens
 * console.log(batch.inputIds.slice(0, 5));
 * ```
 * @module
 */
export {
  bertTokenizerJson,
  buildWordPieceVocab,
  DEFAULT_MAX_LENGTH,
  loadTokenizer,
  type TextTokenizer,
  type TokenBatch,
  tokenizerFromJson,
  tokenizerFromVocab,
} from "./tokenizer.ts";
