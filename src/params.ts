/**
 * Run settings: every default of a run, defined once, in two named presets.
 *
 * - {@link AUTHORS}: the authors' settings (method notes §1.6 for refinement, §2.3 for probing): batch 128,
 *   AdamW lr 1e-4 (β 0.9/0.999, ε 1e-8, weight decay 0.01), at most 20 epochs with patience 3, five probe seeds and
 *   the faithful (per-epoch augmented) probe.
 * - {@link CPU_DEMO}: what `deno task refine` runs with no arguments, so that it finishes in minutes on two cores:
 *   batch 16, lr 3e-4, 7 epochs (patience 3), three probe seeds, fast probe. Everything else is the authors'.
 *
 * The CLIs' flag defaults, `refine()`'s and `runExperiment()`'s fallbacks, the probing protocol and the notebooks'
 * quick settings all read these values. Settings given by a caller are merged over a preset with {@link deepMerge}:
 * nested objects merge key by key (`{ optimizer: { weightDecay: 0.05 } }` keeps the preset's lr), arrays and other
 * values are replaced, `undefined` is ignored.
 *
 * This module imports nothing of the package: pure data, types and the merge (like open_clip's `params.py`).
 *
 * @example
 * ```ts
 * import { AUTHORS, CPU_DEMO, deepMerge } from "./params.ts";
 * const mine = deepMerge(CPU_DEMO, { refine: { optimizer: { weightDecay: 0.05 } } });
 * // The demo's learning rate survives an override of the weight decay alone.
 * if (mine.refine.optimizer.lr !== CPU_DEMO.refine.optimizer.lr || AUTHORS.refine.batchSize !== 128) throw new Error();
 * ```
 * @module
 */

/** A partial `T` at every depth (arrays and functions are taken whole). */
export type DeepPartial<T> = T extends readonly unknown[] ? T
  : T extends (...args: never[]) => unknown ? T
  : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> }
  : T;

/** AdamW hyper-parameters, PyTorch's names and defaults except the learning rate. */
export interface OptimizerParams {
  /** Learning rate. */
  lr: number;
  /** β₁. */
  beta1: number;
  /** β₂. */
  beta2: number;
  /** ε (PyTorch's 1e-8; tfjs's Adam would use 1e-7). */
  eps: number;
  /** Decoupled weight decay, applied to every parameter as the authors do. */
  weightDecay: number;
}

/** Learning-rate schedule of refinement. */
export interface ScheduleParams {
  /** `constant` (the authors) or `cosine` (linear warmup, then half-cosine to `minLr`). */
  kind: "constant" | "cosine";
  /** Warmup steps (cosine only). */
  warmupSteps: number;
  /** Final learning rate (cosine only). */
  minLr: number;
  /** Total steps (cosine only; default: the run's length). */
  totalSteps?: number;
}

/** Weights of the four objectives; 0 removes one. */
export interface LossParams {
  /** Image-text contrastive. */
  itc: number;
  /** Image-text matching with hard negatives. */
  itm: number;
  /** Image-conditioned masked language modelling. */
  mlm: number;
  /** Generative modelling (causal mask). */
  gm: number;
}

/** Refinement settings (`refine()`, `deno task refine`). */
export interface RefineParams {
  /** Pairs per optimiser step. */
  batchSize: number;
  /** Micro-batches per optimiser step (gradients averaged; ITC/ITM negatives stay per micro-batch). */
  accumulate: number;
  /** Maximum epochs. */
  epochs: number;
  /** Early-stopping patience in epochs on the validation loss. */
  patience: number;
  /** AdamW. */
  optimizer: OptimizerParams;
  /** Learning-rate schedule. */
  schedule: ScheduleParams;
  /** Objective weights. */
  losses: LossParams;
  /** Seed of every random stream. */
  seed: number;
  /** Report length in tokens. */
  maxLength: number;
  /** A resumable checkpoint every N optimiser steps (0: epoch ends only). Not a method setting. */
  checkpointEvery: number;
  /** Validation share (by patient) of pairs without a split. */
  valFraction: number;
  /** Bytes of preprocessed images kept in memory across epochs. */
  cacheBytes: number;
  /**
   * Data-parallel runs only: ITC/ITM negatives from the whole global batch, gathered across ranks (open_clip's
   * `gather_with_grad`, BLIP's hard negatives under DDP), instead of per rank as the authors' DDP. No effect in one
   * process.
   */
  globalNegatives: boolean;
  /**
   * The pretrained vision encoder's learning rate relative to `optimizer.lr` (its new RETFound `proj` and every other
   * new module keep 1). The authors: 1, one parameter group. Not a method setting of the paper.
   */
  visionLrScale: number;
  /**
   * Optimiser steps at the start during which the pretrained vision encoder's learning rate is 0 while its AdamW
   * moments advance (a PyTorch parameter group at lr 0), so the new heads and cross-attention layers are no longer
   * random when their gradients reach the pretrained features (LP-FT, Kumar et al., ICLR 2022). The authors: 0.
   */
  freezeVisionSteps: number;
}

/** Linear-probing settings that differ between runs (the head's protocol is {@link PROBE_HEAD}). */
export interface ProbeParams {
  /** Seeds; the paired Wilcoxon test pairs task × seed. */
  seeds: number[];
  /** `fast`: features once, no augmentation; `faithful`: the authors' per-epoch augmented features. */
  mode: "fast" | "faithful";
}

/** The linear head's training protocol (method notes §2.2–2.4). */
export interface ProbeHeadParams {
  /** Peak learning rate (forced to 1e-3 for linear probing). */
  lr: number;
  /** Final learning rate of the cosine. */
  minLr: number;
  /** Linear warmup epochs. */
  warmupEpochs: number;
  /** Maximum epochs. */
  maxEpochs: number;
  /** AdamW weight decay (models not listed in {@link PROBE_WEIGHT_DECAY}). */
  weightDecay: number;
  /** Label smoothing of the training loss. */
  labelSmoothing: number;
  /** Early-stopping patience (epochs). */
  patience: number;
  /** The counter only runs from this epoch on. */
  startFrom: number;
  /** Minimum improvement of balanced accuracy (and of the loss for the tie-break). */
  delta: number;
}

/** Everything a run's defaults decide. */
export interface RunParams {
  /** The preset's name, printed where its values are used without being asked for. */
  name: string;
  /** Refinement. */
  refine: RefineParams;
  /** Probing. */
  probe: ProbeParams;
  /** The synthetic benchmark (when it is generated). */
  synth: { size: "tiny" | "small" | "medium"; seed: number };
  /** Zero-shot summary: retrieval on at most this many validation pairs. */
  zeroShot: { maxPairs: number };
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  if (x === null || typeof x !== "object") return false;
  const proto = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}

/** A fresh copy of plain objects and arrays (other values are shared). */
function clone<T>(x: T): T {
  if (Array.isArray(x)) return x.map(clone) as T;
  if (isPlainObject(x)) return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, clone(v)])) as T;
  return x;
}

/**
 * Merges settings over a base, deeply: plain objects merge key by key, arrays and every other value (numbers,
 * strings, functions, class instances, typed arrays) replace the base's, and `undefined` is ignored (it never erases
 * a default). Neither input is modified; the result shares no plain object or array with them.
 *
 * @param base The defaults, e.g. {@link CPU_DEMO}.
 * @param overrides Settings to lay over it, later ones winning; `undefined` entries are skipped.
 * @returns A new object of the base's type.
 * @example
 * ```ts
 * import { CPU_DEMO, deepMerge } from "./params.ts";
 * const s = deepMerge(CPU_DEMO.refine, { optimizer: { weightDecay: 0.05 }, epochs: undefined });
 * if (s.optimizer.lr !== 3e-4 || s.optimizer.weightDecay !== 0.05 || s.epochs !== 7) throw new Error("merged");
 * ```
 */
export function deepMerge<T>(base: T, ...overrides: (NoInfer<DeepPartial<T>> | undefined)[]): T {
  let out: unknown = clone(base);
  for (const o of overrides) out = mergeTwo(out, o);
  return out as T;
}

function mergeTwo(base: unknown, over: unknown): unknown {
  if (over === undefined) return base;
  if (!isPlainObject(over) || !isPlainObject(base)) return clone(over);
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v !== undefined) out[k] = Object.hasOwn(base, k) ? mergeTwo(base[k], v) : clone(v);
  }
  return out;
}

function deepFreeze<T>(x: T): Readonly<T> {
  if (Array.isArray(x) || isPlainObject(x)) {
    for (const v of Object.values(x as object)) deepFreeze(v);
    Object.freeze(x);
  }
  return x;
}

/**
 * The authors' settings (method notes §1.6, §2.3): refinement at batch 128 with AdamW lr 1e-4, β 0.9/0.999, ε 1e-8,
 * weight decay 0.01, a constant learning rate, at most 20 epochs with early stopping after 3 epochs without a lower
 * validation loss, all four objectives, 30-token reports; probing with seeds 0–4 in the faithful mode. Frozen: merge
 * over it with {@link deepMerge}.
 */
export const AUTHORS: Readonly<RunParams> = deepFreeze<RunParams>({
  name: "authors",
  refine: {
    batchSize: 128,
    accumulate: 1,
    epochs: 20,
    patience: 3,
    optimizer: { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 },
    schedule: { kind: "constant", warmupSteps: 0, minLr: 0 },
    losses: { itc: 1, itm: 1, mlm: 1, gm: 1 },
    seed: 0,
    maxLength: 30,
    checkpointEvery: 25,
    valFraction: 0.1,
    cacheBytes: 2 ** 30,
    globalNegatives: false,
    visionLrScale: 1,
    freezeVisionSteps: 0,
  },
  probe: { seeds: [0, 1, 2, 3, 4], mode: "faithful" },
  synth: { size: "small", seed: 0 },
  zeroShot: { maxPairs: 200 },
});

/**
 * The CPU demo (`deno task refine` with no arguments, `runExperiment()`, `refine()` when given no preset): the
 * authors' settings except batch 16, lr 3e-4 and 7 epochs (ITC needs about 350 steps to leave chance on the synthetic
 * pairs; batch 16 doubles the steps in the same time), and probing with seeds 0–2 in the fast mode. The stand-ins it
 * refines are small ViTs at 112 px (`data/models/`, made by `deno task pretrain`). Frozen.
 */
export const CPU_DEMO: Readonly<RunParams> = deepFreeze(deepMerge<RunParams>(AUTHORS, {
  name: "cpu-demo",
  refine: { batchSize: 16, epochs: 7, optimizer: { lr: 3e-4 } },
  probe: { seeds: [0, 1, 2], mode: "fast" },
}));

/**
 * Standalone probing (`deno task probe`, `probeTask()` without seeds or mode): the authors' five seeds in the fast
 * mode (the faithful mode recomputes augmented features every epoch: hours on a CPU).
 */
export const PROBE_TASK_DEFAULTS: Readonly<ProbeParams> = deepFreeze<ProbeParams>({
  seeds: [...AUTHORS.probe.seeds],
  mode: CPU_DEMO.probe.mode,
});

/**
 * The authors' linear-probing head protocol, the same in every preset (§2.2–2.4): AdamW lr 1e-3, 10 warmup epochs
 * from 0, then half-cosine to 1e-8 over 1000 epochs; label smoothing 0.1; early stopping on validation balanced
 * accuracy (Δ 0.001) counted from epoch 20 with patience 20.
 */
export const PROBE_HEAD: Readonly<ProbeHeadParams> = deepFreeze<ProbeHeadParams>({
  lr: 1e-3,
  minLr: 1e-8,
  warmupEpochs: 10,
  maxEpochs: 1000,
  weightDecay: 0.01,
  labelSmoothing: 0.1,
  patience: 20,
  startFrom: 20,
  delta: 0.001,
});

/** §2.3: the probe's weight decay by model family (RETFound 0.05; the others {@link PROBE_HEAD}'s 0.01). */
export const PROBE_WEIGHT_DECAY: Readonly<Record<string, number>> = deepFreeze({ retfound: 0.05 });

/** The notebooks' quick settings (the default; `RETFINER_NOTEBOOK_QUICK=0` runs {@link CPU_DEMO} in full). */
export interface NotebookQuick {
  /** Laid over {@link CPU_DEMO} with {@link deepMerge}. */
  overrides: DeepPartial<RunParams>;
  /** Probing tasks (folder names). */
  tasks: string[];
  /** Pairs kept for refinement: the first `train` training and `val` validation pairs. */
  pairs: { train: number; val: number };
}

/**
 * The notebooks' quick settings: two epochs on 640 training and 96 validation pairs (80 optimiser steps), three
 * tasks, two probe seeds, retrieval on 100 pairs: a few minutes on a laptop CPU.
 */
export const NOTEBOOK_QUICK: Readonly<NotebookQuick> = deepFreeze<NotebookQuick>({
  overrides: {
    name: "cpu-demo, notebook quick",
    refine: { epochs: 2 },
    probe: { seeds: [0, 1] },
    zeroShot: { maxPairs: 100 },
  },
  tasks: ["amd_vs_normal", "glaucoma_vs_normal", "normal_drusen_cnv"],
  pairs: { train: 640, val: 96 },
});
