/**
 * The paper's experiment end to end, on any vision encoder (real weights or a
 * shipped stand-in) and any probing benchmark (by default the synthetic OCT
 * benchmark): baseline linear probe → RetFiner refinement → probe again →
 * comparison, report and charts (`run.ts`); refinement on a user's
 * image-report manifest (`pairs.ts`); task discovery (`tasks.ts`); notebook
 * display helpers (`notebook.ts`). `deno task refine` with no arguments runs
 * the experiment on the RETFound-like stand-in; the notebooks drive it cell by
 * cell.
 *
 * @example
 * ```ts ignore
 * import { runExperiment } from "@retfiner/retfiner/experiment";
 * const result = await runExperiment({ family: "retfound", runDir: "runs/demo" });
 * console.log(result.comparison.overall.bacc.delta);
 * ```
 * @module
 */
export {
  type AblationRow,
  baselineName,
  benchmarkDir,
  ensureBenchmark,
  type ExperimentFamily,
  type ExperimentOptions,
  type ExperimentResult,
  probeModel,
  probeReferences,
  REFINED_NAMES,
  runAblation,
  runExperiment,
  zeroShotMarkdown,
  type ZeroShotSummary,
  zeroShotSummary,
} from "./run.ts";
export { type PairsRefineOptions, type PairsRefineResult, refineOnPairs, skippedLine } from "./pairs.ts";
export { findTaskDirs, loadTasks } from "./tasks.ts";
export { type MimeBundle, notebookProgress, showBundle, showFigure, showMarkdown, showScans } from "./notebook.ts";
