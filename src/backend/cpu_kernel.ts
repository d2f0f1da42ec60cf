/**
 * What our kernels need of tfjs's `cpu` backend, typed once, and one way to
 * override its kernels and put tfjs's own back. tfjs does not export the
 * backend's internal types, so each kernel file used to declare them itself;
 * the overrides of elementwise.ts, fused.ts and kernels.ts all go through
 * {@link overrideCpuKernel} and {@link restoreCpuKernels}.
 * @module
 */
import { tf } from "./tf.ts";
import { BackendError } from "../util/errors.ts";

/** A tensor as kernels see it: a handle into the backend's data store. */
export type TensorInfo = { dataId: object; shape: number[]; dtype: string };

/** The `cpu` backend's methods our kernels call. */
export type CpuBackend = {
  data: { get(id: object): { values: unknown } };
  makeTensorInfo(shape: number[], dtype: string, values?: unknown): TensorInfo;
  disposeIntermediateTensorInfo(info: TensorInfo): void;
};

/** A kernel's arguments. */
export type KernelArgs = {
  inputs: Record<string, TensorInfo | undefined>;
  backend: CpuBackend;
  attrs?: Record<string, unknown>;
};

/** A kernel: one output, or several (SplitV). */
export type KernelFunc = (args: KernelArgs) => TensorInfo | TensorInfo[];

/** tfjs's own kernels that one file replaced, by name, so they can be called as fallbacks and restored. */
export type OriginalKernels = Map<string, tf.KernelConfig>;

/**
 * Registers `fn` as the `cpu` kernel `name`, first keeping tfjs's own in `originals` (once).
 * @param originals where the replaced kernels are kept
 * @param name tfjs kernel name (`Add`, `BatchMatMul`, …)
 * @param fn the replacement
 * @throws {BackendError} when tfjs has no such `cpu` kernel (the cpu backend is not loaded)
 */
export function overrideCpuKernel(originals: OriginalKernels, name: string, fn: unknown): void {
  if (!originals.has(name)) {
    const original = tf.getKernel(name, "cpu");
    if (!original) throw new BackendError(`tfjs cpu kernel ${name} is not registered; is the cpu backend loaded?`);
    originals.set(name, original);
  }
  tf.unregisterKernel(name, "cpu");
  tf.registerKernel({ kernelName: name, backendName: "cpu", kernelFunc: fn as tf.KernelFunc });
}

/**
 * Registers a kernel of our own (no tfjs original), replacing an earlier registration of it.
 * @param name kernel name (`RetfinerLayerNorm`, …)
 * @param fn the kernel
 */
export function registerCpuKernel(name: string, fn: unknown): void {
  if (tf.getKernel(name, "cpu")) tf.unregisterKernel(name, "cpu");
  tf.registerKernel({ kernelName: name, backendName: "cpu", kernelFunc: fn as tf.KernelFunc });
}

/**
 * Puts tfjs's own kernels back and forgets them.
 * @param originals the kernels {@link overrideCpuKernel} kept
 */
export function restoreCpuKernels(originals: OriginalKernels): void {
  for (const [name, config] of originals) {
    tf.unregisterKernel(name, "cpu");
    tf.registerKernel(config);
  }
  originals.clear();
}

/**
 * Calls tfjs's own kernel `name` (for the dtypes and layouts ours leave to it).
 * @param originals the kernels {@link overrideCpuKernel} kept
 * @param name kernel name
 * @param args the arguments our kernel received
 * @returns what tfjs's kernel returns
 */
export function callOriginal<T extends TensorInfo | TensorInfo[] = TensorInfo>(
  originals: OriginalKernels,
  name: string,
  args: KernelArgs,
): T {
  return (originals.get(name)!.kernelFunc as unknown as (a: KernelArgs) => T)(args);
}
