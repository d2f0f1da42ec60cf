/**
 * `deno task encode`: features of B-scans from a vision encoder, to .npy or .safetensors.
 *
 * Under `mpiexec -n N` the batches are shared out over the ranks (batch k of `--batch` images, in input order, on
 * rank k mod N) and gathered after every round of N batches (`gatherBatches` of src/probe/features.ts), so the file
 * equals the one-process file bit for bit: every image goes through the same forward pass in the same batch. Rank
 * 0 alone prints and writes; a failing rank ends the job. Without `mpiexec` nothing changes.
 * @module
 */
import { tf } from "../backend/tf.ts";
import { featureDim, imagesTensor, loadVit, type TokenMode, type VitFamily, vitFeatures } from "../encoders/mod.ts";
import {
  batchIndices,
  checkImageFiles,
  decodeText,
  IMAGE_EXTENSIONS,
  listImageFiles,
  loadImageBatch,
  readPairManifest,
  refinementSpec,
  type VolumeSlice,
} from "../dataset/mod.ts";
import { writeNpy, writeSafetensors } from "../io/mod.ts";
import { numberFlag, parseCli, runMain } from "../util/cli.ts";
import { DatasetError, UsageError } from "../util/errors.ts";
import { ProgressBar } from "../util/progress.ts";
import { writeFileAtomic } from "../util/fs.ts";
import { BACKEND_FLAG, backendFromFlagsOnRank, noticeLog } from "./common.ts";
import { worldFromEnv } from "../dist/mpi.ts";
import { gatherBatches } from "../probe/features.ts";
import { applyImageFlags, IMAGE_FLAGS } from "./image_flags.ts";

/**
 * Resolves `--input` to image paths: one image, a folder (recursive, sorted; hidden entries skipped; symbolic links
 * followed except a folder link back to an enclosing folder, into the input folder or to a folder already read,
 * skipped at the link with a notice, as {@link listImageFiles} does) or a manifest (`image` or `path` column; a BOM is ignored). Every image's header is checked
 * first; bad images are an error listing them, or with `skipBad` are dropped and returned in `skipped`.
 * @param input An image, a folder or a `.csv`/`.jsonl` manifest.
 * @param options `slice: "all"` takes every B-scan of a volume; `skipBad` skips unusable images.
 * @returns The paths to encode (volume slices as `file#slice=k`) and the skipped ones with reasons.
 * @throws {DatasetError} for a missing input, no images, or bad images without `skipBad`.
 */
export async function resolveInputs(
  input: string,
  options: { slice?: VolumeSlice | "all"; skipBad?: boolean } = {},
): Promise<{ paths: string[]; skipped: { path: string; reason: string }[] }> {
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(input);
  } catch {
    throw new DatasetError(`${input}: input not found`);
  }
  let paths: string[];
  let origins: string[] | undefined; // manifest lines, named in errors
  if (stat.isDirectory) {
    paths = await listImageFiles(input);
    if (paths.length === 0) {
      throw new DatasetError(`${input}: no images (${IMAGE_EXTENSIONS.join(", ")}) found`);
    }
  } else if (/\.(csv|jsonl|ndjson)$/i.test(input)) {
    const head = decodeText(await Deno.readFile(input), input).split(/\r?\n/, 1)[0];
    const imageColumn = /(^|,|")path("|,|$)/.test(head) && !/(^|,|")image("|,|$)/.test(head) ? "path" : "image";
    const { records } = await readPairManifest(input, { imageColumn, textColumn: imageColumn, checkFiles: false });
    paths = records.map((r) => r.image);
    origins = records.map((r) => r.origin);
  } else paths = [input];
  const results = await checkImageFiles(paths, options.slice !== undefined ? { slice: options.slice } : {});
  const skipped: { path: string; reason: string }[] = [];
  const kept: string[] = [];
  results.forEach((r, k) => {
    if (r instanceof DatasetError) {
      skipped.push({ path: paths[k], reason: origins ? `${origins[k]}: ${r.message}` : r.message });
    } else kept.push(...r);
  });
  if (skipped.length && !options.skipBad) {
    throw new DatasetError(
      `${input}: ${skipped.length} image(s) cannot be used (--skip-bad skips them):\n  ` +
        skipped.slice(0, 20).map((s) => s.reason).join("\n  ") +
        (skipped.length > 20 ? `\n  ... and ${skipped.length - 20} more` : ""),
    );
  }
  if (kept.length === 0) throw new DatasetError(`${input}: no usable images (${skipped.length} skipped)`);
  return { paths: kept, skipped };
}

await runMain(async () => {
  const { values } = parseCli(Deno.args, {
    usage: "deno task encode",
    summary:
      "Encodes B-scans with a vision encoder and writes float32 features: [images, tokens, dim] for --tokens all, " +
      "[images, dim] for cls and concat. Images are preprocessed with the model's RetFiner recipe (grey, /255, bicubic " +
      "resize to the model's size, 3 channels, the model's mean/std). For a folder, images are taken recursively in " +
      "sorted path order; the order is written to <out>.paths.txt.",
    flags: {
      weights: {
        type: "string",
        valueName: "<file>",
        description: "Vision encoder weights (.pth, .safetensors, .ckpt) in any supported layout.",
      },
      arch: {
        type: "string",
        valueName: "<arch>",
        description: "Model family.",
        choices: ["auto", "retfound", "visionfm", "urfound", "timm"],
        default: "auto",
      },
      input: {
        type: "string",
        valueName: "<path>",
        description: "An image, a folder of images, or a manifest (.csv/.jsonl with an image or path column).",
      },
      tokens: {
        type: "string",
        valueName: "<mode>",
        description:
          "all: every token where the family's recipe takes them (RETFound: after the final norm, before proj); " +
          "cls: token 0 of those; concat: the probing representation [mean(patches) ‖ CLS] (VisionFM: [CLS ‖ mean]); " +
          "pooled: a global-pool fine-tune's fc_norm(mean of patch tokens), otherwise as cls.",
        choices: ["all", "cls", "concat", "pooled"],
        default: "cls",
      },
      out: { type: "string", valueName: "<file>", description: "Output .npy or .safetensors file." },
      batch: { type: "string", valueName: "<n>", description: "Images per forward pass.", default: "8" },
      heads: {
        type: "string",
        valueName: "<n>",
        description: "Attention heads, if not width/64 (not stored in weights).",
      },
      "no-strict": {
        type: "boolean",
        description: "Load matching keys only instead of failing on mismatched weights.",
      },
      "skip-bad": {
        type: "boolean",
        description: "Skip images that cannot be used (listed on stderr and in <out>.skipped.txt) instead of stopping.",
      },
      ...IMAGE_FLAGS,
      ...BACKEND_FLAG,
    },
    examples: [
      "deno task encode --weights RETFound_oct_weights.pth --input scans/ --tokens concat --out feats.npy",
      "deno task encode --weights data/models/visionfm-standin.safetensors --input scan.png --tokens all --out tokens.safetensors",
      "RETFINER_THREADS=1 mpiexec -n 2 deno task encode --weights RETFound_oct_weights.pth --input scans/ --out feats.npy",
    ],
  });
  for (const f of ["weights", "input", "out"]) if (!values[f]) throw new UsageError(`--${f} is required (see --help)`);
  const out = String(values.out);
  if (!/\.(npy|safetensors)$/.test(out)) throw new UsageError(`--out must end in .npy or .safetensors, got ${out}`);
  const batch = numberFlag(values, "batch", { integer: true, min: 1 })!;
  const slice = applyImageFlags(values);
  // Started by mpiexec with several ranks: the batches are shared out; rank 0 alone prints and writes.
  const world = worldFromEnv();
  const lead = world.rank === 0;
  const say = (line: string) => lead && console.error(line);
  if (world.size > 1) say(`encoding on ${world.size} ranks over ${world.library}: batch k on rank k mod ${world.size}`);
  await backendFromFlagsOnRank(values, world.rank);
  const { model, mapped } = loadVit(String(values.weights), {
    arch: values.arch as VitFamily | "auto",
    numHeads: numberFlag(values, "heads", { integer: true, min: 1 }),
    strict: !values["no-strict"],
    log: lead ? noticeLog : () => {},
    strictHint: "pass --no-strict",
    headsHint: "set --heads",
  });
  const c = model.config;
  say(`model: ${c.family} (${mapped.layout} layout) ViT ${c.embedDim}x${c.depth}, ${c.numHeads} heads, ${c.imgSize}px`);
  const { paths, skipped } = await resolveInputs(String(values.input), { slice, skipBad: !!values["skip-bad"] });
  for (const s of skipped) say(`skipped ${s.reason}`);
  const mode = values.tokens as TokenMode;
  const spec = refinementSpec(c.imgSize, { mean: c.mean, std: c.std });
  const tokensPerImage = mode === "all" ? 1 + (c.imgSize / c.patchSize) ** 2 : 1;
  const dim = featureDim(c, mode);
  const perImage = tokensPerImage * dim;
  const bar = new ProgressBar({ quiet: !lead });
  const features = await gatherBatches(
    batchIndices(paths.length, batch),
    perImage,
    (idx) => loadImageBatch(paths, idx, spec),
    async (b) => {
      const y = tf.tidy(() => vitFeatures(model, imagesTensor(b.data, b.n, c.imgSize), mode));
      try {
        return (await y.data()) as Float32Array; // any backend, WebGPU included
      } finally {
        y.dispose();
      }
    },
    { collective: world, onRows: (done) => bar.update({ phase: "encode", done, total: paths.length }) },
  );
  bar.finish();
  if (lead) {
    try {
      const shape = mode === "all" ? [paths.length, tokensPerImage, dim] : [paths.length, dim];
      const tensor = { dtype: "F32" as const, shape, data: features };
      if (out.endsWith(".npy")) await writeNpy(out, tensor);
      else {
        await writeSafetensors(out, new Map([["features", tensor]]), {
          "retfiner.tokens": mode,
          "retfiner.family": c.family,
          "retfiner.weights": String(values.weights),
        });
      }
      await writeFileAtomic(`${out}.paths.txt`, paths.join("\n") + "\n");
      if (skipped.length) {
        await writeFileAtomic(`${out}.skipped.txt`, skipped.map((s) => `${s.path}\t${s.reason}`).join("\n") + "\n");
        console.error(`skipped ${skipped.length} image(s); listed in ${out}.skipped.txt`);
      }
      console.error(`wrote ${out}: float32 [${shape}] and ${out}.paths.txt`);
    } catch (err) {
      if (world.size === 1) throw err;
      console.error(`encode: rank 0 of ${world.size} failed, ending all ranks: ${(err as Error).message}`);
      world.abort(1);
    }
  }
  world.barrier(); // the other ranks end once the files are written
  world.finalize();
});
