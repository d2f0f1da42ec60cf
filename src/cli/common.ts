/** Flags and helpers shared by the CLI tasks. */
import { type BackendInfo, BACKENDS, parseBackendChoice, setupBackend } from "../backend/mod.ts";
import type { FlagSpec, FlagValues } from "../util/cli.ts";
import { UsageError } from "../util/errors.ts";

/** The `--backend` flag. */
export const BACKEND_FLAG: Record<string, FlagSpec> = {
  backend: {
    type: "string",
    valueName: "<name>",
    description: "Compute backend (overrides RETFINER_BACKEND).",
    choices: ["auto", ...BACKENDS],
  },
};

/** Sets up the backend from `--backend` (or the environment). */
export function backendFromFlags(values: FlagValues): Promise<BackendInfo> {
  const b = values.backend as string | undefined;
  return setupBackend(b ? { backend: parseBackendChoice(b) } : {});
}

/** Where the tasks print loading notices (family decision, stripped prefixes, guesses): stderr, beside progress. */
export function noticeLog(line: string): void {
  console.error(line);
}

/**
 * A run directory's default name: the UTC time to the second, e.g. `20261128-101500`.
 * @returns The stamp.
 */
export function timestamp(): string {
  return new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
}

/**
 * Parses `--seeds`: a comma-separated list of non-negative integers.
 * @param list The flag's value.
 * @returns The seeds, in order.
 * @throws {UsageError} Naming the first entry that is not a non-negative integer.
 */
export function parseSeeds(list: string): number[] {
  return list.split(",").map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`--seeds: "${s}" is not a non-negative integer`);
    return n;
  });
}

/**
 * Sets up the backend from `--backend` (or the environment) on one rank of an MPI job: only rank 0 prints the
 * backend line, so that `mpiexec -n N` prints it once.
 * @param values The parsed flags.
 * @param rank This process's rank (0 without MPI).
 * @returns What was set up.
 * @throws {BackendError} When the requested backend is unavailable.
 */
export function backendFromFlagsOnRank(values: FlagValues, rank: number): Promise<BackendInfo> {
  const b = values.backend as string | undefined;
  return setupBackend({ ...(b ? { backend: parseBackendChoice(b) } : {}), ...(rank === 0 ? {} : { log: null }) });
}
