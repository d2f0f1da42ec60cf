/** The exported refined backbone loads in PyTorch (weights_only=True) and computes the same features there. */
import { assert, assertEquals } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { writeNpy } from "../../src/io/mod.ts";
import { vitFeatures } from "../../src/encoders/mod.ts";
import { exportBackbone } from "../../src/model/mod.ts";
import { readPth } from "../../src/io/mod.ts";
import { tinyModel } from "./_tiny.ts";

await setupBackend({ log: null });

function torchAvailable(): boolean {
  try {
    return new Deno.Command("/usr/bin/python3", { args: ["-c", "import torch"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

Deno.test("export: .pth is a plain timm-named state dict (no prefix), with norm and proj, readable by our reader", async () => {
  const model = await tinyModel(3);
  const dir = await Deno.makeTempDir();
  const { pth } = await exportBackbone(model.vit, dir, "demo");
  // The family is in the name: the authors' scripts pick the model by a substring of the path (§1.2).
  assert(pth.endsWith("best-model_demo_retfound_bscan.pth"), pth);
  const sd = readPth(pth).value as Map<string, unknown>;
  const keys = [...sd.keys()];
  for (
    const k of [
      "cls_token",
      "pos_embed",
      "patch_embed.proj.weight",
      "blocks.0.attn.qkv.weight",
      "norm.weight",
      "proj.weight",
    ]
  ) assert(keys.includes(k), k);
  assert(keys.every((k) => !k.startsWith("vision_encoder.") && !k.startsWith("model.")));
  // Every parameter, plus the state dict's `_metadata` (PyTorch's OrderedDict attribute) carrying the family.
  assertEquals(keys.filter((k) => k !== "_metadata").length, model.vit.params.size);
  const meta = sd.get("_metadata") as Map<string, Map<string, unknown>>;
  assertEquals(meta.get("retfiner")?.get("family"), "retfound");
});

Deno.test({
  name: "export: PyTorch loads it with weights_only=True into timm's ViT and gets our features (live)",
  ignore: !torchAvailable(),
  fn: async () => {
    const model = await tinyModel(4, "visionfm");
    const dir = await Deno.makeTempDir();
    const { pth } = await exportBackbone(model.vit, dir, "torchcheck");
    const x = tf.randomNormal([2, 3, 32, 32], 0, 1, "float32", 9);
    await writeNpy(`${dir}/x.npy`, { dtype: "F32", shape: [2, 3, 32, 32], data: x.dataSync() as Float32Array });
    const ours = vitFeatures(model.vit, x, "all");
    await writeNpy(`${dir}/ours.npy`, { dtype: "F32", shape: ours.shape, data: ours.dataSync() as Float32Array });
    const script = `
import sys, numpy as np, torch
sys.path.insert(0, "${new URL("../fixtures/", import.meta.url).pathname}")
from reference_models import ViT
sd = torch.load("${pth}", weights_only=True)
m = ViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
missing, unexpected = m.load_state_dict(sd, strict=True), None
# The family travels in the state dict's own metadata, which PyTorch restores and strict loading ignores.
assert sd._metadata["retfiner"]["family"] == "visionfm", sd._metadata
x = torch.from_numpy(np.load("${dir}/x.npy"))
with torch.no_grad():
    y = m.norm(m.blocks_out(x)).numpy()
print(float(np.abs(y - np.load("${dir}/ours.npy")).max()))`;
    const out = new Deno.Command("/usr/bin/python3", { args: ["-c", script] }).outputSync();
    assert(out.success, new TextDecoder().decode(out.stderr));
    const diff = Number(new TextDecoder().decode(out.stdout).trim());
    assert(diff < 1e-4, `max |diff| ${diff}`);
  },
});
