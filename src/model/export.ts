/**
 * Saving and loading a refined model. The export writes what the authors'
 * `get_vision_backbone_for_linprobing.py` extracts — the vision backbone with
 * timm names, as `.pth` and safetensors — and beside it the text side (BERT,
 * heads, tokenizer); {@link loadRun} reads a run directory back as a model.
 * @module
 */
import { basename, join } from "node:path";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import { writePth } from "../io/pth_writer.ts";
import { loadTokenizer } from "../dataset/tokenizer.ts";
import { bertConfigToJson } from "../encoders/bert.ts";
import {
  bertStateDictForExport,
  formatLoadReport,
  loadBert,
  loadStateDict,
  loadVit,
  stateDict,
} from "../encoders/load.ts";
import { refineTokenDim, type VitFamily, type VitModel } from "../encoders/vit.ts";
import { EncoderError } from "../util/errors.ts";
import { writeFileAtomic, writeJsonAtomic } from "../util/fs.ts";
import { Rng } from "../util/rng.ts";
import { createHeads } from "./heads.ts";
import { assembleModel, type RetfinerModel } from "./model.ts";

/**
 * File names of an exported refined backbone, like the authors'
 * `best-model_<run>_bscan.pth` (§1.7), with the family in the name (unless the
 * run name has it already): the authors' scripts choose the model by a
 * substring of the path (§1.2), so `best-model_<run>_visionfm_bscan.pth` is
 * probed as VisionFM there too.
 * @param runName The run's name.
 * @param family The backbone's family (omit for the bare name).
 * @returns The `.pth` and `.safetensors` file names.
 */
export function backboneFileNames(runName: string, family?: VitFamily): { pth: string; safetensors: string } {
  // The authors' scripts pick the family by substring of the path (§1.2, §2.2): another family's name inside the
  // run name (a UrFound run called "vs_vfm") would send the export to the wrong recipe there, so it is neutralised.
  const own = (t: string) => t.toLowerCase() === family || (family === "visionfm" && t.toLowerCase() === "vfm");
  const run = family ? runName.replace(/retfound|visionfm|vfm|urfound/gi, (t) => own(t) ? t : "fm") : runName;
  const tag = family && !run.toLowerCase().includes(family) ? `${run}_${family}` : run;
  return { pth: `best-model_${tag}_bscan.pth`, safetensors: `best-model_${tag}_bscan.safetensors` };
}

/**
 * Exports the refined vision backbone with timm names and no prefix — what the
 * authors' `get_vision_backbone_for_linprobing.py` extracts (it keeps `norm.*`
 * and, for RETFound, `proj.*`) — as a PyTorch `.pth` (a plain state dict) and
 * as safetensors with the ViT config in its metadata. Both carry the family:
 * the safetensors metadata `retfiner.family` / `retfiner.vit_config`, and the
 * `.pth` state dict's `_metadata["retfiner"]` (where PyTorch keeps its own
 * state-dict metadata; `torch.load(weights_only=True)` and strict
 * `load_state_dict` accept it) with the same in an archive record
 * `retfiner.json` (which `torch.load` ignores and this package reads), and the
 * file names (see {@link backboneFileNames}).
 * @param vit The refined model.
 * @param dir Output folder.
 * @param runName The run's name.
 * @returns The paths written.
 */
export async function exportBackbone(
  vit: VitModel,
  dir: string,
  runName: string,
): Promise<{ pth: string; safetensors: string }> {
  const names = backboneFileNames(runName, vit.config.family);
  const sd = await stateDict(vit.params);
  const pth = join(dir, names.pth);
  const st = join(dir, names.safetensors);
  const config = JSON.stringify(vit.config);
  await writePth(pth, sd, {
    stateDictMetadata: new Map([["retfiner", new Map([["family", vit.config.family], ["vit_config", config]])]]),
    extraRecords: [{
      name: "retfiner.json",
      bytes: new TextEncoder().encode(
        JSON.stringify({ "retfiner.family": vit.config.family, "retfiner.vit_config": config }),
      ),
    }],
  });
  await writeSafetensors(st, sd, {
    "retfiner.vit_config": config,
    "retfiner.family": vit.config.family,
    format: "pt",
  });
  return { pth, safetensors: st };
}

/**
 * Saves the text side (BERT in HF names + config.json, heads, tokenizer) so zero-shot and retrieval work on a saved run.
 * @param model the refined model
 * @param dir the run directory
 * @returns when `text_encoder.safetensors`, `text_encoder_config.json`, `heads.safetensors` and `tokenizer.json` are written
 */
export async function exportTextSide(model: RetfinerModel, dir: string): Promise<void> {
  await writeSafetensors(join(dir, "text_encoder.safetensors"), await bertStateDictForExport(model.bert), {
    format: "pt",
  });
  await writeJsonAtomic(join(dir, "text_encoder_config.json"), bertConfigToJson(model.bert.config));
  await writeSafetensors(join(dir, "heads.safetensors"), await stateDict(model.heads), { format: "pt" });
  await writeFileAtomic(join(dir, "tokenizer.json"), JSON.stringify(model.tokenizer.tokenizerJson));
}

/** Options of {@link loadRun}. */
export interface LoadRunOptions {
  /**
   * Strict key matching of the run's weight files (default true). With `false` the matching keys load and the
   * missing, unexpected, mis-shaped and dropped keys are printed, as PyTorch's `load_state_dict` returns them.
   */
  strict?: boolean;
  /** Attention heads of the backbone when its file does not store them (this package's exports do). */
  numHeads?: number;
  /** The backbone's family (default `auto`: stored in the file, else its layout, else its name). */
  arch?: VitFamily | "auto";
  /** The flag that sets it, named when the family is a guess (default `--arch`). */
  archFlag?: string;
  /** What a strict key mismatch suggests, e.g. "pass --no-strict" (default none). */
  strictHint?: string;
  /** How the caller sets the head count, named when it is a guess (default "pass numHeads"; "" for none). */
  headsHint?: string;
  /** Where loading notices go (default `console.error`; `null`: nowhere). */
  log?: ((line: string) => void) | null;
}

/**
 * Loads a saved refinement run (backbone, text encoder, heads, tokenizer) as a model, with the checks a new model
 * gets: the heads' keys and shapes, the vision token width against the BERT's, the tokenizer against its vocabulary.
 * @param runDir The run directory (`best-model_*_bscan.safetensors`, `text_encoder.safetensors`,
 * `text_encoder_config.json`, `heads.safetensors`, `tokenizer.json`).
 * @param options See {@link LoadRunOptions}.
 * @returns The model.
 * @throws {EncoderError} when the directory holds no backbone export, several, or no usable heads; for files that do
 * not match the model (strict), widths or vocabularies that disagree.
 * @throws {CheckpointError} for unreadable weight files.
 */
export function loadRun(runDir: string, options: LoadRunOptions = {}): RetfinerModel {
  const backbones: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(runDir)];
  } catch (err) {
    throw new EncoderError(`${runDir}: cannot read the run directory (${(err as Error).message})`);
  }
  for (const e of entries) {
    if (/^best-model_.*_bscan\.safetensors$/.test(e.name)) backbones.push(join(runDir, e.name));
  }
  if (backbones.length === 0) {
    throw new EncoderError(`${runDir}: no best-model_*_bscan.safetensors (is it a refinement run directory?)`);
  }
  if (backbones.length > 1) {
    throw new EncoderError(
      `${runDir}: ${backbones.length} backbone exports (${
        backbones.map((b) => basename(b)).sort().join(", ")
      }); a run directory holds one: move the others away`,
    );
  }
  const loading = { strict: options.strict, strictHint: options.strictHint, log: options.log };
  const vit = loadVit(backbones[0], {
    ...loading,
    arch: options.arch,
    archFlag: options.archFlag,
    numHeads: options.numHeads,
    headsHint: options.headsHint,
  }).model;
  const textWeights = join(runDir, "text_encoder.safetensors");
  const textConfig = join(runDir, "text_encoder_config.json");
  const bert = loadBert(textWeights, textConfig, loading).model;
  const headsPath = join(runDir, "heads.safetensors");
  const tensors = readSafetensors(headsPath).tensors;
  const contra = tensors.get("contra_head_t.weight");
  if (!contra || contra.shape.length !== 2) {
    throw new EncoderError(
      `${headsPath}: no contra_head_t.weight [embed, ${bert.config.hiddenSize}] (the text contrastive head): ` +
        `not the heads of a refinement run`,
    );
  }
  const heads = createHeads(
    { visionWidth: refineTokenDim(vit.config), textWidth: bert.config.hiddenSize, embedDim: contra.shape[0] },
    new Rng(0, "heads-init"),
  );
  const report = loadStateDict(heads, tensors, { ...loading, fileName: headsPath });
  if (options.strict === false) {
    const log = options.log === undefined ? (line: string) => console.error(line) : options.log;
    for (const line of formatLoadReport(report)) log?.(`${headsPath}: --no-strict: ${line}`);
  }
  const tokenizerPath = join(runDir, "tokenizer.json");
  return assembleModel(vit, bert, loadTokenizer(tokenizerPath), {
    heads,
    sources: { tokenizer: tokenizerPath, textWeights, textConfig },
  });
}
