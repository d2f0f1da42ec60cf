import { assertAllClose, assertAlmostEquals } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import type { Tensor, Variable } from "../../src/backend/tf.ts";
import { readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import { ADAMW_DEFAULTS, adamwStep, createAdamWState, scheduledLr } from "../../src/refine/mod.ts";

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

Deno.test("learning-rate schedules: constant (authors) and warmup + half-cosine", () => {
  assertAlmostEquals(scheduledLr(1e-4, 500, { kind: "constant" }), 1e-4);
  const s = { kind: "cosine" as const, warmupSteps: 10, totalSteps: 110, minLr: 0 };
  assertAlmostEquals(scheduledLr(1, 0, s), 0.1, 1e-12);
  assertAlmostEquals(scheduledLr(1, 9, s), 1, 1e-12);
  assertAlmostEquals(scheduledLr(1, 60, s), 0.5, 1e-12);
  assertAlmostEquals(scheduledLr(1, 110, s), 0, 1e-12);
});
