/**
 * The synthetic OCT benchmark: procedural B-scans with pathologies, clinical
 * reports that describe them, and seven probing tasks.
 * @module
 */
export { healthy, type Pathology, renderBscan, type ScanSpec } from "./render.ts";
export { DIAGNOSES, type Diagnosis, type SampleOptions, samplePathology } from "./diseases.ts";
export { writeReport } from "./reports.ts";
export { SYNTH_TASKS, type TaskClass, type TaskSpec } from "./tasks.ts";
export {
  type BenchmarkInfo,
  generateBenchmark,
  SYNTH_PRESETS,
  SYNTH_VERSION,
  type SynthOptions,
  type SynthSizes,
} from "./generate.ts";
