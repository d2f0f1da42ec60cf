/**
 * The stand-in foundation models shipped under `data/models/`: small ViTs
 * shaped like RETFound (wider, with the refinement projection), VisionFM and
 * UrFound, each MAE-pretrained on unlabelled synthetic B-scans with its
 * family's input statistics — image-only, as the real models were.
 * `deno task pretrain` remakes them deterministically.
 * @module
 */
import { tf } from "../backend/tf.ts";
import { resizeGrey } from "../dataset/resize.ts";
import { DIAGNOSES, type Diagnosis, samplePathology } from "../dataset/synth/diseases.ts";
import { renderBscan } from "../dataset/synth/render.ts";
import { vitPreset } from "../encoders/presets.ts";
import type { VitConfig, VitFamily } from "../encoders/vit.ts";
import { floatToHalf, type TensorData } from "../io/tensor.ts";
import { writeSafetensors } from "../io/safetensors.ts";
import { adamwStepAsync, createAdamWState, disposeAdamWState, scheduledLr } from "../optim/adamw.ts";
import type { ProgressCallback } from "../util/progress.ts";
import { Rng } from "../util/rng.ts";
import { createMae, type MaeDecoderConfig, maeLoss, maeParams } from "./mae.ts";
import { contrastiveLoss, createProjector, nuisanceView, projectorParams } from "./contrastive.ts";
import {
  createFindingsHead,
  type Finding,
  findingsHeadParams,
  findingsLoss,
  type FindingTargets,
  findingTargets,
} from "./findings.ts";
import { REPORTED_SEVERITY } from "../dataset/synth/reports.ts";
import type { Pathology } from "../dataset/synth/render.ts";
import { createVit, imagesTensor } from "../encoders/vit.ts";
import { standinPath } from "../model/paths.ts";

/** The families with a stand-in. */
export type StandinFamily = "retfound" | "visionfm" | "urfound";

/** How a stand-in is made. */
export interface StandinSpec {
  /** Encoder architecture and recipe. */
  vit: VitConfig;
  /** MAE decoder. */
  decoder: MaeDecoderConfig;
  /** Seed of the data and the weights. */
  seed: number;
  /** Unlabelled B-scans rendered for pretraining. */
  images: number;
  /** Epochs over them. */
  epochs: number;
  /** Batch size. */
  batchSize: number;
  /** Peak learning rate (cosine after a warmup). */
  lr: number;
  /** Warmup epochs. */
  warmupEpochs: number;
  /** Masking ratio (MAE). */
  maskRatio: number;
  /**
   * `findings` (weakly supervised on a few findings' severities, {@link ./findings.ts}), `mae` (RETFound's and
   * UrFound's image-only objective) or `contrastive` (DINO/iBOT-style, VisionFM's kind).
   */
  objective: "findings" | "mae" | "contrastive";
  /** The findings taught (`findings` objective only). */
  findings?: readonly Finding[];
  /** What the findings head learns of each (`findings` objective; default severity). */
  targets?: FindingTargets;
  /** Probability of a scanner-nuisance view instead of the scan itself (`findings` objective). */
  augment?: number;
}

const SIZE = 112;
const common = { imgSize: SIZE, patchSize: 16, mlpRatio: 4 };

/** The three stand-ins (CPU-sized; the real models are ViT-L/16 and ViT-B/16 at 224 px). */
export const STANDIN_SPECS: Record<StandinFamily, StandinSpec> = {
  retfound: {
    vit: vitPreset("retfound", { ...common, embedDim: 192, depth: 6, numHeads: 3, projDim: 128 }),
    decoder: { embedDim: 128, depth: 2, numHeads: 4 },
    seed: 101,
    images: 6000,
    epochs: 8,
    batchSize: 64,
    lr: 1e-3,
    warmupEpochs: 1,
    maskRatio: 0.75,
    objective: "mae",
  },
  visionfm: {
    vit: vitPreset("visionfm", { ...common, embedDim: 128, depth: 6, numHeads: 2 }),
    decoder: { embedDim: 128, depth: 2, numHeads: 4 },
    seed: 202,
    images: 6000,
    epochs: 6,
    batchSize: 64,
    lr: 5e-4,
    warmupEpochs: 1,
    maskRatio: 0.75,
    objective: "contrastive",
  },
  urfound: {
    vit: vitPreset("urfound", { ...common, embedDim: 128, depth: 6, numHeads: 2 }),
    decoder: { embedDim: 128, depth: 2, numHeads: 4 },
    seed: 303,
    images: 6000,
    epochs: 8,
    batchSize: 64,
    lr: 1e-3,
    warmupEpochs: 1,
    maskRatio: 0.75,
    objective: "mae",
  },
};

const MIX: [Diagnosis, number][] = DIAGNOSES.map((d) => [d, d === "normal" ? 4 : 1]);

/** The pretraining scans and the severities they were drawn with. */
export interface PretrainingScans {
  /** Grey images at the model size, values in [0, 1]. */
  images: Float32Array[];
  /** Each scan's pathology (used only by the `findings` objective). */
  pathologies: Pathology[];
}

/** Renders the pretraining scans (grey, resized to the model size). */
export function pretrainingImages(spec: StandinSpec, onProgress?: ProgressCallback): PretrainingScans {
  const total = MIX.reduce((s, [, w]) => s + w, 0);
  const out: Float32Array[] = [];
  const pathologies: Pathology[] = [];
  for (let i = 0; i < spec.images; i++) {
    // A stream of its own: never the pair corpus's or the probing tasks' scans.
    const rng = new Rng(spec.seed, `pretrain/${i}`);
    let r = rng.uniform() * total;
    let dx: Diagnosis = "normal";
    for (const [d, w] of MIX) {
      if ((r -= w) < 0) {
        dx = d;
        break;
      }
    }
    const pathology = samplePathology(dx, rng);
    const img = renderBscan({ eye: rng.uniform() < 0.5 ? "OD" : "OS", pathology, seed: i }, rng, 256, 256);
    out.push(resizeGrey(img, spec.vit.imgSize, spec.vit.imgSize, "bicubic").data);
    pathologies.push(pathology);
    onProgress?.({ phase: "render pretraining scans", done: i + 1, total: spec.images });
  }
  return { images: out, pathologies };
}

/** What {@link pretrainStandin} reports. */
export interface PretrainResult {
  /** The written weights. */
  path: string;
  /** Mean MAE loss per epoch. */
  losses: number[];
  /** Seconds. */
  seconds: number;
}

/** Pretrains one stand-in with MAE and writes its encoder (float16 safetensors, config in the metadata). */
export async function pretrainStandin(
  family: StandinFamily,
  options: { out?: string; spec?: Partial<StandinSpec>; onProgress?: ProgressCallback } = {},
): Promise<PretrainResult> {
  const spec = { ...STANDIN_SPECS[family], ...options.spec };
  const t0 = performance.now();
  const { images, pathologies } = pretrainingImages(spec, options.onProgress);
  const S = spec.vit.imgSize;
  const plane = S * S;
  const rng = new Rng(spec.seed, "mae");
  const mae = spec.objective === "mae" ? createMae(spec.vit, spec.decoder, rng.fork("init")) : undefined;
  const encoder = mae?.encoder ?? createVit(spec.vit, { rng: rng.fork("init"), sincosPosEmbed: true });
  const findings = spec.findings ?? [];
  const projector = spec.objective === "contrastive"
    ? createProjector(spec.vit.embedDim, 128, rng.fork("projector"))
    : undefined;
  const head = spec.objective === "findings" ? createFindingsHead(encoder, findings, rng.fork("head")) : undefined;
  const params = mae ? maeParams(mae) : new Map([
    ...[...encoder.params].filter(([k]) => k !== "pos_embed" && !k.startsWith("proj.")),
    ...(projector ? projectorParams(projector) : findingsHeadParams(head!)),
  ]);
  const opt = { lr: spec.lr, beta1: 0.9, beta2: spec.objective === "mae" ? 0.95 : 0.999, eps: 1e-8, weightDecay: 0.05 };
  const state = createAdamWState();
  const stepsPerEpoch = Math.floor(images.length / spec.batchSize);
  const schedule = {
    kind: "cosine" as const,
    warmupSteps: spec.warmupEpochs * stepsPerEpoch,
    totalSteps: spec.epochs * stepsPerEpoch,
    minLr: 0,
  };
  // Biases, norms and tokens are not decayed (MAE's parameter groups).
  const noDecay = (name: string) =>
    name.endsWith(".bias") || params.get(name)!.rank <= 1 || ["cls_token", "mask_token"].includes(name);
  const [m0, m1, m2] = spec.vit.mean;
  const [s0, s1, s2] = spec.vit.std;
  const put = (batch: Float32Array, k: number, g: Float32Array) => {
    const o = k * 3 * plane;
    for (let i = 0; i < plane; i++) {
      batch[o + i] = (g[i] - m0) / s0;
      batch[o + plane + i] = (g[i] - m1) / s1;
      batch[o + 2 * plane + i] = (g[i] - m2) / s2;
    }
  };
  const losses: number[] = [];
  let step = 0;
  for (let epoch = 0; epoch < spec.epochs; epoch++) {
    const order = new Rng(spec.seed, `epoch/${epoch}`).permutation(images.length);
    let sum = 0;
    for (let b = 0; b < stepsPerEpoch; b++) {
      const stepRng = new Rng(spec.seed, `step/${step}`);
      const B = spec.batchSize;
      let loss: () => tf.Scalar;
      if (mae) {
        const batch = new Float32Array(B * 3 * plane);
        for (let k = 0; k < B; k++) put(batch, k, images[order[b * B + k]]);
        loss = () =>
          maeLoss(
            mae,
            imagesTensor(batch, B, S),
            spec.maskRatio,
            stepRng.fork("mask"),
            stepRng.fork("drop"),
          ) as tf.Scalar;
      } else if (head) {
        const batch = new Float32Array(B * 3 * plane);
        const aug = stepRng.fork("views");
        const idx = Array.from({ length: B }, (_, k) => order[b * B + k]);
        for (let k = 0; k < B; k++) {
          const g = images[idx[k]];
          put(batch, k, aug.uniform() < (spec.augment ?? 0) ? nuisanceView(g.slice(), S, aug) : g);
        }
        const targets = findingTargets(idx.map((i) => pathologies[i]), findings, spec.targets);
        loss = () =>
          findingsLoss(
            encoder,
            head,
            imagesTensor(batch, B, S),
            tf.tensor(targets, [B, findings.length]),
            stepRng.fork("drop"),
          ) as tf.Scalar;
      } else {
        const batch = new Float32Array(2 * B * 3 * plane);
        const aug = stepRng.fork("views");
        for (let k = 0; k < B; k++) {
          const g = images[order[b * B + k]];
          put(batch, k, nuisanceView(g.slice(), S, aug));
          put(batch, B + k, nuisanceView(g.slice(), S, aug));
        }
        loss = () =>
          contrastiveLoss(
            encoder,
            projector!,
            imagesTensor(batch, 2 * B, S),
            0.2,
            stepRng.fork("drop"),
          ) as tf.Scalar;
      }
      const { value, grads } = tf.variableGrads(loss, [...params.values()]);
      const byName = new Map<string, tf.Tensor>();
      for (const [n, p] of params) if (grads[p.name]) byName.set(n, grads[p.name]);
      let l: number;
      try {
        // The host-array update on cpu, the device path elsewhere; asynchronous reads on any backend.
        await adamwStepAsync(params, byName, state, opt, scheduledLr(spec.lr, step, schedule), noDecay);
        l = (await value.data())[0];
      } finally {
        tf.dispose([value, ...Object.values(grads)]);
      }
      sum += l;
      step++;
      options.onProgress?.({
        phase: `pretrain ${family} (${spec.objective}) epoch ${epoch + 1}/${spec.epochs}`,
        done: b + 1,
        total: stepsPerEpoch,
        info: { loss: l },
      });
    }
    losses.push(sum / stepsPerEpoch);
  }
  disposeAdamWState(state);
  const model = { encoder };
  const path = options.out ?? standinPath(family);
  const tensors = new Map<string, TensorData>();
  for (const [name, v] of model.encoder.params) {
    if (name.startsWith("proj.")) continue; // RETFound's projection is created new at refinement (§1.2)
    const f = (await v.data()) as Float32Array;
    tensors.set(name, { dtype: "F16", shape: [...v.shape], data: Uint16Array.from(f, floatToHalf) });
  }
  const seconds = (performance.now() - t0) / 1000;
  await writeSafetensors(path, tensors, {
    format: "pt",
    "retfiner.family": family as VitFamily,
    "retfiner.vit_config": JSON.stringify(spec.vit),
    "retfiner.provenance": JSON.stringify({
      made_by: "deno task pretrain",
      objective: spec.objective === "findings"
        ? `weakly supervised: BCE on the ${
          spec.targets === "presence" ? `presence (severity > ${REPORTED_SEVERITY})` : "severities"
        } ` +
          `of ${findings.join(", ")} through a linear head on the concat ` +
          `features; scanner-nuisance views with p ${spec.augment ?? 0}; fixed sin-cos position embeddings`
        : spec.objective === "mae"
        ? "MAE, mask ratio 0.75, norm_pix_loss, fixed sin-cos position embeddings"
        : "contrastive views (InfoNCE, tau 0.2) over scanner-nuisance augmentations, fixed sin-cos position embeddings",
      data: `${spec.images} synthetic B-scans (seed ${spec.seed}), ${spec.vit.imgSize} px` +
        (spec.objective === "findings"
          ? `, with the ${spec.targets === "presence" ? "presence" : "severities"} of the taught findings`
          : ", unlabelled"),
      epochs: spec.epochs,
      batch: spec.batchSize,
      lr: spec.lr,
      final_loss: losses.at(-1),
      seconds: Math.round(seconds),
    }),
  });
  return { path, losses, seconds };
}
