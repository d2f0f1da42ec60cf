/**
 * AdamW exactly as `torch.optim.AdamW` (decoupled weight decay applied to
 * every parameter first, then the bias-corrected Adam step with eps added to
 * the corrected square root). tfjs has no AdamW, and its Adam matches slots
 * by position; this keeps the moments by parameter name so checkpoints are
 * unambiguous. Updates run in place on the cpu backend's buffers; on any
 * other backend (WebGPU, whose synchronous reads are unavailable under Deno)
 * {@link adamwStepAsync} keeps weights and moments on the device and reads
 * back one scalar per step.
 * @module
 */
import { firstNonFinite } from "../util/finite.ts";
import { tf } from "../backend/tf.ts";
import { adviseHugePages } from "../backend/malloc.ts";
import type { Tensor, Variable } from "../backend/tf.ts";
import { OptimizerError } from "../util/errors.ts";
import { assignValues } from "../encoders/layers.ts";
import { adamwFactors, type AdamWHyper, adamwUpdate } from "../util/optim.ts";
import { grain, parallelFor } from "../backend/threads.ts";
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

/**
 * Optimiser state: step count and first/second moments by parameter name. A parameter's moments are held in one
 * of two forms: host arrays (`m`, `v`: the cpu path, {@link adamwStep}) or device tensors (`device`: the device
 * path, {@link adamwStepDevice}); each path takes over moments left in the other form at its next update.
 */
export interface AdamWState {
  /** Number of updates applied. */
  step: number;
  /** First moments (host arrays). */
  m: Map<string, Float32Array>;
  /** Second moments (host arrays). */
  v: Map<string, Float32Array>;
  /** Moments held as tensors by the device path (absent until it runs); free them with {@link disposeAdamWState}. */
  device?: { m: Map<string, Tensor>; v: Map<string, Tensor> };
}

/**
 * A fresh optimiser state.
 * @returns step 0 and no moments (they are created at a parameter's first update)
 */
export function createAdamWState(): AdamWState {
  return { step: 0, m: new Map(), v: new Map() };
}

/**
 * Frees the device moments of `state` (the host arrays need no freeing) and forgets them.
 * @param state an optimiser state, possibly holding device tensors
 */
export function disposeAdamWState(state: AdamWState): void {
  if (!state.device) return;
  tf.dispose([...state.device.m.values(), ...state.device.v.values()]);
  state.device = undefined;
}

/**
 * The moments of one parameter as host arrays, whichever form they are held in (device tensors are read
 * asynchronously, copies; host arrays are returned as they are).
 * @param state the optimiser state
 * @param name the parameter's name
 * @returns its first and second moments, or undefined before its first update
 */
export async function adamwMoments(
  state: AdamWState,
  name: string,
): Promise<{ m: Float32Array; v: Float32Array } | undefined> {
  const dm = state.device?.m.get(name);
  const dv = state.device?.v.get(name);
  if (dm && dv) return { m: (await dm.data()) as Float32Array, v: (await dv.data()) as Float32Array };
  const m = state.m.get(name);
  const v = state.v.get(name);
  return m && v ? { m, v } : undefined;
}

/**
 * Moves every host moment of `state` onto the device (the form {@link adamwStepDevice} keeps), e.g. after
 * restoring a checkpoint on a non-cpu backend.
 * @param state the optimiser state, changed in place
 * @param shapes each parameter's shape, by name (moments of other names are left on the host)
 */
export function adamwMomentsToDevice(state: AdamWState, shapes: Map<string, readonly number[]>): void {
  const device = state.device ??= { m: new Map(), v: new Map() };
  for (const [name, shape] of shapes) {
    const m = state.m.get(name);
    const v = state.v.get(name);
    if (!m || !v) continue;
    device.m.get(name)?.dispose();
    device.v.get(name)?.dispose();
    device.m.set(name, tf.tensor(m, [...shape], "float32"));
    device.v.set(name, tf.tensor(v, [...shape], "float32"));
    state.m.delete(name);
    state.v.delete(name);
  }
}

/** Takes device moments of `name` back onto the host (synchronous reads: cpu backend only). */
function hostMoments(state: AdamWState, name: string): void {
  const dm = state.device?.m.get(name);
  const dv = state.device?.v.get(name);
  if (!dm || !dv) return;
  state.m.set(name, (dm.dataSync() as Float32Array).slice());
  state.v.set(name, (dv.dataSync() as Float32Array).slice());
  dm.dispose();
  dv.dispose();
  state.device!.m.delete(name);
  state.device!.v.delete(name);
}

type CpuBackend = { data: { get(id: object): { values: unknown } } };

/** The `cpu` backend's own array behind `v` (no copy, and, unlike `dataSync()`, not handed out for keeps). */
function cpuValues(v: Tensor): Float32Array | undefined {
  if (tf.getBackend() !== "cpu") return undefined;
  const values = (tf.backend() as unknown as CpuBackend).data.get(v.dataId).values;
  return values instanceof Float32Array ? values : undefined;
}

/** A zeroed moment array, on huge pages where the backend asks for them (it is written at once, all of it). */
function newMoment(n: number): Float32Array {
  const a = new Float32Array(n);
  adviseHugePages(a);
  return a;
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

/** A parameter's learning rate relative to the step's (its group's share; 1 unless `lrScale` says otherwise). */
export type LrScale = (name: string) => number;

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
 * 1 when every value of `x` is finite, else 0 (a float32 scalar), reduced in rows of 4096: tfjs-webgpu reduces long
 * rows wrongly (`src/backend/webgpu.ts`), and BERT's word embeddings alone hold 23 million values.
 */
function allFinite(x: Tensor): Tensor {
  const row = 4096;
  const flat = tf.isFinite(x).toFloat().reshape([-1]);
  const pad = (row - (flat.size % row)) % row;
  const rows = (pad ? tf.pad(flat, [[0, pad]], 1) : flat).reshape([-1, row]);
  return tf.min(tf.min(rows, 1));
}

/**
 * Each parameter with a gradient, in parameter order, with its hyper-parameters (no decay for `noDecay` names) and its
 * learning-rate scale.
 */
function pairGradients(
  params: Map<string, Variable>,
  grads: Map<string, Tensor>,
  config: AdamWConfig,
  noDecay?: (name: string) => boolean,
  lrScale?: LrScale,
): { name: string; p: Variable; g: Tensor; hyper: AdamWConfig; scale: number }[] {
  const out: { name: string; p: Variable; g: Tensor; hyper: AdamWConfig; scale: number }[] = [];
  for (const [name, p] of params) {
    const g = grads.get(name);
    if (!g) continue;
    if (g.size !== p.size) {
      throw new OptimizerError(`gradient of ${name} has ${g.size} values, the parameter ${p.size}`);
    }
    const scale = lrScale?.(name) ?? 1;
    if (!(scale >= 0 && Number.isFinite(scale))) {
      throw new OptimizerError(`learning-rate scale of ${name} is ${scale}; it must be finite and non-negative`);
    }
    out.push({ name, p, g, hyper: noDecay?.(name) ? { ...config, weightDecay: 0 } : config, scale });
  }
  return out;
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
 * @param lrScale Each parameter's learning rate relative to `lr` (default 1; 0 freezes it while its moments still
 *   advance, as a PyTorch parameter group at lr 0 would).
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
  lrScale?: LrScale,
): void {
  const t = state.step + 1;
  // Read each gradient in place: it is only read here, and dataSync() would keep its buffer from being reused.
  const pending = pairGradients(params, grads, config, noDecay, lrScale).map(({ name, p, g, hyper, scale }) => ({
    name,
    p,
    g: cpuValues(g) ?? (g.dataSync() as Float32Array),
    hyper,
    lr: lr * scale,
  }));
  // Moments the device path left as tensors come back to the host (same values).
  for (const u of pending) hostMoments(state, u.name);
  // First every check, then every write: a throw leaves parameters and state as they were.
  const zeros = new Float32Array(0);
  // Moments that do not exist yet are zeros: one read-only zero array serves every parameter's first check.
  const firstMoments = new Float32Array(
    pending.reduce((n, u) => state.m.has(u.name) ? n : Math.max(n, u.p.size), 0),
  );
  for (const u of pending) {
    const w = cpuValues(u.p) ?? (u.p.dataSync() as Float32Array);
    const m = state.m.get(u.name) ?? zeros;
    const v = state.v.get(u.name) ?? zeros;
    const fresh = m.length === 0 ? firstMoments.subarray(0, w.length) : undefined;
    checkUpdate(u, w, fresh ?? m, fresh ?? v, t, u.lr);
  }
  state.step = t;
  for (const { name, p, g, hyper, lr } of pending) {
    let m = state.m.get(name);
    let v = state.v.get(name);
    if (!m) state.m.set(name, m = newMoment(p.size));
    if (!v) state.v.set(name, v = newMoment(p.size));
    const inPlace = cpuValues(p);
    const w = inPlace ?? (p.dataSync() as Float32Array).slice();
    // Spread over the cpu backend's threads where the gradient is a plain float32 array (same bits either way).
    if (g instanceof Float32Array) parallelFor("adamw", [w, g, m, v], adamwFactors(t, lr, hyper), w.length, grain(1));
    else adamwUpdate(w, g, m, v, t, lr, hyper);
    if (!inPlace) assignValues(p, w);
  }
}

/**
 * One AdamW update on any backend: {@link adamwStep} on the `cpu` backend (host arrays, in place), otherwise
 * {@link adamwStepDevice} (tensors on the device, one scalar read back). Same arguments, semantics and errors.
 * @param params The parameters, updated in place.
 * @param grads Their gradients, by the same names.
 * @param state Optimiser state, advanced in place.
 * @param config Hyper-parameters.
 * @param lr Learning rate of this step (default `config.lr`).
 * @param noDecay Names exempt from weight decay.
 * @param lrScale Each parameter's learning rate relative to `lr` (default 1; 0 freezes it while its moments still
 *   advance, as a PyTorch parameter group at lr 0 would).
 * @returns When the update is applied.
 * @throws {OptimizerError} As {@link adamwStep}; nothing has been changed when it throws.
 */
export async function adamwStepAsync(
  params: Map<string, Variable>,
  grads: Map<string, Tensor>,
  state: AdamWState,
  config: AdamWConfig,
  lr = config.lr,
  noDecay?: (name: string) => boolean,
  lrScale?: LrScale,
): Promise<void> {
  if (tf.getBackend() === "cpu") adamwStep(params, grads, state, config, lr, noDecay, lrScale);
  else await adamwStepDevice(params, grads, state, config, lr, noDecay, lrScale);
}

interface DeviceUpdate {
  name: string;
  p: Variable;
  g: Tensor;
  hyper: AdamWConfig;
  /** This parameter's learning rate (the step's times its scale). */
  lr: number;
  /** Moments before the update (undefined: the first update), and whether they were uploaded for this step. */
  m0?: Tensor;
  v0?: Tensor;
  uploaded: boolean;
}

/**
 * The AdamW update of {@link adamwStep} computed with tf ops, so weights and moments stay on the device (the moments
 * are kept as tensors in `state.device`). Every new weight and moment is computed into temporaries; one scalar,
 * whether every gradient and every produced value is finite, is read back; only then are the weights assigned and
 * the moments swapped. All or nothing as {@link adamwStep}, with the same error messages (on the error path the
 * offending parameter is read back to name the index and value). Runs on any backend (the tests run it on `cpu`).
 * @param params The parameters, updated in place.
 * @param grads Their gradients, by the same names.
 * @param state Optimiser state, advanced in place (host moments of updated parameters move to the device).
 * @param config Hyper-parameters.
 * @param lr Learning rate of this step (default `config.lr`).
 * @param noDecay Names exempt from weight decay.
 * @param lrScale Each parameter's learning rate relative to `lr` (default 1; 0 freezes it while its moments still
 *   advance, as a PyTorch parameter group at lr 0 would).
 * @returns When the update is applied.
 * @throws {OptimizerError} As {@link adamwStep}; nothing has been changed when it throws.
 */
export async function adamwStepDevice(
  params: Map<string, Variable>,
  grads: Map<string, Tensor>,
  state: AdamWState,
  config: AdamWConfig,
  lr = config.lr,
  noDecay?: (name: string) => boolean,
  lrScale?: LrScale,
): Promise<void> {
  const t = state.step + 1;
  const pending: DeviceUpdate[] = pairGradients(params, grads, config, noDecay, lrScale).map((u) => ({
    name: u.name,
    p: u.p,
    g: u.g,
    hyper: u.hyper,
    lr: lr * u.scale,
    uploaded: false,
  }));
  const device = state.device ?? { m: new Map<string, Tensor>(), v: new Map<string, Tensor>() };
  for (const u of pending) {
    u.m0 = device.m.get(u.name);
    u.v0 = device.v.get(u.name);
    const hm = state.m.get(u.name);
    const hv = state.v.get(u.name);
    if ((!u.m0 || !u.v0) && hm && hv) {
      u.m0 = tf.tensor(hm, u.p.shape, "float32");
      u.v0 = tf.tensor(hv, u.p.shape, "float32");
      u.uploaded = true;
    }
  }
  const { produced, flags, ok } = tf.tidy(() => {
    const checks: Tensor[] = [];
    const produced = pending.map((u) => {
      const { beta1, beta2, eps, weightDecay } = u.hyper;
      const g = u.g.dtype === "float32" ? u.g.reshape(u.p.shape) : u.g.toFloat().reshape(u.p.shape);
      const stepSize = u.lr / (1 - Math.pow(beta1, t));
      const sqrtBc2 = Math.sqrt(1 - Math.pow(beta2, t));
      const m = u.m0 ? u.m0.mul(beta1).add(g.mul(1 - beta1)) : g.mul(1 - beta1);
      // (√(1−β₂)·g)² rather than (1−β₂)·g·g: g² alone would overflow float32 for |g| > 1.8e19.
      const g2 = tf.square(g.mul(Math.sqrt(1 - beta2)));
      const v = u.v0 ? u.v0.mul(beta2).add(g2) : g2;
      // w·(1 − lr·wd) as w − w·(lr·wd): the same value, without rounding 1 − lr·wd to float32.
      const decayed = weightDecay ? u.p.sub(u.p.mul(u.lr * weightDecay)) : u.p;
      const w = decayed.sub(m.mul(stepSize).div(v.sqrt().div(sqrtBc2).add(eps)));
      for (const x of [g, w, m, v]) checks.push(allFinite(x));
      return { w, m, v };
    });
    const flags = checks.length ? tf.stack(checks) : tf.ones([1]);
    return { produced, flags, ok: tf.min(flags) };
  });
  const temporaries = () => [
    ...produced.flatMap((x) => [x.w, x.m, x.v]),
    ...pending.filter((u) => u.uploaded).flatMap((u) => [u.m0!, u.v0!]),
    flags,
    ok,
  ];
  try {
    const finite = (await ok.data())[0] === 1;
    if (!finite) await explainNonFinite(pending, produced, flags, t);
  } catch (err) {
    tf.dispose(temporaries());
    throw err;
  }
  tf.dispose([flags, ok]);
  state.step = t;
  state.device = device;
  for (let i = 0; i < pending.length; i++) {
    const { name, p, m0, v0 } = pending[i];
    const { w, m, v } = produced[i];
    p.assign(w);
    w.dispose();
    // The old moments: held in `device` until now, or uploaded from the host for this step.
    if (m0) m0.dispose();
    if (v0) v0.dispose();
    device.m.set(name, m);
    device.v.set(name, v);
    state.m.delete(name);
    state.v.delete(name);
  }
}

/** The device path's error path: reads back the first parameter flagged non-finite and throws as the cpu path. */
async function explainNonFinite(
  pending: DeviceUpdate[],
  produced: { w: Tensor; m: Tensor; v: Tensor }[],
  flags: Tensor,
  t: number,
): Promise<never> {
  const f = await flags.data();
  const k = f.findIndex((x) => x !== 1);
  const i = Math.max(0, Math.floor(k / 4));
  const u = pending[i];
  const read = async (x: Tensor | undefined) => x ? (await x.data()) as Float32Array : new Float32Array(u.p.size);
  const g = await read(u.g);
  const w = (await read(u.p)).slice();
  const m = (await read(u.m0)).slice();
  const v = (await read(u.v0)).slice();
  // The cpu path's own check names the value and index (its messages, its float64 arithmetic).
  checkUpdate({ name: u.name, p: u.p, g, hyper: u.hyper }, w, m, v, t, u.lr);
  // Float32 on the device overflowed where float64 on the host did not: name the produced value.
  const what = (["weights", "first moment", "second moment"] as const)[Math.max(0, (k % 4) - 1)];
  const x = await read(produced[i][what === "weights" ? "w" : what === "first moment" ? "m" : "v"]);
  const j = Math.max(0, firstNonFinite(x));
  throw new OptimizerError(
    `the AdamW update would make ${u.name} non-finite (its ${what} at index ${j} would become ${x[j]}, ` +
      `learning rate ${u.lr}, gradient there ${g[j]})`,
  );
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
