/**
 * MPI through `Deno.dlopen`: the few collectives data-parallel refinement needs (allreduce, allgather,
 * reduce-scatter, broadcast, barrier, abort), over the system's MPI library found at run time. Why our own binding: there is no MPI package for
 * Deno or npm that works without a native build, and the surface needed is six functions.
 *
 * Only the MPICH ABI is supported (MPICH, Intel MPI, Cray MPICH, MVAPICH): its handles are plain integers
 * (`MPI_COMM_WORLD` = 0x44000000, `MPI_FLOAT` = 0x4c00040a, `MPI_SUM` = 0x58000003, from MPICH's `mpi.h`), which an
 * FFI can pass as constants. Open MPI's handles are pointers to its globals; it is refused by name.
 *
 * A process started by `mpiexec` (Hydra sets `PMI_RANK`/`PMI_SIZE`; Slurm's PMI sets `PMI_SIZE` too) is one rank of
 * the world; anything else runs alone, exactly as without MPI, and never loads a library ({@link worldFromEnv}).
 * @module
 */
import { MpiError } from "../util/errors.ts";

/** The collectives a data-parallel run uses; {@link SINGLE_PROCESS} is the world of one. */
export interface Collective {
  /** This process's rank, 0-based. */
  rank: number;
  /** Number of ranks. */
  size: number;
  /** Sums `buf` over all ranks, in place (every rank gets the sum). */
  allreduceSum(buf: Float32Array | Float64Array): void;
  /**
   * Every rank's `send` (all the same length), concatenated in rank order; float64 (checksums) or float32 (features,
   * as open_clip's `gather_features`).
   */
  allgather(send: Float64Array): Float64Array;
  /** Every rank's `send` (all the same length, float32), concatenated in rank order. */
  allgather(send: Float32Array): Float32Array;
  /**
   * Sums `send` (`size` equal blocks, block r for rank r) over all ranks and returns this rank's block of the sum
   * (MPI_Reduce_scatter_block: half an allreduce's traffic, for the backward pass of a gather).
   */
  reduceScatterSum(send: Float32Array): Float32Array;
  /** Overwrites `buf` on every rank with rank `root`'s. */
  broadcast(buf: Float32Array, root: number): void;
  /** Waits until every rank has reached it. */
  barrier(): void;
  /** Ends every rank of the job at once (after an error on one: the others would wait in a collective forever). */
  abort(code: number): void;
  /** Ends MPI (call once, at the end, on every rank). */
  finalize(): void;
  /** What is underneath, for the log. */
  library: string;
}

/** The world of one process: collectives are no-ops. */
export const SINGLE_PROCESS: Collective = {
  rank: 0,
  size: 1,
  allreduceSum: () => {},
  allgather: ((send: Float32Array | Float64Array) => send.slice()) as Collective["allgather"],
  reduceScatterSum: (send) => send.slice(),
  broadcast: () => {},
  barrier: () => {},
  abort: (code) => Deno.exit(code),
  finalize: () => {},
  library: "none (one process)",
};

const COMM_WORLD = 0x44000000;
const FLOAT = 0x4c00040a;
const DOUBLE = 0x4c00080b;
const SUM = 0x58000003;
const SUCCESS = 0;

const SYMBOLS = {
  MPI_Init: { parameters: ["pointer", "pointer"], result: "i32" },
  MPI_Initialized: { parameters: ["buffer"], result: "i32" },
  MPI_Comm_rank: { parameters: ["i32", "buffer"], result: "i32" },
  MPI_Comm_size: { parameters: ["i32", "buffer"], result: "i32" },
  MPI_Allreduce: { parameters: ["pointer", "buffer", "i32", "i32", "i32", "i32"], result: "i32" },
  MPI_Allgather: { parameters: ["buffer", "i32", "i32", "buffer", "i32", "i32", "i32"], result: "i32" },
  MPI_Reduce_scatter_block: { parameters: ["buffer", "buffer", "i32", "i32", "i32", "i32"], result: "i32" },
  MPI_Bcast: { parameters: ["buffer", "i32", "i32", "i32", "i32"], result: "i32" },
  MPI_Barrier: { parameters: ["i32"], result: "i32" },
  MPI_Abort: { parameters: ["i32", "i32"], result: "i32" },
  MPI_Finalize: { parameters: [], result: "i32" },
} as const;

/** Library names tried in order (`RETFINER_MPI_LIB` first). */
export function mpiLibraryCandidates(): string[] {
  const explicit = Deno.env.get("RETFINER_MPI_LIB");
  if (explicit) return [explicit];
  return Deno.build.os === "darwin"
    ? ["libmpi.12.dylib", "libmpich.12.dylib", "/opt/homebrew/lib/libmpi.12.dylib"]
    : ["libmpich.so.12", "libmpi.so.12", "libmpi.so.40"];
}

/**
 * The number of ranks `mpiexec` (or Slurm's PMI) started, from the environment: 1 when not launched by MPI.
 * @returns the world size the launcher announced
 */
export function worldSizeFromEnv(): number {
  // Open MPI's variable too: started by its mpirun, the run must refuse (another ABI), not run N independent copies.
  const s = Number(Deno.env.get("PMI_SIZE") ?? Deno.env.get("OMPI_COMM_WORLD_SIZE") ?? "1");
  return Number.isInteger(s) && s > 0 ? s : 1;
}

/**
 * The world this process belongs to: {@link SINGLE_PROCESS} when not started by `mpiexec` with more than one rank,
 * otherwise MPI initialised over the first library that opens.
 * @returns the collectives
 * @throws {MpiError} launched with several ranks but no MPICH-ABI library opens (names what was tried and how to fix)
 */
export function worldFromEnv(): Collective {
  return worldSizeFromEnv() > 1 ? initMpi() : SINGLE_PROCESS;
}

function check(what: string, rc: number): void {
  if (rc !== SUCCESS) throw new MpiError(`${what} failed with MPI error code ${rc}`);
}

/**
 * Opens the MPI library, initialises MPI and returns the world's collectives.
 * @param library a library path or name (default: {@link mpiLibraryCandidates})
 * @returns the collectives of MPI_COMM_WORLD
 * @throws {MpiError} no library opens, it is Open MPI (another ABI), or MPI_Init fails
 */
export function initMpi(library?: string): Collective {
  const tried: string[] = [];
  let lib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;
  let name = "";
  for (const candidate of library ? [library] : mpiLibraryCandidates()) {
    try {
      lib = Deno.dlopen(candidate, SYMBOLS);
      name = candidate;
      break;
    } catch (err) {
      tried.push(`${candidate}: ${(err as Error).message.split("\n")[0]}`);
    }
  }
  if (!lib) {
    throw new MpiError(
      `started by mpiexec with ${worldSizeFromEnv()} ranks, but no MPI library opens (tried ${tried.join("; ")}); ` +
        "install MPICH (Debian: apt-get install mpich) or set RETFINER_MPI_LIB to an MPICH-ABI libmpi",
    );
  }
  try {
    Deno.dlopen(name, { ompi_mpi_comm_world: { type: "pointer" } }).close();
    lib.close();
    throw new MpiError(
      `${name} is Open MPI, whose handles are pointers (not the MPICH ABI this binding uses); use MPICH, Intel MPI, ` +
        "Cray MPICH or MVAPICH, or set RETFINER_MPI_LIB",
    );
  } catch (err) {
    if (err instanceof MpiError) throw err;
    // No Open MPI symbol: an MPICH-ABI library.
  }
  const s = lib.symbols;
  const flag = new Int32Array(1);
  check("MPI_Initialized", s.MPI_Initialized(flag));
  if (!flag[0]) check("MPI_Init", s.MPI_Init(null, null));
  const rank = new Int32Array(1);
  const size = new Int32Array(1);
  check("MPI_Comm_rank", s.MPI_Comm_rank(COMM_WORLD, rank));
  check("MPI_Comm_size", s.MPI_Comm_size(COMM_WORLD, size));
  const inPlace = Deno.UnsafePointer.create(0xffffffffffffffffn); // MPI_IN_PLACE = (void *) -1
  const lengthOk = (n: number) => {
    if (n > 0x7fffffff) throw new MpiError(`a collective of ${n} elements exceeds MPI's int count`);
  };
  return {
    rank: rank[0],
    size: size[0],
    library: `MPI (${name}, MPICH ABI)`,
    allreduceSum(buf) {
      lengthOk(buf.length);
      check(
        "MPI_Allreduce",
        s.MPI_Allreduce(inPlace, buf, buf.length, buf instanceof Float64Array ? DOUBLE : FLOAT, SUM, COMM_WORLD),
      );
    },
    allgather: ((send: Float32Array | Float64Array) => {
      lengthOk(send.length * size[0]);
      const double = send instanceof Float64Array;
      const out = double ? new Float64Array(send.length * size[0]) : new Float32Array(send.length * size[0]);
      const type = double ? DOUBLE : FLOAT;
      check("MPI_Allgather", s.MPI_Allgather(send, send.length, type, out, send.length, type, COMM_WORLD));
      return out;
    }) as Collective["allgather"],
    reduceScatterSum(send) {
      lengthOk(send.length);
      if (send.length % size[0] !== 0) {
        throw new MpiError(`reduce-scatter of ${send.length} values over ${size[0]} ranks: not equal blocks`);
      }
      const out = new Float32Array(send.length / size[0]);
      check("MPI_Reduce_scatter_block", s.MPI_Reduce_scatter_block(send, out, out.length, FLOAT, SUM, COMM_WORLD));
      return out;
    },
    broadcast(buf, root) {
      lengthOk(buf.length);
      check("MPI_Bcast", s.MPI_Bcast(buf, buf.length, FLOAT, root, COMM_WORLD));
    },
    barrier() {
      check("MPI_Barrier", s.MPI_Barrier(COMM_WORLD));
    },
    abort(code) {
      s.MPI_Abort(COMM_WORLD, code);
      Deno.exit(code);
    },
    finalize() {
      check("MPI_Finalize", s.MPI_Finalize());
    },
  };
}
