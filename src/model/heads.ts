/**
 * RetFiner's heads (method notes §1.5), with the authors' parameter names:
 * `contra_head_v` / `contra_head_t` (Linear 768→512, no bias) for ITC, and
 * `itm_head` = Linear → GELU → LayerNorm(1e-12) → Linear(2) for ITM.
 * @module
 */
import type { Rng } from "../util/rng.ts";
import {
  gelu,
  initLinearDefault,
  layerNormP,
  linearP,
  makeParam,
  type Params,
  uniqueScope,
} from "../encoders/layers.ts";
import type { Tensor } from "../backend/tf.ts";

/** Sizes of the heads. */
export interface HeadsConfig {
  /** Width of the image tokens the heads read (768, after RETFound's proj). */
  visionWidth: number;
  /** Width of the text encoder (768). */
  textWidth: number;
  /** Contrastive embedding width (512). */
  embedDim: number;
}

/**
 * Creates the heads with PyTorch's default `nn.Linear` init; the ITM LayerNorm starts at 1/0.
 * @param config the vision token width, the BERT width and the contrastive embedding width (at most 512)
 * @param rng the initialisation's generator
 * @returns `contra_head_v` `[embed, visionWidth]`, `contra_head_t` `[embed, textWidth]` (both bias-free) and the ITM head
 */
export function createHeads(config: HeadsConfig, rng: Rng): Params {
  const scope = uniqueScope("heads");
  const p: Params = new Map();
  initLinearDefault(p, scope, "contra_head_v", config.visionWidth, config.embedDim, rng, false);
  initLinearDefault(p, scope, "contra_head_t", config.textWidth, config.embedDim, rng, false);
  initLinearDefault(p, scope, "itm_head.0", config.textWidth, config.textWidth, rng);
  makeParam(p, scope, "itm_head.2.weight", new Float32Array(config.textWidth).fill(1), [config.textWidth]);
  makeParam(p, scope, "itm_head.2.bias", new Float32Array(config.textWidth), [config.textWidth]);
  initLinearDefault(p, scope, "itm_head.3", config.textWidth, 2, rng);
  return p;
}

/**
 * The ITM head on `[N, textWidth]` multimodal CLS vectors: `[N, 2]` logits.
 * @param heads the heads from {@link createHeads}
 * @param x multimodal CLS vectors `[N, textWidth]`
 * @returns match / no-match logits `[N, 2]`
 */
export function itmHead(heads: Params, x: Tensor): Tensor {
  return linearP(heads, "itm_head.3", layerNormP(heads, "itm_head.2", gelu(linearP(heads, "itm_head.0", x)), 1e-12));
}
