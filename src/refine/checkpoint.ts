/**
 * Training checkpoints. A checkpoint is one safetensors file —
 * parameters (`param/<name>`), AdamW moments (`adam_m/<name>`, `adam_v/<name>`)
 * and the loop state as JSON metadata — written atomically (temp file, then
 * rename), so an interrupted run never leaves a corrupt checkpoint. The
 * refined model's export is the model's (`src/model/export.ts`).
 * @module
 */
import { firstNonFinite } from "../util/finite.ts";
import { tf } from "../backend/tf.ts";
import type { Variable } from "../backend/tf.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import type { TensorData } from "../io/tensor.ts";
import { assignValues } from "../encoders/layers.ts";
import { RefineError } from "../util/errors.ts";
import { adamwMoments, adamwMomentsToDevice, type AdamWState } from "../optim/adamw.ts";

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
  /**
   * Running sums of the current epoch's training losses (`total` and each term) over its first `epochSteps` steps,
   * so that the train loss of an epoch interrupted and resumed covers all its steps.
   */
  epochSums?: Record<string, number>;
  /** Steps of the current epoch already summed in `epochSums`. */
  epochSteps?: number;
  /** Seconds already spent on the current epoch before the checkpoint. */
  epochSeconds?: number;
}

/**
 * Saves parameters, optimiser state and loop state to `path` atomically
 * (a sibling temp file, synced, then renamed). A checkpoint is only ever
 * written finite: a NaN or infinite weight or moment is refused. Weights and
 * device-held moments are read asynchronously (any backend).
 *
 * @param path The checkpoint file (`.safetensors`).
 * @param params The parameters, by name.
 * @param opt The optimiser state.
 * @param loop Where the loop stands.
 * @param extra More metadata (run settings).
 * @returns When the file is in place.
 * @throws {RefineError} A weight or moment is non-finite (nothing is written then).
 */
export async function saveCheckpoint(
  path: string,
  params: Map<string, Variable>,
  opt: AdamWState,
  loop: LoopState,
  extra: Record<string, unknown> = {},
): Promise<void> {
  const tensors = new Map<string, TensorData>();
  for (const [name, p] of params) {
    const w = (await p.data()) as Float32Array;
    tensors.set(`param/${name}`, { dtype: "F32", shape: [...p.shape], data: w });
    const { m, v } = (await adamwMoments(opt, name)) ?? {};
    if (m && v) {
      tensors.set(`adam_m/${name}`, { dtype: "F32", shape: [...p.shape], data: m });
      tensors.set(`adam_v/${name}`, { dtype: "F32", shape: [...p.shape], data: v });
    }
    for (const [what, x] of [["weights", w], ["first moment", m], ["second moment", v]] as const) {
      const i = x ? firstNonFinite(x) : -1;
      if (i >= 0) {
        throw new RefineError(
          `refusing to write the checkpoint ${path}: the ${what} of ${name} hold ${x![i]} at index ${i}`,
        );
      }
    }
  }
  const meta = { ...loop, bestVal: Number.isFinite(loop.bestVal) ? loop.bestVal : null, adamStep: opt.step, ...extra };
  await writeSafetensors(path, tensors, { "retfiner.checkpoint": JSON.stringify(meta) });
}

function isCount(x: unknown): x is number {
  return typeof x === "number" && Number.isInteger(x) && x >= 0;
}

/**
 * Loads a checkpoint into `params` and returns the optimiser and loop state.
 * Everything is checked before any parameter is assigned: on a throw the
 * model is unchanged. The moments come back in the form the current
 * backend's update uses: host arrays on `cpu`, device tensors otherwise.
 *
 * @param path A checkpoint written by {@link saveCheckpoint}.
 * @param params The parameters to load into, by name.
 * @returns The optimiser state, the loop state and all the metadata.
 * @throws {RefineError} The file is not a training checkpoint, its loop state is malformed, a parameter is missing,
 *   mis-shaped, not float32 or non-finite (written before the non-finite guard existed).
 */
export function loadCheckpoint(
  path: string,
  params: Map<string, Variable>,
): { opt: AdamWState; loop: LoopState; extra: Record<string, unknown> } {
  const { tensors, metadata } = readSafetensors(path);
  const raw = metadata["retfiner.checkpoint"];
  if (!raw) throw new RefineError(`${path}: not a retfiner training checkpoint (no retfiner.checkpoint metadata)`);
  let meta: Record<string, unknown>;
  try {
    meta = JSON.parse(raw);
  } catch (err) {
    throw new RefineError(`${path}: the retfiner.checkpoint metadata is not JSON (${(err as Error).message})`);
  }
  if (typeof meta !== "object" || meta === null || Array.isArray(meta)) {
    throw new RefineError(`${path}: the retfiner.checkpoint metadata is not a JSON object`);
  }
  for (const key of ["step", "epoch", "batchInEpoch", "badEpochs", "adamStep"]) {
    if (!isCount(meta[key])) throw new RefineError(`${path}: loop state "${key}" is ${meta[key]}, not a count`);
  }
  if (!Array.isArray(meta.history)) throw new RefineError(`${path}: loop state "history" is not a list`);
  const opt: AdamWState = { step: meta.adamStep as number, m: new Map(), v: new Map() };
  const values = new Map<Variable, Float32Array>();
  for (const [name, p] of params) {
    const t = tensors.get(`param/${name}`);
    if (!t) {
      throw new RefineError(`${path}: parameter "${name}" is missing; was the checkpoint made with a different model?`);
    }
    if (t.shape.join() !== p.shape.join()) {
      throw new RefineError(`${path}: "${name}" has shape [${t.shape}], the model [${p.shape}]`);
    }
    const m = tensors.get(`adam_m/${name}`);
    const v = tensors.get(`adam_v/${name}`);
    for (const [what, x] of [["weights", t], ["first moment", m], ["second moment", v]] as const) {
      if (!x) continue;
      if (x.dtype !== "F32" || !(x.data instanceof Float32Array) || x.data.length !== p.size) {
        throw new RefineError(`${path}: the ${what} of "${name}" are ${x.dtype} [${x.shape}], not F32 [${p.shape}]`);
      }
      const i = firstNonFinite(x.data);
      if (i >= 0) {
        throw new RefineError(
          `${path}: the ${what} of "${name}" hold ${x.data[i]} at index ${i}; a non-finite checkpoint cannot be ` +
            "resumed (it was written before the non-finite guard, or damaged)",
        );
      }
    }
    values.set(p, t.data as Float32Array); // a fresh buffer read for this call
    if (m && v) {
      opt.m.set(name, (m.data as Float32Array).slice());
      opt.v.set(name, (v.data as Float32Array).slice());
    }
  }
  for (const [p, data] of values) assignValues(p, data);
  if (tf.getBackend() !== "cpu") adamwMomentsToDevice(opt, new Map([...params].map(([name, p]) => [name, p.shape])));
  const { adamStep: _a, ...rest } = meta;
  const loop = { ...rest, bestVal: rest.bestVal ?? Infinity } as LoopState & Record<string, unknown>;
  return { opt, loop, extra: meta };
}
