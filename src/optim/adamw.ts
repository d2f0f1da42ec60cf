/**
 * AdamW exactly as `torch.optim.AdamW` (decoupled weight decay applied to
 * every parameter first, then the bias-corrected Adam step with eps added to
 * the corrected square root). tfjs has no AdamW, and its Adam matches slots
 * by position; this keeps the moments by parameter name so checkpoints are
 * unambiguous. Updates run in place on the cpu backend's buffers.
 * @module
 */
import { firstNonFinite } from "../util/finite.ts";
import { tf } from "../backend/tf.ts";
import type { Tensor, Variable } from "../backend/tf.ts";
import { OptimizerError } from "../util/errors.ts";
import { assignValues } from "../encoders/layers.ts";
import { type AdamWHyper, adamwUpdate } from "../util/optim.ts";
import { AUTHORS, type OptimizerParams } from "../params.ts";

export type { AdamWHyper };

/**
 * AdamW hyper-parameters with the learning rate (PyTorch's defaults but the rate: β₁ 0.9, β₂ 0.999, ε 1e-8 —
 * tfjs's Adam would use 1e-7 —, decoupled weight decay 0.01 applied to all parameters as the authors do): the
 * run settings' `OptimizerParams` (src/params.ts), where the fields are defined once.
 */
export type AdamWConfig = OptimizerParams;

/** The authors' optimiser settings (method notes §1.6): `AUTHORS.refine.optimizer` of `src/params.ts` (frozen). */
export const ADAMW_DEFAULTS: AdamWConfig = AUTHORS.refine.optimizer;

/** Optimiser state: step count and first/second moments by parameter name. */
export interface AdamWState {
  /** Number of updates applied. */
  step: number;
  /** First moments. */
  m: Map<string, Float32Array>;
  /** Second moments. */
  v: Map<string, Float32Array>;
}

/**
 * A fresh optimiser state.
 * @returns step 0 and no moments (they are created at a parameter's first update)
 */
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

/** Largest value a bound may reach before the exact check runs (float32's maximum is about 3.4e38). */
const SAFE_BOUND = 1e38;
/** Elements per chunk of the exact check's scratch buffers. */
const CHECK_CHUNK = 1 << 16;

/**
 * √(Σ xᵢ²) of the gradient, weights and moments in one pass, in float64: each an upper bound of max |xᵢ| that is
 * NaN or ∞ as soon as one of its values is.
 */
function rootSumSquares(
  g: ArrayLike<number>,
  w: Float32Array,
  m: Float32Array,
  v: Float32Array,
): [number, number, number, number] {
  let sg = 0, sw = 0, sm = 0, sv = 0;
  for (let i = 0; i < w.length; i++) {
    const a = g[i], b = w[i], c = m[i], d = v[i];
    sg += a * a;
    sw += b * b;
    sm += c * c;
    sv += d * d;
  }
  return [Math.sqrt(sg), Math.sqrt(sw), Math.sqrt(sm), Math.sqrt(sv)];
}

interface PendingUpdate {
  name: string;
  p: Variable;
  g: ArrayLike<number>;
  hyper: AdamWConfig;
}

/**
 * Throws if the update of one parameter would leave a non-finite value in the
 * weights or either moment. A cheap bound (root sums of squares) clears
 * almost every case; when it cannot, the update is run for real on scratch
 * copies, chunk by chunk, with the very function that applies it.
 */
function checkUpdate(u: PendingUpdate, w: Float32Array, m: Float32Array, v: Float32Array, t: number, lr: number): void {
  const { name, g, hyper } = u;
  const [G, W, M, V] = rootSumSquares(g, w, m, v);
  if (!Number.isFinite(G)) {
    const i = firstNonFinite(g);
    throw new OptimizerError(`non-finite gradient of ${name} (${g[i]} at index ${i})`);
  }
  for (const [what, x, r] of [["weights", w, W], ["first moment", m, M], ["second moment", v, V]] as const) {
    if (!Number.isFinite(r)) {
      const i = firstNonFinite(x);
      throw new OptimizerError(`${name}: the ${what} are already non-finite before the update (${x[i]} at index ${i})`);
    }
  }
  // m' is a convex combination of m and g, v' of v and g²; the step is at most stepSize·|m'|/ε.
  const stepSize = lr / (1 - Math.pow(hyper.beta1, t));
  const wBound = W * Math.abs(1 - lr * hyper.weightDecay) + (stepSize * Math.max(M, G)) / hyper.eps;
  if (Math.max(V, G * G) <= SAFE_BOUND && wBound <= SAFE_BOUND) return;
  const sw = new Float32Array(Math.min(CHECK_CHUNK, w.length));
  const sm = new Float32Array(sw.length);
  const sv = new Float32Array(sw.length);
  for (let off = 0; off < w.length; off += CHECK_CHUNK) {
    const end = Math.min(w.length, off + CHECK_CHUNK);
    const n = end - off;
    sw.set(w.subarray(off, end));
    sm.set(m.subarray(off, end));
    sv.set(v.subarray(off, end));
    const [cw, cm, cv] = [sw.subarray(0, n), sm.subarray(0, n), sv.subarray(0, n)];
    const gs = g instanceof Float32Array ? g.subarray(off, end) : Array.from({ length: n }, (_, i) => g[off + i]);
    adamwUpdate(cw, gs, cm, cv, t, lr, hyper);
    for (const [what, x] of [["weights", cw], ["first moment", cm], ["second moment", cv]] as const) {
      const i = firstNonFinite(x);
      if (i >= 0) {
        throw new OptimizerError(
          `the AdamW update would make ${name} non-finite (its ${what} at index ${off + i} would become ${x[i]}, ` +
            `learning rate ${lr}, gradient there ${g[off + i]})`,
        );
      }
    }
  }
}

/**
 * Applies one AdamW update to `params` (name → variable) with `grads`
 * (name → gradient), at learning rate `lr` (for schedules). Parameters
 * without a gradient are left untouched (their state is not advanced).
 * `noDecay` exempts parameters from weight decay (MAE's bias/norm groups);
 * RetFiner itself decays everything.
 *
 * The update is all or nothing: every gradient, and every weight and moment
 * the update would produce, is checked first, so a non-finite value (a
 * diverged loss, a learning rate far too large) throws before any parameter
 * or optimiser state changes.
 *
 * @param params The parameters, updated in place.
 * @param grads Their gradients, by the same names.
 * @param state Optimiser state (step count and moments), advanced in place.
 * @param config Hyper-parameters.
 * @param lr Learning rate of this step (default `config.lr`).
 * @param noDecay Names exempt from weight decay.
 * @throws {OptimizerError} A gradient has another size than its parameter; a gradient, weight or moment is
 *   non-finite; or the update would make one non-finite (it names the parameter, the index and the value).
 *   Nothing has been changed when it throws.
 */
export function adamwStep(
  params: Map<string, Variable>,
  grads: Map<string, Tensor>,
  state: AdamWState,
  config: AdamWConfig,
  lr = config.lr,
  noDecay?: (name: string) => boolean,
): void {
  const t = state.step + 1;
  const pending: PendingUpdate[] = [];
  for (const [name, p] of params) {
    const gT = grads.get(name);
    if (!gT) continue;
    if (gT.size !== p.size) {
      throw new OptimizerError(`gradient of ${name} has ${gT.size} values, the parameter ${p.size}`);
    }
    const hyper = noDecay?.(name) ? { ...config, weightDecay: 0 } : config;
    // Read the gradient in place: it is only read here, and dataSync() would keep its buffer from being reused.
    pending.push({ name, p, g: cpuValues(gT) ?? (gT.dataSync() as Float32Array), hyper });
  }
  // First every check, then every write: a throw leaves parameters and state as they were.
  const zeros = new Float32Array(0);
  for (const u of pending) {
    const w = cpuValues(u.p) ?? (u.p.dataSync() as Float32Array);
    const m = state.m.get(u.name) ?? zeros;
    const v = state.v.get(u.name) ?? zeros;
    const fresh = m.length === 0 ? new Float32Array(w.length) : undefined;
    checkUpdate(u, w, fresh ?? m, fresh ?? v, t, lr);
  }
  state.step = t;
  for (const { name, p, g, hyper } of pending) {
    let m = state.m.get(name);
    let v = state.v.get(name);
    if (!m) state.m.set(name, m = new Float32Array(p.size));
    if (!v) state.v.set(name, v = new Float32Array(p.size));
    const inPlace = cpuValues(p);
    const w = inPlace ?? (p.dataSync() as Float32Array).slice();
    adamwUpdate(w, g, m, v, t, lr, hyper);
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

/**
 * The learning rate at `step` (0-based) for base rate `lr`.
 * @param lr the base learning rate
 * @param step the optimiser step, 0-based
 * @param schedule `constant` (the authors', method notes §1.6) or `cosine` (linear warmup, then half-cosine to `minLr`)
 * @returns the learning rate for that step
 */
export function scheduledLr(lr: number, step: number, schedule: LrSchedule): number {
  if (schedule.kind === "constant") return lr;
  const warm = schedule.warmupSteps ?? 0;
  const total = Math.max(schedule.totalSteps ?? 1, warm + 1);
  const min = schedule.minLr ?? 0;
  if (step < warm) return (lr * (step + 1)) / warm;
  const progress = Math.min(1, (step - warm) / (total - warm));
  return min + (lr - min) * 0.5 * (1 + Math.cos(Math.PI * progress));
}
