/**
 * Data: B-scan decoding and per-model preprocessing, the authors' probing
 * augmentations, image-report manifests, probing datasets, batching, the
 * synthetic OCT benchmark, and report tokenization.
 *
 * @example
 * ```ts ignore
 * import { loadGreyImage, refinementSpec, toModelInput } from "@retfiner/retfiner/dataset";
 * const img = await loadGreyImage("scan.png");
 * const x = toModelInput(img, refinementSpec(224, { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }));
 * console.log(x.length); // 3 * 224 * 224
 * ```
 * @module
 */
export {
  bertTokenizerJson,
  buildWordPieceVocab,
  DEFAULT_MAX_LENGTH,
  loadTokenizer,
  type TextTokenizer,
  type TokenBatch,
  tokenizerFromJson,
  tokenizerFromVocab,
} from "./tokenizer.ts";
export {
  checkImageFiles,
  decodeBmp,
  decodeGreyImage,
  decodeNpyImage,
  DEFAULT_MAX_PIXELS,
  encodePng,
  expandVolumes,
  type GreyImage,
  IMAGE_EXTENSIONS,
  imageDefaults,
  type ImageFormat,
  type ImageInfo,
  type ImageOptions,
  type ImageSetOptions,
  inspectImage,
  isImagePath,
  loadGreyImage,
  parseIntensityRange,
  parseVolumeSlice,
  setImageDefaults,
  setImageNoticeHandler,
  sniffImageFormat,
  splitSlicePath,
  type VolumeSlice,
  volumeSlicePath,
} from "./image.ts";
export { resizeGrey, type ResizeMode } from "./resize.ts";
export { affine, type AffineParams, augmentProbe, inverseAffineMatrix, sampleAffine } from "./augment.ts";
export { type PreprocessSpec, probingSpec, refinementSpec, toModelInput } from "./preprocess.ts";
export { type CsvOptions, type CsvRow, decodeText, decodeUtf8, parseCsv } from "./csv.ts";
export {
  assignSplits,
  AUTHORS_LAYOUT,
  checkValidationSplit,
  type Manifest,
  type ManifestOptions,
  type PairRecord,
  readPairManifest,
  type SkippedRow,
} from "./manifest.ts";
export {
  classCounts,
  formatClassCounts,
  isHiddenEntry,
  type LabelledImage,
  listImageFiles,
  listTaskFolders,
  type ProbeDataset,
  type ProbeDatasetOptions,
  readImageFolderDataset,
  readLabelCsv,
  readProbeDataset,
  type Split,
  SPLITS,
} from "./folders.ts";
export { batchIndices, type ImageBatch, InputCache, loadImageBatch, prefetch } from "./batches.ts";
export * from "./synth/mod.ts";
