/** A BERT config.json from a stranger is checked before use: a non-object is a typed error naming the file. */
import { assertThrows } from "../_assert.ts";
import { loadBert } from "../../src/encoders/mod.ts";
import { EncoderError } from "../../src/util/errors.ts";

const weights = new URL("../fixtures/weights/bert_model_no_mlm_head/pytorch_model.bin", import.meta.url).pathname;

Deno.test("loadBert: a config.json that is null, a list or a number is an EncoderError naming the file", () => {
  const dir = Deno.makeTempDirSync();
  try {
    for (const text of ["null", "[1, 2]", "42", "{not json"]) {
      const cfg = `${dir}/config.json`;
      Deno.writeTextFileSync(cfg, text);
      assertThrows(() => loadBert(weights, cfg), new RegExp(cfg.replaceAll(".", "\\.")), EncoderError);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
