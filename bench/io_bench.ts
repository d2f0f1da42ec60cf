/**
 * Checkpoint I/O benchmark: writes a synthetic full-size RETFound checkpoint
 * (ViT-L/16 encoder + MAE decoder, ~1.3 GB, the release layout) and measures
 * how long `readPth` + `mapVisionWeights` take and the reader's peak memory,
 * in a fresh process so the peak is its own.
 */
import { mapVisionWeights, readPth, type TensorData, writePth } from "../src/io/mod.ts";
import { peakRssMiB } from "./measure.ts";

/** The RETFound MAE checkpoint's tensors: ViT-L encoder + 8-block 512-wide decoder. */
export function retfoundMaeShapes(): [string, number[]][] {
  const D = 1024, Dd = 512, P = 16;
  const s: [string, number[]][] = [["cls_token", [1, 1, D]], ["pos_embed", [1, 197, D]], ["mask_token", [1, 1, Dd]], [
    "patch_embed.proj.weight",
    [D, 3, P, P],
  ], ["patch_embed.proj.bias", [D]]];
  const block = (p: string, d: number) => {
    s.push(
      [`${p}.norm1.weight`, [d]],
      [`${p}.norm1.bias`, [d]],
      [`${p}.attn.qkv.weight`, [3 * d, d]],
      [`${p}.attn.qkv.bias`, [3 * d]],
      [`${p}.attn.proj.weight`, [d, d]],
      [`${p}.attn.proj.bias`, [d]],
      [`${p}.norm2.weight`, [d]],
      [`${p}.norm2.bias`, [d]],
      [`${p}.mlp.fc1.weight`, [4 * d, d]],
      [`${p}.mlp.fc1.bias`, [4 * d]],
      [`${p}.mlp.fc2.weight`, [d, 4 * d]],
      [`${p}.mlp.fc2.bias`, [d]],
    );
  };
  for (let i = 0; i < 24; i++) block(`blocks.${i}`, D);
  s.push(["norm.weight", [D]], ["norm.bias", [D]], ["decoder_embed.weight", [Dd, D]], ["decoder_embed.bias", [Dd]], [
    "decoder_pos_embed",
    [1, 197, Dd],
  ]);
  for (let i = 0; i < 8; i++) block(`decoder_blocks.${i}`, Dd);
  s.push(["decoder_norm.weight", [Dd]], ["decoder_norm.bias", [Dd]], ["decoder_pred.weight", [P * P * 3, Dd]], [
    "decoder_pred.bias",
    [P * P * 3],
  ]);
  return s;
}

if (Deno.args[0] === "--read") {
  const t0 = performance.now();
  const top = readPth(Deno.args[1]).value as Map<string, unknown>;
  const mapped = mapVisionWeights(top, { fileName: Deno.args[1] });
  const seconds = (performance.now() - t0) / 1000;
  let params = 0;
  for (const t of mapped.tensors.values()) params += t.data.length;
  console.log(
    JSON.stringify({
      seconds,
      peakRssMiB: peakRssMiB(),
      params,
      layout: mapped.layout,
      dropped: mapped.dropped.length,
    }),
  );
}

/** Writes the synthetic checkpoint, reads it in a child process, and reports time and peak memory. */
export async function ioBench(
  quick = false,
): Promise<{ seconds: number; peakRatio: number; fileMiB: number; params: number }> {
  const path = await Deno.makeTempFile({ suffix: ".pth" });
  const model = new Map<string, TensorData>();
  for (const [name, shape] of retfoundMaeShapes()) {
    const n = shape.reduce((a, b) => a * b, 1);
    model.set(name, { dtype: "F32", shape, data: new Float32Array(quick ? Math.min(n, 1024) : n).fill(0.01) });
    if (quick) model.get(name)!.shape = [model.get(name)!.data.length];
  }
  try {
    await writePth(path, new Map<string, unknown>([["model", model], ["epoch", 0]]) as never);
    model.clear();
    const size = Deno.statSync(path).size;
    const out = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", import.meta.filename!, "--read", path],
      stderr: "inherit",
    }).outputSync();
    if (!out.success) throw new Error("checkpoint read failed");
    const r = JSON.parse(new TextDecoder().decode(out.stdout));
    return {
      seconds: r.seconds,
      peakRatio: (r.peakRssMiB * 2 ** 20) / size,
      fileMiB: size / 2 ** 20,
      params: r.params,
    };
  } finally {
    await Deno.remove(path).catch(() => {});
  }
}

if (import.meta.main && Deno.args[0] !== "--read") {
  const r = await ioBench();
  console.log(
    `file ${r.fileMiB.toFixed(0)} MiB; readPth+map ${r.seconds.toFixed(2)} s; peak RSS ${
      r.peakRatio.toFixed(2)
    }x file; ${r.params} params`,
  );
}
