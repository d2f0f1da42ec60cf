/**
 * Loading refuses what would silently give wrong answers: non-finite weights
 * (vision and text), unexpected keys in strict mode, unknown containers.
 */
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "../_assert.ts";
import { loadBert, loadVit } from "../../src/encoders/load.ts";
import { makeTensor, readSafetensors, type TensorData, toFloat32, writeSafetensors } from "../../src/io/mod.ts";
import { CheckpointError, EncoderError } from "../../src/util/errors.ts";

const models = new URL("../../data/models/", import.meta.url).pathname;
const quiet = { log: null };

/** A copy of a safetensors file with `edit` applied to its (float32) tensors. */
async function edited(src: string, edit: (t: Map<string, TensorData>) => void, dir: string, name: string) {
  const { tensors, metadata } = readSafetensors(src);
  const copy = new Map<string, TensorData>();
  for (const [k, t] of tensors) copy.set(k, makeTensor("F32", [...t.shape], toFloat32(t).slice(), k));
  edit(copy);
  const path = join(dir, name);
  await writeSafetensors(path, copy, metadata);
  return path;
}

Deno.test("a NaN or infinite weight is refused naming the file, the tensor and how many values (vision and text)", async () => {
  const dir = await Deno.makeTempDir();
  const vit = await edited(
    `${models}retfound-standin.safetensors`,
    (t) => {
      const d = t.get("blocks.0.attn.qkv.weight")!.data as Float32Array;
      d[5] = NaN;
      d[7] = Infinity;
    },
    dir,
    "vit_nan.safetensors",
  );
  assertThrows(
    () => loadVit(vit, { ...quiet, arch: "retfound" }),
    /vit_nan\.safetensors: tensor "blocks\.0\.attn\.qkv\.weight" holds 2 non-finite value\(s\) of \d+ \(first: NaN at index 5\)/,
    CheckpointError,
  );
  const bert = await edited(
    `${models}bert-standin/model.safetensors`,
    (t) => {
      const key = [...t.keys()].find((k) => k.endsWith("encoder.layer.0.attention.self.query.bias"))!;
      (t.get(key)!.data as Float32Array)[0] = -Infinity;
    },
    dir,
    "bert_inf.safetensors",
  );
  const err = assertThrows(
    () => loadBert(bert, `${models}bert-standin/config.json`, quiet),
    /bert_inf\.safetensors: tensor ".*encoder\.layer\.0\.attention\.self\.query\.bias" holds 1 non-finite value\(s\)/,
    CheckpointError,
  );
  assert(err.message.includes("-Infinity"), err.message);
  // The untouched files load.
  loadVit(`${models}retfound-standin.safetensors`, quiet);
  assertEquals(
    loadBert(`${models}bert-standin/model.safetensors`, `${models}bert-standin/config.json`, quiet).report.unexpected,
    [],
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("strict loading lists keys outside the model as unexpected, as PyTorch; --no-strict lists them (vision and text)", async () => {
  const dir = await Deno.makeTempDir();
  const extra = (t: Map<string, TensorData>) => {
    t.set("extra.thing", makeTensor("F32", [2], new Float32Array(2), "x"));
    t.set("norm_extra.weight", makeTensor("F32", [2], new Float32Array(2), "x"));
    t.set("head.weight", makeTensor("F32", [3, 2], new Float32Array(6), "x")); // a documented extra: dropped
  };
  const vit = await edited(`${models}retfound-standin.safetensors`, extra, dir, "vit_extra.safetensors");
  const err = assertThrows(() => loadVit(vit, quiet), /vit_extra\.safetensors do not match the model/, EncoderError);
  assert(/unexpected \(2\): extra\.thing, norm_extra\.weight$/.test(err.message), err.message);
  assert(!err.message.includes("head.weight"), err.message);
  const lines: string[] = [];
  loadVit(vit, { strict: false, log: (l) => lines.push(l) });
  assert(
    lines.some((l) => l.endsWith("--no-strict: unexpected keys (ignored) (2): extra.thing, norm_extra.weight")),
    `${lines}`,
  );
  assert(lines.some((l) => l.includes("dropped from the file (1): head.weight (classification head)")), `${lines}`);
  const bert = await edited(`${models}bert-standin/model.safetensors`, extra, dir, "bert_extra.safetensors");
  const berr = assertThrows(
    () => loadBert(bert, `${models}bert-standin/config.json`, quiet),
    /bert_extra\.safetensors do not match the model/,
    EncoderError,
  );
  assert(/unexpected \(3\): extra\.thing, norm_extra\.weight, head\.weight/.test(berr.message), berr.message);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("weights behind an unknown prefix or saved as numpy arrays: the error names the prefix or the type and the fix", () => {
  // Files written by PyTorch: tests/fixtures/make_load_checks.py.
  const fx = new URL("../fixtures/load_checks/", import.meta.url).pathname;
  assertThrows(
    () => loadVit(`${fx}vit_prefix.pth`, quiet),
    /vit_prefix\.pth: no ViT weights found: 8 tensor\(s\) under "model" look like ViT keys behind the unknown prefix "vit\." \(e\.g\. "vit\.cls_token"\).*removeprefix\("vit\."\)/,
    CheckpointError,
  );
  assertThrows(
    () => loadVit(`${fx}lightning_net.ckpt`, quiet),
    /lightning_net\.ckpt: no ViT weights found: 8 tensor\(s\) under "state_dict" look like ViT keys behind the unknown prefix "net\."/,
    CheckpointError,
  );
  assertThrows(
    () => loadVit(`${fx}numpy_values.pth`, quiet),
    /numpy_values\.pth: no ViT weights found: 8 entries at the top level under ViT parameter names \(e\.g\. "cls_token"\) are not a torch tensor but a numpy array \(save torch tensors/,
    CheckpointError,
  );
  assertThrows(
    () => loadBert(`${fx}bert_lm_prefix.bin`, `${models}bert-standin/config.json`, quiet),
    /bert_lm_prefix\.bin: no BERT weights found: 2 tensor\(s\) at the top level look like BERT keys behind the unknown prefix "lm\."/,
    CheckpointError,
  );
});
