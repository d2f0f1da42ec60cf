/**
 * Linear probing (method notes §2): features, the authors' head-training
 * protocol, metrics exactly as scikit-learn, the Wilcoxon signed-rank test,
 * and paper-style reports and charts.
 * @module
 */
export {
  argmax,
  balancedAccuracy,
  binaryAuc,
  binaryAveragePrecision,
  classificationMetrics,
  matthewsCorrcoef,
  METRIC_NAMES,
  type Metrics,
  weightedF1,
} from "./metrics.ts";
export {
  type BootstrapCi,
  bootstrapMeanCi,
  erfc,
  mean,
  normalSf,
  rankdata,
  sd,
  wilcoxon,
  type WilcoxonResult,
} from "./stats.ts";
export {
  authorsBatchSize,
  EarlyStopping,
  type EpochFeatures,
  evaluateHead,
  type HeadOptimizer,
  headOptimizer,
  initHead,
  type LinearHead,
  predictHead,
  PROBE_DEFAULTS,
  type ProbeData,
  type ProbeHyper,
  probeLr,
  type ProbeRun,
  probeWeightDecay,
  trainHeadEpoch,
  trainProbe,
} from "./head.ts";
export {
  extractFeatures,
  type FeatureOptions,
  type FeatureSource,
  PIXEL_GRID,
  pixelSource,
  vitSource,
} from "./features.ts";
export {
  asFeatureSource,
  describeProbe,
  type ProbeMode,
  probeTask,
  type ProbeTaskOptions,
  probeTasks,
  type SeedResult,
  type TaskResult,
} from "./protocol.ts";
export {
  compareModels,
  type Comparison,
  markdownEffect,
  markdownPerTask,
  markdownSingle,
  markdownSummary,
  type MeanSd,
  MIN_TASKS_FOR_CI,
  type ModelResults,
  pct,
  perSeedCsv,
  type TaskComparison,
  type TaskLevelEffect,
  terminalTable,
} from "./report.ts";
export {
  absoluteFigure,
  figureDiv,
  figurePng,
  figuresHtml,
  gainsFigure,
  type PlotlyFigure,
  plotlyJs,
} from "./chart.ts";
export { type ProbeReportFiles, type ProbeReportOptions, writeProbeReport } from "./outputs.ts";
export { markdownToHtml } from "./html.ts";
