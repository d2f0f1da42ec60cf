/**
 * The tiny data-parallel refinement that mpi_test.ts runs on two ranks (through _rank_driver.ts) and in one process:
 * one place for its settings, so that both sides run the same thing.
 */
import type { RefineOptions } from "../../src/refine/mod.ts";
import { tinyModel, tinyPairs } from "../refine/_tiny.ts";

/** How a tiny run differs between the cases of mpi_test.ts. */
export interface TinyRun {
  runDir: string;
  /** Global batch (default 8). */
  batchSize?: number;
  /** Micro-batches per step (default 2: one per rank with per-rank negatives). */
  accumulate?: number;
  maxSteps?: number;
  resume?: boolean;
  globalNegatives?: boolean;
}

/** The options of `refine()` for a tiny run (model and pairs included). */
export async function tinyRunOptions(run: TinyRun): Promise<RefineOptions> {
  return {
    model: await tinyModel(0),
    pairs: await tinyPairs(),
    runDir: run.runDir,
    batchSize: run.batchSize ?? 8,
    accumulate: run.accumulate ?? 2,
    epochs: 3,
    patience: 100,
    checkpointEvery: 2,
    optimizer: { lr: 1e-3 },
    seed: 1,
    maxSteps: run.maxSteps,
    resume: run.resume,
    globalNegatives: run.globalNegatives,
    onNotice: () => {},
  };
}

/** A tiny run as command-line words for _rank_driver.ts (`refine <json>`). */
export function tinyRunArgs(run: TinyRun): string[] {
  return ["refine", JSON.stringify(run)];
}
