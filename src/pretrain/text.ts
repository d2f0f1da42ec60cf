/**
 * A text-only masked-language-model pretraining for the stand-in BERT, so
 * that refinement starts, as the authors' does, from a pretrained text
 * encoder (theirs: bert-base-uncased) and not from random weights. It reads
 * synthetic reports only (their own random stream, never the pair corpus's).
 * @module
 */
import { tf } from "../backend/tf.ts";
import type { Tensor, Variable } from "../backend/tf.ts";
import { buildWordPieceVocab, type TextTokenizer, tokenizerFromVocab } from "../dataset/tokenizer.ts";
import { DIAGNOSES, type Diagnosis, samplePathology } from "../dataset/synth/diseases.ts";
import { writeReport } from "../dataset/synth/reports.ts";
import { type BertConfig, bertEncode, type BertModel, mlmLogits } from "../encoders/bert.ts";
import { maskTokens, MLM_PROB } from "../losses/masker.ts";
import { crossEntropy } from "../losses/objectives.ts";
import { IGNORE_INDEX } from "../losses/masker.ts";
import {
  type AdamWConfig,
  type AdamWState,
  adamwStepAsync,
  createAdamWState,
  disposeAdamWState,
  scheduledLr,
} from "../optim/adamw.ts";
import { createTextEncoder } from "../model/model.ts";
import type { ProgressCallback } from "../util/progress.ts";
import { Rng } from "../util/rng.ts";

/** Synthetic reports for text pretraining (disease mix as the clinic corpus, own seed stream). */
export function pretrainingReports(n: number, seed: number): string[] {
  const mix: [Diagnosis, number][] = DIAGNOSES.map((
    d,
  ) => [d, d === "normal" ? 4 : d === "amd_dry" || d === "glaucoma" || d === "dme" ? 2 : 1]);
  const total = mix.reduce((s, [, w]) => s + w, 0);
  return Array.from({ length: n }, (_, i) => {
    const rng = new Rng(seed, `text-pretrain/${i}`);
    let r = rng.uniform() * total;
    let dx: Diagnosis = "normal";
    for (const [d, w] of mix) {
      if ((r -= w) < 0) {
        dx = d;
        break;
      }
    }
    return writeReport(samplePathology(dx, rng), dx, rng.uniform() < 0.5 ? "OD" : "OS", rng);
  });
}

/** What {@link pretrainTextEncoder} returns. */
export interface TextPretrainResult {
  /** The pretrained BERT. */
  bert: BertModel;
  /** Its tokenizer (WordPiece vocabulary built from the pretraining reports). */
  tokenizer: TextTokenizer;
  /** Mean MLM loss per epoch. */
  losses: number[];
}

/** Options of {@link pretrainTextEncoder}. */
export interface TextPretrainOptions {
  /** Seed of every random stream (default 0). */
  seed?: number;
  /** Epochs (default 4). */
  epochs?: number;
  /** Reports per step (default 128). */
  batchSize?: number;
  /** Peak learning rate (default 1e-3). */
  lr?: number;
  /** WordPiece vocabulary size (default 1024). */
  vocabSize?: number;
  /** Progress per step. */
  onProgress?: ProgressCallback;
}

/** One optimiser step the loop asks its driver for: apply the update, then read the loss. */
interface StepRequest {
  params: Map<string, Variable>;
  grads: Map<string, Tensor>;
  state: AdamWState;
  config: AdamWConfig;
  lr: number;
  loss: Tensor;
}

/**
 * MLM-pretrains a BERT of `config` on `reports`, on any backend (the optimiser's device path off `cpu`, asynchronous
 * reads).
 * @param reports the pretraining reports
 * @param config the BERT's configuration
 * @param options seed, epochs, batch size, learning rate, vocabulary size, progress
 * @returns the BERT, its tokenizer and the mean loss per epoch
 */
export async function pretrainTextEncoder(
  reports: string[],
  config: BertConfig,
  options: TextPretrainOptions = {},
): Promise<TextPretrainResult> {
  const loop = textPretrainLoop(reports, config, options);
  let next = loop.next();
  while (!next.done) {
    const r = next.value;
    let loss: number;
    try {
      await adamwStepAsync(r.params, r.grads, r.state, r.config, r.lr);
      loss = (await r.loss.data())[0];
    } catch (err) {
      loop.throw(err); // the loop frees the step's tensors and rethrows
      throw err;
    }
    next = loop.next(loss);
  }
  return next.value;
}

/** The pretraining loop; it yields each update for its driver to apply and resumes with the step's loss. */
function* textPretrainLoop(
  reports: string[],
  config: BertConfig,
  options: TextPretrainOptions,
): Generator<StepRequest, TextPretrainResult, number> {
  const seed = options.seed ?? 0;
  const epochs = options.epochs ?? 4;
  const bs = options.batchSize ?? 128;
  const lr = options.lr ?? 1e-3;
  const tokenizer = tokenizerFromVocab(
    buildWordPieceVocab(reports, { vocabSize: options.vocabSize ?? 1024, minFrequency: 2 }),
  );
  const bert = createTextEncoder(config, tokenizer, seed);
  const tok = tokenizer.encodeBatch(reports);
  const L = tok.length;
  const params = bert.params;
  const state = createAdamWState();
  const steps = Math.floor(reports.length / bs);
  const schedule = {
    kind: "cosine" as const,
    warmupSteps: Math.min(100, steps),
    totalSteps: steps * epochs,
    minLr: lr * 0.05,
  };
  const losses: number[] = [];
  let step = 0;
  for (let e = 0; e < epochs; e++) {
    const order = new Rng(seed, `text-epoch/${e}`).permutation(reports.length);
    let sum = 0;
    for (let s = 0; s < steps; s++) {
      const ids = new Int32Array(bs * L);
      const mask = new Int32Array(bs * L);
      for (let k = 0; k < bs; k++) {
        const i = order[s * bs + k];
        ids.set(tok.inputIds.subarray(i * L, (i + 1) * L), k * L);
        mask.set(tok.attentionMask.subarray(i * L, (i + 1) * L), k * L);
      }
      const rng = new Rng(seed, `text-step/${step}`);
      const m = maskTokens(ids, bs, L, {
        prob: MLM_PROB,
        maskId: tokenizer.maskId,
        randomRange: tokenizer.randomTokenRange,
        rng: rng.fork("mask"),
      });
      const { value, grads } = tf.variableGrads(() => {
        const seq = bertEncode(bert, {
          inputIds: tf.tensor(m.inputIds, [bs, L], "int32"),
          attentionMask: tf.tensor(mask, [bs, L], "int32"),
        }, { training: true, rng: rng.fork("dropout") });
        const pos: number[] = [];
        const tgt: number[] = [];
        m.labels.forEach((l, k) => {
          if (l !== IGNORE_INDEX) {
            pos.push(k);
            tgt.push(l);
          }
        });
        const hidden = tf.gather(tf.reshape(seq, [-1, config.hiddenSize]), Int32Array.from(pos));
        return crossEntropy(mlmLogits(bert, hidden), Int32Array.from(tgt)) as tf.Scalar;
      }, [...params.values()]);
      const byName = new Map<string, Tensor>();
      for (const [n, p] of params) if (grads[p.name]) byName.set(n, grads[p.name]);
      try {
        sum += yield {
          params,
          grads: byName,
          state,
          config: { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 },
          lr: scheduledLr(lr, step, schedule),
          loss: value,
        };
      } finally {
        tf.dispose([value, ...Object.values(grads)]);
      }
      step++;
      options.onProgress?.({
        phase: `pretrain text epoch ${e + 1}/${epochs}`,
        done: s + 1,
        total: steps,
        info: { mlm: sum / (s + 1) },
      });
    }
    losses.push(sum / steps);
  }
  disposeAdamWState(state);
  return { bert, tokenizer, losses };
}
