/**
 * Beyond one machine: the MPI binding that data-parallel refinement uses (`mpiexec -n N deno task refine --pairs …`).
 * @module
 */
export {
  type Collective,
  initMpi,
  mpiLibraryCandidates,
  SINGLE_PROCESS,
  worldFromEnv,
  worldSizeFromEnv,
} from "./mpi.ts";
