/**
 * ONNX Runtime's C API through `Deno.dlopen`: one-node sessions whose inputs
 * and outputs are the caller's own `Float32Array`s.
 *
 * Why not the `onnxruntime-node` binding alone: its `run` always copies every
 * output into a freshly allocated JavaScript array (a pre-allocated output is
 * written and then copied again). Fresh memory must be faulted in page by page,
 * which costs about 12 µs a page on this project's machines (a 1.8 MB product
 * output: 5.4 ms to fault in, 1.0 ms to compute); the fresh copies were 56 % of
 * the page faults of the stand-ins' refinement step. Here ONNX Runtime writes
 * straight into a buffer from the pool (src/backend/pool.ts), so MLAS's
 * products and elementwise kernels cost what they compute.
 *
 * The library is the one the `onnxruntime-node` npm package ships (so nothing
 * else is installed). Functions are looked up in the `OrtApi` table by their
 * position, which ONNX Runtime never changes between releases (its header,
 * `onnxruntime_c_api.h`, only appends); we ask for API version 13, which has
 * every function used here.
 * @module
 */
import { BackendError } from "../util/errors.ts";

/** The `OrtApi` version requested: the oldest with every function used here. */
const API_VERSION = 13;

/** Positions in `struct OrtApi` (onnxruntime_c_api.h, declaration order, fixed across releases). */
const FN = {
  GetErrorMessage: 2,
  CreateEnv: 3,
  CreateSessionFromArray: 8,
  Run: 9,
  CreateSessionOptions: 10,
  SetSessionExecutionMode: 13,
  DisableMemPattern: 17,
  SetSessionGraphOptimizationLevel: 23,
  SetIntraOpNumThreads: 24,
  SetInterOpNumThreads: 25,
  CreateTensorWithDataAsOrtValue: 49,
  CreateCpuMemoryInfo: 69,
  ReleaseStatus: 93,
  ReleaseSession: 95,
  ReleaseValue: 96,
  ReleaseSessionOptions: 100,
  AddSessionConfigEntry: 130,
} as const;

/** Errors come back as exceptions with ONNX Runtime's message, so its own log prints only fatal ones. */
const ORT_LOGGING_LEVEL_FATAL = 4;
const ORT_DISABLE_ALL = 0;
const ORT_SEQUENTIAL = 0;
const ORT_DEVICE_ALLOCATOR = 0;
const ORT_MEM_TYPE_DEFAULT = 0;
const ONNX_FLOAT = 1;

/** A float32 tensor the caller owns: row-major values and their dimensions. */
export interface OrtIo {
  /** The values; `dims`' product elements, never empty. */
  data: Float32Array;
  /** The dimensions. */
  dims: readonly number[];
}

/** A loaded one-node (or small) model. */
export interface OrtCSession {
  /**
   * Runs the model on `inputs` (in the model's input order) and writes its outputs into `outputs`' buffers (in the
   * model's output order). Synchronous: it returns when ONNX Runtime has finished.
   * @throws {BackendError} with ONNX Runtime's message (a shape it rejects, say)
   */
  run(inputs: readonly OrtIo[], outputs: readonly OrtIo[]): void;
}

/** ONNX Runtime's C API, opened. */
export interface OrtCApi {
  /** The library's path. */
  readonly path: string;
  /** ONNX Runtime's version, e.g. `1.30.0`. */
  readonly version: string;
  /**
   * Loads model bytes as a session with `threads` intra-op threads (0: one per core), graph optimisation off, and
   * worker threads that sleep rather than spin while they wait (see gemm.ts for why).
   * @param model ONNX model bytes (onnx_proto.ts)
   * @param inputNames the model's input names, in order
   * @param outputNames the model's output names, in order
   * @param threads intra-op threads
   * @returns the session
   * @throws {BackendError} when ONNX Runtime rejects the model
   */
  session(
    model: Uint8Array,
    inputNames: readonly string[],
    outputNames: readonly string[],
    threads: number,
  ): OrtCSession;
}

type Ptr = Deno.PointerValue;
const cString = (s: string) => new TextEncoder().encode(`${s}\0`);

/**
 * The directory of the `onnxruntime-node` package's native libraries for this platform, or undefined.
 * @returns an absolute path, or undefined when the package does not resolve to files here
 */
function nativeDir(): string | undefined {
  let url: string;
  try {
    url = import.meta.resolve("onnxruntime-node");
  } catch {
    return undefined;
  }
  if (!url.startsWith("file:")) return undefined;
  const dist = new URL(".", url);
  const arch = Deno.build.arch === "aarch64" ? "arm64" : "x64";
  const platform = Deno.build.os === "windows" ? "win32" : Deno.build.os;
  return decodeURIComponent(new URL(`../bin/napi-v6/${platform}/${arch}/`, dist).pathname);
}

/**
 * Finds ONNX Runtime's shared library inside the `onnxruntime-node` package.
 * @returns its path
 * @throws {BackendError} when the package or the library is not there
 */
export function findOrtLibrary(): string {
  const dir = nativeDir();
  if (!dir) throw new BackendError("onnxruntime-node does not resolve to files on this machine");
  try {
    for (const e of Deno.readDirSync(dir)) {
      if (/^(lib)?onnxruntime(\.so\.\d+|\.\d.*\.dylib|\.dll)$/.test(e.name)) return `${dir}${e.name}`;
    }
  } catch {
    // Not there: the error below.
  }
  throw new BackendError(`no ONNX Runtime library in ${dir}`);
}

let opened: OrtCApi | undefined;

/**
 * Opens ONNX Runtime's C API (once per process).
 * @param path the library (default: the one in the `onnxruntime-node` package)
 * @returns the API
 * @throws {BackendError} when the library cannot be opened or lacks API version 13
 */
export function openOrtCApi(path?: string): OrtCApi {
  if (opened && (path === undefined || path === opened.path)) return opened;
  const libPath = path ?? findOrtLibrary();
  let lib;
  try {
    lib = Deno.dlopen(libPath, { OrtGetApiBase: { parameters: [], result: "pointer" } });
  } catch (err) {
    throw new BackendError(`${libPath}: ${(err as Error).message.split("\n")[0]}`);
  }
  const base = lib.symbols.OrtGetApiBase();
  if (!base) throw new BackendError(`${libPath}: OrtGetApiBase returned null`);
  const getApi = new Deno.UnsafeFnPointer(new Deno.UnsafePointerView(base).getPointer(0)!, {
    parameters: ["u32"],
    result: "pointer",
  });
  const api = getApi.call(API_VERSION);
  if (!api) throw new BackendError(`${libPath}: ONNX Runtime does not offer C API version ${API_VERSION}`);
  const getVersion = new Deno.UnsafeFnPointer(new Deno.UnsafePointerView(base).getPointer(8)!, {
    parameters: [],
    result: "pointer",
  });
  const version = Deno.UnsafePointerView.getCString(getVersion.call()!);
  const table = new Deno.UnsafePointerView(api);
  const fn = <const D extends Deno.ForeignFunction>(name: keyof typeof FN, def: D) =>
    new Deno.UnsafeFnPointer(table.getPointer(FN[name] * 8)!, def);

  const statusFn = <const P extends readonly Deno.NativeType[]>(name: keyof typeof FN, parameters: P) =>
    fn(name, { parameters, result: "pointer" } as const);
  const getErrorMessage = fn("GetErrorMessage", { parameters: ["pointer"], result: "pointer" });
  const releaseStatus = fn("ReleaseStatus", { parameters: ["pointer"], result: "void" });
  const releaseValue = fn("ReleaseValue", { parameters: ["pointer"], result: "void" });
  const createEnv = statusFn("CreateEnv", ["i32", "buffer", "buffer"]);
  const createSessionOptions = statusFn("CreateSessionOptions", ["buffer"]);
  const setExecutionMode = statusFn("SetSessionExecutionMode", ["pointer", "i32"]);
  const disableMemPattern = statusFn("DisableMemPattern", ["pointer"]);
  const setOptimization = statusFn("SetSessionGraphOptimizationLevel", ["pointer", "i32"]);
  const setIntraOp = statusFn("SetIntraOpNumThreads", ["pointer", "i32"]);
  const setInterOp = statusFn("SetInterOpNumThreads", ["pointer", "i32"]);
  const addConfig = statusFn("AddSessionConfigEntry", ["pointer", "buffer", "buffer"]);
  const createSession = statusFn("CreateSessionFromArray", ["pointer", "buffer", "usize", "pointer", "buffer"]);
  const releaseSessionOptions = fn("ReleaseSessionOptions", { parameters: ["pointer"], result: "void" });
  const createCpuMemoryInfo = statusFn("CreateCpuMemoryInfo", ["i32", "i32", "buffer"]);
  const createTensor = statusFn("CreateTensorWithDataAsOrtValue", [
    "pointer",
    "buffer",
    "usize",
    "buffer",
    "usize",
    "i32",
    "buffer",
  ]);
  const run = statusFn("Run", ["pointer", "pointer", "buffer", "buffer", "usize", "buffer", "usize", "buffer"]);

  const check = (status: Ptr, what: string) => {
    if (status === null) return;
    const message = Deno.UnsafePointerView.getCString(getErrorMessage.call(status)!);
    releaseStatus.call(status);
    throw new BackendError(`ONNX Runtime ${what}: ${message}`);
  };
  const slot = new BigUint64Array(1);
  const outPtr = (status: Ptr, what: string): Ptr => {
    check(status, what);
    return Deno.UnsafePointer.create(slot[0]);
  };

  const env = outPtr(createEnv.call(ORT_LOGGING_LEVEL_FATAL, cString("retfiner"), slot), "CreateEnv");
  const memoryInfo = outPtr(
    createCpuMemoryInfo.call(ORT_DEVICE_ALLOCATOR, ORT_MEM_TYPE_DEFAULT, slot),
    "CreateCpuMemoryInfo",
  );

  const session = (
    model: Uint8Array,
    inputNames: readonly string[],
    outputNames: readonly string[],
    threads: number,
  ) => {
    const options = outPtr(createSessionOptions.call(slot), "CreateSessionOptions");
    let handle: Ptr;
    try {
      check(setOptimization.call(options, ORT_DISABLE_ALL), "SetSessionGraphOptimizationLevel");
      check(setExecutionMode.call(options, ORT_SEQUENTIAL), "SetSessionExecutionMode");
      check(setIntraOp.call(options, threads), "SetIntraOpNumThreads");
      check(setInterOp.call(options, 1), "SetInterOpNumThreads");
      // One session serves products of every shape, so the memory-pattern planner would re-plan at almost every call.
      check(disableMemPattern.call(options), "DisableMemPattern");
      check(
        addConfig.call(options, cString("session.intra_op.allow_spinning"), cString("0")),
        "AddSessionConfigEntry",
      );
      handle = outPtr(
        createSession.call(env, model, BigInt(model.byteLength), options, slot),
        "CreateSessionFromArray",
      );
    } finally {
      releaseSessionOptions.call(options);
    }
    // Name strings and the arrays of pointers to them live as long as the session.
    const names = (list: readonly string[]) => {
      const strings = list.map(cString);
      return {
        strings,
        ptrs: BigUint64Array.from(strings.map((s) => BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(s))))),
      };
    };
    const ins = names(inputNames);
    const outs = names(outputNames);
    const inValues = new BigUint64Array(inputNames.length);
    const outValues = new BigUint64Array(outputNames.length);
    const valueSlot = new BigUint64Array(1);
    const toValue = (io: OrtIo): bigint => {
      if (io.data.length === 0) {
        throw new BackendError("ONNX Runtime session: empty tensors are not passed to ONNX Runtime");
      }
      const shape = BigInt64Array.from(io.dims.map(BigInt));
      check(
        createTensor.call(
          memoryInfo,
          io.data,
          BigInt(io.data.byteLength),
          shape,
          BigInt(shape.length),
          ONNX_FLOAT,
          valueSlot,
        ),
        "CreateTensorWithDataAsOrtValue",
      );
      return valueSlot[0];
    };
    return {
      run(inputs: readonly OrtIo[], outputs: readonly OrtIo[]) {
        if (inputs.length !== inputNames.length || outputs.length !== outputNames.length) {
          throw new BackendError(
            `ONNX Runtime session: ${inputs.length} inputs and ${outputs.length} outputs given, the model has ` +
              `${inputNames.length} and ${outputNames.length}`,
          );
        }
        inValues.fill(0n);
        outValues.fill(0n);
        try {
          inputs.forEach((io, i) => inValues[i] = toValue(io));
          outputs.forEach((io, i) => outValues[i] = toValue(io));
          check(
            run.call(
              handle,
              null,
              ins.ptrs,
              inValues,
              BigInt(inputs.length),
              outs.ptrs,
              BigInt(outputs.length),
              outValues,
            ),
            "Run",
          );
        } finally {
          for (const v of [...inValues, ...outValues]) if (v !== 0n) releaseValue.call(Deno.UnsafePointer.create(v));
        }
      },
    };
  };
  opened = { path: libPath, version, session };
  return opened;
}
