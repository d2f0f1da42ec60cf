/**
 * The refinement loop (method notes §1.6): AdamW over every parameter (vision
 * encoder, BERT, heads) at a constant learning rate, epochs with early
 * stopping on the validation loss, atomic checkpoints (best, and every N
 * steps), exact resume, a non-finite guard, and a JSONL log.
 *
 * Faults: a non-finite loss, gradient or updated value stops the step before
 * anything is applied or saved (AdamW checks the whole update first, and a
 * checkpoint is only ever written finite), with a {@link RefineError} naming
 * the step and what went non-finite. After a kill, resuming truncates
 * `log.jsonl` to the checkpoint's step, removes the temp files of
 * interrupted writes, and restores the interrupted epoch's running loss sums.
 *
 * Reproducibility: the batch order of epoch e comes from `Rng(seed, "epoch/e")`,
 * and every random draw of step s (drop-path, dropout, masking, negatives) from
 * per-sample streams keyed by the sample's position g in the step's global batch
 * (`SampleStreams(seed, "step/s")`: `Rng(seed, "step/s/sample/g/<purpose>")`), so a
 * resumed run continues exactly where the interrupted one stopped, and a sample
 * draws the same in one process, in any micro-batch, or on any rank.
 *
 * Data parallel (`collective`, `mpiexec`): per-rank negatives give each rank whole micro-batches (the authors' DDP);
 * `globalNegatives` splits every micro-batch across the ranks and gathers features (open_clip's `gather_with_grad`,
 * BLIP's world-batch hard negatives), equal to one process at the same batch up to float32 summation order. Either
 * way one float32 allreduce per step carries the gradients and loss terms.
 * @module
 */
import { join } from "node:path";
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import { batchIndices, InputCache, loadImageBatch, prefetch } from "../dataset/batches.ts";
import type { PairRecord } from "../dataset/manifest.ts";
import { type PreprocessSpec, refinementSpec } from "../dataset/preprocess.ts";
import { RefineError } from "../util/errors.ts";
import { exists, writeFileAtomic } from "../util/fs.ts";
import type { ProgressCallback } from "../util/progress.ts";
import { Rng, SampleStreams } from "../util/rng.ts";
import {
  type AdamWConfig,
  adamwStepAsync,
  createAdamWState,
  disposeAdamWState,
  type LrSchedule,
  scheduledLr,
} from "../optim/adamw.ts";
import { loadCheckpoint, type LoopState, saveCheckpoint } from "./checkpoint.ts";
import { exportBackbone, exportTextSide } from "../model/export.ts";
import { modelParams, type RetfinerModel } from "../model/model.ts";
import { type GlobalBatch, type LossWeights, OBJECTIVES, type PairBatch, retfinerLosses } from "./step.ts";
import { shardCounts, shardOffset } from "../losses/gather.ts";
import { AUTHORS, CPU_DEMO, deepMerge, type RunParams } from "../params.ts";
import { type Collective, SINGLE_PROCESS } from "../dist/mpi.ts";

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
  /**
   * Where the settings below that are left out come from (default `CPU_DEMO` of `src/params.ts`, as
   * `deno task refine`, with a notice naming the values taken; `AUTHORS` for the paper's). Given settings are merged
   * over its `refine` section deeply: `optimizer: { weightDecay }` keeps the preset's lr.
   */
  preset?: Readonly<RunParams>;
  /** Pairs per optimiser step (CPU demo 16; the authors: 128). */
  batchSize?: number;
  /** Micro-batches per optimiser step (gradients are averaged; ITC/ITM negatives stay per micro-batch). */
  accumulate?: number;
  /** Maximum epochs (CPU demo 7; RETFound: 20). */
  epochs?: number;
  /** Early-stopping patience in epochs on the validation loss (RETFound: 3). */
  patience?: number;
  /** Optimiser (CPU demo lr 3e-4; the authors: 1e-4; both weight decay 0.01). */
  optimizer?: Partial<AdamWConfig>;
  /** Learning-rate schedule (the authors: constant). */
  schedule?: LrSchedule;
  /** Objective weights (the authors: all 1); 0 removes an objective. */
  losses?: LossWeights;
  /** Seed of every random stream. */
  seed?: number;
  /** Text length (the authors: 30). */
  maxLength?: number;
  /** Save a resumable checkpoint every N optimiser steps (0 = only at epoch ends; default 25). */
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
  /** Notices (resume, stale files removed, pairs left out of a batch); default: `console.error`. */
  onNotice?: (message: string) => void;
  /**
   * The ranks of a data-parallel run (`src/dist/mpi.ts`; default one process). Each rank computes the micro-batches
   * `c ≡ rank (mod size)` of every global batch; gradients and loss values are summed across ranks in one buffer per
   * step, so every rank applies the same AdamW step. The accumulation count is raised to a multiple of the world size,
   * and the run equals one process with that `accumulate` (same micro-batches, negatives and random draws). Rank 0
   * alone writes logs, checkpoints and exports. With `globalNegatives`, each micro-batch is split across the ranks
   * instead.
   */
  collective?: Collective;
  /**
   * Data-parallel runs: ITC/ITM negatives from the whole global batch instead of per rank (default false, the
   * authors' DDP). Every micro-batch (`accumulate` is not raised) is split across the ranks; ITC gathers every rank's
   * features with gradient (open_clip's `gather_with_grad`), ITM draws hard negatives from the world batch (BLIP under
   * DDP), so N ranks compute the losses and gradients of one process at the same `batchSize` and `accumulate`, up to
   * float32 summation order. Needs a CPU backend. In one process it changes nothing.
   */
  globalNegatives?: boolean;
  /** The pretrained vision encoder's learning rate relative to the optimiser's (default 1, the authors'). */
  visionLrScale?: number;
  /**
   * Optimiser steps at the start with the pretrained vision encoder's learning rate at 0, its moments advancing
   * (default 0, the authors'; LP-FT's warm-up of the new modules, see `src/params.ts`).
   */
  freezeVisionSteps?: number;
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

/** The token ids and masks of dataset rows `indices`, `[indices.length, L]`. */
function gatherIds(tokens: Tokenized, indices: readonly number[]): { inputIds: Int32Array; attentionMask: Int32Array } {
  const L = tokens.length;
  const inputIds = new Int32Array(indices.length * L);
  const attentionMask = new Int32Array(indices.length * L);
  indices.forEach((i, k) => {
    inputIds.set(tokens.ids.subarray(i * L, (i + 1) * L), k * L);
    attentionMask.set(tokens.mask.subarray(i * L, (i + 1) * L), k * L);
  });
  return { inputIds, attentionMask };
}

/** One piece of a rank's work in an optimiser step. */
interface StepWork {
  /** The micro-batch: positions in the step's global batch. */
  chunk: number[];
  /** This rank's rows of it (positions in the global batch): all of `chunk`, or its share with global negatives. */
  rows: number[];
  /** Global negatives: the rows each rank holds of `chunk`. */
  counts?: number[];
}

/**
 * What one rank computes of a global batch of `n` pairs split into micro-batches of `micro`: per-rank negatives give
 * micro-batch c to rank c mod size; global negatives split every micro-batch across the ranks (consecutive rows, the
 * first ranks one more) and leave out one with fewer pairs than ranks (at most the last of an epoch).
 */
function stepPlan(n: number, micro: number, world: Collective, globalNegatives: boolean): StepWork[] {
  const work: StepWork[] = [];
  for (let c = 0; c * micro < n; c++) {
    const chunk = Array.from({ length: Math.min(n, (c + 1) * micro) - c * micro }, (_, k) => c * micro + k);
    if (!globalNegatives) {
      if (c % world.size === world.rank) work.push({ chunk, rows: chunk });
    } else if (chunk.length >= world.size) {
      const counts = shardCounts(chunk.length, world.size);
      const start = shardOffset(counts, world.rank);
      work.push({ chunk, rows: chunk.slice(start, start + counts[world.rank]), counts });
    }
  }
  return work;
}

/**
 * {@link prefetch}, but leaving the loop early (a fault, the step limit) waits for the image loads still in flight:
 * no decoding outlives the loop (a test runner exiting under running decoder threads crashed).
 */
async function* prefetchDrained<T>(loaders: (() => Promise<T>)[], depth: number): AsyncGenerator<T> {
  const inflight = new Set<Promise<T>>();
  const tracked = loaders.map((f) => () => {
    const p = f();
    inflight.add(p);
    p.then(() => inflight.delete(p), () => inflight.delete(p));
    return p;
  });
  try {
    yield* prefetch(tracked, depth);
  } finally {
    await Promise.allSettled([...inflight]);
  }
}

/** Temp files of {@link writeChunksAtomic}: `<name>.<pid>.<8 hex>.tmp`. */
const TEMP_FILE = /^.+\.(\d+)\.[0-9a-f]{8}\.tmp$/;

/** True unless `pid` is known to be gone (Linux: no `/proc/<pid>`); elsewhere only this process counts as alive. */
function processAlive(pid: number): boolean {
  if (pid === Deno.pid) return true;
  try {
    Deno.statSync("/proc/self");
  } catch {
    return false;
  }
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** Removes the temp files that interrupted atomic writes left in `dir`; returns their names. */
async function removeStaleTemps(dir: string): Promise<string[]> {
  const removed: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const m = e.isFile ? TEMP_FILE.exec(e.name) : null;
    if (m && !processAlive(Number(m[1]))) {
      await Deno.remove(join(dir, e.name));
      removed.push(e.name);
    }
  }
  return removed;
}

/**
 * Keeps the log entries a checkpoint accounts for: steps up to `loop.step`,
 * epochs before `loop.epoch`, and drops a line cut short by a kill.
 * Returns how many lines were dropped.
 */
async function truncateLog(logPath: string, loop: LoopState | undefined): Promise<number> {
  if (!(await exists(logPath))) return 0;
  const lines = (await Deno.readTextFile(logPath)).split("\n").filter((l) => l.trim());
  const kept = lines.filter((line) => {
    if (!loop) return false;
    let e: { kind?: unknown; step?: unknown; epoch?: unknown };
    try {
      e = JSON.parse(line);
    } catch {
      return false;
    }
    if (e.kind === "epoch") return typeof e.epoch === "number" && e.epoch < loop.epoch;
    return typeof e.step === "number" && e.step <= loop.step;
  });
  if (kept.length !== lines.length || !loop) await writeFileAtomic(logPath, kept.map((l) => l + "\n").join(""));
  return lines.length - kept.length;
}

/**
 * The settings {@link refine} trains with: those given in `options`, merged deeply over `options.preset`'s `refine`
 * section (default `CPU_DEMO`, the same as `deno task refine`).
 * @param options Settings as given to {@link refine} (the model, pairs and callbacks are not read).
 * @returns Every refinement setting, filled in.
 */
export function refineSettings(options: Partial<RefineOptions>): RunParams["refine"] {
  return deepMerge((options.preset ?? CPU_DEMO).refine, {
    batchSize: options.batchSize,
    accumulate: options.accumulate,
    epochs: options.epochs,
    patience: options.patience,
    optimizer: options.optimizer,
    schedule: options.schedule,
    losses: options.losses,
    seed: options.seed,
    maxLength: options.maxLength,
    checkpointEvery: options.checkpointEvery,
    cacheBytes: options.cacheBytes,
    globalNegatives: options.globalNegatives,
    visionLrScale: options.visionLrScale,
    freezeVisionSteps: options.freezeVisionSteps,
  });
}

/**
 * Each parameter's learning rate relative to the step's: the pretrained vision encoder's (not the new RETFound `proj`)
 * is `visionLrScale`, or 0 during its first `freezeVisionSteps` steps; everything else 1.
 * @param step the optimiser step about to be taken (0-based)
 * @param s the run's settings
 * @returns the scale by parameter name (as `modelParams` names them), or undefined when every scale is 1
 */
export function refineLrScale(
  step: number,
  s: Pick<RunParams["refine"], "visionLrScale" | "freezeVisionSteps">,
): ((name: string) => number) | undefined {
  const vision = step < s.freezeVisionSteps ? 0 : s.visionLrScale;
  if (vision === 1) return undefined;
  return (name) => name.startsWith("vision_encoder.") && !name.startsWith("vision_encoder.proj.") ? vision : 1;
}

/** The method settings taken from the default preset because `options` left them out, as a phrase (or ""). */
function presetTaken(options: Partial<RefineOptions>, s: RunParams["refine"]): string {
  const taken: string[] = [];
  if (options.batchSize === undefined) taken.push(`batch ${s.batchSize}`);
  if (options.epochs === undefined) taken.push(`${s.epochs} epochs`);
  if (options.patience === undefined) taken.push(`patience ${s.patience}`);
  if (options.optimizer?.lr === undefined) taken.push(`lr ${s.optimizer.lr}`);
  return taken.join(", ");
}

/**
 * Refines `options.model` on image-report pairs and exports the best backbone.
 *
 * @param options The model, pairs, run directory and settings.
 * @returns The final loop state, why training stopped, and the exported backbone files.
 * @throws {RefineError} Settings that cannot train (no objective, fewer than 2 training pairs, a single validation
 *   pair, batches too small for ITC/ITM; with `globalNegatives` on several ranks, micro-batches of fewer pairs than
 *   ranks, or the WebGPU backend); a run directory that already holds another run's checkpoint (without
 *   `resume`); a checkpoint that does not fit this run; and a step whose loss, gradient or update is non-finite or
 *   whose validation loss is — the message names the step (or epoch), what went non-finite, and the last good
 *   checkpoint. Nothing of the failing step is applied or saved.
 * @example
 * ```ts
 * import { refine } from "./trainer.ts";
 * // const result = await refine({ model, pairs, runDir: "runs/demo", epochs: 3, batchSize: 16 });
 * ```
 */
export async function refine(options: RefineOptions): Promise<RefineResult> {
  const world = options.collective ?? SINGLE_PROCESS;
  if (world.size === 1) return await refineRanks(options, world);
  try {
    return await refineRanks(options, world);
  } catch (err) {
    // The other ranks would wait in the next collective forever: end the whole job, saying why.
    console.error(`refine: rank ${world.rank} of ${world.size} failed, ending all ranks: ${(err as Error).message}`);
    world.abort(1);
    throw err;
  }
}

async function refineRanks(options: RefineOptions, world: Collective): Promise<RefineResult> {
  const { model, runDir } = options;
  const lead = world.rank === 0;
  const notice = lead ? options.onNotice ?? ((m: string) => console.error(m)) : () => {};
  const runName = options.runName ?? runDir.split("/").filter(Boolean).pop() ?? "run";
  const settings = refineSettings(options);
  if (!options.preset) {
    const taken = presetTaken(options, settings);
    if (taken) {
      notice(
        `refine: ${taken} from the ${CPU_DEMO.name} preset (not given; the same as deno task refine); ` +
          `pass preset: AUTHORS (src/params.ts) for the authors' batch ${AUTHORS.refine.batchSize}, ` +
          `${AUTHORS.refine.epochs} epochs, lr ${AUTHORS.refine.optimizer.lr}`,
      );
    }
  }
  const { batchSize, epochs, patience, seed, maxLength } = settings;
  // Global negatives: every micro-batch is split across the ranks. Per-rank negatives: at least one micro-batch per
  // rank, the same number on every rank.
  const globalNegatives = settings.globalNegatives && world.size > 1;
  if (globalNegatives && tf.getBackend() === "webgpu") {
    throw new RefineError(
      "--global-negatives gathers features across ranks inside the step, which needs a CPU backend (not webgpu)",
    );
  }
  const accumulate = globalNegatives ? settings.accumulate : Math.ceil(settings.accumulate / world.size) * world.size;
  if (accumulate !== settings.accumulate) {
    notice(
      `refine: ${world.size} ranks: each global batch of ${batchSize} is split into ${accumulate} micro-batches ` +
        `(accumulate ${settings.accumulate} raised to a multiple of the ranks)`,
    );
  }
  const micro = Math.ceil(batchSize / accumulate);
  const opt: AdamWConfig = settings.optimizer;
  const schedule: LrSchedule = settings.schedule;
  const weights: LossWeights = settings.losses;
  const spec = options.preprocess ??
    refinementSpec(model.vit.config.imgSize, { mean: model.vit.config.mean, std: model.vit.config.std });
  if (OBJECTIVES.every((k) => !(weights[k] > 0))) {
    throw new RefineError("every objective has weight 0; nothing to train");
  }
  const train = options.pairs.filter((p) => p.split === "train");
  const val = options.pairs.filter((p) => p.split === "val");
  if (train.length < 2) throw new RefineError(`refinement needs at least 2 training pairs, got ${train.length}`);
  if (!(Number.isInteger(batchSize) && batchSize >= 2)) {
    throw new RefineError(
      `the batch size must be an integer of at least 2 (batches of 1 pair are left out), got ${batchSize}`,
    );
  }
  if (micro < 2 && (weights.itc > 0 || weights.itm > 0)) {
    throw new RefineError("ITC/ITM need at least 2 pairs per (micro-)batch");
  }
  if (!(Number.isFinite(settings.visionLrScale) && settings.visionLrScale >= 0)) {
    throw new RefineError(`the vision learning-rate scale must be finite and >= 0, got ${settings.visionLrScale}`);
  }
  if (!(Number.isInteger(settings.freezeVisionSteps) && settings.freezeVisionSteps >= 0)) {
    throw new RefineError(`freezeVisionSteps must be an integer >= 0, got ${settings.freezeVisionSteps}`);
  }
  if (globalNegatives && micro < world.size) {
    throw new RefineError(
      `--global-negatives splits each micro-batch across the ${world.size} ranks: micro-batches of ${micro} pairs ` +
        `(batch ${batchSize} / accumulate ${accumulate}) leave a rank without a pair; use a larger batch`,
    );
  }
  if (globalNegatives) {
    // A last micro-batch with fewer pairs than ranks (but the 2 ITC/ITM need) cannot be split: it is left out.
    const batchSizes = new Set([batchSize, train.length % batchSize].filter((n) => n >= 2));
    for (const n of batchSizes) {
      const rest = n % micro;
      if (rest >= 2 && rest < world.size) {
        notice(
          `refine: global negatives: batches of ${n} pairs end with a micro-batch of ${rest}, fewer than the ` +
            `${world.size} ranks; it is left out of each such step (one process would train on it)`,
        );
      }
    }
  }
  // Batches of one pair are left out (ITC/ITM need two); a validation split of one pair gives no loss at all.
  const valOrder = batchIndices(val.length, batchSize).filter((b) => b.length >= 2);
  if (val.length > 0 && valOrder.length === 0) {
    throw new RefineError(
      "the validation split has 1 pair; a validation loss needs batches of at least 2 pairs, so " +
        "early stopping could not work. Add validation pairs, or mark every pair as train to train without validation",
    );
  }
  if (val.length === 0) {
    notice("refine: no validation pairs; early stopping is off and the last epoch is the one exported");
  } else if (val.length % batchSize === 1) {
    notice(`refine: 1 of ${val.length} validation pairs is left out of the validation loss (a batch of 1)`);
  }
  if (train.length % batchSize === 1) {
    notice(`refine: each epoch leaves out 1 of ${train.length} training pairs (the last batch would hold only 1)`);
  }
  await Deno.mkdir(runDir, { recursive: true });
  const stale = lead ? await removeStaleTemps(runDir) : [];
  if (stale.length) {
    notice(`refine: removed ${stale.length} temp file(s) of interrupted writes in ${runDir}: ${stale.join(", ")}`);
  }

  const all = [...train, ...val];
  const tok = model.tokenizer.encodeBatch(all.map((r) => r.report), maxLength);
  const tokens: Tokenized = { ids: tok.inputIds, mask: tok.attentionMask, length: maxLength };
  const paths = all.map((r) => r.image);
  const origins = all.map((r) => r.origin); // decode errors name the manifest line
  const trainIdx = train.map((_, i) => i);
  const valIdx = val.map((_, i) => train.length + i);
  const cache = new InputCache(settings.cacheBytes);
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
  /** Running sums of the current epoch, restored on resume. */
  let resumedSums: { sums: Record<string, number>; count: number; seconds: number } | undefined;
  const lastPath = join(runDir, LAST_CHECKPOINT);
  const bestPath = join(runDir, BEST_CHECKPOINT);
  const logPath = join(runDir, "log.jsonl");
  /** Step of the last checkpoint on disk that belongs to this run (undefined: none yet). */
  let lastSavedStep: number | undefined;
  if (options.resume && (await exists(lastPath))) {
    const restored = loadCheckpoint(lastPath, params);
    if (restored.loop.seed !== seed) {
      throw new RefineError(`${lastPath} was made with seed ${restored.loop.seed}, this run uses ${seed}`);
    }
    const x = restored.extra;
    for (const [key, now] of [["batchSize", batchSize], ["trainPairs", train.length]] as const) {
      if (x[key] !== undefined && x[key] !== now) {
        throw new RefineError(
          `${lastPath} was made with ${key} ${x[key]}, this run has ${now}; the batches of the interrupted epoch ` +
            "would not be the same (resume with the same pairs and batch size)",
        );
      }
    }
    // The validation loss that early stopping compares across epochs must stay the same quantity.
    for (const [key, now] of [["losses", weights], ["maxLength", maxLength]] as const) {
      if (x[key] !== undefined && JSON.stringify(x[key]) !== JSON.stringify(now)) {
        throw new RefineError(
          `${lastPath} was made with ${key} ${JSON.stringify(x[key])}, this run has ${JSON.stringify(now)}; the ` +
            "validation loss of the epochs before and after would not be comparable for early stopping and the best " +
            "checkpoint (resume with the same settings, or start a new run in another --out)",
        );
      }
    }
    const before = x.optimizer as Partial<AdamWConfig> | undefined;
    if (before && JSON.stringify(before) !== JSON.stringify(opt)) {
      notice(
        `refine: resuming with other optimizer settings than ${lastPath} was made with ` +
          `(${JSON.stringify(before)} → ${JSON.stringify(opt)}); the AdamW moments are kept`,
      );
    }
    if (x.globalNegatives !== undefined && x.globalNegatives !== globalNegatives) {
      notice(
        `refine: ${lastPath} was made with ${x.globalNegatives ? "global" : "per-rank"} negatives, this run uses ` +
          `${globalNegatives ? "global" : "per-rank"} ones from here on`,
      );
    }
    const { epochSums, epochSteps, epochSeconds, ...rest } = restored.loop;
    disposeAdamWState(state);
    state = restored.opt;
    loop = rest;
    lastSavedStep = loop.step;
    if (loop.batchInEpoch > 0) {
      if (epochSums && epochSteps === loop.batchInEpoch) {
        resumedSums = { sums: { ...epochSums }, count: epochSteps, seconds: epochSeconds ?? 0 };
      } else {
        notice(
          `refine: ${lastPath} has no running loss sums (an older checkpoint); epoch ${loop.epoch + 1}'s train loss ` +
            `will cover only the steps after step ${loop.step}`,
        );
      }
    }
    const dropped = lead ? await truncateLog(logPath, loop) : 0;
    notice(
      `refine: resuming from ${lastPath} after step ${loop.step} (epoch ${
        loop.epoch + 1
      }, batch ${loop.batchInEpoch})` +
        (dropped ? `; dropped ${dropped} log entries written after that checkpoint` : ""),
    );
  } else if (options.resume) {
    notice(`refine: no checkpoint in ${runDir} to resume from; starting from the beginning`);
    // A best checkpoint without a last one: the interrupted run was killed between the two saves of its first epoch.
    if (lead) {
      await Deno.remove(bestPath).catch((err) => {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      });
      await truncateLog(logPath, undefined);
    }
  } else {
    for (const f of [lastPath, bestPath]) {
      if (await exists(f)) {
        throw new RefineError(
          `${f} already exists: ${runDir} holds another run. Resume it, or choose another directory`,
        );
      }
    }
    if (lead) await truncateLog(logPath, undefined);
  }
  // Every rank starts from rank 0's weights (the same seed gives the same ones; this makes sure).
  world.barrier();
  await broadcastParams(world, params);
  const log = async (entry: Record<string, unknown>) => {
    if (lead) await Deno.writeTextFile(logPath, JSON.stringify(entry) + "\n", { append: true });
  };
  if (lastSavedStep !== undefined) {
    await log({ kind: "resume", step: loop.step, epoch: loop.epoch, batchInEpoch: loop.batchInEpoch });
  }
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
    trainPairs: train.length,
    globalNegatives,
  };
  const save = async (path: string, l: LoopState) => {
    if (world.size > 1) await checkSameWeights(world, params, l.step);
    if (lead) await saveCheckpoint(path, params, state, l, meta);
    if (path === lastPath) lastSavedStep = l.step;
  };
  const lastGood = () =>
    lastSavedStep === undefined
      ? `No checkpoint has been written yet (${lastPath} does not exist): there is nothing to resume.`
      : `The last checkpoint, ${lastPath} (after step ${lastSavedStep}), is finite and can be resumed; if the ` +
        "losses had already diverged by then, start again with a lower learning rate instead.";

  const runLosses = (b: PairBatch, rng: Rng | SampleStreams, training: boolean, global?: GlobalBatch) =>
    retfinerLosses(model, b, weights, rng, training, global);
  /** This rank's work in a global batch of `n` pairs: its micro-batches, or its shares of every micro-batch. */
  const plan = (n: number) => stepPlan(n, micro, world, globalNegatives);

  outer: for (; loop.epoch < epochs; loop.epoch++, loop.batchInEpoch = 0) {
    const order = batchIndices(trainIdx.length, batchSize, { rng: new Rng(seed, `epoch/${loop.epoch}`) }).filter((b) =>
      b.length >= 2
    );
    const sums: Record<string, number> = resumedSums?.sums ?? {};
    let count = resumedSums?.count ?? 0;
    const t0 = performance.now() - (resumedSums?.seconds ?? 0) * 1000;
    resumedSums = undefined;
    const loaders = order.slice(loop.batchInEpoch).map((b) => () =>
      loadImageBatch(paths, plan(b.length).flatMap((w) => w.rows.map((g) => trainIdx[b[g]])), spec, { cache, origins })
    );
    for await (const imgs of prefetchDrained(loaders, 2)) {
      if (options.maxSteps !== undefined && loop.step >= options.maxSteps) {
        stopReason = "max-steps";
        // Keep the steps taken since the last checkpoint, so that --resume continues from here.
        if (lastSavedStep !== loop.step) {
          await save(lastPath, {
            ...loop,
            epochSums: { ...sums },
            epochSteps: count,
            epochSeconds: (performance.now() - t0) / 1000,
          });
        }
        break outer;
      }
      // Every draw of the step is keyed by the sample's position in this global batch (SampleStreams).
      const streams = new SampleStreams(seed, `step/${loop.step}`);
      const lr = scheduledLr(opt.lr, loop.step, sched);
      const termValues: Record<string, number> = {};
      let grads: Map<string, Tensor> | undefined;
      const b = order[loop.batchInEpoch];
      const n = b.length;
      const chunks = Math.ceil(n / micro);
      const plane = 3 * spec.size * spec.size;
      try {
        let offset = 0; // into this rank's images
        for (const work of plan(n)) {
          const size = work.rows.length;
          const sel = {
            data: imgs.data.subarray(offset * plane, (offset + size) * plane),
            indices: imgs.indices.slice(offset, offset + size),
          };
          offset += size;
          if (work.chunk.length < 2) continue;
          const batch = { ...gatherBatch(tokens, sel), samples: work.rows };
          const global: GlobalBatch | undefined = work.counts && {
            shard: { world, counts: work.counts },
            ...gatherIds(tokens, work.chunk.map((g) => trainIdx[b[g]])),
            samples: work.chunk,
          };
          let terms: Record<string, Tensor> = {};
          const { value, grads: g } = tf.variableGrads(() => {
            const out = runLosses(batch, streams, true, global);
            terms = out.terms as Record<string, Tensor>;
            for (const t of Object.values(terms)) tf.keep(t);
            return out.total as tf.Scalar;
          }, [...params.values()]);
          value.dispose();
          // Asynchronous reads: WebGPU has no synchronous one under Deno.
          let values: (readonly [string, number])[];
          try {
            values = await Promise.all(Object.entries(terms).map(async ([k, t]) => [k, (await t.data())[0]] as const));
          } finally {
            tf.dispose(Object.values(terms));
          }
          const bad = values.find(([, v]) => !Number.isFinite(v));
          if (bad) {
            tf.dispose(Object.values(g));
            throw new RefineError(`non-finite ${bad[0].toUpperCase()} loss (${bad[1]})`);
          }
          for (const [k, v] of values) termValues[k] = (termValues[k] ?? 0) + v / chunks;
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
        if (world.size > 1) {
          // One buffer per step: every gradient in parameter order, which parameters had one, the loss terms and
          // which terms were computed.
          grads = await allreduceStep(world, params, grads, termValues);
        }
        if (grads && chunks > 1) {
          for (const [name, t] of grads) {
            grads.set(name, tf.tidy(() => tf.div(t, chunks)));
            t.dispose();
          }
        }
        // All or nothing: a non-finite gradient, or an update that would leave a non-finite weight, throws here.
        // On the cpu backend the host-array update; elsewhere the device path (one scalar read back).
        if (grads) await adamwStepAsync(params, grads, state, opt, lr, undefined, refineLrScale(loop.step, settings));
      } catch (err) {
        if (grads) tf.dispose([...grads.values()]);
        if (!(err instanceof RefineError)) throw err;
        throw new RefineError(
          `refinement stopped at step ${loop.step + 1} (epoch ${loop.epoch + 1}, batch ${loop.batchInEpoch + 1} of ` +
            `${order.length}, learning rate ${lr}): ${err.message}. No update was applied and nothing was saved. ` +
            lastGood(),
          { cause: err },
        );
      }
      if (!grads) continue;
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
      if (settings.checkpointEvery && loop.step % settings.checkpointEvery === 0) {
        await save(lastPath, {
          ...loop,
          epochSums: { ...sums },
          epochSteps: count,
          epochSeconds: (performance.now() - t0) / 1000,
        });
      }
    }
    // Validation: the mean total loss over validation batches, in eval mode (Lightning's val_epoch_loss, §1.6).
    let valSum = 0;
    let valCount = 0;
    // Validation batches go round-robin to the ranks; their sums are added up across ranks.
    const ownVal = valOrder.map((b, k) => [b, k] as const).filter(([, k]) => k % world.size === world.rank);
    const vLoaders = ownVal.map(([b]) => () =>
      loadImageBatch(paths, b.map((i) => valIdx[i]), spec, { cache, origins })
    );
    let own = 0;
    let vb = 0;
    for await (const imgs of prefetchDrained(vLoaders, 2)) {
      vb = ownVal[own++][1];
      const batch = gatherBatch(tokens, imgs);
      const stopped = `refinement stopped after epoch ${loop.epoch + 1} (step ${loop.step}), in validation batch ` +
        `${vb + 1} of ${valOrder.length}`;
      const after = `The epoch cannot be compared for early stopping, and its end was not saved. ${lastGood()}`;
      let v: number;
      try {
        const vt = tf.tidy(() => runLosses(batch, new Rng(seed, `val/${loop.epoch}/${vb}`), false).total);
        try {
          v = (await vt.data())[0];
        } finally {
          vt.dispose();
        }
      } catch (err) {
        if (!(err instanceof RefineError)) throw err;
        throw new RefineError(`${stopped}: ${err.message}. ${after}`, { cause: err });
      }
      if (!Number.isFinite(v)) throw new RefineError(`${stopped}: the validation loss is ${v}. ${after}`);
      valSum += v * imgs.indices.length;
      valCount += imgs.indices.length;
    }
    if (world.size > 1) {
      const sums = Float64Array.of(valSum, valCount);
      world.allreduceSum(sums);
      [valSum, valCount] = sums;
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
    // Lightning EarlyStopping(mode="min", min_delta=0): an improvement must be strictly lower.
    // Without validation pairs every epoch counts as the best so far.
    const improved = val.length === 0 || valLoss < loop.bestVal;
    if (improved) {
      if (val.length) loop.bestVal = valLoss;
      loop.bestEpoch = loop.epoch;
      loop.badEpochs = 0;
      await save(bestPath, { ...loop, epoch: loop.epoch + 1, batchInEpoch: 0 });
    } else loop.badEpochs++;
    await save(lastPath, { ...loop, epoch: loop.epoch + 1, batchInEpoch: 0 });
    if (loop.badEpochs >= patience) {
      stopReason = "early-stopping";
      loop.epoch++;
      break;
    }
  }
  // Export the best state (ModelCheckpoint monitor=val_epoch_loss, §1.6/§1.7).
  world.barrier(); // rank 0's last checkpoint writes are done
  disposeAdamWState(state);
  if (await exists(bestPath)) disposeAdamWState(loadCheckpoint(bestPath, params).opt);
  else if (val.length && loop.history.length === 0) {
    notice(
      `refine: stopped (${stopReason}) before the first validation: the exported backbone holds the weights after ` +
        `step ${loop.step}, not checked on validation pairs`,
    );
  }
  const backbone = lead
    ? await exportBackbone(model.vit, runDir, runName)
    : { pth: join(runDir, "(rank 0 exports)"), safetensors: join(runDir, "(rank 0 exports)") };
  if (lead) await exportTextSide(model, runDir);
  world.barrier(); // every rank returns once the exports are on disk
  return { loop, stopReason, backbone };
}

/**
 * Sets every rank's weights to rank 0's: one broadcast of every parameter, flattened in parameter order.
 * @param world the ranks
 * @param params the model's parameters, in the same order on every rank
 */
async function broadcastParams(world: Collective, params: Map<string, tf.Variable>): Promise<void> {
  if (world.size === 1) return;
  let total = 0;
  for (const p of params.values()) total += p.size;
  const flat = new Float32Array(total);
  let off = 0;
  for (const p of params.values()) {
    flat.set((await p.data()) as Float32Array, off);
    off += p.size;
  }
  world.broadcast(flat, 0);
  off = 0;
  for (const p of params.values()) {
    const t = tf.tensor(flat.subarray(off, off + p.size), p.shape, "float32");
    p.assign(t);
    t.dispose();
    off += p.size;
  }
}

/**
 * Sums this rank's gradients and loss terms with every other rank's in ONE float32 allreduce per step. The buffer,
 * in a fixed layout: every parameter's gradient in parameter order (zeros where this rank has none), then per
 * parameter a 1 if this rank has its gradient, then each objective's value (ITC, ITM, MLM, GM; 0 if not computed),
 * then per objective a 1 if this rank computed it. Float32 for the loss terms too: they are logged, never trained on.
 * @param world the ranks
 * @param params the model's parameters, in the same order on every rank
 * @param grads this rank's summed micro-batch gradients by parameter name (disposed here), or undefined when it had
 *   no micro-batch
 * @param termValues this rank's loss terms; overwritten with the sums over ranks of the terms some rank computed
 * @returns the summed gradients of the parameters some rank had a gradient for, or undefined when no rank had any
 */
async function allreduceStep(
  world: Collective,
  params: Map<string, tf.Variable>,
  grads: Map<string, Tensor> | undefined,
  termValues: Record<string, number>,
): Promise<Map<string, Tensor> | undefined> {
  let total = 0;
  for (const p of params.values()) total += p.size;
  const flags = total; // per-parameter "has a gradient"
  const terms = flags + params.size;
  const present = terms + OBJECTIVES.length;
  const flat = new Float32Array(present + OBJECTIVES.length);
  let off = 0;
  let k = 0;
  for (const [name, p] of params) {
    const g = grads?.get(name);
    if (g) {
      flat.set((await g.data()) as Float32Array, off);
      flat[flags + k] = 1;
    }
    off += p.size;
    k++;
  }
  if (grads) tf.dispose([...grads.values()]);
  OBJECTIVES.forEach((o, i) => {
    if (termValues[o] !== undefined) {
      flat[terms + i] = termValues[o];
      flat[present + i] = 1;
    }
  });
  world.allreduceSum(flat);
  OBJECTIVES.forEach((o, i) => {
    if (flat[present + i] > 0) termValues[o] = flat[terms + i];
  });
  const out = new Map<string, Tensor>();
  off = 0;
  k = 0;
  for (const [name, p] of params) {
    if (flat[flags + k] > 0) out.set(name, tf.tensor(flat.slice(off, off + p.size), p.shape));
    off += p.size;
    k++;
  }
  return out.size ? out : undefined;
}

/**
 * Refuses to go on when the ranks' weights differ (they apply the same updates, so they never should): a sum and a
 * sum of squares of every weight, gathered from each rank and compared.
 * @throws {RefineError} naming the step and the ranks' checksums
 */
async function checkSameWeights(world: Collective, params: Map<string, tf.Variable>, step: number): Promise<void> {
  let sum = 0;
  let squares = 0;
  for (const p of params.values()) {
    for (const v of await p.data()) {
      sum += v;
      squares += v * v;
    }
  }
  const all = world.allgather(Float64Array.of(sum, squares));
  for (let r = 1; r < world.size; r++) {
    if (all[2 * r] !== all[0] || all[2 * r + 1] !== all[1]) {
      throw new RefineError(
        `data-parallel ranks diverged by step ${step}: rank 0's weights sum to ${all[0]} (squares ${all[1]}), ` +
          `rank ${r}'s to ${all[2 * r]} (${all[2 * r + 1]})`,
      );
    }
  }
}
