/**
 * Fast single-precision GEMM providers for the accelerated `cpu` backend:
 * ONNX Runtime's MLAS (shipped inside the `onnxruntime-node` npm package, so a
 * fresh machine needs nothing else) and a system BLAS through `Deno.dlopen`.
 * @module
 */
import { createRequire } from "node:module";
import { BackendError } from "../util/errors.ts";
import { encodeModel, encodeSingleNodeModel } from "./onnx_proto.ts";

/** Shape of one batched product `C[i] = op(A[i]) · op(B[i])`. */
export interface GemmSpec {
  /** Number of output matrices. */
  batch: number;
  /** Matrices stored in A: 1 (broadcast) or `batch`. */
  batchA: number;
  /** Matrices stored in B: 1 (broadcast) or `batch`. */
  batchB: number;
  /** Rows of op(A) and C. */
  m: number;
  /** Columns of op(B) and C. */
  n: number;
  /** Columns of op(A), rows of op(B). */
  k: number;
  /** A is stored as k×m and used transposed. */
  transA: boolean;
  /** B is stored as n×k and used transposed. */
  transB: boolean;
  /**
   * Add the product to what `out` holds (BLAS's beta = 1) instead of overwriting it; only where
   * {@link Gemm.writesOut} says `out` is written. Used to fold a bias into the product.
   */
  accumulate?: boolean;
}

/** A GEMM implementation. */
export interface Gemm {
  /** Human-readable name, with the library path or version. */
  readonly name: string;
  /**
   * Computes the batched product as a row-major `[batch, m, n]` array: into `out` when given and the
   * implementation can write there (BLAS can; ONNX Runtime's binding always returns its own copy), else a new one.
   */
  matmul(a: Float32Array, b: Float32Array, spec: GemmSpec, out?: Float32Array): Float32Array;
  /** Whether `matmul` writes into an `out` given for this product (so callers may pass a pooled buffer). */
  writesOut?(spec: GemmSpec): boolean;
  /** Vectorised elementwise functions the same library offers, if any. */
  readonly vectorMath?: VectorMath;
}

/** Vectorised elementwise functions over flat float32 arrays. */
export interface VectorMath {
  /** Exact GELU, `0.5·x·(1 + erf(x/√2))`. */
  gelu(x: Float32Array): Float32Array;
  /** Its gradient: `dy · (Φ(x) + x·φ(x))`. */
  geluGrad(dy: Float32Array, x: Float32Array): Float32Array;
}

// ---------------------------------------------------------------- ONNX Runtime

interface OrtBinding {
  binding: { InferenceSession: new () => OrtNativeSession };
  initOrt: () => void;
}
interface OrtNativeSession {
  loadModel(buffer: ArrayBufferLike, byteOffset: number, byteLength: number, options: object): void;
  run(feeds: object, fetches: object, options: object): Record<string, { data: Float32Array; dims: number[] }>;
}
type OrtTensorCtor = new (type: string, data: Float32Array, dims: number[]) => object;

/**
 * ONNX Runtime's telemetry layer creates an empty `/tmp/mat-debug-<pid>.log`
 * when it initialises (observed with onnxruntime-node 1.30 on Linux); left
 * alone, every run would litter /tmp. We remove it only if it is empty.
 */
function removeOrtTelemetryStub(): void {
  const path = `/tmp/mat-debug-${Deno.pid}.log`;
  try {
    if (Deno.statSync(path).size === 0) Deno.removeSync(path);
  } catch {
    // Not there (other platforms, other versions): nothing to tidy.
  }
}

/**
 * Loads ONNX Runtime's native binding directly. Its `run` is synchronous (the
 * package's public API only wraps it in a promise), which is what a tfjs kernel
 * needs.
 * @param options the intra-op thread count
 * @returns a synchronous GEMM backed by ONNX Runtime's MatMul
 * @throws {BackendError} when onnxruntime-node cannot be loaded
 */
export async function createOrtGemm(options: { threads?: number } = {}): Promise<Gemm> {
  let ort: { Tensor: OrtTensorCtor; env: { versions?: { common?: string } } };
  let native: OrtBinding;
  try {
    ort = (await import("onnxruntime-node")).default as unknown as typeof ort;
    native = (await import("onnxruntime-node/dist/binding.js")).default as unknown as OrtBinding;
    native.initOrt();
    removeOrtTelemetryStub();
  } catch (err) {
    throw new BackendError(`onnxruntime-node could not be loaded: ${(err as Error).message}`, { cause: err });
  }
  const Tensor = ort.Tensor;
  const sessions = new Map<string, OrtNativeSession>();
  const load = (model: Uint8Array): OrtNativeSession => {
    const s = new native.binding.InferenceSession();
    s.loadModel(model.buffer, model.byteOffset, model.byteLength, {
      graphOptimizationLevel: "disabled",
      intraOpNumThreads: options.threads ?? 0,
      interOpNumThreads: 1,
      executionMode: "sequential",
      // ONNX Runtime's intra-op threads spin while they wait for work by default. Between two products the step runs
      // JavaScript (tfjs's other kernels, the tape) on the main thread, which the spinning workers then compete with
      // for the cores. And its memory-pattern planner re-plans whenever a session sees a new shape, which ours do at
      // almost every call (one session serves every product). Both off, measured here on 2 cores: the stand-ins'
      // refinement step 922 -> 562 ms, a ViT-B/16 2-block forward + backward 1.07 -> 0.68 s, encoding 8 images with
      // ViT-B/16 2.61 -> 2.23 s.
      enableMemPattern: false,
      extra: { session: { intra_op: { allow_spinning: "0" } } },
    });
    return s;
  };
  const sessionFor = (transA: boolean, transB: boolean): OrtNativeSession => {
    const key = `${+transA}${+transB}`;
    let s = sessions.get(key);
    if (!s) {
      const model = encodeSingleNodeModel({
        opType: "FusedMatMul",
        domain: "com.microsoft",
        inputs: [{ name: "A", rank: 3 }, { name: "B", rank: 3 }],
        outputs: [{ name: "Y", rank: 3 }],
        attributes: [
          { name: "transA", int: transA ? 1 : 0 },
          { name: "transB", int: transB ? 1 : 0 },
          { name: "alpha", float: 1 },
        ],
      });
      s = load(model);
      sessions.set(key, s);
    }
    return s;
  };
  let geluSession: OrtNativeSession | undefined;
  let geluGradSession: OrtNativeSession | undefined;
  const vectorMath: VectorMath = {
    gelu(x) {
      // com.microsoft Gelu is the exact, erf-based GELU (MLAS's vectorised erf).
      geluSession ??= load(encodeSingleNodeModel({
        opType: "Gelu",
        domain: "com.microsoft",
        inputs: [{ name: "X", rank: 1 }],
        outputs: [{ name: "Y", rank: 1 }],
      }));
      return geluSession.run({ X: new Tensor("float32", x, [x.length]) }, { Y: null }, {}).Y.data;
    },
    geluGrad(dy, x) {
      geluGradSession ??= load(encodeModel({
        inputs: [{ name: "dY", rank: 1 }, { name: "X", rank: 1 }],
        outputs: [{ name: "dX", rank: 1 }],
        constants: { rsqrt2: Math.SQRT1_2, one: 1, half: 0.5, negHalf: -0.5, rsqrt2pi: 1 / Math.sqrt(2 * Math.PI) },
        nodes: [
          { opType: "Mul", inputs: ["X", "rsqrt2"], outputs: ["xs"] },
          { opType: "Erf", inputs: ["xs"], outputs: ["erf"] },
          { opType: "Add", inputs: ["erf", "one"], outputs: ["erf1"] },
          { opType: "Mul", inputs: ["erf1", "half"], outputs: ["cdf"] }, // Φ(x)
          { opType: "Mul", inputs: ["X", "X"], outputs: ["x2"] },
          { opType: "Mul", inputs: ["x2", "negHalf"], outputs: ["e0"] },
          { opType: "Exp", inputs: ["e0"], outputs: ["e1"] },
          { opType: "Mul", inputs: ["e1", "rsqrt2pi"], outputs: ["pdf"] }, // φ(x)
          { opType: "Mul", inputs: ["X", "pdf"], outputs: ["xpdf"] },
          { opType: "Add", inputs: ["cdf", "xpdf"], outputs: ["d"] },
          { opType: "Mul", inputs: ["dY", "d"], outputs: ["dX"] },
        ],
      }));
      const feeds = { dY: new Tensor("float32", dy, [dy.length]), X: new Tensor("float32", x, [x.length]) };
      return geluGradSession.run(feeds, { dX: null }, {}).dX.data;
    },
  };
  return {
    name: `onnxruntime-node ${ort.env.versions?.common ?? ""} (MLAS)`.replace("  ", " "),
    vectorMath,
    matmul(a, b, spec) {
      const { batchA, batchB, m, n, k, transA, transB } = spec;
      const A = new Tensor("float32", a, [batchA, transA ? k : m, transA ? m : k]);
      const B = new Tensor("float32", b, [batchB, transB ? n : k, transB ? k : n]);
      const out = sessionFor(transA, transB).run({ A, B }, { Y: null }, {});
      return out.Y.data;
    },
  };
}

// ---------------------------------------------------------------- system BLAS

const CBLAS_ROW_MAJOR = 101;
const CBLAS_NO_TRANS = 111;
const CBLAS_TRANS = 112;

const sgemmSymbol = {
  cblas_sgemm: {
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "void",
  },
} as const;

/**
 * Sets OpenBLAS's thread count, so that `RETFINER_THREADS` sizes both libraries' pools (OpenBLAS otherwise reads only
 * `OPENBLAS_NUM_THREADS`, once, when it loads).
 * @param library the opened BLAS
 * @param threads the count, ≥ 1
 * @returns the count OpenBLAS reports afterwards, or undefined for a BLAS without these calls
 */
export function setOpenBlasThreads(library: string, threads: number): number | undefined {
  const lib = Deno.dlopen(library, {
    openblas_set_num_threads: { parameters: ["i32"], result: "void", optional: true },
    openblas_get_num_threads: { parameters: [], result: "i32", optional: true },
  });
  const { openblas_set_num_threads: set, openblas_get_num_threads: get } = lib.symbols;
  if (!set || !get) return undefined;
  set(threads);
  return get();
}

/**
 * The BLAS libraries tried, in order, when `RETFINER_BLAS` is not set.
 * @returns library names or paths, tried in order by {@link createBlasGemm}
 */
export function defaultBlasCandidates(): string[] {
  if (Deno.build.os === "darwin") return ["/System/Library/Frameworks/Accelerate.framework/Accelerate"];
  if (Deno.build.os === "windows") return ["libopenblas.dll"];
  return ["libopenblas.so.0", "libopenblas.so", "libblas.so.3"];
}

/**
 * Opens a CBLAS library with `Deno.dlopen`. `path` (or `RETFINER_BLAS`)
 * overrides the default search list.
 * @param path a CBLAS shared library (default: `RETFINER_BLAS`, else {@link defaultBlasCandidates})
 * @param threads OpenBLAS threads (`openblas_set_num_threads`; 0 or none: its own default, which
 *  `OPENBLAS_NUM_THREADS` sets when the library loads); ignored by a BLAS without that call
 * @returns a GEMM calling `cblas_sgemm`
 * @throws {BackendError} when no library with `cblas_sgemm` can be opened
 */
export function createBlasGemm(path?: string, threads?: number): Gemm {
  const explicit = path ?? Deno.env.get("RETFINER_BLAS");
  const candidates = explicit ? [explicit] : defaultBlasCandidates();
  const failures: string[] = [];
  for (const candidate of candidates) {
    let lib;
    try {
      lib = Deno.dlopen(candidate, sgemmSymbol);
    } catch (err) {
      failures.push(`${candidate}: ${(err as Error).message.split("\n")[0]}`);
      continue;
    }
    const sgemm = lib.symbols.cblas_sgemm;
    if (threads && threads > 0) setOpenBlasThreads(candidate, threads);
    return {
      name: `BLAS cblas_sgemm (${candidate})`,
      writesOut: () => true,
      matmul(a, b, spec, out) {
        const { batch, batchA, batchB, m, n, k, transA, transB } = spec;
        const c = out ?? new Float32Array(batch * m * n);
        const beta = out && spec.accumulate ? 1 : 0;
        const ta = transA ? CBLAS_TRANS : CBLAS_NO_TRANS;
        const tb = transB ? CBLAS_TRANS : CBLAS_NO_TRANS;
        const lda = transA ? m : k;
        const ldb = transB ? k : n;
        if (batchB === 1 && batchA === batch && !transA) {
          // Fold the batch into the rows of one product: [batch*m, k] x [k, n].
          sgemm(CBLAS_ROW_MAJOR, ta, tb, batch * m, n, k, 1, a, lda, b, ldb, beta, c, n);
          return c;
        }
        const sa = batchA === 1 ? 0 : m * k;
        const sb = batchB === 1 ? 0 : k * n;
        for (let i = 0; i < batch; i++) {
          sgemm(
            CBLAS_ROW_MAJOR,
            ta,
            tb,
            m,
            n,
            k,
            1,
            a.subarray(i * sa, i * sa + m * k),
            lda,
            b.subarray(i * sb, i * sb + k * n),
            ldb,
            beta,
            c.subarray(i * m * n, (i + 1) * m * n),
            n,
          );
        }
        return c;
      },
    };
  }
  throw new BackendError(`no BLAS library with cblas_sgemm could be opened (${failures.join("; ")})`);
}

/** Whether a Node-API package can be resolved from the current directory's node_modules. */
export function resolvableFromCwd(specifier: string): string | undefined {
  try {
    return createRequire(`${Deno.cwd()}/`).resolve(specifier);
  } catch {
    return undefined;
  }
}

/** Products with at least this many multiply-adds in all (batch·m·n·k) go to BLAS in {@link hybridGemm}. */
export const HYBRID_BLAS_MIN = 2 ** 27;

/**
 * ONNX Runtime for small and batched products, a BLAS for large ones. Measured here (2 cores, OpenBLAS 0.3 with
 * `OPENBLAS_CORETYPE=Haswell`), OpenBLAS runs the transformer-sized products (e.g. 1576×768×3072) 1.3–2× faster
 * than MLAS and writes straight into a pooled buffer (ONNX Runtime's binding always returns a fresh copy, which
 * V8 must collect), while MLAS is as fast or faster on the small products of the stand-in models. Small products stay
 * on ONNX Runtime, so results of small models are the same as with ONNX Runtime alone.
 * @param ort the ONNX Runtime GEMM
 * @param blas the BLAS GEMM
 * @param minMultiplyAdds products of at least this many multiply-adds (M·K·N) go to the BLAS
 * @returns the combined GEMM
 */
export function hybridGemm(ort: Gemm, blas: Gemm, minMultiplyAdds = HYBRID_BLAS_MIN): Gemm {
  const large = (spec: GemmSpec) => spec.batch * spec.m * spec.n * spec.k >= minMultiplyAdds;
  return {
    name: `${ort.name}; products of ≥ 2^${Math.log2(minMultiplyAdds).toFixed(0)} multiply-adds: ${blas.name}`,
    vectorMath: ort.vectorMath,
    writesOut: large,
    matmul(a, b, spec, out) {
      return large(spec) ? blas.matmul(a, b, spec, out) : ort.matmul(a, b, spec);
    },
  };
}
