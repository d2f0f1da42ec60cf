/**
 * Where the shipped stand-in models live (`data/models/`).
 * @module
 */
import { fileURLToPath } from "node:url";
import { join } from "node:path";

/** The directory of the shipped stand-ins. */
export const STANDIN_DIR: string = fileURLToPath(new URL("../../data/models/", import.meta.url));

/**
 * Path of a vision family's stand-in weights.
 * @param family the vision family
 * @returns `data/models/<family>-standin.safetensors` in the package
 */
export function standinPath(family: "retfound" | "visionfm" | "urfound"): string {
  return join(STANDIN_DIR, `${family}-standin.safetensors`);
}

/** The text stand-in: a small BERT MLM-pretrained on synthetic reports, its config and tokenizer. */
export const TEXT_STANDIN: { weights: string; config: string; tokenizer: string } = {
  weights: join(STANDIN_DIR, "bert-standin", "model.safetensors"),
  config: join(STANDIN_DIR, "bert-standin", "config.json"),
  tokenizer: join(STANDIN_DIR, "bert-standin", "tokenizer.json"),
};
