/**
 * Vision transformer with timm's parameter names and layouts
 * (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}.attn.qkv`, …),
 * covering the three foundation models RetFiner refines.
 *
 * Each family takes its tokens where the authors' code takes them
 * (method notes §1.2 for refinement, §2.2 for probing):
 *
 * | family   | refinement tokens            | probing `concat`                           |
 * |----------|------------------------------|--------------------------------------------|
 * | retfound | blocks → norm → proj (→768)  | blocks → [mean(patch) ‖ CLS] → frozen LN   |
 * | visionfm | blocks → norm                | blocks → norm → [CLS ‖ mean(patch)]        |
 * | urfound  | blocks (no final norm)       | blocks → [mean(patch) ‖ CLS] → frozen LN   |
 * | timm     | blocks → norm (→ proj)       | as retfound                                |
 * @module
 */
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import { type RandomSource, Rng } from "../util/rng.ts";
import { EncoderError } from "../util/errors.ts";
import { torchCubicWeights } from "../dataset/resize.ts";
import {
  attention,
  expandParam,
  gelu,
  initLayerNorm,
  initLinearDefault,
  initLinearTrunc,
  layerNorm,
  layerNormP,
  linear,
  linearP,
  makeParam,
  mergeHeads,
  param,
  type Params,
  residual,
  splitHeads,
  truncNormal,
  uniformValues,
  uniqueScope,
} from "./layers.ts";

/** The foundation-model families, each with its own token and feature recipe. */
export type VitFamily = "retfound" | "visionfm" | "urfound" | "timm";

/** ImageNet normalisation statistics (RETFound, UrFound, timm). */
export const IMAGENET_MEAN: [number, number, number] = [0.485, 0.456, 0.406];
/** ImageNet standard deviations. */
export const IMAGENET_STD: [number, number, number] = [0.229, 0.224, 0.225];
/** VisionFM's OCT normalisation means (method notes §1.3). */
export const VISIONFM_MEAN: [number, number, number] = [0.21091926, 0.21091926, 0.21091919];
/** VisionFM's OCT normalisation standard deviations. */
export const VISIONFM_STD: [number, number, number] = [0.17598894, 0.17598891, 0.17598893];

/** Architecture and recipe of a vision transformer. */
export interface VitConfig {
  /** Which foundation model's recipe to follow. */
  family: VitFamily;
  /** Input height and width in pixels. */
  imgSize: number;
  /** Patch height and width. */
  patchSize: number;
  /** Input channels (3: grey B-scans are repeated to RGB). */
  inChans: number;
  /** Token width. */
  embedDim: number;
  /** Number of transformer blocks. */
  depth: number;
  /** Attention heads per block. */
  numHeads: number;
  /** MLP hidden width as a multiple of `embedDim`. */
  mlpRatio: number;
  /** Whether `attn.qkv` has a bias. */
  qkvBias: boolean;
  /** LayerNorm epsilon (1e-6 in all three models). */
  eps: number;
  /** Stochastic-depth rate at the last block during training (linearly increasing per block, as timm). */
  dropPathRate: number;
  /** Output width of the new `proj` Linear used during refinement (RETFound: 768), or null for none. */
  projDim: number | null;
  /** Per-channel normalisation mean of this model's inputs. */
  mean: [number, number, number];
  /** Per-channel normalisation std of this model's inputs. */
  std: [number, number, number];
  /**
   * Layer scale in every block (`blocks.{i}.ls1.gamma`, `ls2.gamma`, as DINOv2 / timm `init_values`): each residual
   * branch is multiplied by a learned per-channel vector. Default false.
   */
  layerScale?: boolean;
  /**
   * Global-pool fine-tune (RETFound's fine-tuning script, `global_pool=True`): the final norm is `fc_norm` (there is
   * no `norm`) and the pooled feature is `fc_norm(mean of patch tokens)`. Default false.
   */
  globalPool?: boolean;
}

/** A vision transformer: its config and its parameters keyed by timm names. */
export interface VitModel {
  /** Architecture. */
  config: VitConfig;
  /** Parameters by timm name. */
  params: Params;
  /** Prefix of the tfjs variable names. */
  scope: string;
}

/**
 * How token features are read out (see the module table); `pooled` is the
 * model's own pooled feature: `fc_norm(mean of patch tokens)` for a
 * global-pool fine-tune, otherwise the CLS token of `all`.
 */
export type TokenMode = "all" | "cls" | "concat" | "pooled";

/** Options for creating a model. */
export interface CreateVitOptions {
  /** Random generator for the initial weights; defaults to seed 0. */
  rng?: Rng;
  /** `random` (timm init) or `zeros` (allocation only, for loading weights right after). */
  init?: "random" | "zeros";
  /** Use fixed 2-D sin-cos position embeddings (MAE's init) instead of trunc-normal. */
  sincosPosEmbed?: boolean;
}

/**
 * Number of patches per side.
 * @param config the ViT config
 * @returns `imgSize / patchSize` (e.g. 224 / 16 = 14)
 * @throws {EncoderError} when the image size is not a multiple of the patch size
 */
export function gridSize(config: VitConfig): number {
  if (config.imgSize % config.patchSize !== 0) {
    throw new EncoderError(`imgSize ${config.imgSize} is not a multiple of patchSize ${config.patchSize}`);
  }
  return config.imgSize / config.patchSize;
}

/**
 * MAE's 2-D sin-cos position embedding, with a zero row for the CLS token: `[1 + g², dim]`.
 * @param dim the embedding width, a multiple of 4
 * @param grid patches per side g
 * @returns row-major `[1 + g², dim]` values (MAE's `get_2d_sincos_pos_embed(cls_token=True)`)
 * @throws {EncoderError} when `dim` is not a multiple of 4
 */
export function sincosPosEmbed(dim: number, grid: number): Float32Array {
  if (dim % 4 !== 0) throw new EncoderError(`sin-cos position embedding needs embedDim divisible by 4, got ${dim}`);
  const out = new Float32Array((1 + grid * grid) * dim);
  const quarter = dim / 4;
  const omega = Array.from({ length: quarter }, (_, i) => 1 / Math.pow(10000, i / quarter));
  for (let h = 0; h < grid; h++) {
    for (let w = 0; w < grid; w++) {
      const row = 1 + h * grid + w;
      const base = row * dim;
      // MAE: first half embeds the w coordinate (grid[0]), second half the h coordinate.
      for (let i = 0; i < quarter; i++) {
        out[base + i] = Math.sin(w * omega[i]);
        out[base + quarter + i] = Math.cos(w * omega[i]);
        out[base + 2 * quarter + i] = Math.sin(h * omega[i]);
        out[base + 3 * quarter + i] = Math.cos(h * omega[i]);
      }
    }
  }
  return out;
}

/**
 * Creates a vision transformer with freshly initialised (or zero) parameters.
 * @param config the architecture (see `vitPreset`, `inferVitConfig`)
 * @param options the initialisation's generator, `init: "zeros"` to only allocate before loading, sin-cos positions
 * @returns the model (tfjs variables named as timm's state dict)
 * @throws {EncoderError} when the width is not divisible by the head count or the image not by the patch size
 */
export function createVit(config: VitConfig, options: CreateVitOptions = {}): VitModel {
  const grid = gridSize(config);
  if (config.embedDim % config.numHeads !== 0) {
    throw new EncoderError(`embedDim ${config.embedDim} is not divisible by numHeads ${config.numHeads}`);
  }
  const scope = uniqueScope("vit");
  const params: Params = new Map();
  const rng = options.rng ?? new Rng(0, "vit-init");
  const zeros = options.init === "zeros";
  const D = config.embedDim;
  const P = config.patchSize;
  const C = config.inChans;
  const hidden = Math.round(D * config.mlpRatio);
  const tn = (n: number, std = 0.02) => zeros ? new Float32Array(n) : truncNormal(rng, n, std);
  const add = (name: string, values: Float32Array, shape: number[]) => makeParam(params, scope, name, values, shape);
  const lin = (prefix: string, i: number, o: number, bias = true) => {
    if (zeros) {
      add(`${prefix}.weight`, new Float32Array(o * i), [o, i]);
      if (bias) add(`${prefix}.bias`, new Float32Array(o), [o]);
    } else initLinearTrunc(params, scope, prefix, i, o, rng, 0.02, bias);
  };

  add("cls_token", tn(D), [1, 1, D]);
  add("pos_embed", options.sincosPosEmbed ? sincosPosEmbed(D, grid) : tn((1 + grid * grid) * D), [
    1,
    1 + grid * grid,
    D,
  ]);
  // MAE initialises the patch projection like a Linear: xavier-uniform over [D, C*P*P].
  const xavier = Math.sqrt(6 / (C * P * P + D));
  add("patch_embed.proj.weight", zeros ? new Float32Array(D * C * P * P) : uniformValues(rng, D * C * P * P, xavier), [
    D,
    C,
    P,
    P,
  ]);
  add("patch_embed.proj.bias", new Float32Array(D), [D]);
  for (let b = 0; b < config.depth; b++) {
    const p = `blocks.${b}`;
    initLayerNorm(params, scope, `${p}.norm1`, D);
    lin(`${p}.attn.qkv`, D, 3 * D, config.qkvBias);
    lin(`${p}.attn.proj`, D, D);
    initLayerNorm(params, scope, `${p}.norm2`, D);
    lin(`${p}.mlp.fc1`, D, hidden);
    lin(`${p}.mlp.fc2`, hidden, D);
    if (config.layerScale) {
      // timm / DINOv2 LayerScale init_values (1e-5 in DINOv2).
      add(`${p}.ls1.gamma`, new Float32Array(D).fill(zeros ? 0 : 1e-5), [D]);
      add(`${p}.ls2.gamma`, new Float32Array(D).fill(zeros ? 0 : 1e-5), [D]);
    }
  }
  initLayerNorm(params, scope, config.globalPool ? "fc_norm" : "norm", D);
  if (config.projDim) {
    // RETFound's refinement projection is a new nn.Linear with PyTorch's default init (§1.2).
    if (zeros) lin("proj", D, config.projDim);
    else initLinearDefault(params, scope, "proj", D, config.projDim, rng);
  }
  return { config, params, scope };
}

/** Options for a forward pass. */
export interface VitForwardOptions {
  /** Training mode: enables stochastic depth (needs `rng`). */
  training?: boolean;
  /** Generator of stochastic depth: one for the batch, or one per image (`[B]`, see `SampleStreams`). */
  rng?: RandomSource;
  /** Keep each block's attention probabilities (for attention maps). */
  returnAttention?: boolean;
}

/**
 * Patchifies `[B, C, H, W]` images and embeds them: `[B, N, D]` (conv as patchify + matmul).
 * @param model the ViT
 * @param images `[B, C, S, S]` float32, normalised, with S the config's `imgSize`
 * @returns the patch tokens `[B, N, D]`, N = (S / patchSize)²
 * @throws {EncoderError} when the images have another shape
 */
export function patchEmbed(model: VitModel, images: Tensor): Tensor {
  const { patchSize: P, inChans: C, embedDim: D, imgSize } = model.config;
  const [B, c, H, W] = images.shape;
  if (images.rank !== 4 || c !== C || H !== imgSize || W !== imgSize) {
    throw new EncoderError(`ViT expects images of shape [B, ${C}, ${imgSize}, ${imgSize}], got [${images.shape}]`);
  }
  const g = imgSize / P;
  const patches = tf.reshape(
    tf.transpose(tf.reshape(images, [B, C, g, P, g, P]), [0, 2, 4, 1, 3, 5]),
    [B * g * g, C * P * P],
  );
  const w = tf.reshape(param(model.params, "patch_embed.proj.weight"), [D, C * P * P]);
  return tf.reshape(linear(patches, w, param(model.params, "patch_embed.proj.bias")), [B, g * g, D]);
}

/**
 * One pre-norm transformer block (timm `Block`).
 * @param model the ViT
 * @param index the block, in [0, depth)
 * @param x the tokens `[B, 1+N, D]`
 * @param options training mode (drop-path at the block's linearly scaled rate) and its generator
 * @param attnOut when given, receives the attention probabilities `[B, heads, 1+N, 1+N]`
 * @returns the block's output `[B, 1+N, D]`
 */
export function vitBlock(
  model: VitModel,
  index: number,
  x: Tensor,
  options: VitForwardOptions = {},
  attnOut?: Tensor[],
): Tensor {
  const { numHeads, eps, depth, dropPathRate } = model.config;
  const p = `blocks.${index}`;
  const params = model.params;
  const rate = options.training ? (depth > 1 ? (dropPathRate * index) / (depth - 1) : dropPathRate) : 0;
  const h = layerNormP(params, `${p}.norm1`, x, eps);
  // timm: qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4); here split into q, k, v, then each into heads.
  const [q, k, v] = tf.split(linearP(params, `${p}.attn.qkv`, h), 3, 2).map((t) => splitHeads(t, numHeads));
  const { context, probs } = attention(q, k, v);
  if (attnOut) attnOut.push(probs);
  let a = linearP(params, `${p}.attn.proj`, mergeHeads(context));
  if (model.config.layerScale) a = tf.mul(a, param(params, `${p}.ls1.gamma`));
  x = residual(x, a, rate, options.rng);
  let m = linearP(
    params,
    `${p}.mlp.fc2`,
    gelu(linearP(params, `${p}.mlp.fc1`, layerNormP(params, `${p}.norm2`, x, eps))),
  );
  if (model.config.layerScale) m = tf.mul(m, param(params, `${p}.ls2.gamma`));
  return residual(x, m, rate, options.rng);
}

/**
 * Embeds, prepends CLS, adds position embeddings and runs every block: raw `[B, 1+N, D]`.
 * @param model the ViT
 * @param images `[B, C, S, S]` float32, normalised
 * @param options training mode (drop-path) and its generator
 * @param attnOut when given, receives each block's attention probabilities `[B, heads, 1+N, 1+N]`, in order
 * @returns the last block's raw output `[B, 1+N, D]` (before any final norm)
 * @throws {EncoderError} for images of another shape, or training with drop-path but no `rng`
 */
export function vitBlocks(
  model: VitModel,
  images: Tensor,
  options: VitForwardOptions = {},
  attnOut?: Tensor[],
): Tensor {
  if (options.training && model.config.dropPathRate > 0 && !options.rng) {
    throw new EncoderError("training with stochastic depth needs an rng");
  }
  const x0 = patchEmbed(model, images);
  const B = x0.shape[0];
  const D = model.config.embedDim;
  const cls = expandParam(param(model.params, "cls_token"), [B, 1, D]);
  let x = tf.add(tf.concat([cls, x0], 1), param(model.params, "pos_embed"));
  for (let i = 0; i < model.config.depth; i++) {
    // One tidy per block frees its intermediates as soon as the block is done (tensors a gradient needs are kept by
    // the tape), instead of holding every block's until the caller's scope ends.
    const [y, ...probs] = tf.tidy(() => {
      const local: Tensor[] = [];
      const out = vitBlock(model, i, x, options, attnOut ? local : undefined);
      return [out, ...local];
    });
    attnOut?.push(...probs);
    x = y;
  }
  return x;
}

/**
 * The final `norm` (`fc_norm` for a global-pool fine-tune, which has no other), per token.
 * @param model the ViT
 * @param tokens `[B, 1+N, D]` (or `[B, D]`)
 * @returns the normalised tokens, same shape
 */
export function vitFinalNorm(model: VitModel, tokens: Tensor): Tensor {
  return layerNormP(model.params, model.config.globalPool ? "fc_norm" : "norm", tokens, model.config.eps);
}

/**
 * The tokens the text encoder cross-attends to during refinement (§1.2):
 * RETFound: norm → proj; VisionFM: norm; UrFound: raw block output; timm: norm (→ proj).
 * @param model the ViT
 * @param images `[B, C, S, S]` float32, normalised
 * @param options training mode (drop-path) and its generator
 * @returns `[B, 1+N, W]`, W = {@link refineTokenDim} (the BERT's width after RETFound's projection)
 * @throws {EncoderError} as {@link vitBlocks}
 */
export function vitRefineTokens(model: VitModel, images: Tensor, options: VitForwardOptions = {}): Tensor {
  const x = vitBlocks(model, images, options);
  if (model.config.family === "urfound") return x; // §1.2: use_proj=False skips the final norm
  const normed = vitFinalNorm(model, x);
  return model.config.projDim ? linearP(model.params, "proj", normed) : normed;
}

/**
 * Width of the tokens from {@link vitRefineTokens}.
 * @param config the ViT config
 * @returns the width of the refinement tokens: `projDim` when set (not for UrFound, whose raw block output is
 *   used), else `embedDim`
 */
export function refineTokenDim(config: VitConfig): number {
  return config.family !== "urfound" && config.projDim ? config.projDim : config.embedDim;
}

/** `[mean(patch tokens) ‖ CLS]` or `[CLS ‖ mean]`: `[B, 2D]`. */
function concatMeanCls(tokens: Tensor, clsFirst: boolean): Tensor {
  const [B, L, D] = tokens.shape;
  const cls = tf.reshape(tf.slice(tokens, [0, 0, 0], [B, 1, D]), [B, D]);
  const mean = tf.mean(tf.slice(tokens, [0, 1, 0], [B, L - 1, D]), 1);
  return tf.concat(clsFirst ? [cls, mean] : [mean, cls], 1);
}

/**
 * Packs preprocessed images (`toModelInput`'s layout, image after image) into the ViT's input tensor.
 * The one place a batch becomes `[n, 3, S, S]`; the length is checked, so a wrong size is an error, not a reshape
 * of the wrong pixels.
 * @param data `n · 3 · S · S` float32 values, normalised
 * @param n number of images
 * @param size the input side S in pixels (`config.imgSize`)
 * @returns a `[n, 3, S, S]` tensor (the caller disposes it, or creates it inside `tf.tidy`)
 * @throws {EncoderError} when `data` does not hold `n · 3 · S · S` values
 */
export function imagesTensor(data: Float32Array, n: number, size: number): Tensor {
  if (data.length !== n * 3 * size * size) {
    throw new EncoderError(
      `an image batch of ${data.length} values is not ${n} images of 3×${size}×${size} (${n * 3 * size * size} values)`,
    );
  }
  return tf.tensor(data, [n, 3, size, size]);
}

/**
 * Token features for encoding and probing.
 * - `all`: `[B, 1+N, D]`, where the family's refinement recipe takes tokens,
 *   but for RETFound before the new projection (after the final norm).
 * - `cls`: token 0 of `all`, `[B, D]`.
 * - `pooled`: a global-pool fine-tune's `fc_norm(mean of patch tokens)`; otherwise as `cls`.
 * - `concat`: the probing representation (§2.2), `[B, 2D]`.
 * @param model the ViT
 * @param images `[B, C, S, S]` float32, normalised
 * @param mode which features, see above
 * @param options forward options (probing uses the default: eval mode)
 * @returns `[B, 1+N, D]` for `all`, `[B, D]` for `cls`/`pooled`, `[B, 2D]` for `concat`
 * @throws {EncoderError} as {@link vitBlocks}
 */
export function vitFeatures(
  model: VitModel,
  images: Tensor,
  mode: TokenMode,
  options: VitForwardOptions = {},
): Tensor {
  const x = vitBlocks(model, images, options);
  const family = model.config.family;
  if (mode === "pooled" && model.config.globalPool) {
    // RETFound fine-tuning (global_pool=True): fc_norm(x[:, 1:].mean(1)).
    const [B, L, D] = x.shape;
    return layerNormP(model.params, "fc_norm", tf.mean(tf.slice(x, [0, 1, 0], [B, L - 1, D]), 1), model.config.eps);
  }
  if (mode === "concat") {
    if (family === "visionfm") return concatMeanCls(vitFinalNorm(model, x), true);
    // §2.2: final norm deleted; fc_norm = LayerNorm(2D) frozen at weight 1, bias 0.
    return layerNorm(concatMeanCls(x, false), undefined, undefined, 1e-6);
  }
  const all = family === "urfound" ? x : vitFinalNorm(model, x);
  if (mode === "all") return all;
  const [B, , D] = all.shape; // cls, and pooled without global pooling
  return tf.reshape(tf.slice(all, [0, 0, 0], [B, 1, D]), [B, D]);
}

/**
 * Width of a {@link vitFeatures} output per token (or per image for `cls`/`concat`).
 * @param config the ViT config
 * @param mode the feature mode
 * @returns `2 · embedDim` for `concat`, else `embedDim`
 */
export function featureDim(config: VitConfig, mode: TokenMode): number {
  return mode === "concat" ? 2 * config.embedDim : config.embedDim;
}

/**
 * Resizes a `[1, prefix + g², D]` position embedding to a new grid with
 * bicubic interpolation (PyTorch `interpolate(mode="bicubic",
 * align_corners=False)`, as MAE's `interpolate_pos_embed`). Prefix tokens
 * (CLS) are kept as they are.
 * @param values the embedding, row-major `[1, prefix + oldGrid², dim]`
 * @param dim the width D
 * @param oldGrid the grid side it was trained at
 * @param newGrid the grid side wanted
 * @param prefix the number of leading tokens kept as they are (1: CLS)
 * @returns the resized embedding `[1, prefix + newGrid², dim]`, a new array (a copy when the grids are equal)
 * @throws {EncoderError} when `values` does not have `(prefix + oldGrid²) · dim` elements
 */
export function resizePosEmbed(
  values: Float32Array,
  dim: number,
  oldGrid: number,
  newGrid: number,
  prefix = 1,
): Float32Array {
  if (values.length !== (prefix + oldGrid * oldGrid) * dim) {
    throw new EncoderError(`pos_embed has ${values.length} values, expected ${(prefix + oldGrid * oldGrid) * dim}`);
  }
  const out = new Float32Array((prefix + newGrid * newGrid) * dim);
  out.set(values.subarray(0, prefix * dim));
  if (oldGrid === newGrid) {
    out.set(values);
    return out;
  }
  const cubic = torchCubicWeights; // PyTorch's bicubic kernel (a = −0.75), as timm's resample_abs_pos_embed uses it
  const scale = oldGrid / newGrid;
  const taps = (o: number) => {
    const src = (o + 0.5) * scale - 0.5;
    const f = Math.floor(src);
    const w = cubic(src - f);
    return [-1, 0, 1, 2].map((d, i) => ({ idx: Math.min(oldGrid - 1, Math.max(0, f + d)), w: w[i] }));
  };
  for (let y = 0; y < newGrid; y++) {
    const ty = taps(y);
    for (let x = 0; x < newGrid; x++) {
      const tx = taps(x);
      const dst = (prefix + y * newGrid + x) * dim;
      for (const a of ty) {
        for (const b of tx) {
          const w = a.w * b.w;
          const src = (prefix + a.idx * oldGrid + b.idx) * dim;
          for (let c = 0; c < dim; c++) out[dst + c] += w * values[src + c];
        }
      }
    }
  }
  return out;
}
