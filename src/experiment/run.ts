/**
 * The paper's experiment end to end, on any vision encoder (real weights or a
 * shipped stand-in) and any probing benchmark (by default the synthetic OCT
 * benchmark): baseline linear probe → RetFiner refinement → probe again →
 * comparison, report and charts. `deno task refine` with no arguments runs it
 * on the RETFound-like stand-in; the notebooks drive it cell by cell.
 *
 * @example
 * ```ts ignore
 * import { runExperiment } from "@retfiner/retfiner/experiment";
 * const result = await runExperiment({ family: "retfound", runDir: "runs/demo" });
 * console.log(result.comparison.overall.bacc.delta);
 * ```
 * @module
 */
import { join } from "node:path";
import type { ProbeDataset } from "../dataset/folders.ts";
import { loadTasks } from "./tasks.ts";
import { readPairManifest } from "../dataset/manifest.ts";
import { type BenchmarkInfo, generateBenchmark, SYNTH_PRESETS, SYNTH_VERSION } from "../dataset/synth/generate.ts";
import { createVit, type VitModel } from "../encoders/vit.ts";
import { type FeatureSource, pixelSource } from "../probe/features.ts";
import { Rng } from "../util/rng.ts";
import type { RetfinerModel } from "../model/model.ts";
import { buildModel, loadVision, readBertConfig, type WeightLoading } from "../model/factory.ts";
import { refine, type RefineOptions, type RefineResult } from "../refine/trainer.ts";
import { CPU_DEMO, deepMerge, type RunParams } from "../params.ts";
import { ALL_LOSSES, type LossWeights, OBJECTIVES } from "../refine/step.ts";
import { compareModels, type Comparison, type ModelResults } from "../probe/report.ts";
import type { Collective } from "../dist/mpi.ts";
import { describeProbe, type ProbeMode, probeTasks } from "../probe/protocol.ts";
import { type ProbeReportFiles, writeProbeReport } from "../probe/outputs.ts";
import { writeJsonAtomic } from "../util/fs.ts";
import type { ProgressCallback } from "../util/progress.ts";
import { standinPath, TEXT_STANDIN } from "../model/paths.ts";
import { pct } from "../probe/report.ts";
import type { PairRecord } from "../dataset/manifest.ts";
import { SYNTH_CLASS_PROMPTS, type ZeroShotResult, zeroShotTasks } from "../zeroshot/classify.ts";
import { retrieval, type RetrievalResult } from "../zeroshot/retrieval.ts";
import { writeFileAtomic } from "../util/fs.ts";

/** The families with a shipped stand-in. */
export type ExperimentFamily = "retfound" | "visionfm" | "urfound";

/** Paper names of the refined models. */
export const REFINED_NAMES: Record<ExperimentFamily, string> = {
  retfound: "RetFiner-R",
  visionfm: "RetFiner-V",
  urfound: "RetFiner-U",
};

/**
 * Display names of the baselines (stand-ins are marked as such).
 * @param family the vision family
 * @param standin whether the weights are the package's stand-in
 * @returns e.g. `RETFound`, or `RETFound-like stand-in`
 */
export function baselineName(family: ExperimentFamily, standin: boolean): string {
  const n = { retfound: "RETFound", visionfm: "VisionFM", urfound: "UrFound" }[family];
  return standin ? `${n}-like stand-in` : n;
}

/** Options of {@link runExperiment}. */
export interface ExperimentOptions {
  /** Vision family (decides the token and probing recipes). */
  family: ExperimentFamily;
  /** Run directory for everything written. */
  runDir: string;
  /** Real vision weights; default: the family's stand-in. */
  weights?: string;
  /** Text encoder weights + config + tokenizer; default: the text stand-in. */
  text?: { weights: string; config: string; tokenizer: string };
  /** Strictness and head count of the weight files (`--no-strict`, `--heads`). */
  loading?: WeightLoading;
  /** Benchmark root; default: the synthetic benchmark under `runs/cache/`, generated if missing. */
  benchmark?: string;
  /** Synthetic benchmark size and seed (when generating). */
  synth?: { size?: keyof typeof SYNTH_PRESETS; seed?: number };
  /** Pair manifest; default: the benchmark's `pairs/pairs.csv`. */
  pairs?: string;
  /**
   * Where every setting left out comes from (default `CPU_DEMO` of `src/params.ts`, as `deno task refine`; `AUTHORS`
   * for the paper's): refinement, probe seeds and mode, synthetic benchmark, zero-shot pairs.
   */
  preset?: Readonly<RunParams>;
  /** Probing: seeds and mode (default: the preset's). */
  probe?: {
    seeds?: number[];
    mode?: ProbeMode;
    maxEpochs?: number;
    /** The MPI world the probe's work is shared over (every rank calls alike; see `probeTasks`). */
    collective?: Collective;
  };
  /** Task subset (folder names under `tasks/`); default all. */
  tasks?: string[];
  /** Refinement settings, merged deeply over the preset's (`{ optimizer: { weightDecay } }` keeps its lr). */
  refine?: Partial<RefineOptions>;
  /** Progress updates (all phases). */
  onProgress?: ProgressCallback;
  /** Status lines. */
  log?: (line: string) => void;
}

/** What {@link runExperiment} returns. */
export interface ExperimentResult {
  /** Baseline probe. */
  baseline: ModelResults;
  /** Refined probe. */
  refined: ModelResults;
  /** Reference rows probed alike: raw pixels and, for a stand-in, the random-weight ViT. */
  references: ModelResults[];
  /** Baseline vs refined. */
  comparison: Comparison;
  /** Refinement outcome (history, exported backbone). */
  refinement: RefineResult;
  /** Report files. */
  files: ProbeReportFiles;
  /** Zero-shot classification and retrieval before and after refinement (beyond the paper). */
  zeroShot: { before: ZeroShotSummary; after: ZeroShotSummary };
  /** Seconds per phase. */
  seconds: Record<"benchmark" | "baseline" | "refine" | "refined" | "total", number>;
}

/**
 * The cache directory of a synthetic benchmark.
 * @param size the preset size
 * @param seed the benchmark's seed
 * @returns `runs/cache/synth-<size>-v<version>-seed<seed>` (relative to the working directory)
 */
export function benchmarkDir(size: string, seed: number): string {
  return join("runs", "cache", `synth-${size}-v${SYNTH_VERSION}-seed${seed}`);
}

/**
 * Generates (or reuses) the synthetic benchmark.
 * @param options preset size, seed, folder and progress
 * @returns the folder and the benchmark's description
 */
export async function ensureBenchmark(
  options: { size?: keyof typeof SYNTH_PRESETS; seed?: number; root?: string; onProgress?: ProgressCallback } = {},
): Promise<{ root: string; info: BenchmarkInfo }> {
  const size = options.size ?? CPU_DEMO.synth.size;
  const seed = options.seed ?? CPU_DEMO.synth.seed;
  const root = options.root ?? benchmarkDir(size, seed);
  const info = await generateBenchmark({ root, seed, sizes: SYNTH_PRESETS[size], onProgress: options.onProgress });
  return { root, info };
}

/** The options' weight loading, with a new RETFound proj at the text encoder's width. */
function experimentLoading(options: ExperimentOptions): WeightLoading {
  return { newProjDim: readBertConfig((options.text ?? TEXT_STANDIN).config).hiddenSize, ...options.loading };
}

/**
 * Probes every task with one model (seeds and mode default to `CPU_DEMO`'s: 0, 1, 2, fast).
 * @param vit the backbone, or another feature source (the raw-pixel reference)
 * @param name its display name
 * @param tasks the tasks
 * @param probe seeds, feature mode and protocol overrides
 * @param onProgress progress
 * @returns the model's results per task and seed
 * @throws {ProbeError} when a split is empty or metrics get non-finite scores
 */
export async function probeModel(
  vit: VitModel | FeatureSource,
  name: string,
  tasks: ProbeDataset[],
  probe: ExperimentOptions["probe"] = {},
  onProgress?: ProgressCallback,
): Promise<ModelResults> {
  return {
    name,
    tasks: await probeTasks(vit, tasks, {
      seeds: probe.seeds ?? CPU_DEMO.probe.seeds,
      mode: probe.mode ?? CPU_DEMO.probe.mode,
      hyper: probe.maxEpochs ? { maxEpochs: probe.maxEpochs } : {},
      collective: probe.collective,
      // Each phase names the model: baseline, references and refined model probe the same tasks in turn.
      onProgress: onProgress && ((p) => onProgress({ ...p, phase: `${name}: ${p.phase}` })),
    }),
  };
}

/**
 * The reference rows of a report, probed with the same protocol and seeds as the model: a linear probe on raw
 * pixels (the model's probing input box-averaged to 28×28) and, when asked, the same ViT with random weights (timm's
 * initialisation). A foundation model's baseline should clear both; the gap is what its pretraining adds.
 * @param vit the model whose input recipe and architecture the references copy
 * @param tasks the tasks
 * @param probe seeds, mode and protocol overrides
 * @param options `randomVit`: also probe the random-weight ViT (as costly as probing the model itself)
 * @param onProgress progress
 * @returns the references' results, raw pixels first
 * @throws {ProbeError} as {@link probeModel}
 */
export async function probeReferences(
  vit: VitModel,
  tasks: ProbeDataset[],
  probe: ExperimentOptions["probe"] = {},
  options: { randomVit?: boolean } = {},
  onProgress?: ProgressCallback,
): Promise<ModelResults[]> {
  const pixels = pixelSource(vit.config);
  const out = [
    await probeModel(pixels, `raw pixels (${pixels.kind.replace("raw pixels ", "")})`, tasks, probe, onProgress),
  ];
  if (options.randomVit) {
    const random = createVit(vit.config, { rng: new Rng(0, "reference/random-vit") });
    try {
      out.push(await probeModel(random, "random-weight ViT (same architecture)", tasks, probe, onProgress));
    } finally {
      for (const v of random.params.values()) v.dispose();
    }
  }
  return out;
}

/** Zero-shot accuracy per task and retrieval on held-out pairs, for one state of the model. */
export interface ZeroShotSummary {
  /** Zero-shot metrics per task (test splits). */
  tasks: ZeroShotResult[];
  /** Retrieval on validation pairs. */
  retrieval: RetrievalResult;
}

/**
 * Zero-shot classification on every task and retrieval on up to `maxPairs` validation pairs.
 * @param model the RetFiner model
 * @param tasks the tasks
 * @param pairs validation pairs for retrieval
 * @param maxPairs at most this many pairs are used
 * @param onProgress progress
 * @returns zero-shot metrics per task and retrieval recall
 */
export async function zeroShotSummary(
  model: RetfinerModel,
  tasks: ProbeDataset[],
  pairs: PairRecord[],
  maxPairs: number = CPU_DEMO.zeroShot.maxPairs,
  onProgress?: ProgressCallback,
): Promise<ZeroShotSummary> {
  const out = await zeroShotTasks(model, tasks, SYNTH_CLASS_PROMPTS, { onProgress });
  const val = pairs.filter((p) => p.split === "val").slice(0, maxPairs);
  return {
    tasks: out,
    retrieval: await retrieval(model, val.length >= 2 ? val : pairs.slice(0, maxPairs), { onProgress }),
  };
}

/**
 * Markdown for zero-shot and retrieval results before and after refinement.
 * @param before the summary before refinement
 * @param after the summary after
 * @returns Markdown tables
 */
export function zeroShotMarkdown(before: ZeroShotSummary, after: ZeroShotSummary): string {
  const lines = ["| task | zero-shot BAcc before | after | zero-shot AUROC before | after |", "|---|---|---|---|---|"];
  after.tasks.forEach((t, i) => {
    const b = before.tasks[i];
    lines.push(
      `| ${t.task} | ${pct(b.metrics.bacc)} | ${pct(t.metrics.bacc)} | ${pct(b.metrics.auroc)} | ${
        pct(t.metrics.auroc)
      } |`,
    );
  });
  const r = (x: RetrievalResult["imageToText"]) =>
    `${pct(x.r1)} / ${pct(x.r5)} / ${pct(x.r10)} (median rank ${x.medianRank})`;
  lines.push(
    "",
    `Retrieval on ${after.retrieval.n} held-out pairs, R@1 / R@5 / R@10 in % (chance R@1 ${
      pct(1 / after.retrieval.n)
    }):`,
    "",
  );
  lines.push("| direction | before refinement | after |", "|---|---|---|");
  lines.push(`| image → report | ${r(before.retrieval.imageToText)} | ${r(after.retrieval.imageToText)} |`);
  lines.push(`| report → image | ${r(before.retrieval.textToImage)} | ${r(after.retrieval.textToImage)} |`);
  return lines.join("\n");
}

/** The probe settings of an experiment: `options.probe` over the preset's seeds and mode. */
function experimentProbe(options: ExperimentOptions): { seeds: number[]; mode: ProbeMode; maxEpochs?: number } {
  const p = (options.preset ?? CPU_DEMO).probe;
  return deepMerge<{ seeds: number[]; mode: ProbeMode; maxEpochs?: number }>(
    { seeds: p.seeds, mode: p.mode },
    options.probe,
  );
}

/**
 * Baseline probe → refinement → probe → report.
 * @param options family, weights, benchmark, preset and overrides, output folder, progress, see {@link ExperimentOptions}
 * @returns both models' results, the comparison, the refinement's result, the files written, zero-shot results
 *   before and after, and the seconds each stage took
 * @throws {RetfinerError} subclasses from each stage (weights, data, refinement, probing)
 */
export async function runExperiment(options: ExperimentOptions): Promise<ExperimentResult> {
  const log = options.log ?? (() => {});
  const t0 = performance.now();
  const lap = (() => {
    let last = performance.now();
    return () => {
      const now = performance.now();
      const s = (now - last) / 1000;
      last = now;
      return s;
    };
  })();
  const settings = options.preset ?? CPU_DEMO;
  const probe = experimentProbe(options);
  const bench = options.benchmark
    ? { root: options.benchmark }
    : await ensureBenchmark({ ...deepMerge(settings.synth, options.synth), onProgress: options.onProgress });
  const sBench = lap();
  log(`benchmark: ${bench.root} (${sBench.toFixed(0)} s)`);
  const tasks = await loadTasks(bench.root, options.tasks);
  const standin = !options.weights;
  const loading = experimentLoading(options);
  const vit = loadVision(options.family, options.weights, null, loading);
  log(
    `vision encoder: ${
      baselineName(options.family, standin)
    } (ViT ${vit.config.embedDim}×${vit.config.depth}, ${vit.config.imgSize} px)`,
  );
  const baseline = await probeModel(
    vit,
    baselineName(options.family, standin),
    tasks,
    probe,
    options.onProgress,
  );
  const references = await probeReferences(vit, tasks, probe, { randomVit: standin }, options.onProgress);
  const sBase = lap();
  log(
    `baseline probe and references (${
      references.map((r) => r.name).join(", ")
    }): ${tasks.length} tasks × ${probe.seeds.length} seeds, ${describeProbe(probe.mode, probe.seeds)} (${
      sBase.toFixed(0)
    } s)`,
  );
  const model = buildModel(vit, options.text, 0, loading);
  const pairs = (await readPairManifest(options.pairs ?? join(bench.root, "pairs", "pairs.csv"))).records;
  // Before refinement the heads are untrained: this is the chance-level reference.
  const zsBefore = await zeroShotSummary(model, tasks, pairs, settings.zeroShot.maxPairs, options.onProgress);
  const refinement = await refine({
    ...options.refine,
    preset: options.refine?.preset ?? settings,
    model,
    pairs,
    runDir: options.runDir,
    onProgress: options.onProgress,
  });
  const sRef = lap();
  log(
    `refinement: ${refinement.loop.step} steps, ${refinement.loop.history.length} epochs, stopped by ${refinement.stopReason} (${
      sRef.toFixed(0)
    } s)`,
  );
  const refined = await probeModel(model.vit, REFINED_NAMES[options.family], tasks, probe, options.onProgress);
  const zsAfter = await zeroShotSummary(model, tasks, pairs, settings.zeroShot.maxPairs, options.onProgress);
  const sRefined = lap();
  const seconds = {
    benchmark: sBench,
    baseline: sBase,
    refine: sRef,
    refined: sRefined,
    total: (performance.now() - t0) / 1000,
  };
  const { files, comparison } = await writeProbeReport(options.runDir, { baseline, refined }, {
    probe: describeProbe(probe.mode, probe.seeds),
    references,
    notes: [
      `vision encoder: ${options.weights ?? standinPath(options.family)}`,
      `refinement: ${refinement.loop.step} optimiser steps over ${refinement.loop.history.length} epochs (${refinement.stopReason}); backbone: ${refinement.backbone.pth}`,
      `probe: ${describeProbe(probe.mode, probe.seeds)}`,
      `time: ${Object.entries(seconds).map(([k, v]) => `${k} ${v.toFixed(0)} s`).join(", ")}`,
    ],
    extraSections: [{
      title: "Beyond the paper: zero-shot classification and retrieval",
      markdown: zeroShotMarkdown(zsBefore, zsAfter),
    }],
  });
  await writeJsonAtomic(join(options.runDir, "timing.json"), seconds);
  await writeJsonAtomic(join(options.runDir, "zeroshot.json"), { before: zsBefore, after: zsAfter });
  return {
    baseline,
    refined,
    references,
    comparison: comparison!,
    refinement,
    files,
    seconds,
    zeroShot: { before: zsBefore, after: zsAfter },
  };
}

/** One line of the ablation table. */
export interface AblationRow {
  /** Which objectives were used. */
  losses: LossWeights;
  /** Label, e.g. "all" or "− itm". */
  label: string;
  /** Comparison of this refinement against the shared baseline. */
  comparison: Comparison;
}

/**
 * Refines once with all objectives and once without each, from the same start; one shared baseline probe.
 * @param options as for {@link runExperiment}
 * @returns the baseline's results, one row per objective left out, and a Markdown table
 * @throws {RetfinerError} subclasses from each stage
 */
export async function runAblation(
  options: ExperimentOptions,
): Promise<{ baseline: ModelResults; rows: AblationRow[]; markdown: string }> {
  const settings = options.preset ?? CPU_DEMO;
  const probe = experimentProbe(options);
  const bench = options.benchmark
    ? { root: options.benchmark }
    : await ensureBenchmark({ ...deepMerge(settings.synth, options.synth), onProgress: options.onProgress });
  const tasks = await loadTasks(bench.root, options.tasks);
  const standin = !options.weights;
  const loading = experimentLoading(options);
  const baseline = await probeModel(
    loadVision(options.family, options.weights, null, loading),
    baselineName(options.family, standin),
    tasks,
    probe,
    options.onProgress,
  );
  const pairs = (await readPairManifest(options.pairs ?? join(bench.root, "pairs", "pairs.csv"))).records;
  const variants: [string, LossWeights][] = [
    ["all", ALL_LOSSES],
    ...OBJECTIVES.map((k) => [`− ${k.toUpperCase()}`, { ...ALL_LOSSES, [k]: 0 }] as [string, LossWeights]),
  ];
  const rows: AblationRow[] = [];
  for (const [label, losses] of variants) {
    // The text side's notices (its --no-strict report) once, not once per variant.
    if (rows.length === 1) loading.log = null;
    const model = buildModel(
      loadVision(options.family, options.weights, null, loading),
      options.text,
      0,
      loading,
    );
    const dir = join(options.runDir, label === "all" ? "all" : `without-${label.slice(2).toLowerCase()}`);
    await refine({
      ...options.refine,
      preset: options.refine?.preset ?? settings,
      losses,
      model,
      pairs,
      runDir: dir,
      onProgress: options.onProgress,
    });
    const refined = await probeModel(
      model.vit,
      `${REFINED_NAMES[options.family]} (${label})`,
      tasks,
      probe,
      options.onProgress,
    );
    rows.push({ label, losses, comparison: compareModels(baseline, refined) });
    options.log?.(`ablation ${label}: Δ BAcc ${pct(rows.at(-1)!.comparison.overall.bacc.delta)} pp`);
  }
  const lines = [
    "| objectives | BAcc | Δ BAcc vs baseline | 95 % CI over tasks | p over tasks | p over task × seed | AUROC | Δ AUROC |",
    "|---|---|---|---|---|---|---|---|",
  ];
  lines.push(
    `| baseline | ${pct(rows[0].comparison.overall.bacc.baseline.mean)} | – | – | – | – | ${
      pct(rows[0].comparison.overall.auroc.baseline.mean)
    } | – |`,
  );
  const sgn = (x: number) => `${x >= 0 ? "+" : "−"}${pct(Math.abs(x))}`;
  for (const r of rows) {
    const b = r.comparison.overall.bacc;
    const t = r.comparison.overTasks.bacc;
    const a = r.comparison.overall.auroc;
    lines.push(
      `| ${r.label} | ${pct(b.refined.mean)} | ${sgn(b.delta)} | ${
        t.ci ? `[${sgn(t.ci.low)}, ${sgn(t.ci.high)}]` : "n/a"
      } | ${t.test ? t.test.pValue.toPrecision(3) : "n/a"} | ${b.test ? b.test.pValue.toPrecision(3) : "n/a"} | ${
        pct(a.refined.mean)
      } | ${sgn(a.delta)} |`,
    );
  }
  const markdown = lines.join("\n");
  await writeFileAtomic(
    join(options.runDir, "ablation.md"),
    `# Ablation: each objective removed in turn\n\n${markdown}\n`,
  );
  return { baseline, rows, markdown };
}
