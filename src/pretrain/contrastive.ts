/**
 * Image-only contrastive self-supervision (SimCLR-style, the family DINO/iBOT
 * belong to) for a stand-in: two augmented views of each B-scan (shift, small
 * rotation and scale, flip, gain, gamma, noise) are pulled together and pushed
 * from the other scans' views (InfoNCE, τ = 0.2) through a projection MLP on
 * the CLS token. The augmentations are the scanner nuisances, so the features
 * learn to ignore them — without ever seeing a label or a report.
 * @module
 */
import { tf } from "../backend/tf.ts";
import type { Tensor, Variable } from "../backend/tf.ts";
import { affine } from "../dataset/augment.ts";
import { gelu, initLinearTrunc, linearP, type Params, uniqueScope } from "../encoders/layers.ts";
import { vitFeatures, type VitModel } from "../encoders/vit.ts";
import { crossEntropy, l2normalize } from "../losses/objectives.ts";
import type { Rng } from "../util/rng.ts";

/** A projection head `Linear(D, D) → GELU → Linear(D, out)`. */
export function createProjector(dim: number, out: number, rng: Rng): Params {
  const p: Params = new Map();
  const scope = uniqueScope("projector");
  initLinearTrunc(p, scope, "projector.0", dim, dim, rng);
  initLinearTrunc(p, scope, "projector.2", dim, out, rng);
  return p;
}

/** One augmented view of a grey image (values in [0, 1]). */
export function nuisanceView(img: Float32Array, size: number, rng: Rng): Float32Array {
  let g = { width: size, height: size, data: img };
  g = affine(g, {
    angle: rng.uniformRange(-6, 6),
    translate: [Math.round(rng.uniformRange(-0.08, 0.08) * size), Math.round(rng.uniformRange(-0.12, 0.12) * size)],
    scale: rng.uniformRange(0.9, 1.1),
    shear: [0, 0],
  });
  const out = g.data;
  if (rng.uniform() < 0.5) { for (let y = 0; y < size; y++) out.subarray(y * size, (y + 1) * size).reverse(); }
  const gain = rng.uniformRange(0.7, 1.3);
  const gamma = rng.uniformRange(0.8, 1.25);
  const sigma = rng.uniformRange(0, 0.05);
  const noise = rng.fillNormal(new Float32Array(out.length));
  for (let i = 0; i < out.length; i++) {
    out[i] = Math.min(1, Math.max(0, Math.pow(Math.max(0, out[i] * gain), gamma) + sigma * noise[i]));
  }
  return out;
}

/** NT-Xent over `2B` projected views: view k's positive is its twin, every other view a negative. */
export function infoNce(z: Tensor, temperature: number): Tensor {
  const n = z.shape[0];
  const b = n / 2;
  const e = l2normalize(z);
  const sim = tf.div(tf.matMul(e, e, false, true), temperature);
  // Mask each view's similarity with itself out of the softmax.
  const logits = tf.sub(sim, tf.mul(tf.eye(n), 1e9));
  const targets = Int32Array.from({ length: n }, (_, k) => (k < b ? k + b : k - b));
  return crossEntropy(logits, targets);
}

/** The contrastive loss of a batch of `[2B, 3, S, S]` views (first B and last B are twins). */
export function contrastiveLoss(
  vit: VitModel,
  projector: Params,
  views: Tensor,
  temperature: number,
  dropRng?: Rng,
): Tensor {
  const cls = vitFeatures(vit, views, "cls", dropRng ? { training: true, rng: dropRng } : {});
  const z = linearP(projector, "projector.2", gelu(linearP(projector, "projector.0", cls)));
  return infoNce(z, temperature);
}

/** The projector's parameters with a prefix, to train beside the encoder's. */
export function projectorParams(p: Params): Map<string, Variable> {
  return new Map([...p].map(([k, v]) => [`ssl_${k}`, v]));
}
