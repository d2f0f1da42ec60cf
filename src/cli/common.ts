/** Flags and helpers shared by the CLI tasks. */
import { type BackendInfo, BACKENDS, parseBackendChoice, setupBackend } from "../backend/mod.ts";
import type { FlagSpec, FlagValues } from "../util/cli.ts";

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
