/**
 * The GPU path: TensorFlow.js's WebGPU backend (`@tensorflow/tfjs-backend-webgpu`, from npm) on Deno's built-in
 * WebGPU (`navigator.gpu`: Vulkan on Linux, Metal on macOS, D3D12 on Windows). Nothing is downloaded beyond npm.
 *
 * - A hardware adapter is used by `auto`; a software one (Mesa's llvmpipe/lavapipe, SwiftShader) only when forced
 *   (`--backend webgpu`), with a line saying so: it is correct but slower than the CPU backends, which makes it the
 *   way CI tests the GPU path on machines without a GPU.
 * - The device gets the adapter's largest buffer limits (tfjs requests them). A tensor larger than one storage
 *   binding would otherwise compute silently wrong (WebGPU validation errors are not thrown: a 160 MB `tf.ones` on
 *   llvmpipe sums to 0); {@link installWebGpuGuards} turns that into a {@link BackendError} naming the program and
 *   the shape that does not fit.
 * @module
 */
import { BackendError } from "../util/errors.ts";
import { tf } from "./tf.ts";

/** What the WebGPU adapter is. */
export interface WebGpuAdapterReport {
  /** The driver's description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)" or a GPU's name. */
  description: string;
  /** Vendor (a PCI id or a name, as the driver gives it). */
  vendor: string;
  /** Architecture, when the driver gives one. */
  architecture: string;
  /** A CPU implementation of WebGPU (llvmpipe, lavapipe, SwiftShader, WARP). */
  software: boolean;
  /** Largest buffer, bytes. */
  maxBufferSize: number;
  /** Largest storage binding (the largest tensor a shader can read or write), bytes. */
  maxStorageBufferBindingSize: number;
}

const SOFTWARE = /llvmpipe|lavapipe|swiftshader|software|warp|microsoft basic render/i;

/**
 * Whether an adapter is a software rasteriser rather than a GPU.
 * @param info the adapter's info (`GPUAdapter.info`)
 * @returns true for llvmpipe, lavapipe, SwiftShader and the like
 */
export function isSoftwareAdapter(info: { description?: string; device?: string; architecture?: string }): boolean {
  return SOFTWARE.test(`${info.description ?? ""} ${info.device ?? ""} ${info.architecture ?? ""}`);
}

/**
 * Finds the WebGPU adapter tfjs would use (high-performance preference), without creating a device.
 * @returns the adapter's report
 * @throws {BackendError} when this Deno has no WebGPU or no adapter is found (with what to install)
 */
export async function probeWebGpu(): Promise<WebGpuAdapterReport> {
  // Mesa's Vulkan loader prints "XDG_RUNTIME_DIR is invalid or not set" on headless machines; a private directory
  // keeps that noise out of every run (it is only used for window-system sockets, which compute never opens).
  if (!Deno.env.get("XDG_RUNTIME_DIR") && Deno.build.os === "linux") {
    const dir = `${Deno.env.get("TMPDIR") ?? "/tmp"}/retfiner-xdg-${Deno.uid() ?? "user"}`;
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.env.set("XDG_RUNTIME_DIR", dir);
  }
  const gpu = (navigator as Navigator & { gpu?: GPU }).gpu;
  if (!gpu) throw new BackendError("this Deno has no WebGPU (navigator.gpu is undefined)");
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    throw new BackendError(
      "no WebGPU adapter: install the GPU's Vulkan driver on Linux (Debian: mesa-vulkan-drivers gives a software " +
        "one), Metal comes with macOS, D3D12 with Windows",
    );
  }
  const info = adapter.info;
  return {
    description: info.description || info.device || "unknown adapter",
    vendor: String(info.vendor ?? ""),
    architecture: String(info.architecture ?? ""),
    software: isSoftwareAdapter(info),
    maxBufferSize: adapter.limits.maxBufferSize,
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
  };
}

/** The parts of tfjs's WebGPU backend the guards wrap. */
type WebGpuBackendInternals = {
  device: GPUDevice;
  runWebGPUProgram: (
    program: { outputShape: number[]; constructor: { name: string } },
    inputs: TensorInfo[],
    ...rest: unknown[]
  ) => unknown;
  write: (values: unknown, shape: number[], dtype: string) => unknown;
  __retfinerGuarded?: boolean;
};
type TensorInfo = { shape: number[]; dtype: string };

/** Longest reduction (elements per output value) refused beyond; see {@link installWebGpuGuards}. */
const MAX_REDUCTION = 2 ** 24;

const BYTES: Record<string, number> = { float32: 4, int32: 4, bool: 4, complex64: 8, string: 0 };

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 1)} MiB`;
}

/**
 * Refuses, before it runs, any WebGPU program whose output or input is larger than the device's largest storage
 * binding, any upload larger than its largest buffer, and any reduction longer than 2^24 elements, naming the
 * program and the shape. Without this WebGPU reports the validation error asynchronously (or, for long reductions,
 * nothing at all) and the result is silently wrong.
 * @throws {BackendError} (from the wrapped calls) naming the program, the shape, its size and the limit
 */
export function installWebGpuGuards(): void {
  const backend = tf.backend() as unknown as WebGpuBackendInternals;
  if (tf.getBackend() !== "webgpu" || backend.__retfinerGuarded) return;
  const limits = backend.device.limits;
  const binding = limits.maxStorageBufferBindingSize;
  const check = (what: string, shape: number[], dtype: string, limit: number, limitName: string) => {
    const bytes = shape.reduce((a, b) => a * b, 1) * (BYTES[dtype] ?? 4);
    if (bytes > limit) {
      throw new BackendError(
        `WebGPU: ${what} [${shape.join(", ")}] (${dtype}, ${mib(bytes)}) exceeds this device's ${limitName} ` +
          `(${mib(limit)}); lower the batch size, or use a GPU whose adapter allows larger buffers`,
      );
    }
  };
  const run = backend.runWebGPUProgram.bind(backend);
  backend.runWebGPUProgram = (program, inputs, ...rest) => {
    const name = program.constructor?.name ?? "program";
    // tfjs-webgpu 4.22's reductions go wrong silently past about 2^25 elements in one reduction (measured on
    // llvmpipe: a sum of 33,550,336 ones gave 4,193,792); 2^24 is right. Refuse long ones rather than answer wrong.
    if (/^(Reduce|ArgMinMax)Program$/.test(name)) {
      const length = inputs[0]?.shape.at(-1) ?? 0;
      if (length > MAX_REDUCTION) {
        throw new BackendError(
          `WebGPU: ${name} over ${length} elements of [${inputs[0].shape.join(", ")}] exceeds the ${MAX_REDUCTION} ` +
            "this backend reduces correctly (tfjs-webgpu 4.22 sums longer rows wrongly); reduce in parts, e.g. " +
            "reshape to [-1, 1024] and reduce twice",
        );
      }
    }
    check(
      `the output of ${name}`,
      program.outputShape,
      String(rest[0] ?? "float32"),
      binding,
      "maxStorageBufferBindingSize",
    );
    inputs.forEach((t, i) => check(`input ${i} of ${name}`, t.shape, t.dtype, binding, "maxStorageBufferBindingSize"));
    return run(program, inputs, ...rest);
  };
  const write = backend.write.bind(backend);
  backend.write = (values, shape, dtype) => {
    check("a tensor", shape, dtype, Math.min(binding, limits.maxBufferSize), "maxStorageBufferBindingSize");
    return write(values, shape, dtype);
  };
  backend.__retfinerGuarded = true;
}

/**
 * Loads `@tensorflow/tfjs-backend-webgpu`, makes `webgpu` the tfjs backend and guards it.
 * @param options `allowSoftware`: accept a software adapter (forced choice); `log` gets a notice when it is one
 * @returns the adapter's report
 * @throws {BackendError} no WebGPU, no adapter, a software adapter when not allowed, or a backend that did not start
 */
export async function useWebGpu(
  options: { allowSoftware?: boolean; log?: ((line: string) => void) | null } = {},
): Promise<WebGpuAdapterReport> {
  const report = await probeWebGpu();
  if (report.software && !options.allowSoftware) {
    throw new BackendError(
      `the WebGPU adapter is software (${report.description}): slower than the CPU backends; force it with ` +
        `--backend webgpu`,
    );
  }
  await import("@tensorflow/tfjs-backend-webgpu");
  if (!(await tf.setBackend("webgpu"))) throw new BackendError(`tfjs "webgpu" backend did not initialise`);
  installWebGpuGuards();
  if (report.software) {
    options.log?.(
      `notice: WebGPU runs on a software adapter (${report.description}): results are exact, speed is not`,
    );
  }
  return report;
}
