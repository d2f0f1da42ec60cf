/** The image flags shared by `encode`, `probe` and `refine`: pixel limit, intensity range, volume slice. */
import {
  DEFAULT_MAX_PIXELS,
  parseIntensityRange,
  parseVolumeSlice,
  setImageDefaults,
  type VolumeSlice,
} from "../dataset/mod.ts";
import type { FlagSpec, FlagValues } from "../util/cli.ts";
import { DatasetError, UsageError } from "../util/errors.ts";

/** `--max-pixels`, `--intensity-range`, `--slice`. */
export const IMAGE_FLAGS: Record<string, FlagSpec> = {
  "max-pixels": {
    type: "string",
    valueName: "<n>",
    description:
      `Largest width x height of an image, checked from its header before decoding (default ${DEFAULT_MAX_PIXELS} ` +
      "= 4096x4096, or RETFINER_MAX_PIXELS).",
  },
  "intensity-range": {
    type: "string",
    valueName: "<lo,hi>",
    description: "Raw sample values mapped to 0 and 1, e.g. 0,4095 for 12-bit data stored in 16 bits " +
      "(default: by type; /255, /65535, float as stored).",
  },
  slice: {
    type: "string",
    valueName: "<k|first|middle|last|all>",
    description: "Which B-scan of a volume (multi-page TIFF, 3-D .npy) to use; all: every B-scan as its own image. " +
      "Without it a volume is an error.",
  },
};

/**
 * Applies the image flags as the decoding defaults.
 * @param values Parsed flags.
 * @returns `"all"` when every B-scan of a volume is to be taken, else the slice (or undefined).
 * @throws {UsageError} for an invalid value.
 */
export function applyImageFlags(values: FlagValues): VolumeSlice | "all" | undefined {
  try {
    const maxRaw = values["max-pixels"];
    let maxPixels: number | undefined;
    if (maxRaw !== undefined) {
      maxPixels = Number(maxRaw);
      if (!Number.isInteger(maxPixels) || maxPixels < 1) {
        throw new UsageError(`--max-pixels must be a positive integer, got "${maxRaw}"`);
      }
    }
    const range = values["intensity-range"] !== undefined
      ? parseIntensityRange(String(values["intensity-range"]))
      : undefined;
    const slice = values.slice !== undefined ? parseVolumeSlice(String(values.slice)) : undefined;
    setImageDefaults({ maxPixels, intensityRange: range, slice: slice === "all" ? undefined : slice });
    return slice;
  } catch (err) {
    if (err instanceof DatasetError) throw new UsageError(err.message);
    throw err;
  }
}
