/**
 * Probing one task with several seeds (method notes §2): features, the head
 * protocol per seed, and the best state's test metrics.
 * @module
 */
import { InputCache } from "../dataset/batches.ts";
import type { ProbeDataset, Split } from "../dataset/folders.ts";
import type { VitModel } from "../encoders/vit.ts";
import type { ProgressCallback } from "../util/progress.ts";
import { Rng } from "../util/rng.ts";
import { type FeatureSource, vitSource } from "./features.ts";
import { PROBE_DEFAULTS, type ProbeHyper, type ProbeRun, probeWeightDecay, trainProbe } from "./head.ts";
import { classificationMetrics, type Metrics } from "./metrics.ts";
import { PROBE_TASK_DEFAULTS } from "../params.ts";

/** `fast`: features once, no augmentation (default). `faithful`: the authors' per-epoch augmented features. */
export type ProbeMode = "fast" | "faithful";

/**
 * How a probe was run, in words, for reports and logs.
 * @param mode the feature mode
 * @param seeds the seeds
 * @returns e.g. "fast mode (features computed once in eval mode, no augmentation), seeds 0, 1, 2"
 */
export function describeProbe(mode: ProbeMode, seeds: readonly number[]): string {
  const how = mode === "fast"
    ? "features computed once in eval mode, no augmentation"
    : "the authors' protocol: augmented training images through the backbone with drop-path active, every epoch";
  return `${mode} mode (${how}), seeds ${seeds.join(", ")}`;
}

/** One seed's outcome. */
export interface SeedResult {
  /** Seed. */
  seed: number;
  /** Test metrics of the best validation state. */
  metrics: Metrics;
  /** Epochs trained. */
  epochs: number;
  /** Best epoch. */
  bestEpoch: number;
  /** Best validation balanced accuracy. */
  valBacc: number;
  /** Why training stopped. */
  stop: ProbeRun["stop"];
}

/** One task's outcome over all seeds. */
export interface TaskResult {
  /** Task (dataset) name. */
  task: string;
  /** Class names. */
  classes: string[];
  /** Images per split. */
  sizes: Record<Split, number>;
  /** Per-seed results. */
  seeds: SeedResult[];
  /** Seconds spent computing features. */
  featureSeconds: number;
  /** Seconds spent training heads. */
  trainSeconds: number;
}

/** Options of {@link probeTask}. */
export interface ProbeTaskOptions {
  /** Seeds (default `PROBE_TASK_DEFAULTS.seeds` of `src/params.ts`: the authors' 0–4). */
  seeds?: number[];
  /** Mode (default `PROBE_TASK_DEFAULTS.mode`: `fast`). */
  mode?: ProbeMode;
  /** Protocol overrides; weight decay defaults to the model family's (§2.3). */
  hyper?: Partial<ProbeHyper>;
  /** Head batch size (default: the authors' rule). */
  batchSize?: number;
  /** Images per feature forward pass. */
  featureBatch?: number;
  /** Progress updates. */
  onProgress?: ProgressCallback;
}

/**
 * Probes `vit` on `dataset` with every seed.
 *
 * @param model the backbone (frozen: its features are extracted once, or per epoch when augmenting), or another
 *   feature source such as the raw-pixel reference ({@link FeatureSource})
 * @param dataset the task's images and labels with train/val/test splits
 * @param options seeds, feature mode, protocol overrides, batch sizes and progress, see {@link ProbeTaskOptions}
 * @returns every seed's test metrics, epochs and stopping reason (docs/method.md §2.3–2.7)
 * @throws {ProbeError} when a split is empty or metrics get non-finite scores
 * @throws {DatasetError} for unreadable images
 * @example
 * ```ts
 * import { probeTask } from "./protocol.ts";
 * // const result = await probeTask(vit, await readProbeDataset("tasks/octid"), { seeds: [0, 1, 2] });
 * ```
 */
export async function probeTask(
  model: VitModel | FeatureSource,
  dataset: ProbeDataset,
  options: ProbeTaskOptions = {},
): Promise<TaskResult> {
  const seeds = options.seeds ?? PROBE_TASK_DEFAULTS.seeds;
  const mode = options.mode ?? PROBE_TASK_DEFAULTS.mode;
  const source = asFeatureSource(model);
  const hyper: ProbeHyper = { ...PROBE_DEFAULTS, weightDecay: probeWeightDecay(source.family), ...options.hyper };
  const bySplit = (s: Split) => dataset.items.filter((i) => i.split === s);
  const train = bySplit("train");
  const val = bySplit("val");
  const test = bySplit("test");
  const dim = source.dim;
  const cache = new InputCache(512 * 2 ** 20);
  const t0 = performance.now();
  const feats = (items: typeof train, phase: string) =>
    source.extract(items.map((i) => i.path), {
      batchSize: options.featureBatch,
      cache,
      onProgress: options.onProgress,
      phase,
    });
  const valX = await feats(val, `features ${dataset.name} val`);
  const testX = await feats(test, `features ${dataset.name} test`);
  const trainX = mode === "fast" ? await feats(train, `features ${dataset.name} train`) : undefined;
  let featureSeconds = (performance.now() - t0) / 1000;
  let trainSeconds = 0;
  const results: SeedResult[] = [];
  for (const seed of seeds) {
    const t1 = performance.now();
    let extra = 0;
    const trainFeatures = trainX ?? (async (epoch: number) => {
      // §2.2/§2.5: augmented images through the backbone in train mode, recomputed every epoch.
      const t = performance.now();
      const x = await source.extract(train.map((i) => i.path), {
        batchSize: options.featureBatch,
        augment: new Rng(seed, `augment/${dataset.name}/${epoch}`),
        dropPath: new Rng(seed, `droppath/${dataset.name}/${epoch}`),
      });
      extra += (performance.now() - t) / 1000;
      return x;
    });
    const run = await trainProbe(
      {
        train: trainFeatures,
        trainLabels: train.map((i) => i.label),
        val: valX,
        valLabels: val.map((i) => i.label),
        test: testX,
        testLabels: test.map((i) => i.label),
        dim,
        classes: dataset.classes.length,
      },
      new Rng(seed, `probe/${dataset.name}`),
      hyper,
      options.batchSize,
    );
    featureSeconds += extra;
    trainSeconds += (performance.now() - t1) / 1000 - extra;
    results.push({
      seed,
      metrics: classificationMetrics(test.map((i) => i.label), run.testProbs),
      epochs: run.epochs,
      bestEpoch: run.bestEpoch,
      valBacc: run.valBacc,
      stop: run.stop,
    });
    options.onProgress?.({
      phase: `probe ${dataset.name}`,
      done: results.length,
      total: seeds.length,
      info: { bacc: results.at(-1)!.metrics.bacc },
    });
  }
  return {
    task: dataset.name,
    classes: dataset.classes,
    sizes: { train: train.length, val: val.length, test: test.length },
    seeds: results,
    featureSeconds,
    trainSeconds,
  };
}

/**
 * Probes `vit` on every dataset in turn with the same settings: the probing loop of `deno task probe`, the
 * experiment and `deno task refine --pairs`.
 *
 * @param model The vision encoder (frozen), or another feature source.
 * @param datasets The probing tasks, probed in this order.
 * @param options Seeds, mode, protocol overrides and progress, as for {@link probeTask}.
 * @returns One result per dataset, in order.
 * @throws {ProbeError} When a task cannot be probed (see {@link probeTask}).
 *
 * @example
 * ```ts
 * import { probeTasks } from "./protocol.ts";
 * // const results = await probeTasks(vit, [octid, octdl], { seeds: [0, 1, 2], mode: "fast" });
 * ```
 */
export async function probeTasks(
  model: VitModel | FeatureSource,
  datasets: ProbeDataset[],
  options: ProbeTaskOptions = {},
): Promise<TaskResult[]> {
  const results: TaskResult[] = [];
  for (const ds of datasets) results.push(await probeTask(model, ds, options));
  return results;
}

/**
 * A backbone as its `concat` feature source; a feature source as is.
 * @param model a ViT or a feature source
 * @returns the feature source
 */
export function asFeatureSource(model: VitModel | FeatureSource): FeatureSource {
  return "extract" in model ? model : vitSource(model);
}
