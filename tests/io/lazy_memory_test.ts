/**
 * Lazy storages (issue 15 item 7): a Lightning checkpoint of ~2 MiB of ViT weights plus 384 MiB of optimizer state
 * loads through loadVit (readWeightFile + mapVisionWeights + the model) within ~50 MiB of the weights' own size of
 * extra resident memory: the optimizer's storages are never read. Measured in a fresh process (peak RSS, VmHWM).
 */
import { assert } from "../_assert.ts";
import { type PthValue, type TensorData, writePth } from "../../src/io/mod.ts";
import { probe } from "./_probe.ts";

const D = 128;
const DEPTH = 2;

function vitWeights(): Map<string, TensorData> {
  let seed = 1;
  const rnd = (n: number, scale = 0.02) =>
    Float32Array.from({ length: n }, () => ((seed = (seed * 16807) % 2147483647) / 2147483647 - 0.5) * scale);
  const t = (shape: number[], fill?: number): TensorData => {
    const n = shape.reduce((a, b) => a * b, 1);
    return { dtype: "F32", shape, data: fill === undefined ? rnd(n) : new Float32Array(n).fill(fill) };
  };
  const w = new Map<string, TensorData>();
  w.set("cls_token", t([1, 1, D]));
  w.set("pos_embed", t([1, 197, D]));
  w.set("patch_embed.proj.weight", t([D, 3, 16, 16]));
  w.set("patch_embed.proj.bias", t([D], 0));
  for (let i = 0; i < DEPTH; i++) {
    const b = `blocks.${i}.`;
    w.set(`${b}norm1.weight`, t([D], 1));
    w.set(`${b}norm1.bias`, t([D], 0));
    w.set(`${b}attn.qkv.weight`, t([3 * D, D]));
    w.set(`${b}attn.qkv.bias`, t([3 * D], 0));
    w.set(`${b}attn.proj.weight`, t([D, D]));
    w.set(`${b}attn.proj.bias`, t([D], 0));
    w.set(`${b}norm2.weight`, t([D], 1));
    w.set(`${b}norm2.bias`, t([D], 0));
    w.set(`${b}mlp.fc1.weight`, t([4 * D, D]));
    w.set(`${b}mlp.fc1.bias`, t([4 * D], 0));
    w.set(`${b}mlp.fc2.weight`, t([D, 4 * D]));
    w.set(`${b}mlp.fc2.bias`, t([D], 0));
  }
  w.set("norm.weight", t([D], 1));
  w.set("norm.bias", t([D], 0));
  return w;
}

/** Writes a Lightning-style checkpoint; `optimizerMiB` of Adam state in 4 MiB tensors that share one buffer. */
async function lightning(path: string, optimizerMiB: number): Promise<number> {
  const weights = vitWeights();
  const stateDict = new Map<string, PthValue>();
  let weightBytes = 0;
  for (const [k, v] of weights) {
    stateDict.set(`model.vision_encoder.${k}`, v);
    weightBytes += v.data.byteLength;
  }
  const shared = new Float32Array(2 ** 20).fill(1e-3); // 4 MiB, written once per tensor that views it
  const state = new Map<string, PthValue>();
  for (let i = 0; i < optimizerMiB / 8; i++) {
    state.set(String(i), {
      step: { dtype: "F32", shape: [], data: Float32Array.from([10]) },
      exp_avg: { dtype: "F32", shape: [2 ** 20], data: shared },
      exp_avg_sq: { dtype: "F32", shape: [2 ** 20], data: shared },
    });
  }
  await writePth(path, {
    epoch: 3,
    global_step: 1000,
    "pytorch-lightning_version": "2.1.0",
    state_dict: stateDict,
    optimizer_states: [{ state, param_groups: [{ lr: 1e-4, weight_decay: 0.05 }] }],
    lr_schedulers: [],
  });
  return weightBytes;
}

Deno.test("lazy storages: 384 MiB of optimizer state costs no resident memory when loading the ViT", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const small = `${dir}/weights_only.ckpt`;
    const big = `${dir}/with_optimizer.ckpt`;
    const weightBytes = await lightning(small, 0);
    await lightning(big, 384);
    assert(Deno.statSync(big).size > 384 * 2 ** 20, "the optimizer state was not written");
    const weightsMiB = weightBytes / 2 ** 20;
    for (const mode of ["map", "vit"]) {
      const a = probe(mode, small);
      const b = probe(mode, big);
      assert(a.ok && b.ok, `${mode}: ${a.message ?? ""} ${b.message ?? ""}`);
      const growth = b.hwmMiB - b.baseHwmMiB;
      console.log(
        `${mode}: weights ${weightsMiB.toFixed(1)} MiB; peak RSS weights-only ${a.hwmMiB.toFixed(0)} MiB, ` +
          `with 384 MiB optimizer ${b.hwmMiB.toFixed(0)} MiB (growth while loading ${growth.toFixed(0)} MiB), ` +
          `${b.ms.toFixed(0)} ms`,
      );
      assert(growth < weightsMiB + 50, `${mode}: loading raised the peak RSS by ${growth} MiB`);
      assert(b.hwmMiB - a.hwmMiB < 50, `${mode}: the optimizer state cost ${b.hwmMiB - a.hwmMiB} MiB`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
