/**
 * Compute backends: one call sets up TensorFlow.js on the fastest available
 * backend and says which. On a CPU the `cpu` backend gets matrix products from
 * ONNX Runtime's MLAS or a system BLAS instead of tfjs's JavaScript loops,
 * fused kernels for the transformer's elementwise work (on every core, through a
 * pool of worker threads), a pool that recycles kernel output buffers (so V8
 * is not made to collect garbage every 64 MB), and a backward pass that frees
 * saved tensors as it goes, as PyTorch does.
 *
 * @example
 * ```ts
 * import { setupBackend, tensorflow as tf } from "@retfiner/retfiner/backend";
 * const info = await setupBackend();
 * const y = tf.matMul(tf.ones([2, 3]), tf.ones([3, 4]));
 * if (y.shape.join() !== "2,4" || y.dataSync()[0] !== 3) throw new Error(`${info.name}: ${y.shape}`);
 * ```
 * @module
 */
export { tensorflow } from "./tf.ts";
export {
  type BackendChoice,
  type BackendInfo,
  type BackendName,
  type BackendOptions,
  BACKENDS,
  currentBackend,
  parseBackendChoice,
  setupBackend,
} from "./setup.ts";
export {
  createBlasGemm,
  createOrtGemm,
  defaultBlasCandidates,
  type Gemm,
  type GemmSpec,
  HYBRID_BLAS_MIN,
  hybridGemm,
  type VectorMath,
} from "./gemm.ts";
export { activeMatMulGemm, installMatMulKernels, restoreMatMulKernels } from "./kernels.ts";
export type { Tensor, Variable } from "./tf.ts";
export {
  allocFloat32,
  type BufferPoolStats,
  bufferPoolStats,
  drainBufferPool,
  installBufferPool,
  uninstallBufferPool,
} from "./pool.ts";
export { installLeanTape, leanTapeFreed, uninstallLeanTape } from "./lean_tape.ts";
export { sharedJobs, startThreads, stopThreads, threadCount } from "./threads.ts";
export {
  fusedCrossEntropy,
  fusedDropout,
  fusedGelu,
  fusedLayerNorm,
  fusedMergeHeads,
  fusedResidual,
  fusedSoftmax,
  fusedSplitHeads,
  installFusedKernels,
  uninstallFusedKernels,
} from "./fused.ts";
