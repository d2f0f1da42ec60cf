/**
 * Checkpoint and array I/O without Python: a safe PyTorch `.pth` reader and
 * writer, safetensors, `.npy`, and the maps from each foundation model's
 * release layout to this project's parameter names.
 *
 * @example
 * ```ts ignore
 * import { mapVisionWeights, readWeightFile } from "@retfiner/retfiner/io";
 * const top = readWeightFile("RETFound_oct_weights.pth");
 * const { layout, tensors, dropped } = mapVisionWeights(top);
 * console.log(layout, tensors.size, dropped.length);
 * ```
 * @module
 */
export * from "./tensor.ts";
export { MAX_VIEW_EXPANSION_BYTES, type PthContents, readPth, type ReadPthOptions, STORAGE_DTYPES } from "./pth.ts";
export { encodePth, type PthValue, writePth, type WritePthOptions } from "./pth_writer.ts";
export { CheckpointError, RetfinerError } from "../util/errors.ts";
export { encodeSafetensors, readSafetensors, type SafetensorsContents, writeSafetensors } from "./safetensors.ts";
export {
  encodeNpy,
  NPY_HEADER_BYTES,
  type NpyArray,
  type NpyHeader,
  npyToTensor,
  parseNpy,
  parseNpyHeader,
  readNpy,
  writeNpy,
} from "./npy.ts";
export {
  DEFAULT_PICKLE_LIMITS,
  PickleLimitError,
  type PickleLimits,
  PickleTruncatedError,
  plainClass,
  type PyGlobal,
  type PyObject,
  unpickle,
  type UnpickleOptions,
  UnsafePickleError,
} from "./pickle.ts";
export {
  describeUnwrap,
  detectVisionLayout,
  mapBertWeights,
  type MappedWeights,
  mapVisionWeights,
  readWeightFile,
  readWeights,
  type UnwrappedStateDict,
  unwrapStateDict,
  type VisionLayout,
  type WeightFileContents,
} from "./weights.ts";
export { crc32 } from "./crc32.ts";
export { buildZip, type ZipEntry, type ZipInput, ZipReader } from "./zip.ts";
export { type ByteSource, fileSource, memorySource } from "./source.ts";
