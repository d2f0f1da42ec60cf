/**
 * Issue 15's flags on every task that loads weights: `--no-strict` (the missing, unexpected, mis-shaped and dropped
 * keys printed as PyTorch's load_state_dict returns them) and `--heads` in `refine` (both paths) and `zeroshot`; hints
 * name only flags and values the task has. The vocabulary check of a tokenizer with added tokens (case C15) names the
 * files and what to do before training; a resized BERT trains.
 */
import { join } from "node:path";
import { assert, assertEquals, assertThrows } from "../_assert.ts";
import { SYNTH_TINY } from "../refine/_tiny.ts";
import { tinyFiles } from "../experiment/_tiny_files.ts";
import { readSafetensors, toFloat32, writeSafetensors } from "../../src/io/mod.ts";
import type { TensorData } from "../../src/io/mod.ts";

const root = new URL("../../", import.meta.url).pathname;
const fx = `${root}tests/fixtures/`;

async function cli(script: string, args: string[]): Promise<{ code: number; err: string; out: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}src/cli/${script}.ts`, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: r.code, out: d.decode(r.stdout), err: d.decode(r.stderr) };
}

/** Copies a safetensors file without some keys (and without its metadata when `plain`). */
async function without(src: string, dst: string, drop: string[], plain = false): Promise<void> {
  const { tensors, metadata } = readSafetensors(src);
  const kept = new Map<string, TensorData>();
  for (const [k, t] of tensors) {
    if (!drop.includes(k)) kept.set(k, { dtype: "F32", shape: t.shape, data: toFloat32(t) });
  }
  await writeSafetensors(dst, kept, plain ? {} : metadata);
}

/** The head count a backbone export stores (retfiner.vit_config). */
function storedHeads(path: string): number {
  const { metadata } = readSafetensors(path, { headerOnly: true });
  return JSON.parse(metadata["retfiner.vit_config"]).numHeads;
}

const exportOf = (out: string, family = "retfound") =>
  `${out}/best-model_${out.split("/").pop()}_${family}_bscan.safetensors`;

Deno.test("refine --no-strict prints what PyTorch's load_state_dict returns, for the vision and the text weights; --heads sets the head count", async () => {
  const f = await tinyFiles("retfound");
  // Plain weights (no stored config): the family is a file-name guess and the head count a guess.
  const vision = `${f.dir}/retfound_partial.safetensors`;
  await without(f.vision, vision, ["norm.weight"], true);
  const bert = `${f.dir}/bert_partial.safetensors`;
  await without(f.text.weights, bert, ["bert.embeddings.LayerNorm.bias"]);
  const text = ["--text-weights", bert, "--text-config", f.text.config, "--tokenizer", f.text.tokenizer];
  const pairs = ["--pairs", `${SYNTH_TINY}pairs/pairs.csv`, "--max-steps", "1", "--epochs", "1", "--batch", "4"];

  const strict = await cli("refine", [...pairs, ...text, "--weights", vision, "--out", await Deno.makeTempDir()]);
  assertEquals(strict.code, 1, strict.err);
  assert(strict.err.includes(`${vision} do not match the model:\n  missing (1): norm.weight`), strict.err);
  assert(strict.err.includes("(pass --no-strict to load the matching keys only)"), strict.err);
  assert(
    /attention heads = width 48\/64 — a guess .*; set --heads if the model has another/.test(strict.err),
    strict.err,
  );
  // --model takes three values in refine: the guess does not offer "timm".
  assert(strict.err.includes("if it is wrong, set --model retfound|visionfm|urfound\n"), strict.err);
  assert(!/refine epoch/.test(strict.err), "stopped before training");

  const out1 = await Deno.makeTempDir();
  const loose = await cli("refine", [...pairs, ...text, "--weights", vision, "--no-strict", "--out", out1]);
  assertEquals(loose.code, 0, loose.err);
  const lines = loose.err.split("\n");
  const once = (needle: string) => assertEquals(lines.filter((l) => l.includes(needle)).length, 1, loose.err);
  once(`${vision}: --no-strict: missing keys (left at their initial values) (1): norm.weight`);
  once(`${bert}: --no-strict: missing keys (left at their initial values) (1): bert.embeddings.LayerNorm.bias`);
  once(`${bert}: --no-strict: dropped from the file (2): cls.predictions.decoder.weight (tied)`);
  assert(/stopped: max-steps after 1 steps/.test(loose.out), loose.out);
  assertEquals(storedHeads(exportOf(out1)), 1); // the guess, round(48/64)

  const out2 = await Deno.makeTempDir();
  const heads = await cli("refine", [
    ...pairs,
    ...text,
    "--weights",
    vision,
    "--no-strict",
    "--heads",
    "2",
    "--out",
    out2,
  ]);
  assertEquals(heads.code, 0, heads.err);
  assert(!/a guess \(the head count/.test(heads.err), heads.err);
  assertEquals(storedHeads(exportOf(out2)), 2);

  const noWeights = await cli("refine", [...pairs, "--heads", "2"]);
  assertEquals(noWeights.code, 1);
  assert(noWeights.err.includes("--heads is for --weights"), noWeights.err);
  const zero = await cli("refine", [...pairs, ...text, "--weights", vision, "--heads", "0"]);
  assertEquals(zero.code, 1);
  assert(/--heads/.test(zero.err), zero.err);
});

Deno.test("refine without --pairs (the experiment) honours --no-strict and --heads, printing the report once", async () => {
  const f = await tinyFiles("retfound");
  const vision = `${f.dir}/retfound_partial.safetensors`;
  await without(f.vision, vision, ["norm.weight"], true);
  const text = ["--text-weights", f.text.weights, "--text-config", f.text.config, "--tokenizer", f.text.tokenizer];
  const args = ["--benchmark", SYNTH_TINY, "--max-steps", "1", "--epochs", "1", "--seeds", "0", "--weights", vision];
  const strict = await cli("refine", [...args, ...text, "--out", await Deno.makeTempDir()]);
  assertEquals(strict.code, 1, strict.err);
  assert(strict.err.includes("(pass --no-strict to load the matching keys only)"), strict.err);
  assert(!/probe|features/.test(strict.err), "refused before the baseline probe");
  const out = await Deno.makeTempDir();
  const r = await cli("refine", [...args, ...text, "--no-strict", "--heads", "2", "--out", out]);
  assertEquals(r.code, 0, r.err);
  const missing = r.err.split("\n").filter((l) => l.includes(`${vision}: --no-strict: missing keys`));
  assertEquals(missing.length, 1, r.err);
  assert(missing[0].endsWith("(1): norm.weight"), missing[0]);
  assertEquals(storedHeads(exportOf(out)), 2);
  // --ablation refines five times from the same files: each report still once.
  const abl = await cli("refine", [...args, ...text, "--no-strict", "--ablation", "--out", await Deno.makeTempDir()]);
  assertEquals(abl.code, 0, abl.err);
  for (const line of [`${vision}: --no-strict: missing`, `${f.text.weights}: --no-strict: dropped`]) {
    assertEquals(abl.err.split("\n").filter((l) => l.startsWith(line)).length, 1, abl.err);
  }
});

Deno.test("zeroshot --no-strict / --heads on a run's files; mismatched heads and two backbones are named", async () => {
  const f = await tinyFiles("retfound");
  const run = await Deno.makeTempDir();
  const r0 = await cli("refine", [
    "--pairs",
    `${SYNTH_TINY}pairs/pairs.csv`,
    "--weights",
    f.vision,
    "--text-weights",
    f.text.weights,
    "--text-config",
    f.text.config,
    "--tokenizer",
    f.text.tokenizer,
    "--max-steps",
    "1",
    "--epochs",
    "1",
    "--batch",
    "4",
    "--out",
    run,
  ]);
  assertEquals(r0.code, 0, r0.err);
  const pairs = ["--pairs", `${SYNTH_TINY}pairs/pairs.csv`];
  const ok = await cli("zeroshot", ["--run", run, ...pairs, "--out", await Deno.makeTempDir()]);
  assertEquals(ok.code, 0, ok.err);
  assert(/Retrieval over 8 pairs/.test(ok.out), ok.out);

  // The image bounds the refusal names are zeroshot's own flags too.
  const big = await cli("zeroshot", ["--run", run, ...pairs, "--max-pixels", "100", "--out", await Deno.makeTempDir()]);
  assertEquals(big.code, 1, big.err);
  assert(/raise it with --max-pixels/.test(big.err), big.err);
  const all = await cli("zeroshot", ["--run", run, "--attention", "x.png", "--report", "x", "--slice", "all"]);
  assertEquals(all.code, 1, all.err);
  assert(all.err.includes("--attention maps one B-scan"), all.err);

  // The ITM head's last bias missing.
  const heads = join(run, "heads.safetensors");
  const full = `${run}/heads.full`;
  await Deno.rename(heads, full);
  await without(full, heads, ["itm_head.3.bias"]);
  const strict = await cli("zeroshot", ["--run", run, ...pairs, "--out", await Deno.makeTempDir()]);
  assertEquals(strict.code, 1, strict.err);
  assert(strict.err.includes(`${heads} do not match the model:\n  missing (1): itm_head.3.bias`), strict.err);
  assert(strict.err.includes("(pass --no-strict to load the matching keys only)"), strict.err);
  const loose = await cli("zeroshot", ["--run", run, ...pairs, "--no-strict", "--out", await Deno.makeTempDir()]);
  assertEquals(loose.code, 0, loose.err);
  assert(loose.err.includes(`${heads}: --no-strict: missing keys (left at their initial values) (1): itm_head.3.bias`));
  assert(/Retrieval over 8 pairs/.test(loose.out), loose.out);
  await Deno.rename(full, heads);

  // A backbone without its stored config: the head count is a guess, and zeroshot names its own flag.
  const backbone = exportOf(run);
  await Deno.rename(backbone, `${run}/backbone.full`);
  await without(`${run}/backbone.full`, backbone, [], true);
  const guess = await cli("zeroshot", ["--run", run, ...pairs, "--out", await Deno.makeTempDir()]);
  assertEquals(guess.code, 0, guess.err);
  assert(/a guess \(the head count .*; set --heads if the model has another/.test(guess.err), guess.err);
  assert(!/pass numHeads/.test(guess.err), guess.err);
  // The family is then a guess from the name, with zeroshot's own flag to set it.
  assert(guess.err.includes(`${backbone}: family retfound — a guess from the file name`), guess.err);
  assert(guess.err.includes("if it is wrong, set --arch retfound|visionfm|urfound|timm"), guess.err);
  const set = await cli("zeroshot", [
    "--run",
    run,
    ...pairs,
    "--heads",
    "2",
    "--arch",
    "retfound",
    "--out",
    await Deno.makeTempDir(),
  ]);
  assertEquals(set.code, 0, set.err);
  assert(!/a guess/.test(set.err), set.err);
  assert(set.err.includes(`${backbone}: family retfound — set by --arch`), set.err);

  // Two backbone exports: which one is meant is not guessed.
  await Deno.copyFile(backbone, `${run}/best-model_other_retfound_bscan.safetensors`);
  const two = await cli("zeroshot", ["--run", run, ...pairs, "--out", await Deno.makeTempDir()]);
  assertEquals(two.code, 1, two.err);
  assert(two.err.includes(`${run}: 2 backbone exports`), two.err);
});

/** The C15 pairs (reports using the added word "pachychoroid") with small JPEGs in place of the case's images. */
async function c15(): Promise<string> {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/images`);
  const jpg = await Deno.readFile(`${fx}dataset/grey8.jpg`);
  for (const n of ["CNV-1001-1.jpeg", "NORMAL-1004-1.jpeg", "DME-1002-1.jpeg", "DRUSEN-1003-1.jpeg"]) {
    await Deno.writeFile(`${dir}/images/${n}`, jpg);
  }
  await Deno.copyFile(`${fx}data_cases/C15_added_token_word.csv`, `${dir}/pairs.csv`);
  return dir;
}

/** The text stand-in with its embeddings resized by one row, as Hugging Face's resize_token_embeddings does. */
async function resizedStandin(dir: string): Promise<{ weights: string; config: string }> {
  const src = `${root}data/models/bert-standin/`;
  const { tensors } = readSafetensors(`${src}model.safetensors`);
  const out = new Map<string, TensorData>();
  for (const [k, t] of tensors) {
    const data = toFloat32(t);
    if (t.shape[0] === 680 && (k.endsWith("word_embeddings.weight") || k.startsWith("cls.predictions."))) {
      const width = t.shape.length === 2 ? t.shape[1] : 1;
      const grown = new Float32Array(data.length + width);
      grown.set(data);
      for (let i = 0; i < width; i++) grown[data.length + i] = 0.02 * Math.sin(i + 1); // the new row, small
      out.set(k, { dtype: "F32", shape: [681, ...t.shape.slice(1)], data: grown });
    } else out.set(k, { dtype: "F32", shape: t.shape, data });
  }
  const weights = `${dir}/model.safetensors`;
  await writeSafetensors(weights, out);
  const config = JSON.parse(await Deno.readTextFile(`${src}config.json`));
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...config, vocab_size: 681 }));
  return { weights, config: `${dir}/config.json` };
}

Deno.test("C15: a tokenizer with an added token against the stand-in is named before training; the resized BERT trains", async () => {
  const dir = await c15();
  const tokenizer = `${fx}weights/standin_with_added_token.json`;
  const standin = `${root}data/models/bert-standin/`;
  const common = ["--pairs", `${dir}/pairs.csv`, "--tokenizer", tokenizer, "--max-steps", "2", "--epochs", "1"];
  const bad = await cli("refine", [
    ...common,
    "--text-weights",
    `${standin}model.safetensors`,
    "--text-config",
    `${standin}config.json`,
    "--out",
    `${dir}/run0`,
  ]);
  assertEquals(bad.code, 1, bad.err);
  for (
    const needle of [
      "the tokenizer has 681 tokens but the BERT's vocabulary is 680",
      `the tokenizer ${tokenizer} has 680 in its vocabulary + 1 added with add_tokens ("pachychoroid" (id 680))`,
      `weights ${standin}model.safetensors, config ${standin}config.json`,
      "resize_token_embeddings",
      "or pass the tokenizer the BERT was trained with",
    ]
  ) assert(bad.err.includes(needle), `missing "${needle}" in:\n${bad.err}`);
  assert(!/GatherV2|refine epoch| {4}at /.test(bad.err), bad.err); // no raw tfjs error, no stack, no training
  // Refused before anything was read or written: not even the run directory.
  assert(!(await Deno.stat(`${dir}/run0`).then(() => true, () => false)), "nothing written");

  const resized = await resizedStandin(dir);
  const out = `${dir}/run1`;
  const ok = await cli("refine", [
    ...common,
    "--text-weights",
    resized.weights,
    "--text-config",
    resized.config,
    "--batch",
    "2",
    "--out",
    out,
  ]);
  assertEquals(ok.code, 0, ok.err);
  assert(/stopped: max-(steps|epochs) after 2 steps/.test(ok.out), ok.out);
  const steps = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l))
    .filter((e) => e.kind === "step");
  assertEquals(steps.length, 2);
  assert(steps.every((s) => Number.isFinite(s.total) && s.total > 0), JSON.stringify(steps));
});

// The case itself (../shared/cases/data), with its own images and resized folder: run when present.
const CASES = new URL("../../../shared/cases/data/", import.meta.url).pathname;
const haveCases = await Deno.stat(`${CASES}tokenizer/standin_resized`).then(() => true, () => false);
Deno.test({
  name: "C15 as shipped: the shared resized stand-in refines on the case's pairs",
  ignore: !haveCases,
  fn: async () => {
    const r = `${CASES}tokenizer/standin_resized/`;
    const out = await Deno.makeTempDir();
    const ok = await cli("refine", [
      "--pairs",
      `${CASES}pairs/C15_added_token_word.csv`,
      "--text-weights",
      `${r}model.safetensors`,
      "--text-config",
      `${r}config.json`,
      "--tokenizer",
      `${r}tokenizer.json`,
      "--max-steps",
      "2",
      "--epochs",
      "1",
      "--batch",
      "2",
      "--out",
      `${out}/run`,
    ]);
    assertEquals(ok.code, 0, ok.err);
    assert(/stopped: max-(steps|epochs) after 2 steps/.test(ok.out), ok.out);
  },
});

Deno.test("a RETFound release without proj refines with a BERT of any width: the new proj is made at the BERT's width", async () => {
  const f = await tinyFiles("retfound"); // its BERT is 32-d, not BERT-base's 768
  const vision = `${fx}weights/retfound_module_prefix.pth`;
  const text = ["--text-weights", f.text.weights, "--text-config", f.text.config, "--tokenizer", f.text.tokenizer];
  const common = ["--max-steps", "1", "--epochs", "1", "--weights", vision, ...text];
  for (
    const args of [
      ["--pairs", `${SYNTH_TINY}pairs/pairs.csv`, "--batch", "4"],
      ["--benchmark", SYNTH_TINY, "--seeds", "0"], // the experiment path
    ]
  ) {
    const out = await Deno.makeTempDir();
    const r = await cli("refine", [...args, ...common, "--out", out]);
    assertEquals(r.code, 0, r.err);
    const notices = r.err.split("\n").filter((l) => l.includes(": new proj ") && l.includes("RETFound's refinement"));
    assertEquals(notices.length, 1, r.err);
    assert(notices[0].startsWith(`${vision}: new proj `) && /→32 /.test(notices[0]), notices[0]);
    const exported = readSafetensors(exportOf(out));
    assertEquals(JSON.parse(exported.metadata["retfiner.vit_config"]).projDim, 32);
    assertEquals(exported.tensors.get("proj.weight")!.shape[0], 32);
  }
});

Deno.test("keys of ViT parts this ViT lacks (q/k norm, register tokens) are refused, not silently dropped; --no-strict lists them", async () => {
  const f = await tinyFiles("visionfm");
  const withParts = `${f.dir}/visionfm_qknorm.safetensors`;
  const { tensors, metadata } = readSafetensors(f.vision);
  const kept = new Map<string, TensorData>();
  for (const [k, t] of tensors) kept.set(k, { dtype: "F32", shape: t.shape, data: toFloat32(t) });
  kept.set("blocks.1.attn.q_norm.weight", { dtype: "F32", shape: [16], data: new Float32Array(16).fill(2) });
  kept.set("reg_token", { dtype: "F32", shape: [1, 4, 32], data: new Float32Array(128) });
  kept.set("head.weight", { dtype: "F32", shape: [3, 32], data: new Float32Array(96) }); // a head: dropped as usual
  await writeSafetensors(withParts, kept, metadata);
  const img = `${SYNTH_TINY}pairs/images/${[...Deno.readDirSync(`${SYNTH_TINY}pairs/images`)].map((e) => e.name)[0]}`;
  const args = ["--weights", withParts, "--input", img, "--out", `${f.dir}/x.npy`];
  const strict = await cli("encode", args);
  assertEquals(strict.code, 1, strict.err);
  assert(strict.err.includes(`${withParts}: 2 key(s) belong to a ViT with parts this one does not have`), strict.err);
  assert(strict.err.includes("blocks.1.attn.q_norm.weight") && strict.err.includes("reg_token"), strict.err);
  assert(!strict.err.includes("head.weight"), strict.err);
  assert(strict.err.includes("(pass --no-strict to load without them)"), strict.err);
  const loose = await cli("encode", [...args, "--no-strict"]);
  assertEquals(loose.code, 0, loose.err);
  assert(/--no-strict: dropped from the file \(3\): .*blocks\.1\.attn\.q_norm\.weight/.test(loose.err), loose.err);
  // The same refusal in refine, which names its own flag.
  const r = await cli("refine", [
    "--pairs",
    `${SYNTH_TINY}pairs/pairs.csv`,
    "--weights",
    withParts,
    "--max-steps",
    "1",
    "--out",
    `${f.dir}/run`,
  ]);
  assertEquals(r.code, 1, r.err);
  assert(r.err.includes("(pass --no-strict to load without them)"), r.err);
});

Deno.test("library: loadVision then buildModel (the notebooks' path) fits a new RETFound proj to the text stand-in, as refine does", async () => {
  const { setupBackend } = await import("../../src/backend/mod.ts");
  const { buildModel, loadVision } = await import("../../src/model/mod.ts");
  const { loadVit } = await import("../../src/encoders/mod.ts");
  await setupBackend({ log: null });
  const release = `${fx}weights/retfound_module_prefix.pth`; // a RETFound release layout: no proj
  const vit = loadVision("retfound", release);
  assertEquals(vit.config.projDim, 768); // the authors' width, before the text side is known
  const lines: string[] = [];
  const model = buildModel(vit, undefined, 0, { log: (l) => lines.push(l) }); // the 128-d text stand-in
  assertEquals(model.vit.config.projDim, 128);
  assertEquals(model.vit.params.get("proj.weight")!.shape, [128, vit.config.embedDim]);
  assert(
    lines.some((l) => l.startsWith(`new proj ${vit.config.embedDim}→128`) && l.includes("instead of 768")),
    `${lines}`,
  );
  // The same values as loading with the width known up front (refine's path).
  const direct = loadVit(release, { arch: "retfound", newProjDim: 128, log: null }).model;
  for (const k of ["proj.weight", "proj.bias"]) {
    assertEquals([...model.vit.params.get(k)!.dataSync()], [...direct.params.get(k)!.dataSync()], k);
  }
  // A proj from a file is never resized: its width is the file's, and a BERT of another width is an error saying so.
  const f = await tinyFiles("retfound"); // an export with a trained 48→32 proj
  const trained = loadVision("retfound", f.vision);
  const err = assertThrows(() => buildModel(trained, undefined, 0, { log: null }));
  assert(
    /tokens are 32-d but the BERT is 128-d.*proj 48→32.*a proj from the file fixes the width/.test(err.message),
    err.message,
  );
});

Deno.test("refine --text-weights <Hugging Face folder> without --text-config uses the folder's config.json and says so", async () => {
  const dir = await Deno.makeTempDir();
  for (const e of Deno.readDirSync(`${fx}weights/bert_sharded`)) {
    await Deno.copyFile(`${fx}weights/bert_sharded/${e.name}`, join(dir, e.name));
  }
  const tok = `${fx}weights/bert_cased_vocab_folder`;
  // Without a config.json in the folder: refused, naming the folder.
  const none = await cli("refine", ["--text-weights", dir, "--tokenizer", tok, "--pairs", "/nonexistent.csv"]);
  assertEquals(none.code, 1);
  assert(
    none.err.includes(`--text-weights ${dir} needs --text-config (the BERT config.json): none in ${dir}`),
    none.err,
  );
  await Deno.copyFile(`${fx}weights/bert_model_no_mlm_head/config.json`, join(dir, "config.json"));
  // With it, the folder (or its index) passes the text checks; the run then stops at the missing manifest.
  for (const w of [dir, join(dir, "model.safetensors.index.json")]) {
    const r = await cli("refine", [
      "--text-weights",
      w,
      "--tokenizer",
      tok,
      "--pairs",
      "/nonexistent.csv",
      "--out",
      join(dir, "run"),
    ]);
    assert(r.err.includes(`--text-config not given: using ${join(dir, "config.json")}, beside --text-weights`), r.err);
    assert(/\/nonexistent\.csv: cannot read manifest/.test(r.err), r.err);
  }
  // No tokenizer in the folder either: --tokenizer is asked for.
  const noTok = await cli("refine", ["--text-weights", dir, "--pairs", "/nonexistent.csv"]);
  assert(noTok.err.includes(`needs --tokenizer (tokenizer.json or vocab.txt): neither is in ${dir}`), noTok.err);
  await Deno.remove(dir, { recursive: true });
});
