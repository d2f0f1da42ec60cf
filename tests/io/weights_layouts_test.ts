/**
 * Real weights as researchers share them (issue 15): every container and wrapper-prefix order, layer scale,
 * global-pool fine-tunes, Lightning and sharded checkpoints load and match PyTorch (fixtures from
 * tests/fixtures/make_weights.py); broken downloads and hostile configs are refused with errors that say what they are.
 */
import { assert, assertAllClose, assertEquals, assertThrows } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { makeTensor, readSafetensors, toFloat32, writeSafetensors } from "../../src/io/mod.ts";
import { mapBertWeights, readWeights, unwrapStateDict } from "../../src/io/weights.ts";
import { loadBert, type LoadedVit, loadVit, type TokenMode, vitFeatures } from "../../src/encoders/mod.ts";
import { exportBackbone } from "../../src/model/export.ts";
import { loadTokenizer } from "../../src/dataset/tokenizer.ts";
import { CheckpointError, EncoderError } from "../../src/util/errors.ts";

await setupBackend({ log: null });
const dir = new URL("../fixtures/weights/", import.meta.url).pathname;
const expected = readSafetensors(`${dir}expected.safetensors`).tensors;
const image = tf.tensor(toFloat32(expected.get("image")!), [1, 3, 32, 32]);
const TOL = 1e-4;

function features(loaded: LoadedVit, mode: TokenMode): Float32Array {
  return tf.tidy(() => vitFeatures(loaded.model, image, mode).dataSync() as Float32Array);
}

function load(file: string, options: Parameters<typeof loadVit>[1] = {}): LoadedVit {
  return loadVit(`${dir}${file}`, { log: null, ...options });
}

Deno.test("containers and wrapper prefixes in any order: weights found, prefixes stripped and reported", () => {
  const cases: [string, string, string[], string[]][] = [
    ["retfound_module_prefix.pth", "retfound", ["model"], ["module."]],
    ["state_dict_orig_mod_module.pth", "timm", ["state_dict"], ["_orig_mod.", "module."]],
    ["nested_model_module_orig_mod.pth", "retfound", ["checkpoint", "model"], ["module.", "_orig_mod.", "backbone."]],
    ["lightning_vision_encoder.ckpt", "lightning", ["state_dict"], ["model.", "vision_encoder."]],
  ];
  for (const [file, layout, container, prefixes] of cases) {
    const loaded = load(file, { arch: "retfound" });
    assertEquals(loaded.mapped.layout, layout, file);
    assertEquals(loaded.mapped.container, container, file);
    assertEquals([...loaded.mapped.stripped!.keys()].sort(), [...prefixes].sort(), file);
    assert(loaded.notices.some((n) => n.includes("stripped")), `${file}: ${loaded.notices}`);
    assertAllClose(features(loaded, "all"), toFloat32(expected.get("vit.all")!), TOL, file);
  }
});

Deno.test("Lightning checkpoint: text encoder, heads and optimizer state are dropped, not loaded", () => {
  const loaded = load("lightning_vision_encoder.ckpt", { arch: "retfound" });
  assert(loaded.mapped.dropped.some((d) => d.startsWith("state_dict.model.text_encoder.")), `${loaded.mapped.dropped}`);
  assert(loaded.mapped.dropped.some((d) => d.startsWith("optimizer_states (training state)")));
});

Deno.test("RETFound DINOv2 layout: teacher, backbone., layer scale; w12/w3 spelling renamed as RETFound's code does", () => {
  for (const file of ["retfound_dinov2_teacher.pth", "retfound_dinov2_w12_w3.pth"]) {
    const loaded = load(file);
    assertEquals(loaded.mapped.layout, "dinov2");
    assertEquals(loaded.family.family, "retfound");
    assertEquals(loaded.family.source, "layout");
    assertEquals(loaded.model.config.layerScale, true);
    assert(loaded.mapped.dropped.some((d) => d.startsWith("teacher.backbone.mask_token")), `${loaded.mapped.dropped}`);
    assert(loaded.mapped.dropped.some((d) => d.startsWith("teacher.dino_head.")), `${loaded.mapped.dropped}`);
    assertAllClose(features(loaded, "all"), toFloat32(expected.get("dinov2.all")!), TOL, file);
  }
});

Deno.test("RETFound global-pool fine-tune: pooled feature = fc_norm(mean of patch tokens), as PyTorch", () => {
  const loaded = load("retfound_finetuned_globalpool.pth");
  assertEquals(loaded.mapped.layout, "mae-finetuned");
  assertEquals(loaded.model.config.globalPool, true);
  assert(loaded.mapped.dropped.some((d) => d.startsWith("model.head.weight (classification head)")));
  assert(loaded.notices.some((n) => n.includes("global-pool fine-tune")));
  // args.model names ViT-L, which these 64-wide weights are not: said, and not used for the head count.
  assert(loaded.notices.some((n) => n.includes('args.model = "vit_large_patch16"') && n.includes("not used")));
  assertAllClose(features(loaded, "pooled"), toFloat32(expected.get("finetuned.pooled")!), TOL);
});

Deno.test("sharded safetensors checkpoint: the index loads every shard", () => {
  const loaded = load("vit.safetensors.index.json", { arch: "retfound" });
  assertAllClose(features(loaded, "all"), toFloat32(expected.get("vit.all")!), TOL);
  assertEquals(readWeights(`${dir}vit.safetensors.index.json`).files.length, 2);
});

Deno.test("family: decided once and printed with how; a file-name guess says so and how to set it", () => {
  const lines: string[] = [];
  const v = loadVit(`${dir}RetFiner-V.pth`, { log: (l) => lines.push(l) });
  assertEquals(v.family.family, "visionfm");
  assertEquals(v.family.guess, true);
  assert(lines.some((l) => l.includes("family visionfm") && l.includes("guess") && l.includes("--arch")), `${lines}`);
  // The head count is a guess too, and the log says so.
  assert(
    lines.some((l) =>
      l.includes(
        "1 attention heads = width 64/64 — a guess (the head count is not stored in the weights; right for ViT-B/16 and ViT-L/16); pass numHeads",
      )
    ),
    `${lines}`,
  );
  const forced = load("RetFiner-V.pth", { arch: "urfound", archFlag: "--model" });
  assertEquals([forced.family.family, forced.family.source, forced.family.reason], [
    "urfound",
    "option",
    "set by --model",
  ]);
  const stateDict = load("state_dict_orig_mod_module.pth");
  assertEquals([stateDict.family.family, stateDict.family.source], ["timm", "default"]);
});

Deno.test("exports carry their family: a refined VisionFM / UrFound .pth and .safetensors come back as the same family", async () => {
  const tmp = await Deno.makeTempDir();
  for (const family of ["visionfm", "urfound"] as const) {
    const src = load("RetFiner-V.pth", { arch: family });
    const out = await exportBackbone(src.model, tmp, "run1");
    assert(out.pth.includes(`_${family}_`), out.pth);
    for (const file of [out.pth, out.safetensors]) {
      // Renamed so that the file name says nothing: the family must come from the file itself.
      const plain = `${tmp}/plain_${file.endsWith(".pth") ? "a.pth" : "a.safetensors"}`;
      await Deno.rename(file, plain);
      const back = loadVit(plain, { log: null });
      assertEquals([back.family.family, back.family.source], [family, "metadata"], file);
      assertAllClose(features(back, "all"), features(src, "all"), 0, file);
    }
  }
});

Deno.test("--no-strict reports missing, unexpected and dropped keys; the strict hint names only a flag that exists", () => {
  const lines: string[] = [];
  const loaded = loadVit(`${dir}retfound_finetuned_globalpool.pth`, {
    strict: false,
    log: (l) => lines.push(l),
    overrides: { globalPool: false },
  });
  assertEquals(loaded.report.missing, ["norm.weight", "norm.bias"]);
  assertEquals(loaded.report.unexpected, ["fc_norm.weight", "fc_norm.bias"]);
  assert(lines.some((l) => l.includes("--no-strict: missing keys") && l.includes("norm.weight")), `${lines}`);
  assert(lines.some((l) => l.includes("--no-strict: dropped from the file") && l.includes("model.head.weight")));
  // A task with the flag names it; one without (refine, zeroshot) names none.
  const withFlag = assertThrows(
    () =>
      load("retfound_finetuned_globalpool.pth", { overrides: { globalPool: false }, strictHint: "pass --no-strict" }),
    undefined,
    EncoderError,
  );
  assert(withFlag.message.includes("missing (2): norm.weight, norm.bias"), withFlag.message);
  assert(withFlag.message.includes("(pass --no-strict to load the matching keys only)"), withFlag.message);
  const without = assertThrows(
    () => load("retfound_finetuned_globalpool.pth", { overrides: { globalPool: false } }),
    undefined,
    EncoderError,
  );
  assert(!without.message.includes("strict"), without.message);
});

Deno.test("files that are not weights say what they are and what to do", async () => {
  const lfs = assertThrows(() => readWeights(`${dir}v13_RETFound_lfs_pointer.pth`), undefined, CheckpointError);
  assert(lfs.message.includes("Git LFS pointer") && lfs.message.includes("git lfs pull"), lfs.message);
  const tmp = await Deno.makeTempDir();
  await Deno.writeTextFile(`${tmp}/weights.pth`, "\n<!DOCTYPE html><html><body>Sign in</body></html>");
  const html = assertThrows(() => readWeights(`${tmp}/weights.pth`), undefined, CheckpointError);
  assert(html.message.includes("HTML") && html.message.includes("failed download"), html.message);
  const folder = assertThrows(() => readWeights(tmp), undefined, CheckpointError);
  assert(folder.message.includes("is a folder without weights"), folder.message);
  await Deno.writeTextFile(`${tmp}/config.json`, '{"hidden_size": 8}');
  assert(
    assertThrows(() => readWeights(`${tmp}/config.json`), undefined, CheckpointError).message.includes(
      "JSON text file",
    ),
  );
});

Deno.test("a stored config is validated before anything is allocated, naming the file and the field", async () => {
  const tmp = await Deno.makeTempDir();
  const sd = readWeights(`${dir}vit.safetensors.index.json`).top as Map<string, never>;
  const bad: [Record<string, unknown>, string][] = [
    [{ projDim: 2e21 }, "retfiner.vit_config.projDim"],
    [{ family: "resnet" }, "retfiner.vit_config.family"],
    [{ mean: [0.5, 0.5, NaN] }, "retfiner.vit_config.mean"],
    [{ numHeads: 3 }, "retfiner.vit_config.numHeads"],
    [{ std: [0.2, 0.2, 0] }, "retfiner.vit_config.std"],
    [{ numHeads: "12" }, "retfiner.vit_config.numHeads"],
    [{ dropPathRate: 1.5 }, "retfiner.vit_config.dropPathRate"],
  ];
  for (const [cfg, field] of bad) {
    const file = `${tmp}/bad.safetensors`;
    // JSON.stringify writes NaN as null; a null mean must be refused as well.
    await writeSafetensors(file, sd, { "retfiner.vit_config": JSON.stringify(cfg) });
    const t0 = performance.now();
    const err = assertThrows(() => loadVit(file, { log: null }));
    assert(err instanceof EncoderError || err instanceof CheckpointError, String(err));
    assert(err.message.includes(file) && err.message.includes(field), err.message);
    assert(performance.now() - t0 < 2000);
  }
});

Deno.test("BERT without an MLM head (BertModel) loads; the head is initialised as Hugging Face does, with a notice", () => {
  const b = loadBert(`${dir}bert_model_no_mlm_head/pytorch_model.bin`, `${dir}bert_model_no_mlm_head/config.json`, {
    log: null,
  });
  assert(b.notices.some((n) => n.includes("no MLM head")), `${b.notices}`);
  const p = (n: string) => b.model.params.get(n)!.dataSync();
  assertEquals([...new Set(p("cls.predictions.bias"))], [0]);
  assertEquals([...new Set(p("cls.predictions.transform.LayerNorm.weight"))], [1]);
  assertEquals([...new Set(p("cls.predictions.transform.dense.bias"))], [0]);
  const w = p("cls.predictions.transform.dense.weight");
  let ss = 0;
  for (const x of w) ss += x * x;
  const sd = Math.sqrt(ss / w.length);
  assert(Math.abs(sd - 0.02) < 0.002, `dense std ${sd}`);
  assert(b.mapped.dropped.some((d) => d.startsWith("pooler.dense.weight")));
  // Strict for everything else: a missing encoder weight is still an error.
});

Deno.test("sharded BERT: the .bin index, the .safetensors index and the folder give the single file's weights", async () => {
  const one = loadBert(`${dir}bert_model_no_mlm_head/pytorch_model.bin`, `${dir}bert_model_no_mlm_head/config.json`, {
    log: null,
  });
  const cfg = `${dir}bert_model_no_mlm_head/config.json`;
  for (
    const p of [
      "bert_sharded/pytorch_model.bin.index.json",
      "bert_sharded/model.safetensors.index.json",
      "bert_sharded",
    ]
  ) {
    const b = loadBert(`${dir}${p}`, cfg, { log: null });
    for (const [k, v] of one.model.params) {
      if (k.includes("crossattention") || k.startsWith("cls.")) continue;
      assertAllClose(b.model.params.get(k)!.dataSync(), v.dataSync(), 0, `${p}: ${k}`);
    }
  }
  const tmp = await Deno.makeTempDir();
  await Deno.writeTextFile(`${tmp}/x.index.json`, JSON.stringify({ weight_map: { a: "../../etc/passwd" } }));
  assert(
    assertThrows(() => readWeights(`${tmp}/x.index.json`), undefined, CheckpointError).message.includes(
      "shard file name",
    ),
  );
});

Deno.test("vocab.txt folder: tokenizer_config.json's do_lower_case is honoured (BertTokenizer semantics)", () => {
  const tk = loadTokenizer(`${dir}bert_cased_vocab_folder`);
  // vocab.txt lines: 0 [PAD], 2 [CLS], 3 [SEP], 5 Patient, 6 patient, 7 has, 12 CKD, 13 ckd.
  assertEquals([...tk.encodeBatch(["Patient has CKD"], 6).inputIds], [2, 5, 7, 12, 3, 0]);
});

Deno.test("unwrapping is bounded: a dict shared many times is scored once; long prefix chains cost their length", () => {
  const inner = new Map<string, unknown>();
  for (let i = 0; i < 20_000; i++) inner.set(`x${i}`, i);
  const top = new Map<string, unknown>();
  for (let i = 0; i < 20_000; i++) top.set(`k${i}`, inner); // 4e8 entries if each share were walked
  const t0 = performance.now();
  const err = assertThrows(() => unwrapStateDict(top, "vision", "dag.pth"), /no ViT weights found/, CheckpointError);
  assert(err.message.length < 2000, "messages quote keys shortened");
  assert(performance.now() - t0 < 2000, `${performance.now() - t0} ms`);
  const t = makeTensor("F32", [1], new Float32Array(1));
  const deep = new Map<string, unknown>([["module.".repeat(200_000) + "blocks.0.norm1.weight", t]]);
  const t1 = performance.now();
  const u = unwrapStateDict(deep, "vision");
  assertEquals([...u.tensors.keys()], ["blocks.0.norm1.weight"]);
  assertEquals(u.stripped.get("module."), 200_000);
  assert(performance.now() - t1 < 2000);
});

Deno.test("shard indexes: shards must be plain files beside the index, never another index or a path", async () => {
  const tmp = await Deno.makeTempDir();
  for (const shard of ["x.index.json", "../x.safetensors", "sub/x.safetensors", ".hidden"]) {
    await Deno.writeTextFile(`${tmp}/m.index.json`, JSON.stringify({ weight_map: { a: shard } }));
    assertThrows(() => readWeights(`${tmp}/m.index.json`), /shard file name in the same folder/, CheckpointError);
  }
  await Deno.writeTextFile(`${tmp}/m.index.json`, JSON.stringify({ weight_map: { a: "gone.safetensors" } }));
  assertThrows(() => readWeights(`${tmp}/m.index.json`), /shard gone.safetensors is missing/, CheckpointError);
  await Deno.writeTextFile(`${tmp}/m.index.json`, JSON.stringify({ metadata: {} }));
  assertThrows(() => readWeights(`${tmp}/m.index.json`), /needs a "weight_map"/, CheckpointError);
});

Deno.test("a timm config.json beside the weights gives the head count (no guess); args naming another width are ignored", async () => {
  const tmp = await Deno.makeTempDir();
  await Deno.copyFile(`${dir}RetFiner-V.pth`, `${tmp}/weights.pth`);
  await Deno.writeTextFile(
    `${tmp}/config.json`,
    JSON.stringify({ architecture: "vit_custom", model_args: { num_heads: 2 } }),
  );
  const lines: string[] = [];
  const loaded = loadVit(`${tmp}/weights.pth`, { log: (l) => lines.push(l) });
  assertEquals(loaded.model.config.numHeads, 2);
  assert(!lines.some((l) => l.includes("attention heads")), `${lines}`);
  await Deno.writeTextFile(`${tmp}/config.json`, JSON.stringify({ architecture: "vit_base_patch16_224" }));
  const again = loadVit(`${tmp}/weights.pth`, { log: null });
  assert(
    again.notices.some((n) => n.includes('"architecture" = "vit_base_patch16_224" (width 768) does not describe')),
  );
  assertEquals(again.model.config.numHeads, 1);
});

Deno.test("BERT layouts: BertForSequenceClassification, BertModel under containers, the decoder-bias twin", () => {
  const t = (n: number) => makeTensor("F32", [n], new Float32Array(n).fill(n));
  const seqcls = new Map<string, unknown>([
    ["bert.embeddings.word_embeddings.weight", t(4)],
    ["bert.encoder.layer.0.output.dense.bias", t(2)],
    ["bert.pooler.dense.weight", t(3)],
    ["classifier.weight", t(5)],
  ]);
  const a = mapBertWeights(seqcls);
  assertEquals([...a.tensors.keys()], [
    "bert.embeddings.word_embeddings.weight",
    "bert.encoder.layer.0.output.dense.bias",
  ]);
  assert(a.dropped.includes("classifier.weight (sequence-classification head)"), `${a.dropped}`);
  // A DDP-saved BertModel inside a training checkpoint: module. stripped, bert. added; encoder. is BERT's own name.
  const wrapped = new Map<string, unknown>([
    [
      "state_dict",
      new Map<string, unknown>([["module.embeddings.word_embeddings.weight", t(4)], [
        "module.encoder.layer.0.output.dense.bias",
        t(2),
      ]]),
    ],
    ["optimizer", new Map()],
  ]);
  const b = mapBertWeights(wrapped);
  assertEquals([...b.tensors.keys()], [
    "bert.embeddings.word_embeddings.weight",
    "bert.encoder.layer.0.output.dense.bias",
  ]);
  assertEquals(b.container, ["state_dict"]);
  // Only the tied twin cls.predictions.decoder.bias is kept: it gives cls.predictions.bias.
  const twin = new Map<string, unknown>([["bert.embeddings.word_embeddings.weight", t(4)], [
    "cls.predictions.decoder.bias",
    t(6),
  ]]);
  assertEquals(mapBertWeights(twin).tensors.get("cls.predictions.bias")?.shape, [6]);
});

// The wild cases themselves, copied from the project's issue tracker (../shared/cases/weights) with their README.
const CASES = new URL("../fixtures/weights/cases/", import.meta.url).pathname;
const haveCases = (() => {
  try {
    return Deno.statSync(CASES).isDirectory;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "shared wild cases: each loads and matches its PyTorch reference, or is refused with what it is",
  ignore: !haveCases,
  fn: async () => {
    const { loadGreyImage } = await import("../../src/dataset/image.ts");
    const { refinementSpec, toModelInput } = await import("../../src/dataset/preprocess.ts");
    const { readNpy } = await import("../../src/io/npy.ts");
    const { IMAGENET_MEAN, IMAGENET_STD } = await import("../../src/encoders/vit.ts");
    const run = async (file: string, img: string, ref: string, mode: TokenMode, arch?: "retfound") => {
      const loaded = loadVit(CASES + file, { log: null, arch });
      const size = loaded.model.config.imgSize;
      const x = toModelInput(
        await loadGreyImage(CASES + img),
        refinementSpec(size, { mean: IMAGENET_MEAN, std: IMAGENET_STD }),
      );
      const got = tf.tidy(() => vitFeatures(loaded.model, tf.tensor(x, [1, 3, size, size]), mode).dataSync());
      assertAllClose(got, (await readNpy(CASES + ref)).data as Float32Array, TOL, file);
      return loaded;
    };
    assertEquals(
      (await run("v02_RETFound_finetuned_checkpoint-best.pth", "img80.png", "v02_ref_globalpool.npy", "pooled")).mapped
        .layout,
      "mae-finetuned",
    );
    assertEquals(
      (await run("v03_RETFound_dinov2_meh.pth", "img70.png", "v03_ref_all.npy", "all")).family.family,
      "retfound",
    );
    await run("v04_RETFound_model_module_prefix.pth", "img64.png", "v01_ref_all.npy", "all");
    await run("v07_state_dict_key.pth", "img64.png", "v01_ref_all.npy", "all", "retfound");
    await run("v10b_RETFound_args_numpy2_scalar.pth", "img64.png", "v01_ref_all.npy", "all");
    const v = await run("RetFiner-V.pth", "img64.png", "v01_ref_all.npy", "all");
    assert(v.family.guess && v.notices[0].includes("a guess from the file name"), v.notices[0]);
    assert(
      assertThrows(() => loadVit(CASES + "v13_RETFound_lfs_pointer.pth", { log: null })).message.includes(
        "Git LFS pointer",
      ),
    );
  },
});
