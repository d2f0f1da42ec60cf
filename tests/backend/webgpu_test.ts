/**
 * The WebGPU backend against the CPU backend: backend choice, the size guard, and one full refinement step (the four
 * losses and every gradient) of the tiny model. Runs where a WebGPU adapter exists (CI installs Mesa's software
 * Vulkan); the PyTorch parity tests of the ViT, the BERT and the losses run on WebGPU as well, unchanged, with
 * `RETFINER_BACKEND=webgpu` (see `deno task test:webgpu`).
 */
import { assert, assertAlmostEquals, assertEquals, assertRejects } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { isSoftwareAdapter, probeWebGpu } from "../../src/backend/webgpu.ts";
import { tf } from "../../src/backend/tf.ts";
import { refinementSpec } from "../../src/dataset/mod.ts";
import { loadImageBatch } from "../../src/dataset/batches.ts";
import { ALL_LOSSES, type PairBatch, refine, retfinerLosses } from "../../src/refine/mod.ts";
import { loadVit } from "../../src/encoders/mod.ts";
import { modelParams } from "../../src/model/mod.ts";
import { BackendError } from "../../src/util/errors.ts";
import { Rng } from "../../src/util/rng.ts";
import { tinyModel, tinyPairs } from "../refine/_tiny.ts";

const adapter = await probeWebGpu().catch((e: Error) => e);
const available = !(adapter instanceof Error);
// In CI a missing adapter is a failure (Mesa's software Vulkan is installed there), not a skip.
if (!available && Deno.env.get("CI")) throw new Error(`CI has no WebGPU adapter: ${adapter.message}`);
const ignore = !available;

Deno.test("RETFINER_BACKEND=webgpu really runs the suite on WebGPU", { ignore }, async () => {
  const info = await setupBackend({ log: null });
  if (Deno.env.get("RETFINER_BACKEND") === "webgpu") assertEquals(tf.getBackend(), "webgpu");
  else assert(info.name !== "webgpu" || !(adapter as { software: boolean }).software, "auto never picks software");
  await setupBackend({ log: null, backend: "cpu-onnx" });
});

Deno.test(
  "software adapters are recognised; auto skips them, --backend webgpu uses them with a notice",
  { ignore },
  async () => {
    assert(isSoftwareAdapter({ description: "llvmpipe (LLVM 15.0.6, 256 bits)" }));
    assert(isSoftwareAdapter({ device: "SwiftShader Device (Subzero)" }));
    assert(!isSoftwareAdapter({ description: "NVIDIA H200", device: "", architecture: "hopper" }));
    const report = adapter as Awaited<ReturnType<typeof probeWebGpu>>;
    const lines: string[] = [];
    const info = await setupBackend({ backend: "webgpu", log: (l) => lines.push(l) });
    assertEquals(info.tfBackend, "webgpu");
    assert(info.matmul.includes(report.description), info.matmul);
    if (report.software) {
      assert(lines.some((l) => l.startsWith("notice: WebGPU runs on a software adapter")), lines.join("\n"));
      const auto = await setupBackend({ backend: "auto", log: null });
      assert(auto.name !== "webgpu");
      assert(auto.skipped.some((s) => /^webgpu: the WebGPU adapter is software/.test(s)), auto.skipped.join("\n"));
    }
    await setupBackend({ log: null, backend: "cpu-onnx" });
  },
);

Deno.test(
  "a tensor larger than the device's storage binding is refused by name, not computed wrong",
  { ignore },
  async () => {
    await setupBackend({ backend: "webgpu", log: null });
    try {
      const limit = (tf.backend() as unknown as { device: GPUDevice }).device.limits.maxStorageBufferBindingSize;
      const n = Math.floor(limit / 4) + 1024;
      await assertRejects(
        async () => await tf.tidy(() => tf.sum(tf.mul(tf.ones([n]), 2))).data(),
        new RegExp(`WebGPU: .*\\[${n}\\] \\(float32, .* MiB\\) exceeds this device's maxStorageBufferBindingSize`),
        BackendError,
      );
      // tfjs-webgpu sums rows longer than about 2^25 wrongly (33,550,336 ones gave 4,193,792): refused past 2^24.
      await assertRejects(
        async () => await tf.tidy(() => tf.sum(tf.ones([2 ** 24 + 1]))).data(),
        /WebGPU: ReduceProgram over 16777217 elements .* reduce in parts/,
        BackendError,
      );
      const long = tf.tidy(() => tf.sum(tf.ones([2 ** 24])));
      assertEquals((await long.data())[0], 2 ** 24);
      long.dispose();
      // Below the limit the same computation is right.
      const ok = tf.tidy(() => tf.sum(tf.mul(tf.ones([1 << 20]), 2)));
      assertEquals((await ok.data())[0], 2 * (1 << 20));
      ok.dispose();
    } finally {
      await setupBackend({ log: null, backend: "cpu-onnx" });
    }
  },
);

async function fixedBatch(model: Awaited<ReturnType<typeof tinyModel>>): Promise<PairBatch> {
  const pairs = (await tinyPairs()).filter((p) => p.split === "train").slice(0, 8);
  const c = model.vit.config;
  const imgs = await loadImageBatch(pairs.map((p) => p.image), pairs.map((_, i) => i), refinementSpec(c.imgSize, c));
  const tok = model.tokenizer.encodeBatch(pairs.map((p) => p.report));
  return { images: imgs.data, inputIds: tok.inputIds, attentionMask: tok.attentionMask, size: 8, length: tok.length };
}

/** Losses and gradients of one training-mode step (dropout and drop-path drawn from the same seeded streams). */
async function step(model: Awaited<ReturnType<typeof tinyModel>>, batch: PairBatch) {
  const params = modelParams(model);
  let kept: Record<string, tf.Tensor> = {};
  const { value, grads } = tf.variableGrads(() => {
    const out = retfinerLosses(model, batch, ALL_LOSSES, new Rng(5, "step"), true);
    kept = Object.fromEntries(Object.entries(out.terms).map(([k, t]) => [k, tf.keep(t!)]));
    return out.total as tf.Scalar;
  }, [...params.values()]);
  const terms: Record<string, number> = {};
  for (const [k, t] of Object.entries(kept)) terms[k] = (await t.data())[0];
  tf.dispose(Object.values(kept));
  const g: Record<string, Float32Array> = {};
  for (const [name, p] of params) if (grads[p.name]) g[name] = (await grads[p.name].data()) as Float32Array;
  const total = (await value.data())[0];
  tf.dispose([value, ...Object.values(grads)]);
  return { total, terms, grads: g };
}

Deno.test(
  "one full refinement step on WebGPU: the four losses and every gradient equal the CPU backend's",
  { ignore },
  async () => {
    await setupBackend({ log: null, backend: "cpu-onnx" });
    const model = await tinyModel(0);
    const batch = await fixedBatch(model);
    const cpu = await step(model, batch);
    await setupBackend({ backend: "webgpu", log: null });
    try {
      const before = tf.memory().numTensors;
      const gpu = await step(model, batch);
      const again = await step(model, batch);
      assertEquals(tf.memory().numTensors, before, "a WebGPU step leaves no tensor behind");
      assertEquals(again.total, gpu.total, "WebGPU is deterministic step to step");
      assertEquals(Object.keys(gpu.terms).sort(), ["gm", "itc", "itm", "mlm"]);
      for (const k of Object.keys(cpu.terms)) {
        assertAlmostEquals(gpu.terms[k], cpu.terms[k], 1e-4 * Math.max(1, Math.abs(cpu.terms[k])), `${k} loss`);
      }
      assertEquals(Object.keys(gpu.grads).sort(), Object.keys(cpu.grads).sort());
      // Relative to the parameter's own largest gradient, floored at 1e-3 of the step's largest gradient: some
      // gradients are zero in exact arithmetic (an attention key bias shifts every score of a query alike), so their
      // float noise has no scale of its own.
      let largest = 0;
      for (const c of Object.values(cpu.grads)) for (const v of c) largest = Math.max(largest, Math.abs(v));
      let worst = { name: "", rel: 0 };
      for (const [name, c] of Object.entries(cpu.grads)) {
        const w = gpu.grads[name];
        let scale = 0;
        let diff = 0;
        for (let i = 0; i < c.length; i++) {
          scale = Math.max(scale, Math.abs(c[i]));
          diff = Math.max(diff, Math.abs(c[i] - w[i]));
        }
        const rel = diff / Math.max(scale, 1e-3 * largest);
        if (rel > worst.rel) worst = { name, rel };
      }
      assert(worst.rel <= 1e-4, `gradient of ${worst.name}: max |Δ| / max |g| = ${worst.rel}`);
      console.log(`worst gradient: ${worst.name}, ${worst.rel.toExponential(2)} of its scale`);
    } finally {
      await setupBackend({ log: null, backend: "cpu-onnx" });
    }
  },
);

Deno.test(
  "refine() end to end on WebGPU: two epochs, checkpoint and export, the CPU's loss history",
  { ignore },
  async () => {
    const run = async (backend: "cpu-onnx" | "webgpu") => {
      await setupBackend({ backend, log: null });
      const model = await tinyModel(0);
      const runDir = await Deno.makeTempDir();
      const result = await refine({
        model,
        pairs: await tinyPairs(),
        runDir,
        batchSize: 8,
        epochs: 2,
        patience: 100,
        optimizer: { lr: 1e-3 },
        seed: 1,
      });
      const exported = loadVit(result.backbone.safetensors).model;
      const w = await exported.params.get("blocks.0.attn.qkv.weight")!.data();
      return { history: result.loop.history.map((h) => h.trainLoss), w };
    };
    try {
      const cpu = await run("cpu-onnx");
      const gpu = await run("webgpu");
      assertEquals(gpu.history.length, cpu.history.length);
      gpu.history.forEach((l, i) =>
        assertAlmostEquals(l, cpu.history[i], 1e-3 * Math.abs(cpu.history[i]), `epoch ${i}`)
      );
      let d = 0;
      let scale = 0;
      for (let i = 0; i < cpu.w.length; i++) {
        d = Math.max(d, Math.abs(cpu.w[i] - gpu.w[i]));
        scale = Math.max(scale, Math.abs(cpu.w[i]));
      }
      assert(d <= 1e-3 * scale, `exported qkv weight after 2 epochs: max |Δ| ${d} of ${scale}`);
    } finally {
      await setupBackend({ log: null, backend: "cpu-onnx" });
    }
  },
);
