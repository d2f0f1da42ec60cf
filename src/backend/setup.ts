/**
 * Picks and initialises the tfjs compute backend, and says what it picked.
 *
 * Order tried by `auto`: `tfjs-node-gpu`, `webgpu` on a hardware adapter (a
 * software adapter only when forced, see `webgpu.ts`), `tfjs-node`, `cpu`
 * with ONNX Runtime matmul (`cpu-onnx`), `cpu` with a system BLAS
 * (`cpu-blas`), plain `cpu`.
 * A forced choice that is unavailable is an error, never a silent fallback.
 * @module
 */
import { createRequire } from "node:module";
import { BackendError } from "../util/errors.ts";
import { tf } from "./tf.ts";
import {
  createBlasGemm,
  createOrtGemm,
  defaultBlasCandidates,
  type Gemm,
  hybridGemm,
  resolvableFromCwd,
} from "./gemm.ts";
import { installMatMulKernels, restoreMatMulKernels } from "./kernels.ts";
import { installFusedKernels, uninstallFusedKernels } from "./fused.ts";
import { installBufferPool, uninstallBufferPool } from "./pool.ts";
import { installLeanTape, uninstallLeanTape } from "./lean_tape.ts";
import { enableHugePages, returnLargeBuffersToSystem } from "./malloc.ts";
import { useWebGpu } from "./webgpu.ts";
import { startThreads, stopThreads } from "./threads.ts";

/** The backends this package knows, in `auto` order. */
export const BACKENDS = ["tfjs-node-gpu", "webgpu", "tfjs-node", "cpu-onnx", "cpu-blas", "cpu"] as const;

/** A concrete backend choice. */
export type BackendName = typeof BACKENDS[number];

/** What {@link setupBackend} accepts: a concrete backend or `auto`. */
export type BackendChoice = BackendName | "auto";

/** What {@link setupBackend} chose. */
export interface BackendInfo {
  /** The backend in use. */
  name: BackendName;
  /** The tfjs backend name underneath (`tensorflow`, `webgpu` or `cpu`). */
  tfBackend: string;
  /** What multiplies matrices. */
  matmul: string;
  /** Backends tried before this one, each with the reason it was skipped. */
  skipped: string[];
}

/** Options for {@link setupBackend}. */
export interface BackendOptions {
  /** Backend to use; defaults to `RETFINER_BACKEND` or `auto`. */
  backend?: BackendChoice;
  /** Threads for ONNX Runtime and OpenBLAS (0 = their defaults: one per core); defaults to `RETFINER_THREADS`. */
  threads?: number;
  /** Where to write the one-line report; defaults to `console.error`. Pass `null` for silence. */
  log?: ((line: string) => void) | null;
}

let current: BackendInfo | undefined;

/**
 * The backend set up by the last {@link setupBackend} call, if any.
 * @returns the backend's name, tfjs backend and GEMM, or undefined before the first setup
 */
export function currentBackend(): BackendInfo | undefined {
  return current;
}

/**
 * Parses a backend name (from a flag or `RETFINER_BACKEND`), naming the source on error.
 * @param value the name: `auto` or one of the backends
 * @param source the flag or variable it came from, for the message
 * @returns the choice
 * @throws {BackendError} for an unknown name
 */
export function parseBackendChoice(value: string, source = "--backend"): BackendChoice {
  if (value === "auto" || (BACKENDS as readonly string[]).includes(value)) return value as BackendChoice;
  throw new BackendError(`${source}: unknown backend "${value}"; choose one of auto, ${BACKENDS.join(", ")}`);
}

async function tryNative(pkg: "@tensorflow/tfjs-node-gpu" | "@tensorflow/tfjs-node"): Promise<void> {
  const resolved = resolvableFromCwd(pkg);
  if (!resolved) {
    throw new BackendError(
      `${pkg} is not installed (install it with internet access: deno install --allow-scripts=npm:${pkg} npm:${pkg}@4.22.0)`,
    );
  }
  try {
    createRequire(`${Deno.cwd()}/`)(pkg);
  } catch (err) {
    throw new BackendError(`${pkg} is installed but failed to load: ${(err as Error).message.split("\n")[0]}`);
  }
  if (!(await tf.setBackend("tensorflow"))) {
    throw new BackendError(`${pkg} loaded but the "tensorflow" backend did not initialise`);
  }
}

async function useCpu(gemm: Gemm | undefined, threads: number | undefined): Promise<void> {
  if (!(await tf.setBackend("cpu"))) throw new BackendError(`tfjs "cpu" backend did not initialise`);
  // tfjs prints a banner recommending tfjs-node on first use; we already report our choice.
  (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
  if (gemm) {
    installMatMulKernels(gemm);
    installFusedKernels(gemm.vectorMath ?? null);
    installBufferPool(tf.backend());
    installLeanTape();
    returnLargeBuffersToSystem();
    enableHugePages();
    startThreads(threads);
  } else {
    // Plain `cpu` is tfjs as shipped: its own kernels and composite ops.
    uninstallCpuExtras();
  }
}

let blasProbe: { gemm?: Gemm } | undefined;
/** Any product, to ask a GEMM whether it writes into the caller's buffer. */
const PROBE_SPEC = { batch: 1, batchA: 1, batchB: 1, m: 1, n: 1, k: 1, transA: false, transB: false };

/**
 * OpenBLAS (or Accelerate on macOS, or whatever `RETFINER_BLAS` names), if it opens: the BLAS `cpu-onnx` hands its
 * large products to when ONNX Runtime is reached through the npm binding (which copies every output) rather than its
 * C API. A plain reference `libblas.so.3` is not used for this, being slower than ONNX Runtime.
 * `RETFINER_HYBRID=0` turns the hand-off off.
 */
function optimisedBlas(threads?: number): Gemm | undefined {
  if (Deno.env.get("RETFINER_HYBRID") === "0") return undefined;
  if (!blasProbe) {
    blasProbe = {};
    const explicit = Deno.env.get("RETFINER_BLAS");
    const candidates = explicit ? [explicit] : defaultBlasCandidates().filter((c) => !/libblas\.so/.test(c));
    for (const c of candidates) {
      try {
        blasProbe.gemm = createBlasGemm(c, threads);
        break;
      } catch {
        // Not installed: ONNX Runtime does every product.
      }
    }
  }
  return blasProbe.gemm;
}

/** "name (short reason)" of a skipped candidate, for the one-line report. */
function skipSummary(skip: string): string {
  const [name, ...rest] = skip.split(": ");
  const why = rest.join(": ");
  const short = /is not installed/.test(why)
    ? "not installed"
    : /adapter is software/.test(why)
    ? "software adapter; force with --backend webgpu"
    : /no WebGPU adapter|has no WebGPU/.test(why)
    ? "no GPU adapter"
    : "failed";
  return `${name} (${short})`;
}

/** The CPU backends' kernel overrides, tape and pool off: tfjs as shipped on another backend. */
function uninstallCpuExtras(): void {
  restoreMatMulKernels();
  uninstallFusedKernels();
  uninstallBufferPool();
  uninstallLeanTape();
  stopThreads();
}

async function setupOne(
  name: BackendName,
  threads: number | undefined,
  forced: boolean,
  log: ((line: string) => void) | null,
): Promise<BackendInfo> {
  switch (name) {
    case "webgpu": {
      const gpu = await useWebGpu({ allowSoftware: forced, log });
      uninstallCpuExtras();
      return {
        name,
        tfBackend: "webgpu",
        matmul: `WebGPU shaders on ${gpu.description}${gpu.software ? " (software adapter)" : ""}; largest tensor ${
          (gpu.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)
        } MiB`,
        skipped: [],
      };
    }
    case "tfjs-node-gpu":
    case "tfjs-node":
      await tryNative(name === "tfjs-node-gpu" ? "@tensorflow/tfjs-node-gpu" : "@tensorflow/tfjs-node");
      return { name, tfBackend: "tensorflow", matmul: `libtensorflow (${name})`, skipped: [] };
    case "cpu-onnx": {
      const ort = await createOrtGemm({ threads });
      // Through its C API, ONNX Runtime writes into pooled buffers and runs MLAS's AVX-512 kernels: 1.4-1.8x
      // OpenBLAS's speed here on every transformer product measured, and the ViT-B + BERT-base step in 18.9 s against
      // 28.1 s with the large products on OpenBLAS (2 threads, 2026-12-02), so it does them all. Only where it falls
      // back to the npm binding (fresh copies of every output) do the large products go to a BLAS.
      const blas = ort.writesOut?.(PROBE_SPEC) ? undefined : optimisedBlas(threads);
      const gemm = blas ? hybridGemm(ort, blas) : ort;
      await useCpu(gemm, threads);
      return { name, tfBackend: "cpu", matmul: gemm.name, skipped: [] };
    }
    case "cpu-blas": {
      const gemm = createBlasGemm(undefined, threads);
      await useCpu(gemm, threads);
      return { name, tfBackend: "cpu", matmul: gemm.name, skipped: [] };
    }
    case "cpu":
      await useCpu(undefined, threads);
      return { name, tfBackend: "cpu", matmul: "tfjs JavaScript loops (slow)", skipped: [] };
  }
}

/**
 * Sets up tfjs and reports the choice in one line.
 *
 * @param options the backend wanted (default `auto`: the fastest that loads), thread count, where the line goes
 * @returns what was set up, and the candidates skipped with their reasons
 * @throws {BackendError} when a requested backend is unavailable, or none can be set up
 * @example
 * ```ts
 * import { setupBackend } from "./setup.ts";
 * const info = await setupBackend({ backend: "auto" });
 * console.log(info.name, info.matmul);
 * ```
 */
export async function setupBackend(options: BackendOptions = {}): Promise<BackendInfo> {
  const envChoice = Deno.env.get("RETFINER_BACKEND");
  const choice = options.backend ?? (envChoice ? parseBackendChoice(envChoice, "RETFINER_BACKEND") : "auto");
  const envThreads = Deno.env.get("RETFINER_THREADS");
  const threads = options.threads ?? (envThreads ? Number(envThreads) : undefined);
  const log = options.log === undefined ? (line: string) => console.error(line) : options.log;
  if (choice !== "auto") {
    try {
      current = await setupOne(choice, threads, true, log);
    } catch (err) {
      throw new BackendError(`backend "${choice}" was requested but is unavailable: ${(err as Error).message}`, {
        cause: err,
      });
    }
    log?.(`backend: ${current.name} (matmul: ${current.matmul})`);
    return current;
  }
  const skipped: string[] = [];
  for (const name of BACKENDS) {
    try {
      const info = await setupOne(name, threads, false, log);
      current = { ...info, skipped };
      const why = skipped.length ? `; skipped ${skipped.map(skipSummary).join(", ")}` : "";
      log?.(`backend: ${info.name} (matmul: ${info.matmul})${why}`);
      return current;
    } catch (err) {
      skipped.push(`${name}: ${(err as Error).message}`);
    }
  }
  throw new BackendError(`no backend could be set up:\n  ${skipped.join("\n  ")}`);
}
