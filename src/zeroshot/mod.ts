/**
 * Beyond the paper: what the trained contrastive and matching heads give for
 * free. Zero-shot classification from class descriptions (prompt ensembles,
 * as open_clip), image↔report retrieval (Recall@K, median rank, optional ITM
 * re-ranking as ALBEF), and cross-attention maps of report tokens over the
 * B-scan, rendered as overlays.
 *
 * @example
 * ```ts
 * import { loadRun } from "@retfiner/retfiner/model";
 * import { zeroShotTask } from "@retfiner/retfiner/zeroshot";
 * const run = loadRun("runs/20261128-101500");
 * // const result = await zeroShotTask(run, dataset, prompts);
 * ```
 * @module
 */
import sharp from "sharp";
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import { batchIndices, loadImageBatch, prefetch } from "../dataset/batches.ts";
import type { ProbeDataset } from "../dataset/folders.ts";
import type { GreyImage } from "../dataset/image.ts";
import type { PairRecord } from "../dataset/manifest.ts";
import { probingSpec, refinementSpec } from "../dataset/preprocess.ts";
import { resizeGrey } from "../dataset/resize.ts";
import type { TextTokenizer } from "../dataset/tokenizer.ts";
import { bertEncode, clsToken } from "../encoders/bert.ts";
import { linearP } from "../encoders/layers.ts";
import { vitRefineTokens } from "../encoders/vit.ts";
import { itmHead } from "../model/heads.ts";
import { ITC_TEMPERATURE, l2normalize } from "../losses/objectives.ts";
import { classificationMetrics, type Metrics } from "../probe/metrics.ts";
import type { RetfinerModel } from "../model/model.ts";
import { ProbeError } from "../util/errors.ts";
import type { ProgressCallback } from "../util/progress.ts";

/** L2-normalised contrastive text embeddings `[N, E]` of `texts` (text-only BERT → CLS → `contra_head_t`). */
export function embedTexts(model: RetfinerModel, texts: string[], batch = 64): Float32Array {
  const tok = model.tokenizer.encodeBatch(texts);
  const L = tok.length;
  const E = model.heads.get("contra_head_t.weight")!.shape[0];
  const out = new Float32Array(texts.length * E);
  for (let i = 0; i < texts.length; i += batch) {
    const n = Math.min(batch, texts.length - i);
    const y = tf.tidy(() => {
      const ids = tf.tensor(tok.inputIds.subarray(i * L, (i + n) * L), [n, L], "int32");
      const mask = tf.tensor(tok.attentionMask.subarray(i * L, (i + n) * L), [n, L], "int32");
      return l2normalize(
        linearP(model.heads, "contra_head_t", clsToken(bertEncode(model.bert, { inputIds: ids, attentionMask: mask }))),
      );
    });
    out.set(y.dataSync() as Float32Array, i * E);
    y.dispose();
  }
  return out;
}

/**
 * L2-normalised contrastive image embeddings `[N, E]` (CLS of the refinement
 * tokens → `contra_head_v`); also returns the tokens when `keepTokens`.
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
      const tokens = vitRefineTokens(model.vit, tf.tensor(b.data, [b.n, 3, c.imgSize, c.imgSize]));
      const cls = tf.reshape(tf.slice(tokens, [0, 0, 0], [b.n, 1, tokens.shape[2] as number]), [b.n, -1]);
      return l2normalize(linearP(model.heads, "contra_head_v", cls));
    });
    out.set(y.dataSync() as Float32Array, b.indices[0] * E);
    y.dispose();
    done += b.n;
    options.onProgress?.({ phase: "embed images", done, total: paths.length });
  }
  return out;
}

/** Prompt templates (open_clip-style ensembles, in report language); `{}` is a class description. */
export const PROMPT_TEMPLATES: readonly string[] = [
  "od: {}.",
  "os: {}.",
  "right eye: {}.",
  "left eye: {}.",
  "{}.",
  "impression: {}.",
];

/** Class descriptions for the synthetic benchmark's classes, in the words of its reports. */
export const SYNTH_CLASS_PROMPTS: Record<string, string[]> = {
  AMD: ["consistent with dry amd", "drusen beneath the rpe", "age related macular degeneration"],
  Control: ["normal macula", "no drusen", "unremarkable scan"],
  NORMAL: ["normal macula", "unremarkable scan", "no pathology"],
  NO: ["normal macula", "unremarkable scan", "no pathology"],
  glaucoma: ["consistent with glaucoma", "rnfl thinning", "thinning of the nerve fiber layer"],
  non_glaucoma: ["rnfl within normal limits", "normal nerve fiber layer", "normal macula"],
  DME: ["consistent with diabetic macular edema", "intraretinal fluid", "cystoid macular edema"],
  ERM: ["epiretinal membrane", "erm with wrinkling", "epiretinal fibrosis"],
  RAO: ["consistent with artery occlusion", "inner retinal hyperreflectivity", "ischemic inner retina"],
  RVO: ["consistent with vein occlusion", "rvo with edema", "intraretinal cysts"],
  VID: ["vitreomacular interface disease", "vitreomacular traction", "vitreous traction on the fovea"],
  CSR: ["central serous chorioretinopathy", "subretinal fluid", "serous retinal detachment"],
  DR: ["diabetic retinopathy", "hard exudates", "hyperreflective foci"],
  MH: ["macular hole", "full thickness macular hole", "foveal defect with hole"],
  CNV: ["consistent with wet amd", "pigment epithelial detachment", "choroidal neovascular membrane"],
  DRUSEN: ["drusen beneath the rpe", "soft drusen", "consistent with dry amd"],
  advanced: ["marked thinning of the nerve fiber layer", "severe rnfl thinning", "extensive ganglion cell loss"],
  early: ["mild rnfl thinning", "subtle thinning of the nerve fiber layer", "minimal ganglion cell loss"],
};

/** Class embeddings: the mean of every template × description embedding, renormalised (open_clip). */
export function classEmbeddings(
  model: RetfinerModel,
  classes: string[],
  prompts: Record<string, string[]>,
  templates: readonly string[] = PROMPT_TEMPLATES,
): Float32Array {
  const E = model.heads.get("contra_head_t.weight")!.shape[0];
  const out = new Float32Array(classes.length * E);
  classes.forEach((c, k) => {
    const descs = prompts[c];
    if (!descs?.length) {
      throw new ProbeError(`no prompt for class "${c}" (give descriptions for: ${classes.join(", ")})`);
    }
    const texts = descs.flatMap((d) => templates.map((t) => t.replace("{}", d)));
    const e = embedTexts(model, texts);
    const m = new Float64Array(E);
    for (let i = 0; i < texts.length; i++) for (let d = 0; d < E; d++) m[d] += e[i * E + d];
    const norm = Math.sqrt(m.reduce((s, v) => s + v * v, 0)) || 1;
    for (let d = 0; d < E; d++) out[k * E + d] = m[d] / norm;
  });
  return out;
}

function softmaxRow(x: number[]): number[] {
  const max = Math.max(...x);
  const e = x.map((v) => Math.exp(v - max));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Zero-shot result of one task. */
export interface ZeroShotResult {
  /** Task name. */
  task: string;
  /** Metrics on the test split, as for probing. */
  metrics: Metrics;
}

/** Zero-shot classification of a dataset's test split from class descriptions. */
export async function zeroShotTask(
  model: RetfinerModel,
  dataset: ProbeDataset,
  prompts: Record<string, string[]> = SYNTH_CLASS_PROMPTS,
  options: { onProgress?: ProgressCallback } = {},
): Promise<ZeroShotResult> {
  const test = dataset.items.filter((i) => i.split === "test");
  const E = model.heads.get("contra_head_t.weight")!.shape[0];
  const cls = classEmbeddings(model, dataset.classes, prompts);
  const img = await embedImages(model, test.map((i) => i.path), { recipe: "probe", onProgress: options.onProgress });
  const probs = test.map((_, n) => {
    const logits = dataset.classes.map((_, k) => {
      let s = 0;
      for (let d = 0; d < E; d++) s += img[n * E + d] * cls[k * E + d];
      return s / ITC_TEMPERATURE;
    });
    return softmaxRow(logits);
  });
  return { task: dataset.name, metrics: classificationMetrics(test.map((i) => i.label), probs) };
}

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

/** Ranks of the true matches given a similarity matrix `[Nq, Nc]` where query i matches candidate i. */
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
 */
export async function retrieval(
  model: RetfinerModel,
  pairs: PairRecord[],
  options: { itmRerank?: number; onProgress?: ProgressCallback } = {},
): Promise<RetrievalResult> {
  const n = pairs.length;
  const E = model.heads.get("contra_head_t.weight")!.shape[0];
  const img = await embedImages(model, pairs.map((p) => p.image), { onProgress: options.onProgress });
  const txt = embedTexts(model, pairs.map((p) => p.report));
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
        const tokens = vitRefineTokens(model.vit, tf.tensor(b.data, [1, 3, c.imgSize, c.imgSize]));
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
      const s = scores.dataSync();
      scores.dispose();
      // Re-ranked candidates go above all others, ordered by their ITM probability.
      order.forEach((j, r) => (reranked[i * n + j] = 10 + s[r]));
      options.onProgress?.({ phase: "ITM re-ranking", done: i + 1, total: n });
    }
    result.imageToTextItm = recallAtK(reranked, n);
  }
  return result;
}

/**
 * Cross-attention of each report token over the image patches, averaged over
 * heads and layers: `[tokens, gridH, gridW]` plus the tokens themselves.
 */
export function crossAttentionMaps(
  model: RetfinerModel,
  images: Tensor,
  report: string,
): { tokens: string[]; maps: Float32Array; grid: number } {
  const c = model.vit.config;
  const tok = model.tokenizer.encodeBatch([report]);
  const L = tok.attentionMask.reduce((a, b) => a + b, 0);
  const grid = c.imgSize / c.patchSize;
  const probs: Tensor[] = [];
  const maps = tf.tidy(() => {
    const tokens = vitRefineTokens(model.vit, images);
    bertEncode(model.bert, {
      inputIds: tf.tensor(tok.inputIds, [1, tok.length], "int32"),
      attentionMask: tf.tensor(tok.attentionMask, [1, tok.length], "int32"),
      encoderHiddenStates: tokens,
    }, { crossAttentionOut: probs });
    // [layers, 1, heads, L, 1 + N] → mean over layers and heads, drop the CLS column.
    const m = tf.mean(tf.stack(probs), [0, 1, 2]) as Tensor;
    return tf.slice(m, [0, 1], [tok.length, grid * grid]);
  });
  const values = (maps.dataSync() as Float32Array).slice(0, L * grid * grid);
  maps.dispose();
  const pieces = Array.from(
    tok.inputIds.subarray(0, L),
    (id) =>
      model.tokenizer.decode([id]) ||
      (id === model.tokenizer.clsId ? "[CLS]" : id === model.tokenizer.sepId ? "[SEP]" : String(id)),
  );
  return { tokens: pieces, maps: values, grid };
}

/**
 * How peaked an attention map is: its maximum over its mean (1 = uniform over
 * the patches; `grid²` = all mass on one patch). Overlays are stretched from
 * the map's minimum to its maximum, so read them together with this number.
 */
export function attentionPeak(map: ArrayLike<number>): number {
  let max = -Infinity;
  let sum = 0;
  for (let i = 0; i < map.length; i++) {
    max = Math.max(max, map[i]);
    sum += map[i];
  }
  return sum > 0 ? max / (sum / map.length) : 0;
}

/**
 * Renders an attention map `[grid, grid]` over a grey image as a PNG heat
 * overlay, the map stretched from its minimum (clear) to its maximum (red-yellow).
 */
export async function attentionOverlayPng(
  image: GreyImage,
  map: Float32Array,
  grid: number,
  size = 256,
): Promise<Uint8Array> {
  const base = resizeGrey(image, size, size, "bilinear").data;
  const heat = resizeGrey({ width: grid, height: grid, data: map }, size, size, "bilinear").data;
  let max = -Infinity;
  let min = Infinity;
  for (const v of heat) {
    max = Math.max(max, v);
    min = Math.min(min, v);
  }
  const range = max - min;
  const rgb = new Uint8Array(size * size * 3);
  for (let i = 0; i < size * size; i++) {
    const h = range > 0 ? (heat[i] - min) / range : 0;
    const g = Math.min(1, Math.max(0, base[i]));
    // Grey scan, with attention in red-yellow (alpha grows with attention).
    const a = 0.6 * h;
    rgb[3 * i] = Math.round(255 * ((1 - a) * g + a * 1));
    rgb[3 * i + 1] = Math.round(255 * ((1 - a) * g + a * h));
    rgb[3 * i + 2] = Math.round(255 * (1 - a) * g);
  }
  const png = await sharp(rgb, { raw: { width: size, height: size, channels: 3 } }).png().toBuffer();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}

/** Tokenizer re-export for callers composing prompts. */
export type { TextTokenizer };
