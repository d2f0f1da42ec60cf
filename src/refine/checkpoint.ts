/**
 * Training checkpoints and exports. A checkpoint is one safetensors file —
 * parameters (`param/<name>`), AdamW moments (`adam_m/<name>`, `adam_v/<name>`)
 * and the loop state as JSON metadata — written atomically (temp file, then
 * rename), so an interrupted run never leaves a corrupt checkpoint.
 * @module
 */
import { join } from "node:path";
import type { Variable } from "../backend/tf.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import { writePth } from "../io/pth_writer.ts";
import type { TensorData } from "../io/tensor.ts";
import { bertConfigToJson } from "../encoders/bert.ts";
import { bertStateDictForExport, stateDict } from "../encoders/load.ts";
import type { VitModel } from "../encoders/vit.ts";
import { assignValues } from "../encoders/layers.ts";
import { RefineError } from "../util/errors.ts";
import { writeFileAtomic, writeJsonAtomic } from "../util/fs.ts";
import type { AdamWState } from "./adamw.ts";
import type { RetfinerModel } from "./model.ts";

/** Where the loop stands: enough to resume exactly. */
export interface LoopState {
  /** Optimiser steps taken. */
  step: number;
  /** Current epoch (0-based). */
  epoch: number;
  /** Next batch index within the epoch. */
  batchInEpoch: number;
  /** Best validation loss so far (Infinity before the first). */
  bestVal: number;
  /** Epoch of the best validation loss (−1 before the first). */
  bestEpoch: number;
  /** Epochs without improvement (early-stopping counter). */
  badEpochs: number;
  /** Seed every random stream derives from (with the step / epoch). */
  seed: number;
  /** Per-epoch summaries. */
  history: { epoch: number; trainLoss: number; valLoss: number; terms: Record<string, number>; seconds: number }[];
}

/** Saves parameters, optimiser state and loop state to `path` atomically. */
export async function saveCheckpoint(
  path: string,
  params: Map<string, Variable>,
  opt: AdamWState,
  loop: LoopState,
  extra: Record<string, unknown> = {},
): Promise<void> {
  const tensors = new Map<string, TensorData>();
  for (const [name, p] of params) {
    tensors.set(`param/${name}`, { dtype: "F32", shape: [...p.shape], data: p.dataSync() as Float32Array });
    const m = opt.m.get(name);
    const v = opt.v.get(name);
    if (m && v) {
      tensors.set(`adam_m/${name}`, { dtype: "F32", shape: [...p.shape], data: m });
      tensors.set(`adam_v/${name}`, { dtype: "F32", shape: [...p.shape], data: v });
    }
  }
  const meta = { ...loop, bestVal: Number.isFinite(loop.bestVal) ? loop.bestVal : null, adamStep: opt.step, ...extra };
  await writeSafetensors(path, tensors, { "retfiner.checkpoint": JSON.stringify(meta) });
}

/** Loads a checkpoint into `params` and returns the optimiser and loop state. */
export function loadCheckpoint(
  path: string,
  params: Map<string, Variable>,
): { opt: AdamWState; loop: LoopState; extra: Record<string, unknown> } {
  const { tensors, metadata } = readSafetensors(path);
  const raw = metadata["retfiner.checkpoint"];
  if (!raw) throw new RefineError(`${path}: not a retfiner training checkpoint (no retfiner.checkpoint metadata)`);
  const meta = JSON.parse(raw);
  const opt: AdamWState = { step: meta.adamStep, m: new Map(), v: new Map() };
  for (const [name, p] of params) {
    const t = tensors.get(`param/${name}`);
    if (!t) {
      throw new RefineError(`${path}: parameter "${name}" is missing; was the checkpoint made with a different model?`);
    }
    if (t.shape.join() !== p.shape.join()) {
      throw new RefineError(`${path}: "${name}" has shape [${t.shape}], the model [${p.shape}]`);
    }
    assignValues(p, t.data as Float32Array); // a fresh buffer read for this call
    const m = tensors.get(`adam_m/${name}`);
    const v = tensors.get(`adam_v/${name}`);
    if (m && v) {
      opt.m.set(name, (m.data as Float32Array).slice());
      opt.v.set(name, (v.data as Float32Array).slice());
    }
  }
  const { adamStep: _a, ...rest } = meta;
  const loop = { ...rest, bestVal: rest.bestVal ?? Infinity } as LoopState & Record<string, unknown>;
  return { opt, loop, extra: meta };
}

/** File names of an exported refined backbone, like the authors' `best-model_<run>_bscan.pth` (§1.7). */
export function backboneFileNames(runName: string): { pth: string; safetensors: string } {
  return { pth: `best-model_${runName}_bscan.pth`, safetensors: `best-model_${runName}_bscan.safetensors` };
}

/**
 * Exports the refined vision backbone with timm names and no prefix — what the
 * authors' `get_vision_backbone_for_linprobing.py` extracts (it keeps `norm.*`
 * and, for RETFound, `proj.*`) — as a PyTorch `.pth` (a plain state dict) and
 * as safetensors with the ViT config in its metadata.
 */
export async function exportBackbone(
  vit: VitModel,
  dir: string,
  runName: string,
): Promise<{ pth: string; safetensors: string }> {
  const names = backboneFileNames(runName);
  const sd = stateDict(vit.params);
  const pth = join(dir, names.pth);
  const st = join(dir, names.safetensors);
  await writePth(pth, sd);
  await writeSafetensors(st, sd, {
    "retfiner.vit_config": JSON.stringify(vit.config),
    "retfiner.family": vit.config.family,
    format: "pt",
  });
  return { pth, safetensors: st };
}

/** Saves the text side (BERT in HF names + config.json, heads, tokenizer) so zero-shot and retrieval work on a saved run. */
export async function exportTextSide(model: RetfinerModel, dir: string): Promise<void> {
  await writeSafetensors(join(dir, "text_encoder.safetensors"), bertStateDictForExport(model.bert), { format: "pt" });
  await writeJsonAtomic(join(dir, "text_encoder_config.json"), bertConfigToJson(model.bert.config));
  await writeSafetensors(join(dir, "heads.safetensors"), stateDict(model.heads), { format: "pt" });
  await writeFileAtomic(join(dir, "tokenizer.json"), JSON.stringify(model.tokenizer.tokenizerJson));
}
