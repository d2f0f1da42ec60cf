/** Writes a tiny vision encoder and text side to disk, as the experiment and CLI tests need files. */
import { join } from "node:path";
import { bertConfigToJson, bertStateDictForExport } from "../../src/encoders/mod.ts";
import { writeSafetensors } from "../../src/io/mod.ts";
import { exportBackbone } from "../../src/model/mod.ts";
import { tinyModel } from "../refine/_tiny.ts";

export async function tinyFiles(family: "retfound" | "visionfm" | "urfound" = "retfound") {
  const dir = await Deno.makeTempDir();
  const m = await tinyModel(0, family);
  const { safetensors } = await exportBackbone(m.vit, dir, "tiny");
  await writeSafetensors(join(dir, "bert.safetensors"), await bertStateDictForExport(m.bert));
  await Deno.writeTextFile(join(dir, "bert_config.json"), JSON.stringify(bertConfigToJson(m.bert.config)));
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(m.tokenizer.tokenizerJson));
  return {
    dir,
    vision: safetensors,
    text: {
      weights: join(dir, "bert.safetensors"),
      config: join(dir, "bert_config.json"),
      tokenizer: join(dir, "tokenizer.json"),
    },
  };
}
