/** Contrastive embeddings of reports and B-scans: BERT or ViT CLS through the contrastive heads, L2-normalised. */
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import { batchIndices, loadImageBatch, prefetch } from "../dataset/batches.ts";
import { probingSpec, refinementSpec } from "../dataset/preprocess.ts";
import { bertEncode, clsToken } from "../encoders/bert.ts";
import { linearP } from "../encoders/layers.ts";
import { imagesTensor, vitRefineTokens } from "../encoders/vit.ts";
import { l2normalize } from "../losses/objectives.ts";
import type { RetfinerModel } from "../model/model.ts";
import type { ProgressCallback } from "../util/progress.ts";

/**
 * Contrastive text embeddings (`contra_head_t` on the text-only CLS, L2-normalised), read asynchronously so that
 * every backend works (WebGPU under Deno has no synchronous read).
 * @param model the RetFiner model
 * @param texts the texts (tokenised to the model's maximum length)
 * @param batch texts per forward pass
 * @returns row-major `[N, E]` unit vectors, E the contrastive width
 */
export async function embedTexts(model: RetfinerModel, texts: string[], batch = 64): Promise<Float32Array> {
  const { out, E, batches } = textBatches(model, texts, batch);
  for (const [i, forward] of batches) {
    const y = forward();
    try {
      out.set((await y.data()) as Float32Array, i * E);
    } finally {
      y.dispose();
    }
  }
  return out;
}

/** The output buffer, its row width and, per batch, its first row and its forward pass. */
function textBatches(
  model: RetfinerModel,
  texts: string[],
  batch: number,
): { out: Float32Array; E: number; batches: [number, () => Tensor][] } {
  const tok = model.tokenizer.encodeBatch(texts);
  const L = tok.length;
  const E = model.heads.get("contra_head_t.weight")!.shape[0];
  const out = new Float32Array(texts.length * E);
  const batches: [number, () => Tensor][] = [];
  for (let i = 0; i < texts.length; i += batch) {
    const n = Math.min(batch, texts.length - i);
    batches.push([i, () =>
      tf.tidy(() => {
        const ids = tf.tensor(tok.inputIds.subarray(i * L, (i + n) * L), [n, L], "int32");
        const mask = tf.tensor(tok.attentionMask.subarray(i * L, (i + n) * L), [n, L], "int32");
        return l2normalize(
          linearP(
            model.heads,
            "contra_head_t",
            clsToken(bertEncode(model.bert, { inputIds: ids, attentionMask: mask })),
          ),
        );
      })]);
  }
  return { out, E, batches };
}

/**
 * L2-normalised contrastive image embeddings `[N, E]` (CLS of the refinement
 * tokens → `contra_head_v`).
 * @param model the RetFiner model
 * @param paths the image files
 * @param options preprocessing recipe (`refine`: bicubic, default; `probe`: bilinear), images per batch, progress
 * @returns row-major `[N, E]` unit vectors, E the contrastive width
 * @throws {DatasetError} for an unreadable image
 */
export async function embedImages(
  model: RetfinerModel,
  paths: string[],
  options: { recipe?: "refine" | "probe"; batch?: number; onProgress?: ProgressCallback } = {},
): Promise<Float32Array> {
  const c = model.vit.config;
  const spec = (options.recipe ?? "refine") === "refine" ? refinementSpec(c.imgSize, c) : probingSpec(c.imgSize, c);
  const E = model.heads.get("contra_head_v.weight")!.shape[0];
  const out = new Float32Array(paths.length * E);
  let done = 0;
  for await (
    const b of prefetch(
      batchIndices(paths.length, options.batch ?? 32).map((idx) => () => loadImageBatch(paths, idx, spec)),
      2,
    )
  ) {
    const y = tf.tidy(() => {
      const tokens = vitRefineTokens(model.vit, imagesTensor(b.data, b.n, c.imgSize));
      const cls = tf.reshape(tf.slice(tokens, [0, 0, 0], [b.n, 1, tokens.shape[2] as number]), [b.n, -1]);
      return l2normalize(linearP(model.heads, "contra_head_v", cls));
    });
    try {
      out.set((await y.data()) as Float32Array, b.indices[0] * E); // any backend, WebGPU included
    } finally {
      y.dispose();
    }
    done += b.n;
    options.onProgress?.({ phase: "embed images", done, total: paths.length });
  }
  return out;
}
