/**
 * Refinement on a user's image-report manifest, what `deno task refine --pairs` runs: the pairs read with the data
 * checks (or `skipBad`), split by patient, the RetFiner model built, refined and exported, and, given a benchmark, the
 * encoder probed before and after.
 * @module
 */
import { join } from "node:path";
import {
  assignSplits,
  type ManifestOptions,
  type PairRecord,
  readPairManifest,
  type SkippedRow,
} from "../dataset/manifest.ts";
import type { VitModel } from "../encoders/vit.ts";
import { buildRetfinerModel, loadVision, type WeightLoading } from "../model/factory.ts";
import { TEXT_STANDIN } from "../model/paths.ts";
import { CPU_DEMO } from "../params.ts";
import { type ProbeReportFiles, writeProbeReport } from "../probe/outputs.ts";
import { compareModels, type Comparison, type ModelResults } from "../probe/report.ts";
import { refine, type RefineOptions, type RefineResult } from "../refine/trainer.ts";
import type { ProgressCallback } from "../util/progress.ts";
import { type ExperimentFamily, probeModel, probeReferences } from "./run.ts";
import { describeProbe } from "../probe/protocol.ts";
import { SINGLE_PROCESS } from "../dist/mpi.ts";
import { loadTasks } from "./tasks.ts";

/** Options of {@link refineOnPairs}. */
export interface PairsRefineOptions {
  /** Image-report manifest (CSV or JSONL). */
  pairs: string;
  /** How the manifest is read: columns or the authors' layout, `skipBad`, the volume slice. */
  manifest?: ManifestOptions;
  /** Validation share (by patient) for pairs without a split column (default `CPU_DEMO`'s). */
  valFraction?: number;
  /** Run directory for everything written. */
  runDir: string;
  /** Vision family when {@link vision} gives none (its stand-in is refined). */
  family: ExperimentFamily;
  /**
   * The vision encoder to refine and its family, decided by the caller (e.g. loaded from `--weights` with its
   * notices); `undefined` or absent: the family's stand-in. Called after the pairs are read.
   */
  vision?: () => { vit: VitModel; family: ExperimentFamily } | undefined;
  /** The vision weights file, reloaded for the baseline probe (default: the family's stand-in). */
  weights?: string;
  /** Strictness and head count of the weight files (`--no-strict`, `--heads`). */
  loading?: WeightLoading;
  /** Text encoder weights + config + tokenizer; default: the text stand-in. */
  text?: { weights: string; config: string; tokenizer: string };
  /** Train a small BERT from scratch with a vocabulary built from the reports instead. */
  textFromScratch?: boolean;
  /** Probing benchmark root: the encoder is probed before and after refinement when given. */
  benchmark?: string;
  /** Probe seeds and mode (default `CPU_DEMO`'s). */
  probe?: { seeds?: number[]; mode?: "fast" | "faithful" };
  /** Refinement settings (batch, epochs, seed, its `onNotice` and `onEpoch`...); the seed also splits the pairs. */
  refine?: Partial<RefineOptions>;
  /** Progress updates (refinement and probes). */
  onProgress?: ProgressCallback;
  /** Status lines: each skipped row at the start, then the pair counts. */
  log?: (line: string) => void;
  /** Called once the refined backbone is exported, before the refined probe. */
  onRefined?: (result: RefineResult) => void;
}

/** What {@link refineOnPairs} returns. */
export interface PairsRefineResult {
  /** The pairs refined on, with their splits. */
  records: PairRecord[];
  /** Rows skipped with `skipBad` (also in `<runDir>/skipped_rows.tsv`). */
  skipped: SkippedRow[];
  /** Refinement outcome (history, exported backbone). */
  refinement: RefineResult;
  /** Baseline and refined probes, their comparison and report files (with a benchmark; rank 0 writes them). */
  probe?: { baseline: ModelResults; refined: ModelResults; comparison: Comparison; files: ProbeReportFiles };
}

/**
 * The line a skipped manifest row is reported with.
 *
 * @param s The skipped row.
 * @returns `skipped <file:line>: <reason>`.
 */
export function skippedLine(s: SkippedRow): string {
  return `skipped ${s.origin}: ${s.reason}`;
}

/**
 * Refines a vision encoder on a user's image-report pairs and exports the refined backbone; with a benchmark, probes
 * the encoder before and after and writes the comparison report.
 *
 * @param options The manifest, model, refinement and probing settings.
 * @returns The pairs, skipped rows, refinement outcome and (with a benchmark) the probes.
 * @throws {DatasetError} When the manifest or an image is unusable (without `skipBad`).
 * @throws {CheckpointError} When a weight file cannot be loaded.
 * @throws {RefineError} When refinement cannot run (e.g. too few pairs).
 *
 * @example
 * ```ts
 * import { refineOnPairs } from "./pairs.ts";
 * // const r = await refineOnPairs({ pairs: "reports.csv", family: "retfound", runDir: "runs/mine" });
 * // console.log(r.refinement.backbone.safetensors);
 * ```
 */
export async function refineOnPairs(options: PairsRefineOptions): Promise<PairsRefineResult> {
  const log = options.log ?? (() => {});
  const out = options.runDir;
  const { records, skipped } = await readPairManifest(options.pairs, options.manifest ?? {});
  if (skipped.length) {
    for (const s of skipped) log(skippedLine(s));
    await Deno.mkdir(out, { recursive: true });
    await Deno.writeTextFile(
      join(out, "skipped_rows.tsv"),
      "row\treason\n" + skipped.map((s) => `${s.origin}\t${s.reason.replace(/[\t\n]/g, " ")}`).join("\n") + "\n",
    );
  }
  assignSplits(
    records,
    { val: options.valFraction ?? CPU_DEMO.refine.valFraction },
    options.refine?.seed ?? CPU_DEMO.refine.seed,
  );
  log(
    `pairs: ${records.filter((r) => r.split === "train").length} train, ${
      records.filter((r) => r.split === "val").length
    } val` +
      (skipped.length ? `; ${skipped.length} rows skipped` : ""),
  );
  const decided = options.vision?.();
  const family = decided?.family ?? options.family;
  const vit = decided?.vit ?? loadVision(family);
  const loading = options.loading ?? {};
  const text = options.text ?? TEXT_STANDIN;
  const model = options.textFromScratch
    ? buildRetfinerModel({ vision: vit, reports: records.map((r) => r.report) })
    : buildRetfinerModel({
      vision: vit,
      strict: loading.strict,
      strictHint: loading.strictHint,
      textWeights: text.weights,
      textConfig: text.config,
      tokenizer: text.tokenizer,
    });
  const tasks = options.benchmark ? await loadTasks(options.benchmark) : [];
  const seeds = options.probe?.seeds ?? CPU_DEMO.probe.seeds;
  const mode = options.probe?.mode ?? CPU_DEMO.probe.mode;
  // Under MPI every rank probes (features on shards, (task, seed) jobs shared out) and rank 0 writes the report.
  const world = options.refine?.collective ?? SINGLE_PROCESS;
  const probe = { seeds, mode, collective: world };
  const baseline = tasks.length
    ? await probeModel(
      loadVision(family, options.weights, null, loading),
      "baseline",
      tasks,
      probe,
      options.onProgress,
    )
    : undefined;
  const refinement = await refine({
    ...options.refine,
    model,
    pairs: records,
    runDir: out,
    onProgress: options.onProgress,
  });
  options.onRefined?.(refinement);
  if (!baseline) return { records, skipped, refinement };
  const refined = await probeModel(model.vit, "refined", tasks, probe, options.onProgress);
  const references = await probeReferences(model.vit, tasks, probe, {}, options.onProgress);
  const report = { probe: describeProbe(mode, seeds), references };
  const files = world.rank === 0
    ? (await writeProbeReport(out, { baseline, refined }, report)).files
    : { csv: join(out, "results.csv"), json: join(out, "summary.json"), markdown: join(out, "report.md") };
  return {
    records,
    skipped,
    refinement,
    probe: { baseline, refined, comparison: compareModels(baseline, refined), files },
  };
}
