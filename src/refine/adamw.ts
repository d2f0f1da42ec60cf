/**
 * AdamW exactly as `torch.optim.AdamW` (decoupled weight decay applied to
 * every parameter first, then the bias-corrected Adam step with eps added to
 * the corrected square root). tfjs has no AdamW, and its Adam matches slots
 * by position; this keeps the moments by parameter name so checkpoints are
 * unambiguous. Updates run in place on the cpu backend's buffers.
 * @module
 */
import { tf } from "../backend/tf.ts";
import type { Tensor, Variable } from "../backend/tf.ts";
import { RefineError } from "../util/errors.ts";
import { assignValues } from "../encoders/layers.ts";
import { adamwUpdate } from "../util/optim.ts";

/** AdamW hyper-parameters (PyTorch defaults except the learning rate). */
export interface AdamWConfig {
  /** Learning rate (the authors: 1e-4). */
  lr: number;
  /** β₁ (0.9). */
  beta1: number;
  /** β₂ (0.999). */
  beta2: number;
  /** ε (1e-8, PyTorch's; tfjs's Adam defaults to 1e-7). */
  eps: number;
  /** Decoupled weight decay (0.01, applied to all parameters as the authors do). */
  weightDecay: number;
}

/** The authors' optimiser settings (method notes §1.6). */
export const ADAMW_DEFAULTS: AdamWConfig = { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };

/** Optimiser state: step count and first/second moments by parameter name. */
export interface AdamWState {
  /** Number of updates applied. */
  step: number;
  /** First moments. */
  m: Map<string, Float32Array>;
  /** Second moments. */
  v: Map<string, Float32Array>;
}

/** A fresh optimiser state. */
export function createAdamWState(): AdamWState {
  return { step: 0, m: new Map(), v: new Map() };
}

type CpuBackend = { data: { get(id: object): { values: unknown } } };

/** The `cpu` backend's own array behind `v` (no copy, and, unlike `dataSync()`, not handed out for keeps). */
function cpuValues(v: Tensor): Float32Array | undefined {
  if (tf.getBackend() !== "cpu") return undefined;
  const values = (tf.backend() as unknown as CpuBackend).data.get(v.dataId).values;
  return values instanceof Float32Array ? values : undefined;
}

/**
 * Applies one AdamW update to `params` (name → variable) with `grads`
 * (name → gradient), at learning rate `lr` (for schedules). Parameters
 * without a gradient are left untouched (their state is not advanced).
 * `noDecay` exempts parameters from weight decay (MAE's bias/norm groups);
 * RetFiner itself decays everything.
 */
export function adamwStep(
  params: Map<string, Variable>,
  grads: Map<string, Tensor>,
  state: AdamWState,
  config: AdamWConfig,
  lr = config.lr,
  noDecay?: (name: string) => boolean,
): void {
  state.step++;
  for (const [name, p] of params) {
    const gT = grads.get(name);
    if (!gT) continue;
    if (gT.size !== p.size) throw new RefineError(`gradient of ${name} has ${gT.size} values, the parameter ${p.size}`);
    let m = state.m.get(name);
    let v = state.v.get(name);
    if (!m) state.m.set(name, m = new Float32Array(p.size));
    if (!v) state.v.set(name, v = new Float32Array(p.size));
    const inPlace = cpuValues(p);
    const w = inPlace ?? (p.dataSync() as Float32Array).slice();
    const hyper = noDecay?.(name) ? { ...config, weightDecay: 0 } : config;
    // Read the gradient in place: it is only read here, and dataSync() would keep its buffer from being reused.
    adamwUpdate(w, cpuValues(gT) ?? (gT.dataSync() as Float32Array), m, v, state.step, lr, hyper);
    if (!inPlace) assignValues(p, w);
  }
}

/** Learning-rate schedules: the authors use a constant rate (no warmup, no decay). */
export interface LrSchedule {
  /** `constant` (authors) or `cosine` (linear warmup, then half-cosine to `minLr`). */
  kind: "constant" | "cosine";
  /** Warmup steps (cosine only). */
  warmupSteps?: number;
  /** Total steps (cosine only). */
  totalSteps?: number;
  /** Final learning rate (cosine only). */
  minLr?: number;
}

/** The learning rate at `step` (0-based) for base rate `lr`. */
export function scheduledLr(lr: number, step: number, schedule: LrSchedule): number {
  if (schedule.kind === "constant") return lr;
  const warm = schedule.warmupSteps ?? 0;
  const total = Math.max(schedule.totalSteps ?? 1, warm + 1);
  const min = schedule.minLr ?? 0;
  if (step < warm) return (lr * (step + 1)) / warm;
  const progress = Math.min(1, (step - warm) / (total - warm));
  return min + (lr - min) * 0.5 * (1 + Math.cos(Math.PI * progress));
}
