/**
 * Weakly supervised pretraining for the stand-ins: the encoder's probing
 * representation (`concat`, §2.2) is trained, through a linear head, to
 * predict the severities of a few common findings in each scan (binary
 * cross-entropy with the severity in [0, 1] as a soft target). Only some of
 * the generator's findings are taught; the reports describe all of them, so
 * refinement with text has something left to add.
 *
 * Why not image-only, as the real models are: at the size and time this
 * machine allows (a ViT-Ti-sized encoder, a few thousand scans, minutes),
 * MAE and contrastive pretraining gave features weaker than raw pixels under
 * a linear probe (README, "How the stand-ins were made"), where RETFound's
 * 1.6 M-scan MAE gives features far stronger than pixels. Predicting findings
 * is the cheapest way to give a small encoder what a foundation model brings
 * to a probe: features in which disease is linearly visible.
 * @module
 */
import { tf } from "../backend/tf.ts";
import type { Tensor, Variable } from "../backend/tf.ts";
import { initLinearTrunc, linearP, type Params, uniqueScope } from "../encoders/layers.ts";
import { featureDim, vitFeatures, type VitModel } from "../encoders/vit.ts";
import type { Pathology } from "../dataset/synth/render.ts";
import { REPORTED_SEVERITY } from "../dataset/synth/reports.ts";
import type { Rng } from "../util/rng.ts";

/** A finding of the synthetic generator (a key of {@link Pathology}). */
export type Finding = keyof Pathology;

/** Every finding of the synthetic generator, in {@link Pathology}'s order. */
export const FINDINGS: readonly Finding[] = [
  "drusen",
  "irf",
  "srf",
  "ped",
  "erm",
  "hole",
  "rnflThinning",
  "ga",
  "exudates",
  "innerIschemia",
  "traction",
];

/**
 * The findings head: `Linear(2D → K)` on the `concat` representation.
 * @param vit the encoder being pretrained
 * @param findings the K findings taught
 * @param rng initialisation (truncated normal, std 0.02)
 * @returns the head's parameters (`findings_head.weight` `[K, 2D]`, `findings_head.bias` `[K]`)
 */
export function createFindingsHead(vit: VitModel, findings: readonly Finding[], rng: Rng): Params {
  const p: Params = new Map();
  initLinearTrunc(p, uniqueScope("findings"), "findings_head", featureDim(vit.config, "concat"), findings.length, rng);
  return p;
}

/**
 * What the findings head learns: each finding's `severity` in [0, 1] (a soft target), or only its `presence` (1 where
 * a report would name it, severity above {@link REPORTED_SEVERITY}; else 0), which leaves the severity words to the
 * reports.
 */
export type FindingTargets = "severity" | "presence";

/**
 * Targets of a batch, row-major `[B, K]`.
 * @param pathologies each scan's severities
 * @param findings the K findings taught
 * @param kind severities, or presence as 0/1 (default: severity)
 * @returns the targets in [0, 1]
 */
export function findingTargets(
  pathologies: readonly Pathology[],
  findings: readonly Finding[],
  kind: FindingTargets = "severity",
): Float32Array {
  const out = new Float32Array(pathologies.length * findings.length);
  pathologies.forEach((p, b) =>
    findings.forEach((f, k) =>
      out[b * findings.length + k] = kind === "presence" ? (p[f] > REPORTED_SEVERITY ? 1 : 0) : p[f]
    )
  );
  return out;
}

/**
 * Mean binary cross-entropy between the head's logits and the severities (soft targets).
 * @param vit the encoder (trained: drop-path active when `dropRng` is given)
 * @param head the findings head
 * @param images `[B, 3, S, S]`, normalised
 * @param targets `[B, K]` severities in [0, 1]
 * @param dropRng drop-path generator (training mode), or none
 * @returns the scalar loss (nats per finding and scan)
 */
export function findingsLoss(
  vit: VitModel,
  head: Params,
  images: Tensor,
  targets: Tensor,
  dropRng?: Rng,
): Tensor {
  const feat = vitFeatures(vit, images, "concat", dropRng ? { training: true, rng: dropRng } : {});
  const logits = linearP(head, "findings_head", feat);
  return tf.losses.sigmoidCrossEntropy(targets, logits);
}

/** The head's parameters with a prefix, to train beside the encoder's. */
export function findingsHeadParams(p: Params): Map<string, Variable> {
  return new Map([...p].map(([k, v]) => [`pre_${k}`, v]));
}
