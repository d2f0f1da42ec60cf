/**
 * The device path of AdamW (`adamwStepDevice`: tf ops, moments as tensors, one scalar read per step) against the
 * cpu path (`adamwStep`: host arrays): same weights and moments, same refusals, no tensor leak; on WebGPU too when
 * an adapter is present.
 */
import { assert, assertEquals, assertRejects } from "../_assert.ts";
import { OptimizerError } from "../../src/util/errors.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import type { Tensor, Variable } from "../../src/backend/tf.ts";
import { readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import { loadCheckpoint, saveCheckpoint } from "../../src/refine/checkpoint.ts";
import {
  ADAMW_DEFAULTS,
  adamwMoments,
  adamwMomentsToDevice,
  type AdamWState,
  adamwStep,
  adamwStepAsync,
  adamwStepDevice,
  createAdamWState,
  disposeAdamWState,
} from "../../src/optim/adamw.ts";

const fx = readSafetensors(new URL("../fixtures/refine/adamw.safetensors", import.meta.url).pathname).tensors;
const f = (k: string) => toFloat32(fx.get(k)!).slice();
const config = { ...ADAMW_DEFAULTS, lr: 1e-2 };
const noDecay = (name: string) => name === "b";

let serial = 0;
/** Deterministic values for a larger parameter (large enough that WebGPU runs its shaders, not its cpu forwarding). */
function wave(n: number, phase: number, scale: number): Float32Array {
  return Float32Array.from(
    { length: n },
    (_, i) => scale * Math.sin(0.37 * i + phase) * (1 + 0.5 * Math.cos(0.011 * i)),
  );
}
const BIG: [number, number] = [96, 64];

function makeParams(big = false): Map<string, Variable> {
  serial++;
  const variable = (x: Float32Array, shape: number[], name: string) => {
    const t = tf.tensor(x, shape);
    const v = tf.variable(t, true, `adamw_dev_${name}_${serial}`);
    t.dispose();
    return v;
  };
  const out = new Map<string, Variable>([["w", variable(f("init_w"), [4, 3], "w")], [
    "b",
    variable(f("init_b"), [3], "b"),
  ]]);
  if (big) out.set("big", variable(wave(BIG[0] * BIG[1], 0.3, 0.5), BIG, "big"));
  return out;
}

function makeGrads(i: number, gb?: number[], big = false): Map<string, Tensor> {
  const out = new Map<string, Tensor>([["w", tf.tensor(f(`gw${i}`), [4, 3])], [
    "b",
    tf.tensor(gb ?? f(`gb${i}`), [3]),
  ]]);
  if (big) out.set("big", tf.tensor(wave(BIG[0] * BIG[1], 1.7 * i + 1, 0.01 * (i + 1)), BIG));
  return out;
}

/**
 * Largest |a − b| relative to the tensor's largest |b| (float32 arithmetic on the device rounds each product, so an
 * element that nearly cancels, e.g. β₁m + (1−β₁)g ≈ 0, differs by about an ulp of its terms, not of itself).
 */
function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assertEquals(a.length, b.length);
  let diff = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return scale ? diff / scale : diff;
}

/** Largest elementwise |a − b| / max(|aᵢ|, |bᵢ|) (reported, not asserted: see {@link maxRel}). */
function maxElementRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d) worst = Math.max(worst, d / Math.max(Math.abs(a[i]), Math.abs(b[i])));
  }
  return worst;
}

/** Weights and moments as plain arrays, whichever form the moments are held in. */
async function snapshot(params: Map<string, Variable>, state: AdamWState) {
  const out: Record<string, number[]> = {};
  for (const [k, p] of params) {
    out[`w/${k}`] = Array.from(await p.data());
    const mv = await adamwMoments(state, k);
    if (mv) {
      out[`m/${k}`] = Array.from(mv.m);
      out[`v/${k}`] = Array.from(mv.v);
    }
  }
  return { step: state.step, ...out };
}

/** Runs 3 steps on both paths (fresh parameters each) and returns the worst relative difference of each kind. */
async function compareThreeSteps(): Promise<{ w: number; m: number; v: number; leaked: number; elementwise: number }> {
  const cpuParams = makeParams(true);
  const devParams = makeParams(true);
  const cpuState = createAdamWState();
  const devState = createAdamWState();
  const worst = { w: 0, m: 0, v: 0, leaked: 0, elementwise: 0 };
  for (let i = 0; i < 3; i++) {
    const g1 = makeGrads(i, undefined, true);
    const g2 = makeGrads(i, undefined, true);
    const before = tf.memory().numTensors;
    await adamwStepDevice(devParams, g2, devState, config, config.lr, noDecay);
    // The first step creates the two moments of each parameter; later steps swap them.
    worst.leaked = Math.max(worst.leaked, tf.memory().numTensors - before - (i === 0 ? 6 : 0));
    if (tf.getBackend() === "cpu") adamwStep(cpuParams, g1, cpuState, config, config.lr, noDecay);
    tf.dispose([...g1.values(), ...g2.values()]);
    if (tf.getBackend() !== "cpu") continue;
    for (const k of ["w", "b", "big"]) {
      worst.w = Math.max(worst.w, maxRel(await devParams.get(k)!.data(), await cpuParams.get(k)!.data()));
      const mv = (await adamwMoments(devState, k))!;
      worst.m = Math.max(worst.m, maxRel(mv.m, cpuState.m.get(k)!));
      worst.v = Math.max(worst.v, maxRel(mv.v, cpuState.v.get(k)!));
      worst.elementwise = Math.max(
        worst.elementwise,
        maxElementRel(await devParams.get(k)!.data(), await cpuParams.get(k)!.data()),
        maxElementRel(mv.m, cpuState.m.get(k)!),
        maxElementRel(mv.v, cpuState.v.get(k)!),
      );
    }
  }
  assertEquals(devState.step, 3);
  assertEquals(devState.m.size, 0, "the device path keeps no host moments");
  assertEquals(devState.device!.m.size, 3);
  disposeAdamWState(devState);
  for (const p of [...cpuParams.values(), ...devParams.values()]) p.dispose();
  return worst;
}

Deno.test("AdamW device path (tf ops, run on cpu) matches the cpu path over 3 steps and leaks no tensor", async () => {
  await setupBackend({ backend: "cpu", log: null });
  const start = tf.memory().numTensors;
  const worst = await compareThreeSteps();
  console.log(`device path vs cpu path on cpu: max relative difference ${JSON.stringify(worst)}`);
  assert(worst.w <= 1e-6 && worst.m <= 1e-6 && worst.v <= 1e-6, JSON.stringify(worst));
  assertEquals(worst.leaked, 0);
  assertEquals(tf.memory().numTensors, start);
});

Deno.test("AdamW device path is all or nothing, with the cpu path's messages, and frees its temporaries", async () => {
  await setupBackend({ backend: "cpu", log: null });
  const params = makeParams();
  const state = createAdamWState();
  const ok = makeGrads(0);
  await adamwStepDevice(params, ok, state, config);
  const before = await snapshot(params, state);
  const refuse = async (grads: Map<string, Tensor>, lr: number, pattern: RegExp) => {
    const count = tf.memory().numTensors;
    await assertRejects(() => adamwStepDevice(params, grads, state, config, lr), pattern, OptimizerError);
    assertEquals(await snapshot(params, state), before);
    assertEquals(tf.memory().numTensors, count, "nothing leaked on the error path");
  };
  const nan = makeGrads(1, [0.1, NaN, 0.2]);
  await refuse(nan, 1e-2, /non-finite gradient of b \(NaN at index 1\)/);
  await refuse(ok, 1e39, /the AdamW update would make w non-finite \(its weights at index 0 would become -?Infinity/);
  const huge = makeGrads(1, [0.1, 1e30, 0.2]);
  await refuse(
    huge,
    1e-2,
    /the AdamW update would make b non-finite \(its second moment at index 1 would become Infinity/,
  );
  // A mis-sized gradient is refused before anything is computed.
  const bad = new Map<string, Tensor>([["b", tf.zeros([4])]]);
  await assertRejects(() => adamwStepDevice(params, bad, state, config), /gradient of b has 4 values, the parameter 3/);
  // A large but representable step is applied.
  await adamwStepDevice(params, ok, state, { ...config, lr: 1e30 });
  assertEquals(state.step, 2);
  const a = await params.get("w")!.data();
  assert(a.every(Number.isFinite) && Math.abs(a[0]) > 1e29);
  tf.dispose([...ok.values(), ...nan.values(), ...huge.values(), ...bad.values()]);
  disposeAdamWState(state);
  for (const p of params.values()) p.dispose();
});

Deno.test("AdamW moments move between the host and the device forms without changing the update", async () => {
  await setupBackend({ backend: "cpu", log: null });
  const ref = makeParams();
  const mixed = makeParams();
  const refState = createAdamWState();
  const state = createAdamWState();
  const start = tf.memory().numTensors;
  for (let i = 0; i < 4; i++) {
    const g1 = makeGrads(i);
    const g2 = makeGrads(i);
    adamwStep(ref, g1, refState, config);
    // cpu, device, cpu, device (through a checkpoint-like upload)
    if (i % 2 === 0) adamwStep(mixed, g2, state, config);
    else {
      if (i === 3) adamwMomentsToDevice(state, new Map([...mixed].map(([k, p]) => [k, p.shape])));
      await adamwStepDevice(mixed, g2, state, config);
    }
    tf.dispose([...g1.values(), ...g2.values()]);
  }
  for (const k of ["w", "b"]) {
    assert(maxRel(await mixed.get(k)!.data(), await ref.get(k)!.data()) <= 1e-6);
    const mv = (await adamwMoments(state, k))!;
    assert(maxRel(mv.v, refState.v.get(k)!) <= 1e-6);
  }
  disposeAdamWState(state);
  assertEquals(tf.memory().numTensors, start);
  for (const p of [...ref.values(), ...mixed.values()]) p.dispose();
});

const LOOP = {
  step: 0,
  epoch: 0,
  batchInEpoch: 0,
  bestVal: Infinity,
  bestEpoch: -1,
  badEpochs: 0,
  seed: 0,
  history: [],
};

/** Saves a checkpoint of device-path state, loads it into fresh parameters (checked equal) and returns its state. */
async function checkpointRoundTrip(params: Map<string, Variable>, state: AdamWState): Promise<AdamWState> {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/dev.ckpt.safetensors`;
    await saveCheckpoint(path, params, state, LOOP);
    const fresh = makeParams(params.has("big"));
    try {
      const { opt } = loadCheckpoint(path, fresh);
      for (const [k, p] of params) assertEquals(Array.from(await fresh.get(k)!.data()), Array.from(await p.data()));
      return opt;
    } finally {
      for (const p of fresh.values()) p.dispose();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("checkpoints save device moments (async reads) and restore them in the cpu path's form on cpu", async () => {
  await setupBackend({ backend: "cpu", log: null });
  const params = makeParams();
  const state = createAdamWState();
  const g = makeGrads(0);
  await adamwStepDevice(params, g, state, config);
  const restored = await checkpointRoundTrip(params, state);
  assertEquals(restored.step, 1);
  assertEquals(restored.device, undefined);
  for (const k of ["w", "b"]) {
    const mv = (await adamwMoments(state, k))!;
    assertEquals(Array.from(restored.m.get(k)!), Array.from(mv.m));
    assertEquals(Array.from(restored.v.get(k)!), Array.from(mv.v));
  }
  tf.dispose([...g.values()]);
  disposeAdamWState(state);
  for (const p of params.values()) p.dispose();
});

const gpu = (navigator as { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
const hasWebGpu = gpu !== undefined && (await gpu.requestAdapter().catch(() => null)) !== null;

Deno.test({
  name: "AdamW device path on WebGPU matches the cpu path (1e-5) and refuses a NaN gradient",
  ignore: !hasWebGpu,
  fn: async () => {
    // The cpu path's reference, step by step.
    await setupBackend({ backend: "cpu", log: null });
    const keys = ["w", "b", "big"];
    const refParams = makeParams(true);
    const refState = createAdamWState();
    const ref: { w: Float32Array[]; m: Float32Array[]; v: Float32Array[] }[] = [];
    for (let i = 0; i < 3; i++) {
      const g = makeGrads(i, undefined, true);
      adamwStep(refParams, g, refState, config, config.lr, noDecay);
      tf.dispose([...g.values()]);
      ref.push({
        w: keys.map((k) => (refParams.get(k)!.dataSync() as Float32Array).slice()),
        m: keys.map((k) => refState.m.get(k)!.slice()),
        v: keys.map((k) => refState.v.get(k)!.slice()),
      });
    }
    for (const p of refParams.values()) p.dispose();
    try {
      await setupBackend({ backend: "webgpu", log: null });
      assertEquals(tf.getBackend(), "webgpu");
      const params = makeParams(true);
      const state = createAdamWState();
      const worst = { w: 0, m: 0, v: 0, leaked: 0, elementwise: 0 };
      for (let i = 0; i < 3; i++) {
        const g = makeGrads(i, undefined, true);
        const before = tf.memory().numTensors;
        await adamwStepAsync(params, g, state, config, config.lr, noDecay); // the dispatcher: the device path here
        worst.leaked = Math.max(worst.leaked, tf.memory().numTensors - before - (i === 0 ? 6 : 0));
        tf.dispose([...g.values()]);
        for (const [j, k] of keys.entries()) {
          const mv = (await adamwMoments(state, k))!;
          worst.w = Math.max(worst.w, maxRel(await params.get(k)!.data(), ref[i].w[j]));
          worst.m = Math.max(worst.m, maxRel(mv.m, ref[i].m[j]));
          worst.v = Math.max(worst.v, maxRel(mv.v, ref[i].v[j]));
          worst.elementwise = Math.max(
            worst.elementwise,
            maxElementRel(await params.get(k)!.data(), ref[i].w[j]),
            maxElementRel(mv.m, ref[i].m[j]),
            maxElementRel(mv.v, ref[i].v[j]),
          );
        }
      }
      console.log(`device path on WebGPU vs cpu path: max relative difference ${JSON.stringify(worst)}`);
      assert(worst.w <= 1e-5 && worst.m <= 1e-5 && worst.v <= 1e-5, JSON.stringify(worst));
      assertEquals(worst.leaked, 0);
      assertEquals(state.m.size, 0);
      // A NaN gradient is refused and changes nothing.
      const before = await snapshot(params, state);
      const nan = makeGrads(3, [0.1, NaN, 0.2]);
      const count = tf.memory().numTensors;
      await assertRejects(
        () => adamwStepAsync(params, nan, state, config),
        /non-finite gradient of b \(NaN at index 1\)/,
        OptimizerError,
      );
      assertEquals(await snapshot(params, state), before);
      assertEquals(tf.memory().numTensors, count);
      tf.dispose([...nan.values()]);
      // A checkpoint restored on WebGPU puts the moments back as device tensors.
      const restored = await checkpointRoundTrip(params, state);
      assertEquals(restored.m.size, 0);
      assertEquals(restored.device?.m.size, 3);
      for (const k of keys) {
        const a = (await adamwMoments(restored, k))!;
        const b = (await adamwMoments(state, k))!;
        assertEquals([Array.from(a.m), Array.from(a.v)], [Array.from(b.m), Array.from(b.v)]);
      }
      disposeAdamWState(restored);
      disposeAdamWState(state);
      for (const p of params.values()) p.dispose();
    } finally {
      await setupBackend({ log: null });
    }
  },
});
