/**
 * Statistics for the paper-style comparison: the two-sided Wilcoxon
 * signed-rank test as SciPy computes it, and mean / standard deviation.
 * @module
 */
import { ProbeError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";

/** erf(x) for |x| < 3 by its everywhere-positive series (no cancellation). */
function erfSeries(x: number): number {
  const x2 = x * x;
  let term = x;
  let sum = x;
  for (let n = 1; n < 200; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
    if (Math.abs(term) < 1e-17 * Math.abs(sum)) break;
  }
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-x2) * sum;
}

/** erfc(x) for x ≥ 3 by its continued fraction (modified Lentz). */
function erfcFraction(x: number): number {
  // erfc(x) = exp(-x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + …)))))
  const tiny = 1e-300;
  let f = x;
  let C = x;
  let D = 0;
  for (let n = 1; n < 500; n++) {
    const a = n / 2;
    D = x + a * D;
    D = Math.abs(D) < tiny ? tiny : D;
    C = x + a / C;
    C = Math.abs(C) < tiny ? tiny : C;
    D = 1 / D;
    const delta = C * D;
    f *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return Math.exp(-x * x) / Math.sqrt(Math.PI) / f;
}

/**
 * The complementary error function to double precision.
 * @param x any number
 * @returns erfc(x) = 1 − erf(x), in [0, 2]
 */
export function erfc(x: number): number {
  if (x < 0) return 2 - erfc(-x);
  return x < 3 ? 1 - erfSeries(x) : erfcFraction(x);
}

/**
 * Standard normal survival function 1 − Φ(z).
 * @param z the standard score
 * @returns P(Z > z) for Z ~ N(0, 1), `scipy.stats.norm.sf(z)`
 * @example
 * ```ts
 * import { normalSf } from "./stats.ts";
 * if (Math.abs(normalSf(1.959963984540054) - 0.025) > 1e-15) throw new Error("two-sided 5%");
 * ```
 */
export function normalSf(z: number): number {
  return 0.5 * erfc(z / Math.SQRT2);
}

/**
 * Average ranks (1-based) of values, ties sharing their mean rank (`scipy.stats.rankdata`).
 * @param values finite numbers
 * @returns the rank of each value
 * @throws {ProbeError} a value that is NaN or infinite (it equals nothing, so it has no rank)
 */
export function rankdata(values: number[]): number[] {
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) throw new ProbeError(`rankdata: value ${i} is ${v}; ranks need finite values`);
  });
  const order = values.map((_, i) => i).sort((a, b) => values[a] - values[b]);
  const ranks = new Array(values.length);
  for (let i = 0; i < order.length;) {
    let j = i;
    while (j + 1 < order.length && values[order[j + 1]] === values[order[i]]) j++;
    for (let k = i; k <= j; k++) ranks[order[k]] = (i + j) / 2 + 1;
    i = j + 1;
  }
  return ranks;
}

/** Result of {@link wilcoxon}. */
export interface WilcoxonResult {
  /** min(R+, R−). */
  statistic: number;
  /** Two-sided p-value. */
  pValue: number;
  /** `exact` or `approx` (normal approximation with tie correction). */
  method: "exact" | "approx";
  /** Pairs used (non-zero differences). */
  n: number;
}

/** Number of subsets of {1..n} with each rank sum, divided by 2ⁿ (the exact null distribution). */
function signedRankPmf(n: number): Float64Array {
  const max = (n * (n + 1)) / 2;
  let counts = new Float64Array(max + 1);
  counts[0] = 1;
  for (let k = 1; k <= n; k++) {
    const next = counts.slice();
    for (let s = k; s <= max; s++) next[s] += counts[s - k];
    counts = next;
  }
  const total = Math.pow(2, n);
  return counts.map((c) => c / total);
}

/**
 * Two-sided Wilcoxon signed-rank test of paired samples, as
 * `scipy.stats.wilcoxon(x, y)` with its defaults (zero_method "wilcox", no
 * continuity correction): the exact null distribution for n ≤ 50 without ties
 * or zero differences, otherwise the normal approximation with tie correction.
 * (SciPy 1.10 would still use its exact table when |differences| tie, truncating
 * R+; newer SciPy switches to the approximation, as this does.)
 *
 * @example
 * ```ts
 * import { wilcoxon } from "./stats.ts";
 * const { statistic, pValue } = wilcoxon([0.8, 0.9, 0.7, 0.95], [0.7, 0.85, 0.72, 0.8]);
 * // scipy.stats.wilcoxon gives statistic 1.0, p-value 0.25 (exact distribution, n = 4).
 * if (statistic !== 1 || Math.abs(pValue - 0.25) > 1e-12) throw new Error(`${statistic} ${pValue}`);
 * ```
 * @param x the first sample
 * @param y the paired second sample
 * @returns the statistic, the two-sided p-value, the method and the pairs used
 * @throws {ProbeError} samples of different lengths, a NaN or infinite value, or all differences zero
 */
export function wilcoxon(x: number[], y: number[]): WilcoxonResult {
  if (x.length !== y.length) {
    throw new ProbeError(`wilcoxon: samples have different lengths (${x.length} vs ${y.length})`);
  }
  if (x.length === 0) return { statistic: NaN, pValue: NaN, method: "exact", n: 0 };
  for (const [name, v] of [["x", x], ["y", y]] as const) {
    v.forEach((e, i) => {
      if (!Number.isFinite(e)) {
        throw new ProbeError(`wilcoxon: ${name}[${i}] is ${e}; the test needs finite paired values`);
      }
    });
  }
  const all = x.map((v, i) => v - y[i]);
  const nZero = all.filter((d) => d === 0).length;
  const d = all.filter((v) => v !== 0);
  if (d.length === 0) throw new ProbeError("wilcoxon: every difference is zero; the test is undefined");
  const ranks = rankdata(d.map(Math.abs));
  let rPlus = 0;
  let rMinus = 0;
  d.forEach((v, i) => (v > 0 ? (rPlus += ranks[i]) : (rMinus += ranks[i])));
  const T = Math.min(rPlus, rMinus);
  const n = d.length;
  const ties = new Set(d.map(Math.abs)).size !== n;
  if (all.length <= 50 && nZero === 0 && !ties) {
    const pmf = signedRankPmf(n);
    const r = Math.round(rPlus);
    let p: number;
    if (r === (pmf.length - 1) / 2) p = 1;
    else {
      let less = 0;
      let greater = 0;
      for (let s = 0; s <= r; s++) less += pmf[s];
      for (let s = r; s < pmf.length; s++) greater += pmf[s];
      p = 2 * Math.min(less, greater);
    }
    return { statistic: T, pValue: Math.min(1, Math.max(0, p)), method: "exact", n };
  }
  const mn = (n * (n + 1)) / 4;
  let se = n * (n + 1) * (2 * n + 1);
  const counts = new Map<number, number>();
  for (const r of ranks) counts.set(r, (counts.get(r) ?? 0) + 1);
  for (const c of counts.values()) if (c > 1) se -= 0.5 * c * (c * c - 1);
  se = Math.sqrt(se / 24);
  const z = (T - mn) / se;
  return { statistic: T, pValue: 2 * normalSf(Math.abs(z)), method: "approx", n };
}

/**
 * Mean of values (NaN for none).
 * @param values the values
 * @returns their arithmetic mean (NaN for none)
 */
export function mean(values: number[]): number {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN;
}

/**
 * Sample standard deviation (n − 1), 0 for a single value.
 * @param values the values
 * @returns their sample standard deviation (divisor n − 1; 0 for one value)
 */
export function sd(values: number[]): number {
  if (values.length < 2) return 0;
  const m = mean(values);
  return Math.sqrt(values.reduce((s, v) => s + (v - m) ** 2, 0) / (values.length - 1));
}

/** A bootstrap confidence interval of a mean ({@link bootstrapMeanCi}). */
export interface BootstrapCi {
  /** The sample mean. */
  mean: number;
  /** Lower bound. */
  low: number;
  /** Upper bound. */
  high: number;
  /** Coverage, e.g. 0.95. */
  level: number;
  /** `exact`: every one of the nⁿ resamples; `monte-carlo`: `resamples` drawn ones. */
  method: "exact" | "monte-carlo";
  /** Resamples the interval comes from. */
  resamples: number;
  /** Values (units) resampled. */
  n: number;
}

/** numpy's default percentile (linear interpolation between order statistics) of sorted values. */
function percentileSorted(sorted: Float64Array, q: number): number {
  const h = (sorted.length - 1) * q;
  const lo = Math.floor(h);
  const hi = Math.min(sorted.length - 1, lo + 1);
  return sorted[lo] + (h - lo) * (sorted[hi] - sorted[lo]);
}

/**
 * Percentile bootstrap confidence interval of the mean of `values` (the units resampled with replacement, e.g. the
 * seven tasks' gains). For n ≤ 8 every one of the nⁿ equally likely resamples is enumerated, so the interval is
 * exact and needs no random numbers (it equals `np.percentile` of all resample means); larger samples draw
 * `resamples` resamples from a seeded generator.
 *
 * @example
 * ```ts
 * import { bootstrapMeanCi } from "./stats.ts";
 * const ci = bootstrapMeanCi([1, 2, 3]); // 27 resamples, means from 1 to 3
 * if (ci.method !== "exact" || ci.resamples !== 27 || !(ci.low > 1 && ci.high < 3)) throw new Error(JSON.stringify(ci));
 * ```
 * @param values the sample (at least one finite value)
 * @param options coverage `level` (default 0.95), Monte-Carlo `resamples` (default 20000) and `seed` (default 0)
 * @returns the mean and the interval, with how it was computed
 * @throws {ProbeError} for an empty sample or a non-finite value
 */
export function bootstrapMeanCi(
  values: number[],
  options: { level?: number; resamples?: number; seed?: number } = {},
): BootstrapCi {
  const n = values.length;
  if (n === 0) throw new ProbeError("bootstrap: no values");
  values.forEach((v, i) => {
    if (!Number.isFinite(v)) throw new ProbeError(`bootstrap: value ${i} is ${v}; the interval needs finite values`);
  });
  const level = options.level ?? 0.95;
  let means: Float64Array;
  let method: BootstrapCi["method"];
  if (n <= 8) {
    // Odometer over index tuples: means[k] is the mean of the k-th tuple in base-n order.
    const total = n ** n;
    means = new Float64Array(total);
    const idx = new Int32Array(n);
    let sum = n * values[0];
    for (let k = 0; k < total; k++) {
      means[k] = sum / n;
      for (let j = 0; j < n; j++) {
        sum -= values[idx[j]];
        idx[j] = (idx[j] + 1) % n;
        sum += values[idx[j]];
        if (idx[j] !== 0) break;
      }
    }
    method = "exact";
  } else {
    const reps = options.resamples ?? 20000;
    const rng = new Rng(options.seed ?? 0, "bootstrap");
    means = new Float64Array(reps);
    for (let r = 0; r < reps; r++) {
      let sum = 0;
      for (let j = 0; j < n; j++) sum += values[rng.int(n)];
      means[r] = sum / n;
    }
    method = "monte-carlo";
  }
  means.sort();
  const a = (1 - level) / 2;
  return {
    mean: mean(values),
    low: percentileSorted(means, a),
    high: percentileSorted(means, 1 - a),
    level,
    method,
    resamples: means.length,
    n,
  };
}
