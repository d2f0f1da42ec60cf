/**
 * Masked-autoencoder pretraining (He et al. 2022; RETFound's recipe, scaled
 * down) for the stand-in foundation models: 75 % of patches are masked at
 * random, the encoder sees the rest (plus CLS), a small decoder reconstructs
 * the masked patches, and the loss is the MSE on per-patch-normalised pixels
 * (`norm_pix_loss`). Position embeddings are fixed 2-D sin-cos, as MAE's.
 * @module
 */
import { tf } from "../backend/tf.ts";
import type { Tensor, Variable } from "../backend/tf.ts";
import {
  expandParam,
  initLayerNorm,
  initLinearTrunc,
  layerNormP,
  linearP,
  makeParam,
  type Params,
  uniformValues,
  uniqueScope,
} from "../encoders/layers.ts";
import { createVit, patchEmbed, sincosPosEmbed, vitBlock, type VitConfig, type VitModel } from "../encoders/vit.ts";
import type { Rng } from "../util/rng.ts";

/** Decoder size. */
export interface MaeDecoderConfig {
  /** Decoder width. */
  embedDim: number;
  /** Decoder blocks. */
  depth: number;
  /** Decoder heads. */
  numHeads: number;
}

/** Encoder (a ViT of any family) plus MAE decoder. */
export interface MaeModel {
  /** The encoder, kept afterwards as the stand-in. */
  encoder: VitModel;
  /** Decoder parameters (`decoder_embed`, `mask_token`, `decoder_blocks.*`, `decoder_norm`, `decoder_pred`). */
  decoder: Params;
  /** A ViT view of the decoder blocks for reusing `vitBlock`. */
  decoderBlocks: VitModel;
  /** Decoder size. */
  decoderConfig: MaeDecoderConfig;
}

/** Creates an encoder (sin-cos position embeddings, MAE init) and decoder. */
export function createMae(config: VitConfig, decoder: MaeDecoderConfig, rng: Rng): MaeModel {
  const encoder = createVit(config, { rng: rng.fork("encoder"), sincosPosEmbed: true });
  const grid = config.imgSize / config.patchSize;
  const scope = uniqueScope("mae_decoder");
  const p: Params = new Map();
  const r = rng.fork("decoder");
  const Dd = decoder.embedDim;
  const xavier = (i: number, o: number) => uniformValues(r, i * o, Math.sqrt(6 / (i + o)));
  makeParam(p, scope, "decoder_embed.weight", xavier(config.embedDim, Dd), [Dd, config.embedDim]);
  makeParam(p, scope, "decoder_embed.bias", new Float32Array(Dd), [Dd]);
  makeParam(p, scope, "mask_token", Float32Array.from({ length: Dd }, () => r.normal() * 0.02), [1, 1, Dd]);
  makeParam(p, scope, "decoder_pos_embed", sincosPosEmbed(Dd, grid), [1, 1 + grid * grid, Dd], false);
  const out = config.patchSize * config.patchSize * config.inChans;
  initLayerNorm(p, scope, "decoder_norm", Dd);
  initLinearTrunc(p, scope, "decoder_pred", Dd, out, r, 0.02);
  // The decoder blocks are ViT blocks: build them as a ViT with the decoder's width and reuse vitBlock.
  const decoderBlocks = createVit({
    ...config,
    embedDim: Dd,
    depth: decoder.depth,
    numHeads: decoder.numHeads,
    projDim: null,
    dropPathRate: 0,
  }, { rng: r.fork("blocks") });
  for (const [k, v] of decoderBlocks.params) {
    if (!k.startsWith("blocks.")) {
      v.dispose();
      decoderBlocks.params.delete(k);
    }
  }
  return { encoder, decoder: p, decoderBlocks, decoderConfig: decoder };
}

/** Trainable parameters, encoder names first (MAE keeps position embeddings fixed). */
export function maeParams(m: MaeModel): Map<string, Variable> {
  const out = new Map<string, Variable>();
  for (const [k, v] of m.encoder.params) if (k !== "pos_embed" && !k.startsWith("proj.")) out.set(k, v);
  for (const [k, v] of m.decoder) if (k !== "decoder_pos_embed") out.set(k, v);
  for (const [k, v] of m.decoderBlocks.params) out.set(`decoder_${k}`, v);
  return out;
}

/** MAE's `patchify`: `[B, 3, H, W]` → `[B, N, p·p·3]` in (p, q, c) order. */
export function patchify(images: Tensor, p: number): Tensor {
  const [B, C, H, W] = images.shape;
  const h = H / p;
  const w = W / p;
  return tf.reshape(tf.transpose(tf.reshape(images, [B, C, h, p, w, p]), [0, 2, 4, 3, 5, 1]), [B, h * w, p * p * C]);
}

/** Per-sample random masking: indices of kept patches, the restore permutation and the 0/1 mask. */
export function randomMasking(
  batch: number,
  n: number,
  ratio: number,
  rng: Rng,
): { keep: Int32Array; restore: Int32Array; mask: Float32Array; nKeep: number } {
  const nKeep = Math.round(n * (1 - ratio));
  const keep = new Int32Array(batch * nKeep);
  const restore = new Int32Array(batch * n);
  const mask = new Float32Array(batch * n).fill(1);
  for (let b = 0; b < batch; b++) {
    const noise = Array.from({ length: n }, () => rng.uniform());
    const shuffle = noise.map((_, i) => i).sort((x, y) => noise[x] - noise[y]);
    shuffle.forEach((patch, rank) => {
      restore[b * n + patch] = rank;
      if (rank < nKeep) {
        keep[b * nKeep + rank] = patch;
        mask[b * n + patch] = 0;
      }
    });
  }
  return { keep, restore, mask, nKeep };
}

/** The MAE loss on a batch of images `[B, 3, S, S]`. */
export function maeLoss(m: MaeModel, images: Tensor, maskRatio: number, rng: Rng, dropRng?: Rng): Tensor {
  const enc = m.encoder;
  const c = enc.config;
  const [B] = images.shape;
  const n = (c.imgSize / c.patchSize) ** 2;
  const D = c.embedDim;
  const Dd = m.decoderConfig.embedDim;
  const { keep, restore, mask, nKeep } = randomMasking(B, n, maskRatio, rng);
  const pos = enc.params.get("pos_embed")!;
  let x = tf.add(patchEmbed(enc, images), tf.slice(pos, [0, 1, 0], [1, n, D]));
  const rows = Int32Array.from(keep, (p, k) => Math.floor(k / nKeep) * n + p);
  x = tf.reshape(tf.gather(tf.reshape(x, [B * n, D]), rows), [B, nKeep, D]);
  const cls = expandParam(tf.add(enc.params.get("cls_token")!, tf.slice(pos, [0, 0, 0], [1, 1, D])), [B, 1, D]);
  x = tf.concat([cls, x], 1);
  for (let i = 0; i < c.depth; i++) x = vitBlock(enc, i, x, { training: !!dropRng, rng: dropRng });
  x = layerNormP(enc.params, "norm", x, c.eps);
  // Decoder: embed, append mask tokens, unshuffle, add position embeddings.
  let y = linearP(m.decoder, "decoder_embed", x);
  const visible = tf.slice(y, [0, 1, 0], [B, nKeep, Dd]);
  const masked = expandParam(m.decoder.get("mask_token")!, [B, n - nKeep, Dd]);
  const seq = tf.reshape(tf.concat([visible, masked], 1), [B * n, Dd]);
  const order = Int32Array.from(restore, (r, k) => Math.floor(k / n) * n + r);
  y = tf.concat([tf.slice(y, [0, 0, 0], [B, 1, Dd]), tf.reshape(tf.gather(seq, order), [B, n, Dd])], 1);
  y = tf.add(y, m.decoder.get("decoder_pos_embed")!);
  for (let i = 0; i < m.decoderConfig.depth; i++) y = vitBlock(m.decoderBlocks, i, y);
  y = linearP(m.decoder, "decoder_pred", layerNormP(m.decoder, "decoder_norm", y, 1e-6));
  const pred = tf.slice(y, [0, 1, 0], [B, n, y.shape[2] as number]);
  // norm_pix_loss: each target patch normalised by its own mean and variance.
  const target = patchify(images, c.patchSize);
  const { mean, variance } = tf.moments(target, -1, true);
  const t = tf.div(tf.sub(target, mean), tf.sqrt(tf.add(variance, 1e-6)));
  const perPatch = tf.mean(tf.square(tf.sub(pred, t)), -1);
  const maskT = tf.tensor(mask, [B, n]);
  return tf.div(tf.sum(tf.mul(perPatch, maskT)), tf.sum(maskT));
}
