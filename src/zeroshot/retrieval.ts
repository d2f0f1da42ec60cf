/** Image↔report retrieval with the contrastive heads (Recall@K, median rank), optional ITM re-ranking as ALBEF. */
import { tf } from "../backend/tf.ts";
import { loadImageBatch } from "../dataset/batches.ts";
import type { PairRecord } from "../dataset/manifest.ts";
import { refinementSpec } from "../dataset/preprocess.ts";
import { bertEncode, clsToken } from "../encoders/bert.ts";
import { imagesTensor, vitRefineTokens } from "../encoders/vit.ts";
import { itmHead } from "../model/heads.ts";
import type { RetfinerModel } from "../model/model.ts";
import type { ProgressCallback } from "../util/progress.ts";
import { embedImages, embedTexts } from "./embed.ts";

/** Retrieval metrics in one direction. */
export interface RecallAtK {
  /** Recall@1. */
  r1: number;
  /** Recall@5. */
  r5: number;
  /** Recall@10. */
  r10: number;
  /** Median rank of the true match (1 = first). */
  medianRank: number;
}

/**
 * Recall at 1, 5, 10 and the median rank of the true matches in a square similarity matrix (query i matches
 * candidate i).
 * @param sim row-major `[n, n]` similarities, query i's match is candidate i
 * @param n the number of pairs
 * @returns recall@1, @5, @10 in [0, 1] and the median rank (1 = first; ties count in the query's favour)
 */
export function recallAtK(sim: Float32Array | Float64Array, n: number): RecallAtK {
  const ranks: number[] = [];
  for (let i = 0; i < n; i++) {
    const own = sim[i * n + i];
    let better = 0;
    for (let j = 0; j < n; j++) if (j !== i && sim[i * n + j] > own) better++;
    ranks.push(better + 1);
  }
  const r = (k: number) => ranks.filter((x) => x <= k).length / n;
  const sorted = [...ranks].sort((a, b) => a - b);
  const median = n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  return { r1: r(1), r5: r(5), r10: r(10), medianRank: median };
}

/** Image→text and text→image retrieval on pairs (each image's own report is its match). */
export interface RetrievalResult {
  /** Pairs evaluated. */
  n: number;
  /** Image → text. */
  imageToText: RecallAtK;
  /** Text → image. */
  textToImage: RecallAtK;
  /** Image → text after ITM re-ranking of the top-k (when asked). */
  imageToTextItm?: RecallAtK;
}

/**
 * Retrieval on held-out pairs with the contrastive heads; with `itmRerank`,
 * each image's top-k reports are re-scored by the ITM head (ALBEF).
 * @param model the RetFiner model
 * @param pairs the image-report pairs
 * @param options `itmRerank`: top-k re-scored by the ITM head; progress
 * @returns recall in both directions (and after re-ranking when asked)
 * @throws {DatasetError} for an unreadable image
 */
export async function retrieval(
  model: RetfinerModel,
  pairs: PairRecord[],
  options: { itmRerank?: number; onProgress?: ProgressCallback } = {},
): Promise<RetrievalResult> {
  const n = pairs.length;
  const E = model.heads.get("contra_head_t.weight")!.shape[0];
  const img = await embedImages(model, pairs.map((p) => p.image), { onProgress: options.onProgress });
  const txt = await embedTexts(model, pairs.map((p) => p.report));
  const i2t = new Float64Array(n * n);
  const t2i = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let d = 0; d < E; d++) s += img[i * E + d] * txt[j * E + d];
      i2t[i * n + j] = s;
      t2i[j * n + i] = s;
    }
  }
  const result: RetrievalResult = { n, imageToText: recallAtK(i2t, n), textToImage: recallAtK(t2i, n) };
  const k = options.itmRerank ?? 0;
  if (k > 0) {
    const reranked = new Float64Array(i2t);
    const c = model.vit.config;
    const spec = refinementSpec(c.imgSize, c);
    const tok = model.tokenizer.encodeBatch(pairs.map((p) => p.report));
    const L = tok.length;
    for (let i = 0; i < n; i++) {
      const order = Array.from({ length: n }, (_, j) => j).sort((a, b) => i2t[i * n + b] - i2t[i * n + a]).slice(0, k);
      const b = await loadImageBatch(pairs.map((p) => p.image), [i], spec);
      const scores = tf.tidy(() => {
        const tokens = vitRefineTokens(model.vit, imagesTensor(b.data, 1, c.imgSize));
        const ids = new Int32Array(k * L);
        const mask = new Int32Array(k * L);
        order.forEach((j, r) => {
          ids.set(tok.inputIds.subarray(j * L, (j + 1) * L), r * L);
          mask.set(tok.attentionMask.subarray(j * L, (j + 1) * L), r * L);
        });
        const seq = bertEncode(model.bert, {
          inputIds: tf.tensor(ids, [k, L], "int32"),
          attentionMask: tf.tensor(mask, [k, L], "int32"),
          encoderHiddenStates: tf.tile(tokens, [k, 1, 1]),
        });
        return tf.softmax(itmHead(model.heads, clsToken(seq))).slice([0, 1], [k, 1]).reshape([k]);
      });
      let s: Float32Array;
      try {
        s = (await scores.data()) as Float32Array; // any backend, WebGPU included
      } finally {
        scores.dispose();
      }
      // Re-ranked candidates go above all others, ordered by their ITM probability.
      order.forEach((j, r) => (reranked[i * n + j] = 10 + s[r]));
      options.onProgress?.({ phase: "ITM re-ranking", done: i + 1, total: n });
    }
    result.imageToTextItm = recallAtK(reranked, n);
  }
  return result;
}
