/**
 * Probing one task with several seeds (method notes §2): features, the head
 * protocol per seed, and the best state's test metrics. Under `mpiexec -n N` the features are computed on shards
 * and the (task, seed) jobs shared out over the ranks ({@link probeTasks}), with the same results as one process.
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
import { type Collective, SINGLE_PROCESS } from "../dist/mpi.ts";

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
  /**
   * The MPI world to share the work over (default: one process); see {@link probeTasks}. Every rank must call with
   * the same arguments.
   */
  collective?: Collective;
}

/** One task's images and the features every seed shares (val and test; train too in fast mode). */
interface PreparedTask {
  dataset: ProbeDataset;
  train: ProbeItem[];
  val: ProbeItem[];
  test: ProbeItem[];
  valX: Float32Array;
  testX: Float32Array;
  trainX?: Float32Array;
  hyper: ProbeHyper;
  /** Seconds spent on these features. */
  featureSeconds: number;
}

type ProbeItem = ProbeDataset["items"][number];

/** One (task, seed) job's outcome and its seconds. */
interface SeedJob {
  result: SeedResult;
  /** Seconds spent recomputing training features (faithful mode). */
  featureSeconds: number;
  /** Seconds spent training the head. */
  trainSeconds: number;
}

async function prepareTask(
  source: FeatureSource,
  dataset: ProbeDataset,
  options: ProbeTaskOptions,
  mode: ProbeMode,
): Promise<PreparedTask> {
  const hyper: ProbeHyper = { ...PROBE_DEFAULTS, weightDecay: probeWeightDecay(source.family), ...options.hyper };
  const bySplit = (s: Split) => dataset.items.filter((i) => i.split === s);
  const train = bySplit("train");
  const val = bySplit("val");
  const test = bySplit("test");
  const cache = new InputCache(512 * 2 ** 20);
  const t0 = performance.now();
  const feats = (items: ProbeItem[], phase: string) =>
    source.extract(items.map((i) => i.path), {
      batchSize: options.featureBatch,
      cache,
      onProgress: options.onProgress,
      phase,
      collective: options.collective,
    });
  const valX = await feats(val, `features ${dataset.name} val`);
  const testX = await feats(test, `features ${dataset.name} test`);
  const trainX = mode === "fast" ? await feats(train, `features ${dataset.name} train`) : undefined;
  return { dataset, train, val, test, valX, testX, trainX, hyper, featureSeconds: (performance.now() - t0) / 1000 };
}

async function runSeed(
  source: FeatureSource,
  task: PreparedTask,
  seed: number,
  options: ProbeTaskOptions,
): Promise<SeedJob> {
  const { dataset, train, val, test } = task;
  const t1 = performance.now();
  let extra = 0;
  const trainFeatures = task.trainX ?? (async (epoch: number) => {
    // §2.2/§2.5: augmented images through the backbone in train mode, recomputed every epoch (on this rank alone).
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
      val: task.valX,
      valLabels: val.map((i) => i.label),
      test: task.testX,
      testLabels: test.map((i) => i.label),
      dim: source.dim,
      classes: dataset.classes.length,
    },
    new Rng(seed, `probe/${dataset.name}`),
    task.hyper,
    options.batchSize,
  );
  return {
    result: {
      seed,
      metrics: classificationMetrics(test.map((i) => i.label), run.testProbs),
      epochs: run.epochs,
      bestEpoch: run.bestEpoch,
      valBacc: run.valBacc,
      stop: run.stop,
    },
    featureSeconds: extra,
    trainSeconds: (performance.now() - t1) / 1000 - extra,
  };
}

function taskResult(task: PreparedTask, jobs: SeedJob[]): TaskResult {
  return {
    task: task.dataset.name,
    classes: task.dataset.classes,
    sizes: { train: task.train.length, val: task.val.length, test: task.test.length },
    seeds: jobs.map((j) => j.result),
    featureSeconds: task.featureSeconds + jobs.reduce((a, j) => a + j.featureSeconds, 0),
    trainSeconds: jobs.reduce((a, j) => a + j.trainSeconds, 0),
  };
}

/**
 * Probes `vit` on `dataset` with every seed.
 *
 * Under MPI (`options.collective` with several ranks) this is {@link probeTasks} of the one dataset: features
 * computed on shards and gathered, seeds shared out over the ranks, and every rank returns the same result.
 *
 * @param model the backbone (frozen: its features are extracted once, or per epoch when augmenting), or another
 *   feature source such as the raw-pixel reference ({@link FeatureSource})
 * @param dataset the task's images and labels with train/val/test splits
 * @param options seeds, feature mode, protocol overrides, batch sizes, progress and the MPI world, see
 *   {@link ProbeTaskOptions}
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
  if ((options.collective?.size ?? 1) > 1) return (await probeTasks(model, [dataset], options))[0];
  const seeds = options.seeds ?? PROBE_TASK_DEFAULTS.seeds;
  const mode = options.mode ?? PROBE_TASK_DEFAULTS.mode;
  const source = asFeatureSource(model);
  const task = await prepareTask(source, dataset, options, mode);
  const jobs: SeedJob[] = [];
  for (const seed of seeds) {
    jobs.push(await runSeed(source, task, seed, options));
    options.onProgress?.({
      phase: `probe ${dataset.name}`,
      done: jobs.length,
      total: seeds.length,
      info: { bacc: jobs.at(-1)!.result.metrics.bacc },
    });
  }
  return taskResult(task, jobs);
}

/**
 * Probes `vit` on every dataset in turn with the same settings: the probing loop of `deno task probe`, the
 * experiment and `deno task refine --pairs`.
 *
 * Under MPI (`options.collective` with N > 1 ranks; every rank calls with the same arguments) the work is shared
 * in two ways, and every rank returns the same results, equal to one process's:
 * - **features** that every seed shares (val and test; train too in fast mode) are computed on shards of the
 *   images and gathered (`gatherBatches` of features.ts: batch k on rank k mod N), task by task;
 * - **(task, seed) jobs**, numbered task-major (task 0's seeds, then task 1's, …), go to rank job mod N; each trains
 *   its head, and in faithful mode recomputes its augmented training features every epoch, on its rank alone; the
 *   results are then gathered. Why jobs rather than shards in faithful mode: a faithful job extracts features every
 *   epoch and stops early after its own number of epochs, so sharding those extractions would make every rank wait
 *   for the slowest at every epoch of every seed; whole jobs need one gather at the end and draw exactly as one
 *   process (the drop-path generator runs through a job's batches in order).
 *
 * The features of all tasks are held at once under MPI (one task at a time otherwise). `featureSeconds` and
 * `trainSeconds` add the seconds of every rank's jobs (work done, not wall time). A failing rank ends the job
 * (`collective.abort`), it does not leave the others waiting.
 *
 * @param model The vision encoder (frozen), or another feature source.
 * @param datasets The probing tasks, probed in this order.
 * @param options Seeds, mode, protocol overrides, progress and the MPI world, as for {@link probeTask}.
 * @returns One result per dataset, in order.
 * @throws {ProbeError} When a task cannot be probed (see {@link probeTask}); under MPI the job is aborted instead.
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
  const world = options.collective ?? SINGLE_PROCESS;
  if (world.size === 1) {
    const results: TaskResult[] = [];
    for (const ds of datasets) results.push(await probeTask(model, ds, options));
    return results;
  }
  try {
    return await probeTasksOnRanks(asFeatureSource(model), datasets, options, world);
  } catch (err) {
    console.error(
      `probe: rank ${world.rank} of ${world.size} failed, ending all ranks: ${(err as Error).message ?? String(err)}`,
    );
    world.abort(1);
    throw err;
  }
}

async function probeTasksOnRanks(
  source: FeatureSource,
  datasets: ProbeDataset[],
  options: ProbeTaskOptions,
  world: Collective,
): Promise<TaskResult[]> {
  const seeds = options.seeds ?? PROBE_TASK_DEFAULTS.seeds;
  const mode = options.mode ?? PROBE_TASK_DEFAULTS.mode;
  const tasks: PreparedTask[] = [];
  for (const ds of datasets) tasks.push(await prepareTask(source, ds, options, mode));
  const jobs = tasks.flatMap((_, t) => seeds.map((seed) => ({ t, seed })));
  const mine = jobs.map((j, k) => ({ ...j, k })).filter(({ k }) => k % world.size === world.rank);
  const done: { k: number; job: SeedJob }[] = [];
  for (const { t, seed, k } of mine) {
    const job = await runSeed(source, tasks[t], seed, options);
    done.push({ k, job });
    options.onProgress?.({
      phase: `probe (${jobs.length} task × seed jobs over ${world.size} ranks)`,
      done: done.length,
      total: mine.length,
      info: { task: tasks[t].dataset.name, seed: String(seed), bacc: job.result.metrics.bacc },
    });
  }
  const all = new Array<SeedJob>(jobs.length);
  for (const part of gatherJson(world, done)) for (const { k, job } of part) all[k] = job;
  return tasks.map((task, t) => taskResult(task, all.slice(t * seeds.length, (t + 1) * seeds.length)));
}

/**
 * Every rank's `value` (JSON, non-finite numbers kept), in rank order: two gathers, the lengths and then the
 * bytes, padded to the longest.
 */
function gatherJson<T>(world: Collective, value: T): T[] {
  const bytes = new TextEncoder().encode(
    JSON.stringify(value, (_, v) => (typeof v === "number" && !Number.isFinite(v) ? { $number: String(v) } : v)),
  );
  const lengths = world.allgather(Float64Array.of(bytes.length));
  const slot = Math.ceil(Math.max(...lengths) / 8);
  const send = new Float64Array(slot);
  new Uint8Array(send.buffer).set(bytes); // raw bytes: MPI copies them, nothing reads them as numbers
  const all = new Uint8Array(world.allgather(send).buffer);
  return Array.from(lengths, (n, q) =>
    JSON.parse(
      new TextDecoder().decode(all.subarray(q * slot * 8, q * slot * 8 + n)),
      (_, v) => (v !== null && typeof v === "object" && "$number" in v ? Number(v.$number) : v),
    ));
}

/**
 * A backbone as its `concat` feature source; a feature source as is.
 * @param model a ViT or a feature source
 * @returns the feature source
 */
export function asFeatureSource(model: VitModel | FeatureSource): FeatureSource {
  return "extract" in model ? model : vitSource(model);
}
