/** A tiny RetFiner model on the committed tiny synthetic benchmark, for refinement tests. */
import { buildWordPieceVocab, readPairManifest, tokenizerFromVocab } from "../../src/dataset/mod.ts";
import { bertPreset, createVit, vitPreset } from "../../src/encoders/mod.ts";
import { assembleModel, createTextEncoder, type RetfinerModel } from "../../src/model/mod.ts";
import type { PairRecord } from "../../src/dataset/mod.ts";
import { Rng } from "../../src/util/rng.ts";

export const SYNTH_TINY = new URL("../../data/synth-tiny/", import.meta.url).pathname;

export async function tinyPairs(): Promise<PairRecord[]> {
  return (await readPairManifest(`${SYNTH_TINY}pairs/pairs.csv`)).records;
}

export async function tinyModel(
  seed = 0,
  family: "retfound" | "visionfm" | "urfound" = "retfound",
): Promise<RetfinerModel> {
  const pairs = await tinyPairs();
  const tokenizer = tokenizerFromVocab(
    buildWordPieceVocab(pairs.map((p) => p.report), { vocabSize: 256, minFrequency: 1 }),
  );
  const vit = createVit(
    vitPreset(family, {
      imgSize: 32,
      patchSize: 8,
      embedDim: family === "retfound" ? 48 : 32,
      depth: 2,
      numHeads: 2,
      projDim: family === "retfound" ? 32 : null,
    }),
    { rng: new Rng(seed, "vit") },
  );
  const bert = createTextEncoder(
    bertPreset("small", {
      hiddenSize: 32,
      numHiddenLayers: 2,
      numAttentionHeads: 2,
      intermediateSize: 64,
      maxPositionEmbeddings: 32,
    }),
    tokenizer,
    seed,
  );
  return assembleModel(vit, bert, tokenizer, { seed });
}
