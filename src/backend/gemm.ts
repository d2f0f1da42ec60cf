/**
 * Fast single-precision GEMM providers for the accelerated `cpu` backend:
 * ONNX Runtime's MLAS (shipped inside the `onnxruntime-node` npm package, so a
 * fresh machine needs nothing else) and a system BLAS through `Deno.dlopen`.
 * @module
 */
import { createRequire } from "node:module";
import { BackendError } from "../util/errors.ts";
import { encodeModel, encodeSingleNodeModel } from "./onnx_proto.ts";
import { openOrtCApi, type OrtIo } from "./ort_capi.ts";

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
}

/** A GEMM implementation. */
export interface Gemm {
  /** Human-readable name, with the library path or version. */
  readonly name: string;
  /**
   * Computes the batched product as a row-major `[batch, m, n]` array: into `out` when given and the
   * implementation can write there (see {@link Gemm.writesOut}), else a new one. With `bias` (length n, only where
   * {@link Gemm.foldsBias} allows it) the bias is added to every output row: BLAS accumulates the product onto it,
   * ONNX Runtime adds it to the finished product (the same bits as a separate float32 Add).
   */
  matmul(a: Float32Array, b: Float32Array, spec: GemmSpec, out?: Float32Array, bias?: Float32Array): Float32Array;
  /** Whether `matmul` writes into an `out` given for this product (so callers may pass a pooled buffer). */
  writesOut?(spec: GemmSpec): boolean;
  /** Whether `matmul` adds a row `bias` for this product. */
  foldsBias?(spec: GemmSpec): boolean;
  /** Vectorised elementwise functions the same library offers, if any. */
  readonly vectorMath?: VectorMath;
}

/** Vectorised elementwise functions over flat float32 arrays. */
export interface VectorMath {
  /** Whether the functions write into an `out` given (so callers may pass a pooled buffer); else they return a copy. */
  readonly writesOut: boolean;
  /** Exact GELU, `0.5·x·(1 + erf(x/√2))`. */
  gelu(x: Float32Array, out?: Float32Array): Float32Array;
  /** Its gradient: `dy · (Φ(x) + x·φ(x))`. */
  geluGrad(dy: Float32Array, x: Float32Array, out?: Float32Array): Float32Array;
  /** Elementwise `a op b` of two arrays of the same length (IEEE float32: bit-identical to a plain loop). */
  binary?(op: "Add" | "Sub" | "Mul" | "Div", a: Float32Array, b: Float32Array, out?: Float32Array): Float32Array;
  /**
   * `softmax(scale·x + mask)` over the last axis of `x` (`dims`); `mask`, if given, broadcasts against `x` by
   * NumPy's rules (an attention mask `[B or 1, 1, Lq or 1, Lk]` against scores `[B, H, Lq, Lk]`).
   */
  softmax?(
    x: Float32Array,
    dims: readonly number[],
    scale: number,
    mask?: { data: Float32Array; dims: readonly number[] },
    out?: Float32Array,
  ): Float32Array;
}

// ---------------------------------------------------------------- ONNX Runtime

/**
 * Runs one ONNX model: inputs in the model's order; returns its outputs in order, written into `outputs` where the
 * runner can (the C API can; the npm binding always returns its own copies).
 */
type OrtRun = (inputs: OrtIo[], outputs: OrtOut[]) => Float32Array[];
/** An output's dimensions, and the buffer to write it into (a new one when absent). */
type OrtOut = { data?: Float32Array; dims: readonly number[] };
/** Loads model bytes as an {@link OrtRun}. */
type OrtLoader = (model: Uint8Array, inputNames: string[], outputNames: string[]) => OrtRun;

interface OrtBinding {
  binding: { InferenceSession: new () => OrtNativeSession };
  initOrt: () => void;
}
interface OrtNativeSession {
  loadModel(buffer: ArrayBufferLike, byteOffset: number, byteLength: number, options: object): void;
  run(feeds: object, fetches: object, options: object): Record<string, { data: Float32Array; dims: number[] }>;
}
type OrtTensorCtor = new (type: string, data: Float32Array, dims: readonly number[]) => object;

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

/** Loads models through the `onnxruntime-node` binding (the fallback where the C API cannot be opened). */
async function bindingLoader(threads: number): Promise<{ load: OrtLoader; version: string }> {
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
  const load: OrtLoader = (model, inputNames, outputNames) => {
    const s = new native.binding.InferenceSession();
    s.loadModel(model.buffer, model.byteOffset, model.byteLength, {
      graphOptimizationLevel: "disabled",
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: "sequential",
      // As the C API sessions (src/backend/ort_capi.ts): worker threads that sleep rather than spin, no memory planner.
      enableMemPattern: false,
      extra: { session: { intra_op: { allow_spinning: "0" } } },
    });
    const fetches = Object.fromEntries(outputNames.map((n) => [n, null]));
    return (inputs) => {
      const feeds = Object.fromEntries(
        inputNames.map((n, i) => [n, new ort.Tensor("float32", inputs[i].data, inputs[i].dims)]),
      );
      const result = s.run(feeds, fetches, {});
      return outputNames.map((n) => result[n].data);
    };
  };
  return { load, version: ort.env.versions?.common ?? "" };
}

/** Loads models through ONNX Runtime's C API, writing into the caller's output buffers. */
function cApiLoader(threads: number): { load: OrtLoader; version: string } {
  const capi = openOrtCApi();
  const load: OrtLoader = (model, inputNames, outputNames) => {
    const session = capi.session(model, inputNames, outputNames, threads);
    return (inputs, outputs) => {
      const filled = outputs.map((o) => ({
        data: o.data ?? new Float32Array(o.dims.reduce((p, d) => p * d, 1)),
        dims: o.dims,
      }));
      session.run(inputs, filled);
      return filled.map((o) => o.data);
    };
  };
  return { load, version: capi.version };
}

/** The exact GELU's gradient, `dY · (Φ(X) + X·φ(X))`, as an ONNX graph. */
const GELU_GRAD_MODEL = () =>
  encodeModel({
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
  });

/** `softmax(S·X + M)` over the last axis (or `softmax(S·X)` without `M`), as an ONNX graph. */
const SOFTMAX_MODEL = (rank: number, masked: boolean) =>
  encodeModel({
    inputs: [{ name: "X", rank }, { name: "S", rank: 1 }, ...(masked ? [{ name: "M", rank }] : [])],
    outputs: [{ name: "Y", rank }],
    nodes: [
      { opType: "Mul", inputs: ["X", "S"], outputs: [masked ? "xs" : "z"] },
      ...(masked ? [{ opType: "Add", inputs: ["xs", "M"], outputs: ["z"] }] : []),
      { opType: "Softmax", inputs: ["z"], outputs: ["Y"] }, // opset 13+: over the last axis
    ],
  });

/**
 * ONNX Runtime's MLAS: products through its `FusedMatMul` and the exact GELU and its gradient. Through the C API
 * (src/backend/ort_capi.ts) where it opens, writing into pooled buffers; otherwise through the `onnxruntime-node`
 * binding, whose `run` is synchronous (the package's public API only wraps it in a promise), which a tfjs kernel
 * needs, and which returns fresh copies.
 * @param options the intra-op thread count (0 or none: one per core); `api: "binding"` forces the binding
 * @returns a synchronous GEMM backed by ONNX Runtime
 * @throws {BackendError} when onnxruntime-node cannot be loaded
 */
export async function createOrtGemm(options: { threads?: number; api?: "c" | "binding" } = {}): Promise<Gemm> {
  const threads = options.threads ?? 0;
  let runtime: { load: OrtLoader; version: string } | undefined;
  let via = "C API";
  if (options.api !== "binding") {
    try {
      runtime = cApiLoader(threads);
    } catch (err) {
      if (options.api === "c") throw err;
    }
  }
  if (!runtime) {
    runtime = await bindingLoader(threads);
    via = "npm binding";
  }
  const { load } = runtime;
  const writes = via === "C API";
  // One ONNX Runtime session per model, loaded on first use (a product per transposition, a softmax per rank, …).
  const sessions = new Map<string, OrtRun>();
  const session = (key: string, model: () => Uint8Array, inputs: string[], outputs: string[]): OrtRun => {
    let run = sessions.get(key);
    if (!run) sessions.set(key, run = load(model(), inputs, outputs));
    return run;
  };
  // `A·B`, or `A·B + bias` over the last axis: the product, then ONNX Runtime's vectorised Add in the same call. The
  // same float32 sums as adding the bias afterwards, without a JavaScript pass over every biased product's output.
  const productFor = (transA: boolean, transB: boolean, bias: boolean): OrtRun =>
    session(
      `FusedMatMul ${+transA}${+transB}${bias ? " + bias" : ""}`,
      () =>
        encodeModel({
          inputs: [{ name: "A", rank: 3 }, { name: "B", rank: 3 }, ...(bias ? [{ name: "C", rank: 1 }] : [])],
          outputs: [{ name: "Y", rank: 3 }],
          nodes: [
            {
              opType: "FusedMatMul",
              domain: "com.microsoft",
              inputs: ["A", "B"],
              outputs: [bias ? "AB" : "Y"],
              attributes: [
                { name: "transA", int: transA ? 1 : 0 },
                { name: "transB", int: transB ? 1 : 0 },
                { name: "alpha", float: 1 },
              ],
            },
            ...(bias ? [{ opType: "Add", inputs: ["AB", "C"], outputs: ["Y"] }] : []),
          ],
        }),
      ["A", "B", ...(bias ? ["C"] : [])],
      ["Y"],
    );
  const vectorMath: VectorMath = {
    writesOut: writes,
    gelu(x, out) {
      // com.microsoft Gelu is the exact, erf-based GELU (MLAS's vectorised erf).
      const gelu = session(
        "Gelu",
        () =>
          encodeSingleNodeModel({
            opType: "Gelu",
            domain: "com.microsoft",
            inputs: [{ name: "X", rank: 1 }],
            outputs: [{ name: "Y", rank: 1 }],
          }),
        ["X"],
        ["Y"],
      );
      return gelu([{ data: x, dims: [x.length] }], [{ data: out, dims: [x.length] }])[0];
    },
    geluGrad(dy, x, out) {
      const geluGrad = session("GeluGrad", GELU_GRAD_MODEL, ["dY", "X"], ["dX"]);
      return geluGrad([{ data: dy, dims: [dy.length] }, { data: x, dims: [x.length] }], [{
        data: out,
        dims: [x.length],
      }])[0];
    },
    binary(op, a, b, out) {
      const run = session(
        op,
        () =>
          encodeModel({
            inputs: [{ name: "A", rank: 1 }, { name: "B", rank: 1 }],
            outputs: [{ name: "Y", rank: 1 }],
            nodes: [{ opType: op, inputs: ["A", "B"], outputs: ["Y"] }],
          }),
        ["A", "B"],
        ["Y"],
      );
      return run([{ data: a, dims: [a.length] }, { data: b, dims: [b.length] }], [{ data: out, dims: [a.length] }])[0];
    },
    softmax(x, dims, scale, mask, out) {
      const run = session(
        `Softmax rank ${dims.length}${mask ? " masked" : ""}`,
        () => SOFTMAX_MODEL(dims.length, !!mask),
        ["X", "S", ...(mask ? ["M"] : [])],
        ["Y"],
      );
      return run([
        { data: x, dims },
        { data: Float32Array.of(scale), dims: [1] },
        ...(mask ? [{ data: mask.data, dims: mask.dims }] : []),
      ], [{ data: out, dims }])[0];
    },
  };
  return {
    name: `onnxruntime-node ${runtime.version} (MLAS, ${via})`.replace("  ", " "),
    vectorMath,
    writesOut: () => writes,
    foldsBias: () => true,
    matmul(a, b, spec, out, bias) {
      const { batch, batchA, batchB, m, n, k, transA, transB } = spec;
      return productFor(transA, transB, !!bias)(
        [
          { data: a, dims: [batchA, transA ? k : m, transA ? m : k] },
          { data: b, dims: [batchB, transB ? n : k, transB ? k : n] },
          ...(bias ? [{ data: bias, dims: [n] }] : []),
        ],
        [{ data: out, dims: [batch, m, n] }],
      )[0];
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
      foldsBias: () => true,
      matmul(a, b, spec, out, bias) {
        const { batch, batchA, batchB, m, n, k, transA, transB } = spec;
        const c = out ?? new Float32Array(batch * m * n);
        // A bias is folded in by starting C at the bias rows and letting the GEMM add A·B (beta = 1).
        if (bias) { for (let r = 0; r < batch * m; r++) c.set(bias, r * n); }
        const beta = bias ? 1 : 0;
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
    writesOut: (spec) => large(spec) || !!ort.writesOut?.(spec),
    foldsBias: (spec) => large(spec) || !!ort.foldsBias?.(spec),
    matmul(a, b, spec, out, bias) {
      return large(spec) ? blas.matmul(a, b, spec, out, bias) : ort.matmul(a, b, spec, out, bias);
    },
  };
}
