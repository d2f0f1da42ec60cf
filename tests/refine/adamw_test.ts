import { assert, assertAllClose, assertAlmostEquals, assertEquals, assertThrows } from "../_assert.ts";
import { OptimizerError, RefineError } from "../../src/util/errors.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import type { Tensor, Variable } from "../../src/backend/tf.ts";
import { readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import { adamwStepDevice } from "../../src/optim/adamw.ts";
import { ADAMW_DEFAULTS, adamwStep, createAdamWState, refineLrScale, scheduledLr } from "../../src/refine/mod.ts";

const fx = readSafetensors(new URL("../fixtures/refine/adamw.safetensors", import.meta.url).pathname).tensors;
const f = (k: string) => toFloat32(fx.get(k)!).slice(); // copies: the optimiser updates variables in place

for (const backend of ["cpu-onnx", "cpu"] as const) {
  Deno.test(`AdamW follows torch.optim.AdamW step for step (${backend}: ${backend === "cpu" ? "assign" : "in-place"} update)`, async () => {
    await setupBackend({ backend, log: null });
    const params = new Map<string, Variable>([
      ["w", tf.variable(tf.tensor(f("init_w"), [4, 3]), true, `adamw_w_${backend}`)],
      ["b", tf.variable(tf.tensor(f("init_b"), [3]), true, `adamw_b_${backend}`)],
    ]);
    const state = createAdamWState();
    for (let i = 0; i < 5; i++) {
      const grads = new Map<string, Tensor>([["w", tf.tensor(f(`gw${i}`), [4, 3])], [
        "b",
        tf.tensor(f(`gb${i}`), [3]),
      ]]);
      adamwStep(params, grads, state, { ...ADAMW_DEFAULTS, lr: 1e-2 });
      assertAllClose(params.get("w")!.dataSync(), f(`w_after${i}`), 1e-6, `w after step ${i + 1}`);
      assertAllClose(params.get("b")!.dataSync(), f(`b_after${i}`), 1e-6, `b after step ${i + 1}`);
    }
    for (const p of params.values()) p.dispose();
  });
}

for (const path of ["host", "device"] as const) {
  Deno.test(`AdamW with a frozen parameter group follows torch (lr 0 for two steps, moments advancing; ${path} path)`, async () => {
    await setupBackend({ backend: "cpu-onnx", log: null });
    const w = tf.variable(tf.tensor(f("init_w"), [4, 3]), true, `adamw_frozen_w_${path}`);
    const b = tf.variable(tf.tensor(f("init_b"), [3]), true, `adamw_frozen_b_${path}`);
    // The trainer's own rule: the pretrained vision encoder is frozen, a new head (here: RETFound's proj) is not.
    const params = new Map<string, Variable>([["vision_encoder.blocks.0.attn.qkv.weight", w], [
      "vision_encoder.proj.bias",
      b,
    ]]);
    const state = createAdamWState();
    const settings = { visionLrScale: 1, freezeVisionSteps: 2 };
    for (let i = 0; i < 5; i++) {
      const grads = new Map<string, Tensor>([
        ["vision_encoder.blocks.0.attn.qkv.weight", tf.tensor(f(`gw${i}`), [4, 3])],
        ["vision_encoder.proj.bias", tf.tensor(f(`gb${i}`), [3])],
      ]);
      const config = { ...ADAMW_DEFAULTS, lr: 1e-2 };
      const scale = refineLrScale(i, settings);
      // The device path (WebGPU's: tf ops, moments as tensors) runs on cpu tensors too.
      if (path === "host") adamwStep(params, grads, state, config, config.lr, undefined, scale);
      else await adamwStepDevice(params, grads, state, config, config.lr, undefined, scale);
      tf.dispose([...grads.values()]);
      assertAllClose(w.dataSync(), f(`frozen_w_after${i}`), 1e-6, `frozen group after step ${i + 1}`);
      assertAllClose(b.dataSync(), f(`frozen_b_after${i}`), 1e-6, `new head after step ${i + 1}`);
    }
    // The fixture's frozen steps left the weights as they were (so the test above checks a real freeze).
    assertEquals(Array.from(f("frozen_w_after1")), Array.from(f("init_w")));
    w.dispose();
    b.dispose();
  });
}

Deno.test("refineLrScale: every scale 1 is no scale; the frozen steps, then visionLrScale; new modules always 1", () => {
  assertEquals(refineLrScale(0, { visionLrScale: 1, freezeVisionSteps: 0 }), undefined);
  const s = { visionLrScale: 0.1, freezeVisionSteps: 3 };
  assertEquals(refineLrScale(2, s)!("vision_encoder.blocks.0.mlp.fc1.weight"), 0);
  assertEquals(refineLrScale(3, s)!("vision_encoder.blocks.0.mlp.fc1.weight"), 0.1);
  assertEquals(refineLrScale(3, s)!("vision_encoder.patch_embed.proj.weight"), 0.1);
  assertEquals(refineLrScale(2, s)!("vision_encoder.proj.weight"), 1);
  assertEquals(refineLrScale(2, s)!("text_encoder.encoder.layer.0.crossattention.self.query.weight"), 1);
  assertEquals(refineLrScale(2, s)!("heads.itm_head.weight"), 1);
});

Deno.test("learning-rate schedules: constant (authors) and warmup + half-cosine", () => {
  assertAlmostEquals(scheduledLr(1e-4, 500, { kind: "constant" }), 1e-4);
  const s = { kind: "cosine" as const, warmupSteps: 10, totalSteps: 110, minLr: 0 };
  assertAlmostEquals(scheduledLr(1, 0, s), 0.1, 1e-12);
  assertAlmostEquals(scheduledLr(1, 9, s), 1, 1e-12);
  assertAlmostEquals(scheduledLr(1, 60, s), 0.5, 1e-12);
  assertAlmostEquals(scheduledLr(1, 110, s), 0, 1e-12);
});

function snapshot(params: Map<string, Variable>, state: ReturnType<typeof createAdamWState>) {
  return {
    step: state.step,
    w: [...params].map(([k, p]) => [k, Array.from(p.dataSync())]),
    m: [...state.m].map(([k, x]) => [k, Array.from(x)]),
    v: [...state.v].map(([k, x]) => [k, Array.from(x)]),
  };
}

Deno.test("AdamW is all or nothing: a non-finite gradient or update throws before any parameter or moment changes", async () => {
  await setupBackend({ backend: "cpu-onnx", log: null });
  const params = new Map<string, Variable>([
    ["a", tf.variable(tf.tensor(f("init_w"), [4, 3]), true, "adamw_fault_a")],
    ["b", tf.variable(tf.tensor(f("init_b"), [3]), true, "adamw_fault_b")],
  ]);
  const state = createAdamWState();
  const grads = (ga: number[], gb: number[]) =>
    new Map<string, Tensor>([["a", tf.tensor(ga, [4, 3])], ["b", tf.tensor(gb, [3])]]);
  const ok = grads(Array.from(f("gw0")), Array.from(f("gb0")));
  adamwStep(params, ok, state, { ...ADAMW_DEFAULTS, lr: 1e-2 });
  const before = snapshot(params, state);
  // "a" is fine; "b" has a NaN gradient: "a" must not be updated either.
  assertThrows(
    () => adamwStep(params, grads(Array.from(f("gw1")), [0.1, NaN, 0.2]), state, { ...ADAMW_DEFAULTS, lr: 1e-2 }),
    /non-finite gradient of b \(NaN at index 1\)/,
    OptimizerError,
  );
  // The optimiser's own class is still a RefineError, which the trainer's fault handling catches.
  assert(OptimizerError.prototype instanceof RefineError);
  assertEquals(snapshot(params, state), before);
  // Finite gradients, but the step overflows float32 (the weights would become ±Infinity).
  assertThrows(
    () => adamwStep(params, ok, state, { ...ADAMW_DEFAULTS, lr: 1e39 }),
    /the AdamW update would make a non-finite \(its weights at index 0 would become -?Infinity/,
    OptimizerError,
  );
  assertEquals(snapshot(params, state), before);
  // A gradient so large that its square overflows the second moment (float32) while the weights stay finite.
  assertThrows(
    () => adamwStep(params, grads(Array.from(f("gw1")), [0.1, 1e30, 0.2]), state, { ...ADAMW_DEFAULTS, lr: 1e-2 }),
    /the AdamW update would make b non-finite \(its second moment at index 1 would become Infinity/,
    OptimizerError,
  );
  assertEquals(snapshot(params, state), before);
  // A large but representable step is applied, and ends up finite.
  adamwStep(params, ok, state, { ...ADAMW_DEFAULTS, lr: 1e30 });
  assertEquals(state.step, 2);
  assert(params.get("a")!.dataSync().every(Number.isFinite));
  assert(Math.abs(params.get("a")!.dataSync()[0]) > 1e29);
  for (const p of params.values()) p.dispose();
});
