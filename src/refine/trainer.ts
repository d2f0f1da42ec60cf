/**
 * The refinement loop (method notes §1.6): AdamW over every parameter (vision
 * encoder, BERT, heads) at a constant learning rate, epochs with early
 * stopping on the validation loss, atomic checkpoints (best, and every N
 * steps), exact resume, a non-finite-loss guard, and a JSONL log.
 *
 * Reproducibility: the batch order of epoch e comes from `Rng(seed, "epoch/e")`
 * and every random draw of step s (drop-path, dropout, masking, negatives)
 * from `Rng(seed, "step/s")`, so a resumed run continues exactly where the
 * interrupted one stopped.
 * @module
 */
import { join } from "node:path";
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import { batchIndices, InputCache, loadImageBatch, prefetch } from "../dataset/batches.ts";
import type { PairRecord } from "../dataset/manifest.ts";
import { type PreprocessSpec, refinementSpec } from "../dataset/preprocess.ts";
import { DEFAULT_MAX_LENGTH } from "../dataset/tokenizer.ts";
import { RefineError } from "../util/errors.ts";
import { exists } from "../util/fs.ts";
import type { ProgressCallback } from "../util/progress.ts";
import { Rng } from "../util/rng.ts";
import {
  ADAMW_DEFAULTS,
  type AdamWConfig,
  adamwStep,
  createAdamWState,
  type LrSchedule,
  scheduledLr,
} from "./adamw.ts";
import { exportBackbone, exportTextSide, loadCheckpoint, type LoopState, saveCheckpoint } from "./checkpoint.ts";
import { modelParams, type RetfinerModel } from "./model.ts";
import { ALL_LOSSES, type LossWeights, OBJECTIVES, type PairBatch, retfinerLosses } from "./step.ts";

/** Options of {@link refine}. */
export interface RefineOptions {
  /** The model to refine (modified in place). */
  model: RetfinerModel;
  /** Pairs with `split` set to `train` or `val`. */
  pairs: PairRecord[];
  /** Run directory: checkpoints, log, exports. */
  runDir: string;
  /** Name used in export file names (default: the run directory's name). */
  runName?: string;
  /** Pairs per optimiser step (the authors: 128). */
  batchSize?: number;
  /** Micro-batches per optimiser step (gradients are averaged; ITC/ITM negatives stay per micro-batch). */
  accumulate?: number;
  /** Maximum epochs (RETFound: 20). */
  epochs?: number;
  /** Early-stopping patience in epochs on the validation loss (RETFound: 3). */
  patience?: number;
  /** Optimiser. */
  optimizer?: Partial<AdamWConfig>;
  /** Learning-rate schedule (the authors: constant). */
  schedule?: LrSchedule;
  /** Objective weights (the authors: all 1); 0 removes an objective. */
  losses?: LossWeights;
  /** Seed of every random stream. */
  seed?: number;
  /** Text length (the authors: 30). */
  maxLength?: number;
  /** Save a resumable checkpoint every N optimiser steps (0 = only at epoch ends). */
  checkpointEvery?: number;
  /** Resume from `runDir/last.ckpt.safetensors` if present. */
  resume?: boolean;
  /** Stop after this many optimiser steps in total (for tests and smoke runs). */
  maxSteps?: number;
  /** Image preprocessing (default: the model's refinement recipe). */
  preprocess?: PreprocessSpec;
  /** Progress updates (per step). */
  onProgress?: ProgressCallback;
  /** Called after each epoch's validation. */
  onEpoch?: (summary: LoopState["history"][number]) => void;
  /** Bytes of preprocessed images to keep in memory across epochs (default 1 GiB). */
  cacheBytes?: number;
}

/** What {@link refine} returns. */
export interface RefineResult {
  /** Final loop state (history, best epoch, steps). */
  loop: LoopState;
  /** Why training stopped. */
  stopReason: "max-epochs" | "early-stopping" | "max-steps";
  /** The exported best backbone. */
  backbone: { pth: string; safetensors: string };
}

/** File name of the resumable checkpoint. */
export const LAST_CHECKPOINT = "last.ckpt.safetensors";
/** File name of the best-validation checkpoint. */
export const BEST_CHECKPOINT = "best.ckpt.safetensors";

interface Tokenized {
  ids: Int32Array;
  mask: Int32Array;
  length: number;
}

function gatherBatch(tokens: Tokenized, images: { data: Float32Array; indices: number[] }): PairBatch {
  const L = tokens.length;
  const B = images.indices.length;
  const inputIds = new Int32Array(B * L);
  const attentionMask = new Int32Array(B * L);
  images.indices.forEach((i, k) => {
    inputIds.set(tokens.ids.subarray(i * L, (i + 1) * L), k * L);
    attentionMask.set(tokens.mask.subarray(i * L, (i + 1) * L), k * L);
  });
  return { images: images.data, inputIds, attentionMask, size: B, length: L };
}

/**
 * Refines `options.model` on image-report pairs and exports the best backbone.
 *
 * @example
 * ```ts
 * import { refine } from "./trainer.ts";
 * // const result = await refine({ model, pairs, runDir: "runs/demo", epochs: 3, batchSize: 16 });
 * ```
 */
export async function refine(options: RefineOptions): Promise<RefineResult> {
  const { model, runDir } = options;
  const runName = options.runName ?? runDir.split("/").filter(Boolean).pop() ?? "run";
  const batchSize = options.batchSize ?? 128;
  const accumulate = options.accumulate ?? 1;
  const micro = Math.ceil(batchSize / accumulate);
  const epochs = options.epochs ?? 20;
  const patience = options.patience ?? 3;
  const opt = { ...ADAMW_DEFAULTS, ...options.optimizer };
  const schedule = options.schedule ?? { kind: "constant" };
  const weights = options.losses ?? ALL_LOSSES;
  const seed = options.seed ?? 0;
  const maxLength = options.maxLength ?? DEFAULT_MAX_LENGTH;
  const spec = options.preprocess ??
    refinementSpec(model.vit.config.imgSize, { mean: model.vit.config.mean, std: model.vit.config.std });
  if (OBJECTIVES.every((k) => !(weights[k] > 0))) {
    throw new RefineError("every objective has weight 0; nothing to train");
  }
  const train = options.pairs.filter((p) => p.split === "train");
  const val = options.pairs.filter((p) => p.split === "val");
  if (train.length < 2) throw new RefineError(`refinement needs at least 2 training pairs, got ${train.length}`);
  if (micro < 2 && (weights.itc > 0 || weights.itm > 0)) {
    throw new RefineError("ITC/ITM need at least 2 pairs per (micro-)batch");
  }
  await Deno.mkdir(runDir, { recursive: true });

  const all = [...train, ...val];
  const tok = model.tokenizer.encodeBatch(all.map((r) => r.report), maxLength);
  const tokens: Tokenized = { ids: tok.inputIds, mask: tok.attentionMask, length: maxLength };
  const paths = all.map((r) => r.image);
  const trainIdx = train.map((_, i) => i);
  const valIdx = val.map((_, i) => train.length + i);
  const cache = new InputCache(options.cacheBytes ?? 2 ** 30);
  const params = modelParams(model);

  let state = createAdamWState();
  let loop: LoopState = {
    step: 0,
    epoch: 0,
    batchInEpoch: 0,
    bestVal: Infinity,
    bestEpoch: -1,
    badEpochs: 0,
    seed,
    history: [],
  };
  const lastPath = join(runDir, LAST_CHECKPOINT);
  if (options.resume && (await exists(lastPath))) {
    const restored = loadCheckpoint(lastPath, params);
    state = restored.opt;
    loop = restored.loop;
    if (loop.seed !== seed) throw new RefineError(`${lastPath} was made with seed ${loop.seed}, this run uses ${seed}`);
  }
  const logPath = join(runDir, "log.jsonl");
  const log = async (entry: Record<string, unknown>) => {
    await Deno.writeTextFile(logPath, JSON.stringify(entry) + "\n", { append: true });
  };
  const batchesPerEpoch = Math.floor(train.length / batchSize) + (train.length % batchSize >= 2 ? 1 : 0);
  const totalSteps = epochs * batchesPerEpoch;
  const sched = { ...schedule, totalSteps: schedule.totalSteps ?? totalSteps };
  let stopReason: RefineResult["stopReason"] = "max-epochs";
  const meta = {
    runName,
    batchSize,
    accumulate,
    epochs,
    patience,
    optimizer: opt,
    schedule: sched,
    losses: weights,
    maxLength,
  };

  const runLosses = (b: PairBatch, rng: Rng, training: boolean) => retfinerLosses(model, b, weights, rng, training);

  outer: for (; loop.epoch < epochs; loop.epoch++, loop.batchInEpoch = 0) {
    const t0 = performance.now();
    const order = batchIndices(trainIdx.length, batchSize, { rng: new Rng(seed, `epoch/${loop.epoch}`) }).filter((b) =>
      b.length >= 2
    );
    const sums: Record<string, number> = {};
    let count = 0;
    const loaders = order.slice(loop.batchInEpoch).map((b) => () =>
      loadImageBatch(paths, b.map((i) => trainIdx[i]), spec, { cache })
    );
    for await (const imgs of prefetch(loaders, 2)) {
      if (options.maxSteps !== undefined && loop.step >= options.maxSteps) {
        stopReason = "max-steps";
        break outer;
      }
      const stepRng = new Rng(seed, `step/${loop.step}`);
      const lr = scheduledLr(opt.lr, loop.step, sched);
      const termValues: Record<string, number> = {};
      let grads: Map<string, Tensor> | undefined;
      const n = imgs.indices.length;
      const chunks = Math.ceil(n / micro);
      for (let c = 0; c < chunks; c++) {
        const sel = {
          data: imgs.data.subarray(
            c * micro * 3 * spec.size * spec.size,
            Math.min(n, (c + 1) * micro) * 3 * spec.size * spec.size,
          ),
          indices: imgs.indices.slice(c * micro, (c + 1) * micro),
        };
        if (sel.indices.length < 2) continue;
        const batch = gatherBatch(tokens, sel);
        const microRng = stepRng.fork(`micro/${c}`);
        let terms: Record<string, Tensor> = {};
        const { value, grads: g } = tf.variableGrads(() => {
          const out = runLosses(batch, microRng, true);
          terms = out.terms as Record<string, Tensor>;
          for (const t of Object.values(terms)) tf.keep(t);
          return out.total as tf.Scalar;
        }, [...params.values()]);
        for (const [k, t] of Object.entries(terms)) {
          const v = t.dataSync()[0];
          termValues[k] = (termValues[k] ?? 0) + v / chunks;
          t.dispose();
          if (!Number.isFinite(v)) {
            tf.dispose([value, ...Object.values(g)]);
            throw new RefineError(
              `non-finite ${k.toUpperCase()} loss (${v}) at step ${loop.step} (epoch ${loop.epoch}); no update was applied. ` +
                `The last good checkpoint is ${lastPath}`,
            );
          }
        }
        value.dispose();
        const byName = new Map<string, Tensor>();
        for (const [name, p] of params) if (g[p.name]) byName.set(name, g[p.name]);
        if (!grads) grads = byName;
        else {
          for (const [name, t] of byName) {
            const acc = grads.get(name)!;
            grads.set(name, tf.add(acc, t));
            acc.dispose();
            t.dispose();
          }
        }
      }
      if (!grads) continue;
      if (chunks > 1) { for (const [name, t] of grads) grads.set(name, tf.tidy(() => tf.div(t, chunks))); }
      adamwStep(params, grads, state, opt, lr);
      tf.dispose([...grads.values()]);
      const total = OBJECTIVES.reduce((s, k) => s + (termValues[k] ?? 0) * weights[k], 0);
      for (const [k, v] of Object.entries(termValues)) sums[k] = (sums[k] ?? 0) + v;
      sums.total = (sums.total ?? 0) + total;
      count++;
      loop.step++;
      loop.batchInEpoch++;
      await log({ kind: "step", step: loop.step, epoch: loop.epoch, lr, total, ...termValues });
      options.onProgress?.({
        phase: `refine epoch ${loop.epoch + 1}/${epochs}`,
        done: loop.batchInEpoch,
        total: order.length,
        info: { loss: total, ...termValues },
      });
      if (options.checkpointEvery && loop.step % options.checkpointEvery === 0) {
        await saveCheckpoint(lastPath, params, state, loop, meta);
      }
    }
    // Validation: the mean total loss over validation batches, in eval mode (Lightning's val_epoch_loss, §1.6).
    let valSum = 0;
    let valCount = 0;
    const valOrder = batchIndices(valIdx.length, batchSize).filter((b) => b.length >= 2);
    const vLoaders = valOrder.map((b) => () => loadImageBatch(paths, b.map((i) => valIdx[i]), spec, { cache }));
    let vb = 0;
    for await (const imgs of prefetch(vLoaders, 2)) {
      const batch = gatherBatch(tokens, imgs);
      const vt = tf.tidy(() => runLosses(batch, new Rng(seed, `val/${loop.epoch}/${vb++}`), false).total);
      const v = vt.dataSync()[0];
      vt.dispose();
      valSum += v * imgs.indices.length;
      valCount += imgs.indices.length;
    }
    const valLoss = valCount ? valSum / valCount : NaN;
    const summary = {
      epoch: loop.epoch,
      trainLoss: count ? sums.total / count : NaN,
      valLoss,
      terms: Object.fromEntries(
        Object.entries(sums).filter(([k]) => k !== "total").map(([k, v]) => [k, v / Math.max(1, count)]),
      ),
      seconds: (performance.now() - t0) / 1000,
    };
    loop.history.push(summary);
    await log({ kind: "epoch", ...summary });
    options.onEpoch?.(summary);
    if (!Number.isFinite(valLoss) && valCount > 0) {
      throw new RefineError(`non-finite validation loss after epoch ${loop.epoch}`);
    }
    // Lightning EarlyStopping(mode="min", min_delta=0): an improvement must be strictly lower.
    // Without validation pairs every epoch counts as the best so far.
    const improved = valCount === 0 || valLoss < loop.bestVal;
    if (improved) {
      if (valCount) loop.bestVal = valLoss;
      loop.bestEpoch = loop.epoch;
      loop.badEpochs = 0;
      await saveCheckpoint(join(runDir, BEST_CHECKPOINT), params, state, {
        ...loop,
        epoch: loop.epoch + 1,
        batchInEpoch: 0,
      }, meta);
    } else loop.badEpochs++;
    await saveCheckpoint(lastPath, params, state, { ...loop, epoch: loop.epoch + 1, batchInEpoch: 0 }, meta);
    if (loop.badEpochs >= patience) {
      stopReason = "early-stopping";
      loop.epoch++;
      break;
    }
  }
  // Export the best state (ModelCheckpoint monitor=val_epoch_loss, §1.6/§1.7).
  const bestPath = join(runDir, BEST_CHECKPOINT);
  if (await exists(bestPath)) loadCheckpoint(bestPath, params);
  const backbone = await exportBackbone(model.vit, runDir, runName);
  await exportTextSide(model, runDir);
  return { loop, stopReason, backbone };
}
