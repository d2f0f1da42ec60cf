/**
 * Classification metrics exactly as scikit-learn computes them in the
 * authors' evaluation (method notes §2.6), in float64:
 * - `bacc`: `balanced_accuracy_score(y, argmax)`, mean recall over the classes present in `y`;
 * - `auroc`: `roc_auc_score(onehot(y), P, average="weighted")`, i.e. one-vs-rest AUC per class
 *   weighted by support (a class absent from `y` makes sklearn raise; here it yields NaN);
 * - `ap`: `average_precision_score(onehot(y), P, average="weighted")`, both classes for binary tasks;
 * - `f1`: `f1_score(y, argmax, average="weighted", zero_division=0)`;
 * - `mcc`: `matthews_corrcoef(y, argmax)` (multiclass).
 * @module
 */
import { firstNonFinite } from "../util/finite.ts";
import { ProbeError } from "../util/errors.ts";

/** The five metrics of the paper's tables. */
export interface Metrics {
  /** Balanced accuracy. */
  bacc: number;
  /** Support-weighted one-vs-rest ROC AUC. */
  auroc: number;
  /** Support-weighted one-vs-rest average precision. */
  ap: number;
  /** Support-weighted F1. */
  f1: number;
  /** Matthews correlation coefficient. */
  mcc: number;
}

/** Metric names in table order. */
export const METRIC_NAMES: readonly (keyof Metrics)[] = ["bacc", "auroc", "ap", "f1", "mcc"];

/**
 * Index of the first maximum (as `torch.argmax`).
 * @param row the scores
 * @returns the index of the first maximum (0 for an empty row)
 */
export function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/**
 * Refuses a score that is not a finite number: sorting and tie grouping need
 * comparable values (NaN equals nothing, so grouping it would never advance).
 */
function checkFinite(what: string, scores: ArrayLike<number>): void {
  const i = firstNonFinite(scores);
  if (i >= 0) {
    throw new ProbeError(
      `${what}: score ${i} is ${scores[i]}; metrics need finite scores (a NaN or infinite probability ` +
        `comes from non-finite features or a diverged head)`,
    );
  }
}

function confusion(labels: number[], preds: number[], c: number): number[][] {
  const m = Array.from({ length: c }, () => new Array(c).fill(0));
  labels.forEach((y, i) => m[y][preds[i]]++);
  return m;
}

/**
 * `balanced_accuracy_score`: mean recall over classes that occur in `labels`.
 * @param labels true classes, in [0, numClasses)
 * @param preds predicted classes, same length
 * @param numClasses the number of classes
 * @returns mean per-class recall over the classes present in `labels`, in [0, 1]
 */
export function balancedAccuracy(labels: number[], preds: number[], numClasses: number): number {
  const m = confusion(labels, preds, numClasses);
  let sum = 0;
  let n = 0;
  for (let c = 0; c < numClasses; c++) {
    const support = m[c].reduce((a, b) => a + b, 0);
    if (support === 0) continue;
    sum += m[c][c] / support;
    n++;
  }
  return sum / n;
}

/**
 * Binary ROC AUC with ties counted half (= sklearn's trapezoidal AUC over distinct thresholds).
 * @param positive whether each sample is of the positive class
 * @param scores the score of each sample
 * @returns the AUC, NaN when one class is absent
 * @throws {ProbeError} a score that is NaN or infinite
 */
export function binaryAuc(positive: boolean[], scores: ArrayLike<number>): number {
  checkFinite("binaryAuc", scores);
  const n = positive.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[a] - scores[b]);
  const ranks = new Float64Array(n);
  for (let i = 0; i < n;) {
    let j = i;
    while (j + 1 < n && scores[order[j + 1]] === scores[order[i]]) j++;
    const r = (i + j) / 2 + 1;
    for (let k = i; k <= j; k++) ranks[order[k]] = r;
    i = j + 1;
  }
  let nPos = 0;
  let rankSum = 0;
  for (let i = 0; i < n; i++) {
    if (positive[i]) {
      nPos++;
      rankSum += ranks[i];
    }
  }
  const nNeg = n - nPos;
  if (nPos === 0 || nNeg === 0) return NaN;
  return (rankSum - (nPos * (nPos + 1)) / 2) / (nPos * nNeg);
}

/**
 * Binary average precision as sklearn: Σ (Rₖ − Rₖ₋₁)·Pₖ over distinct score
 * thresholds in decreasing order (no interpolation). With no positives sklearn
 * sets recall to 1 everywhere, giving AP 0... which only matters with weight 0 here.
 * @param positive whether each sample is of the positive class
 * @param scores the score of each sample
 * @returns the average precision
 * @throws {ProbeError} a score that is NaN or infinite
 */
export function binaryAveragePrecision(positive: boolean[], scores: ArrayLike<number>): number {
  checkFinite("binaryAveragePrecision", scores);
  const n = positive.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[b] - scores[a]);
  const totalPos = positive.filter(Boolean).length;
  if (totalPos === 0) return 0;
  let tp = 0;
  let fp = 0;
  let prevRecall = 0;
  let ap = 0;
  for (let i = 0; i < n;) {
    let j = i;
    while (j < n && scores[order[j]] === scores[order[i]]) {
      if (positive[order[j]]) tp++;
      else fp++;
      j++;
    }
    const recall = tp / totalPos;
    const precision = tp / (tp + fp);
    ap += (recall - prevRecall) * precision;
    prevRecall = recall;
    i = j;
  }
  return ap;
}

/**
 * Support-weighted F1 with zero_division=0.
 * @param labels true classes, in [0, numClasses)
 * @param preds predicted classes, same length
 * @param numClasses the number of classes
 * @returns per-class F1 averaged with the classes' supports as weights (`f1_score(average="weighted")`), in [0, 1]
 */
export function weightedF1(labels: number[], preds: number[], numClasses: number): number {
  const m = confusion(labels, preds, numClasses);
  let total = 0;
  let sum = 0;
  for (let c = 0; c < numClasses; c++) {
    const support = m[c].reduce((a, b) => a + b, 0);
    const predicted = m.reduce((s, row) => s + row[c], 0);
    const tp = m[c][c];
    const precision = predicted ? tp / predicted : 0;
    const recall = support ? tp / support : 0;
    const f1 = precision + recall > 0 ? (2 * precision * recall) / (precision + recall) : 0;
    sum += f1 * support;
    total += support;
  }
  return total ? sum / total : 0;
}

/**
 * Multiclass Matthews correlation coefficient (sklearn's covariance form).
 * @param labels true classes, in [0, numClasses)
 * @param preds predicted classes, same length
 * @param numClasses the number of classes
 * @returns the coefficient in [−1, 1]; 0 when either side has a single class (sklearn's convention)
 */
export function matthewsCorrcoef(labels: number[], preds: number[], numClasses: number): number {
  const m = confusion(labels, preds, numClasses);
  const t = m.map((row) => row.reduce((a, b) => a + b, 0));
  const p = Array.from({ length: numClasses }, (_, c) => m.reduce((s, row) => s + row[c], 0));
  const n = labels.length;
  let correct = 0;
  for (let c = 0; c < numClasses; c++) correct += m[c][c];
  const dot = (a: number[], b: number[]) => a.reduce((s, v, i) => s + v * b[i], 0);
  const covYtYp = correct * n - dot(t, p);
  const covYpYp = n * n - dot(p, p);
  const covYtYt = n * n - dot(t, t);
  if (covYpYp * covYtYt === 0) return 0;
  return covYtYp / Math.sqrt(covYtYt * covYpYp);
}

/**
 * The five metrics of `labels` (class indices) against `probs` (softmax
 * probabilities, one row per sample), exactly as the authors' sklearn calls.
 *
 * @param labels true classes, one per sample
 * @param probs class probabilities, [N, C] with C ≥ 2 (AUROC and AP use them; the other three their argmax)
 * @returns balanced accuracy, AUROC and AP (one-vs-rest per class, weighted by support; NaN AUROC when one class
 *   holds every label), weighted F1 and MCC, all in float64 (docs/method.md §2.6)
 * @throws {ProbeError} when there are no labels, the lengths differ, rows have other widths or fewer than 2
 *   classes, a label is not an integer in [0, C), or a probability is not finite
 * @example
 * ```ts
 * import { classificationMetrics } from "./metrics.ts";
 * const m = classificationMetrics([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]);
 * // Predictions 0, 1, 0: recall 1 for class 0 and 1/2 for class 1; both positives score above the negative.
 * if (m.bacc !== 0.75 || m.auroc !== 1) throw new Error(JSON.stringify(m));
 * ```
 */
export function classificationMetrics(labels: number[], probs: number[][]): Metrics {
  if (labels.length === 0 || labels.length !== probs.length) {
    throw new ProbeError(`classificationMetrics: ${labels.length} labels but ${probs.length} probability rows`);
  }
  const c = probs[0].length;
  if (c < 2 || probs.some((r) => r.length !== c)) {
    throw new ProbeError("classificationMetrics: every probability row needs the same number (≥ 2) of classes");
  }
  if (labels.some((y) => !Number.isInteger(y) || y < 0 || y >= c)) {
    throw new ProbeError(`classificationMetrics: labels must be integers in [0, ${c})`);
  }
  probs.forEach((r, i) => {
    if (r.some((v) => !Number.isFinite(v))) {
      throw new ProbeError(
        `classificationMetrics: probability row ${i} is [${r.join(", ")}]; metrics need finite probabilities ` +
          `(non-finite features or a diverged head)`,
      );
    }
  });
  const preds = probs.map(argmax);
  let aurocSum = 0;
  let apSum = 0;
  let supportSum = 0;
  for (let k = 0; k < c; k++) {
    const pos = labels.map((y) => y === k);
    const support = pos.filter(Boolean).length;
    const col = probs.map((r) => r[k]);
    // sklearn raises for a one-class column; its weight would not save it.
    aurocSum += support === labels.length ? NaN : support * binaryAuc(pos, col);
    apSum += support * binaryAveragePrecision(pos, col);
    supportSum += support;
  }
  return {
    bacc: balancedAccuracy(labels, preds, c),
    auroc: aurocSum / supportSum,
    ap: apSum / supportSum,
    f1: weightedF1(labels, preds, c),
    mcc: matthewsCorrcoef(labels, preds, c),
  };
}
