/**
 * Beyond the paper: what the trained contrastive and matching heads give for
 * free. Zero-shot classification from class descriptions (prompt ensembles,
 * as open_clip), image↔report retrieval (Recall@K, median rank, optional ITM
 * re-ranking as ALBEF), and cross-attention maps of report tokens over the
 * B-scan, rendered as overlays. Embeddings in `embed.ts`, classification in
 * `classify.ts`, retrieval in `retrieval.ts`, attention maps in `attention.ts`.
 *
 * @example
 * ```ts ignore
 * import { loadRun } from "@retfiner/retfiner/model";
 * import { zeroShotTask } from "@retfiner/retfiner/zeroshot";
 * const run = loadRun("runs/20261128-101500");
 * // const result = await zeroShotTask(run, dataset, prompts);
 * ```
 * @module
 */
export { embedImages, embedTexts } from "./embed.ts";
export {
  classEmbeddings,
  PROMPT_TEMPLATES,
  SYNTH_CLASS_PROMPTS,
  type ZeroShotResult,
  zeroShotTask,
  zeroShotTasks,
} from "./classify.ts";
export { type RecallAtK, recallAtK, retrieval, type RetrievalResult } from "./retrieval.ts";
export { attentionOverlayPng, attentionPeak, crossAttentionMaps } from "./attention.ts";
/** Tokenizer re-export for callers composing prompts. */
export type { TextTokenizer } from "../dataset/tokenizer.ts";
