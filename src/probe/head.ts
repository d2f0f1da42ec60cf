/**
 * The authors' linear-probing head and its training protocol (method notes
 * §2.2–2.4), on cached or per-epoch features:
 * - head `Linear(D, C)`: weight trunc-normal(std 2e-5), bias PyTorch's default uniform;
 * - AdamW lr 1e-3 (wd 0.05 RETFound, 0.01 otherwise), per-iteration schedule:
 *   10 warmup epochs from 0, then half-cosine to 1e-8 over 1000 epochs;
 * - train loss: cross-entropy with label smoothing 0.1; validation: plain CE averaged over batches;
 * - early stopping on validation balanced accuracy (Δ 0.001) with validation loss as the
 *   tie-breaker (Δ 0.001), counting from epoch 20, patience 20; the best state is tested once.
 * @module
 */
import { ProbeError } from "../util/errors.ts";
import { adamwUpdate } from "../util/optim.ts";
import type { Rng } from "../util/rng.ts";
import { balancedAccuracy } from "./metrics.ts";
import { PROBE_HEAD, PROBE_WEIGHT_DECAY, type ProbeHeadParams } from "../params.ts";

/** Protocol constants (the authors' / MIRAGE's values); defined once, in `src/params.ts`. */
export type ProbeHyper = ProbeHeadParams;

/**
 * The authors' protocol (`PROBE_HEAD` of `src/params.ts`, frozen); weight decay depends on the model
 * ({@link probeWeightDecay}).
 */
export const PROBE_DEFAULTS: ProbeHyper = PROBE_HEAD;

/**
 * §2.3: 0.05 for RETFound (its weights path contains `_bscan_`), 0.01 for VisionFM and UrFound.
 * @param family the ViT family
 * @returns its probing weight decay
 */
export function probeWeightDecay(family: string): number {
  return Object.hasOwn(PROBE_WEIGHT_DECAY, family) ? PROBE_WEIGHT_DECAY[family] : PROBE_HEAD.weightDecay;
}

/**
 * §2.3's automatic batch size: the largest power of 2 ≤ 25 % of the training images, at most 64 (8 as a fallback).
 * @param nTrain the number of training images
 * @returns the batch size
 */
export function authorsBatchSize(nTrain: number): number {
  const q = Math.round(0.25 * nTrain);
  if (q < 1) return 8;
  return Math.min(64, 2 ** (Math.floor(Math.log2(q))));
}

/** A linear head: `W` is `[C, D]` row-major, `b` is `[C]`. */
export interface LinearHead {
  /** Feature width. */
  dim: number;
  /** Classes. */
  classes: number;
  /** Weight `[C, D]`. */
  W: Float32Array;
  /** Bias `[C]`. */
  b: Float32Array;
}

/**
 * `nn.Linear` default init, then `trunc_normal_(weight, std=2e-5)` (§2.2); the bias keeps U(±1/√D).
 * @param dim the feature width D
 * @param classes the number of classes C
 * @param rng the initialisation's generator
 * @returns the head, `W` `[C, D]` and `b` `[C]`
 */
export function initHead(dim: number, classes: number, rng: Rng): LinearHead {
  const W = new Float32Array(classes * dim);
  for (let i = 0; i < W.length; i++) {
    let v: number;
    do v = rng.normal() * 2e-5; while (v < -2 || v > 2);
    W[i] = v;
  }
  const bound = 1 / Math.sqrt(dim);
  const b = Float32Array.from({ length: classes }, () => (rng.uniform() * 2 - 1) * bound);
  return { dim, classes, W, b };
}

/**
 * The learning rate at fractional epoch `e` (MAE's `adjust_learning_rate`).
 * @param e the fractional epoch (epoch + iteration / iterations per epoch)
 * @param h the protocol: base and minimum rate, warmup and maximum epochs
 * @returns the learning rate (linear warmup, then half-cosine to `minLr`)
 */
export function probeLr(e: number, h: ProbeHyper): number {
  if (e < h.warmupEpochs) return (h.lr * e) / h.warmupEpochs;
  return h.minLr +
    (h.lr - h.minLr) * 0.5 * (1 + Math.cos((Math.PI * (e - h.warmupEpochs)) / (h.maxEpochs - h.warmupEpochs)));
}

/** Logits → softmax probabilities for rows `idx` of `x` (`[N, D]`), into `out` (`[idx.length, C]`). */
function forward(head: LinearHead, x: Float32Array, idx: number[], out: Float64Array): void {
  const { dim: D, classes: C, W, b } = head;
  for (let r = 0; r < idx.length; r++) {
    const xo = idx[r] * D;
    let max = -Infinity;
    for (let c = 0; c < C; c++) {
      let z = b[c];
      const wo = c * D;
      for (let d = 0; d < D; d++) z += W[wo + d] * x[xo + d];
      out[r * C + c] = z;
      if (z > max) max = z;
    }
    let sum = 0;
    for (let c = 0; c < C; c++) sum += out[r * C + c] = Math.exp(out[r * C + c] - max);
    for (let c = 0; c < C; c++) out[r * C + c] /= sum;
  }
}

/** Optimiser state of a head. */
export interface HeadOptimizer {
  /** Steps taken. */
  step: number;
  /** Moments of W. */
  mW: Float32Array;
  /** Second moments of W. */
  vW: Float32Array;
  /** Moments of b. */
  mb: Float32Array;
  /** Second moments of b. */
  vb: Float32Array;
}

/**
 * A fresh optimiser for `head`.
 * @param head the head
 * @returns step 0 and zero moments of its shapes
 */
export function headOptimizer(head: LinearHead): HeadOptimizer {
  return {
    step: 0,
    mW: new Float32Array(head.W.length),
    vW: new Float32Array(head.W.length),
    mb: new Float32Array(head.classes),
    vb: new Float32Array(head.classes),
  };
}

/**
 * One epoch of head training over `batches` (row indices into `x`) with the
 * learning rate `lrs[i]` for iteration i. Returns the mean training loss.
 * @param head the head, updated in place
 * @param opt its AdamW state, advanced in place
 * @param x features, row-major `[N, D]`
 * @param y labels in [0, C), length N
 * @param batches row indices of each iteration
 * @param lrs the learning rate of each iteration
 * @param h the protocol (label smoothing, weight decay, AdamW βs and ε)
 * @returns the mean training loss over the batches
 */
export function trainHeadEpoch(
  head: LinearHead,
  opt: HeadOptimizer,
  x: Float32Array,
  y: ArrayLike<number>,
  batches: number[][],
  lrs: number[],
  h: ProbeHyper,
): number {
  const { dim: D, classes: C } = head;
  const eps = h.labelSmoothing;
  let lossSum = 0;
  const gW = new Float64Array(C * D);
  const gb = new Float64Array(C);
  batches.forEach((idx, it) => {
    const B = idx.length;
    const p = new Float64Array(B * C);
    forward(head, x, idx, p);
    gW.fill(0);
    gb.fill(0);
    let loss = 0;
    for (let r = 0; r < B; r++) {
      const t = y[idx[r]];
      let smooth = 0;
      for (let c = 0; c < C; c++) smooth -= Math.log(p[r * C + c]);
      loss += (1 - eps) * -Math.log(p[r * C + t]) + (eps * smooth) / C;
      const xo = idx[r] * D;
      for (let c = 0; c < C; c++) {
        // d(loss)/d(logit) = p − ((1−ε)·onehot + ε/C), averaged over the batch
        const dz = (p[r * C + c] - ((c === t ? 1 - eps : 0) + eps / C)) / B;
        gb[c] += dz;
        const wo = c * D;
        for (let d = 0; d < D; d++) gW[wo + d] += dz * x[xo + d];
      }
    }
    lossSum += loss / B;
    opt.step++;
    const hyper = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: h.weightDecay };
    adamwUpdate(head.W, gW, opt.mW, opt.vW, opt.step, lrs[it], hyper);
    adamwUpdate(head.b, gb, opt.mb, opt.vb, opt.step, lrs[it], hyper);
  });
  return lossSum / batches.length;
}

/**
 * Probabilities for every row of `x` (`[N, C]` as nested arrays).
 * @param head the head
 * @param x features, row-major `[n, D]`
 * @param n the number of rows
 * @returns softmax probabilities, `n` rows of C
 */
export function predictHead(head: LinearHead, x: Float32Array, n: number): number[][] {
  const idx = Array.from({ length: n }, (_, i) => i);
  const p = new Float64Array(n * head.classes);
  forward(head, x, idx, p);
  return idx.map((i) => Array.from(p.subarray(i * head.classes, (i + 1) * head.classes)));
}

/**
 * Validation as the authors: plain CE averaged over batches, and balanced accuracy.
 * @param head the head
 * @param x features, row-major `[N, D]`
 * @param y labels in [0, C)
 * @param batches row indices of each batch
 * @returns the cross-entropy averaged over batches and the balanced accuracy
 */
export function evaluateHead(
  head: LinearHead,
  x: Float32Array,
  y: ArrayLike<number>,
  batches: number[][],
): { loss: number; bacc: number } {
  const C = head.classes;
  let lossSum = 0;
  const labels: number[] = [];
  const preds: number[] = [];
  for (const idx of batches) {
    const p = new Float64Array(idx.length * C);
    forward(head, x, idx, p);
    let l = 0;
    idx.forEach((i, r) => {
      l -= Math.log(p[r * C + y[i]]);
      labels.push(y[i]);
      let best = 0;
      for (let c = 1; c < C; c++) if (p[r * C + c] > p[r * C + best]) best = c;
      preds.push(best);
    });
    lossSum += l / idx.length;
  }
  return { loss: lossSum / batches.length, bacc: balancedAccuracy(labels, preds, C) };
}

/** Early stopping on balanced accuracy with the loss as tie-breaker (§2.4). */
export class EarlyStopping {
  /** Best balanced accuracy. */
  bestBacc: number = -Infinity;
  /** Loss at the best epoch. */
  bestLoss: number = Infinity;
  /** Epoch of the best state. */
  bestEpoch: number = -1;
  /** Epochs without improvement (counted from `startFrom`). */
  counter: number = 0;
  readonly #h: ProbeHyper;

  /**
   * Creates a stopper with the protocol's patience, start and deltas.
   * @param h the protocol: `patience`, `startFrom` (epochs before it are not counted) and `delta`
   */
  constructor(h: ProbeHyper) {
    this.#h = h;
  }

  /**
   * Records an epoch; returns whether it is the new best.
   * @param epoch the epoch, 0-based
   * @param bacc its validation balanced accuracy
   * @param loss its validation loss (breaks ties within `delta`)
   * @returns true when this epoch is the new best (the caller keeps its weights)
   */
  update(epoch: number, bacc: number, loss: number): boolean {
    const d = this.#h.delta;
    const best = this.bestEpoch < 0 || bacc > this.bestBacc + d ||
      (Math.abs(bacc - this.bestBacc) < d && loss < this.bestLoss - d);
    if (best) {
      this.bestBacc = bacc;
      this.bestLoss = loss;
      this.bestEpoch = epoch;
      this.counter = 0;
    } else if (epoch >= this.#h.startFrom) this.counter++;
    return best;
  }

  /** Whether training should stop. */
  get stop(): boolean {
    return this.counter >= this.#h.patience;
  }
}

/** Per-epoch training features, for the faithful mode (augmented, recomputed each epoch). */
export type EpochFeatures = (epoch: number) => Promise<Float32Array>;

/** Inputs of {@link trainProbe}. */
export interface ProbeData {
  /** Training features `[N, D]`, or a function giving them per epoch. */
  train: Float32Array | EpochFeatures;
  /** Training labels. */
  trainLabels: number[];
  /** Validation features `[Nv, D]`. */
  val: Float32Array;
  /** Validation labels. */
  valLabels: number[];
  /** Test features `[Nt, D]`. */
  test: Float32Array;
  /** Test labels. */
  testLabels: number[];
  /** Feature width. */
  dim: number;
  /** Classes. */
  classes: number;
}

/** What {@link trainProbe} returns. */
export interface ProbeRun {
  /** Softmax probabilities of the best state on the test split. */
  testProbs: number[][];
  /** Epochs run. */
  epochs: number;
  /** Epoch of the best validation state. */
  bestEpoch: number;
  /** Best validation balanced accuracy. */
  valBacc: number;
  /** Why it stopped. */
  stop: "early-stopping" | "max-epochs" | "non-finite-loss";
}

/**
 * Trains one head with one seed and returns the best state's test predictions.
 * @param data features and labels of the three splits (training features may be drawn per epoch, augmented)
 * @param rng the seed's generator (forked per use: head init, each epoch's order)
 * @param h the protocol (default {@link PROBE_DEFAULTS}; docs/method.md §2.3–2.4)
 * @param batchSize default {@link authorsBatchSize} of the training split
 * @returns the best validation state's test probabilities, epochs run, the best epoch and why it stopped
 * @throws {ProbeError} when a split is empty
 */
export async function trainProbe(
  data: ProbeData,
  rng: Rng,
  h: ProbeHyper = PROBE_DEFAULTS,
  batchSize?: number,
): Promise<ProbeRun> {
  const nTrain = data.trainLabels.length;
  if (nTrain === 0 || data.valLabels.length === 0 || data.testLabels.length === 0) {
    throw new ProbeError(
      `probe needs train, val and test images (got ${nTrain}, ${data.valLabels.length}, ${data.testLabels.length})`,
    );
  }
  const bs = batchSize ?? authorsBatchSize(nTrain);
  const head = initHead(data.dim, data.classes, rng.fork("head"));
  const opt = headOptimizer(head);
  const stopper = new EarlyStopping(h);
  let best = { W: head.W.slice(), b: head.b.slice() };
  let stop: ProbeRun["stop"] = "max-epochs";
  let epoch = 0;
  const split = (n: number, r: Rng) => {
    const order = r.permutation(n);
    const out: number[][] = [];
    for (let i = 0; i < n; i += bs) out.push(order.slice(i, i + bs));
    return out;
  };
  for (; epoch < h.maxEpochs; epoch++) {
    const x = typeof data.train === "function" ? await data.train(epoch) : data.train;
    const batches = split(nTrain, rng.fork(`train/${epoch}`));
    const lrs = batches.map((_, i) => probeLr(epoch + i / batches.length, h));
    const trainLoss = trainHeadEpoch(head, opt, x, data.trainLabels, batches, lrs, h);
    const val = evaluateHead(head, data.val, data.valLabels, split(data.valLabels.length, rng.fork(`val/${epoch}`)));
    if (!Number.isFinite(trainLoss) || !Number.isFinite(val.loss)) {
      stop = "non-finite-loss";
      break;
    }
    if (stopper.update(epoch, val.bacc, val.loss)) best = { W: head.W.slice(), b: head.b.slice() };
    if (stopper.stop) {
      stop = "early-stopping";
      epoch++;
      break;
    }
  }
  const bestHead: LinearHead = { ...head, W: best.W, b: best.b };
  return {
    testProbs: predictHead(bestHead, data.test, data.testLabels.length),
    epochs: epoch,
    bestEpoch: stopper.bestEpoch,
    valBacc: stopper.bestBacc,
    stop,
  };
}
