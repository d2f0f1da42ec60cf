/**
 * Paper-style reporting of probing results (method notes §3): per-task,
 * per-seed CSV; a summary JSON; a Markdown table with mean ± sd per metric,
 * the change against the baseline in parentheses and Wilcoxon stars
 * (** p < 0.01, *** p < 0.001) over task × seed pairs; and the per-task gains.
 * @module
 */
import { METRIC_NAMES, type Metrics } from "./metrics.ts";
import type { TaskResult } from "./protocol.ts";
import { mean, sd, wilcoxon, type WilcoxonResult } from "./stats.ts";

/** One model's results on every task. */
export interface ModelResults {
  /** Display name, e.g. "RETFound-like" or "RetFiner-R". */
  name: string;
  /** Per-task results. */
  tasks: TaskResult[];
}

/** Mean and standard deviation. */
export interface MeanSd {
  /** Mean. */
  mean: number;
  /** Sample standard deviation. */
  sd: number;
}

/** Baseline vs refined on one task. */
export interface TaskComparison {
  /** Task name. */
  task: string;
  /** Baseline per metric (over seeds). */
  baseline: Record<keyof Metrics, MeanSd>;
  /** Refined per metric (over seeds). */
  refined: Record<keyof Metrics, MeanSd>;
  /** Refined − baseline of the means, per metric. */
  delta: Record<keyof Metrics, number>;
}

/** Baseline vs refined over all tasks. */
export interface Comparison {
  /** Baseline model name. */
  baselineName: string;
  /** Refined model name. */
  refinedName: string;
  /** Per task. */
  tasks: TaskComparison[];
  /** Over all task × seed values, per metric: means, sds, change and Wilcoxon test. */
  overall: Record<keyof Metrics, { baseline: MeanSd; refined: MeanSd; delta: number; test: WilcoxonResult | null }>;
}

function values(t: TaskResult, m: keyof Metrics): number[] {
  return t.seeds.map((s) => s.metrics[m]);
}

function stat(xs: number[]): MeanSd {
  return { mean: mean(xs), sd: sd(xs) };
}

/**
 * Compares two models task by task; pairs are matched by task name and seed.
 * @param baseline the baseline's results
 * @param refined the refined model's results
 * @returns per task, mean ± sd of each model and the change; overall, over every task × seed pair: the same and a
 *   Wilcoxon signed-rank test (refined vs baseline; null when nothing pairs or every difference is zero)
 */
export function compareModels(baseline: ModelResults, refined: ModelResults): Comparison {
  const tasks: TaskComparison[] = [];
  const pairs: Record<keyof Metrics, [number[], number[]]> = Object.fromEntries(
    METRIC_NAMES.map((m) => [m, [[], []]]),
  ) as never;
  for (const rt of refined.tasks) {
    const bt = baseline.tasks.find((t) => t.task === rt.task);
    if (!bt) continue;
    const b = {} as TaskComparison["baseline"];
    const r = {} as TaskComparison["refined"];
    const d = {} as TaskComparison["delta"];
    for (const m of METRIC_NAMES) {
      b[m] = stat(values(bt, m));
      r[m] = stat(values(rt, m));
      d[m] = r[m].mean - b[m].mean;
      for (const s of rt.seeds) {
        const bs = bt.seeds.find((x) => x.seed === s.seed);
        if (bs && Number.isFinite(bs.metrics[m]) && Number.isFinite(s.metrics[m])) {
          pairs[m][0].push(bs.metrics[m]);
          pairs[m][1].push(s.metrics[m]);
        }
      }
    }
    tasks.push({ task: rt.task, baseline: b, refined: r, delta: d });
  }
  const overall = {} as Comparison["overall"];
  for (const m of METRIC_NAMES) {
    const [bv, rv] = pairs[m];
    let test: WilcoxonResult | null = null;
    try {
      test = bv.length ? wilcoxon(rv, bv) : null;
    } catch {
      test = null; // all differences zero
    }
    overall[m] = { baseline: stat(bv), refined: stat(rv), delta: mean(rv) - mean(bv), test };
  }
  return { baselineName: baseline.name, refinedName: refined.name, tasks, overall };
}

/**
 * Percentage-point formatting of a metric in [0, 1].
 * @param x the value in [0, 1]
 * @param digits decimals
 * @returns `100·x` formatted, or `n/a` when not finite
 */
export function pct(x: number, digits = 1): string {
  return Number.isFinite(x) ? (100 * x).toFixed(digits) : "n/a";
}

function signed(x: number): string {
  return Number.isFinite(x) ? `${x >= 0 ? "+" : "−"}${Math.abs(100 * x).toFixed(1)}` : "n/a";
}

function stars(p: number | undefined): string {
  return p === undefined || !Number.isFinite(p) ? "" : p < 0.001 ? "***" : p < 0.01 ? "**" : "";
}

/**
 * The paper's Table 1 layout: one row per model, mean ± sd per metric, change and stars.
 * @param c the comparison
 * @returns a Markdown table
 */
export function markdownSummary(c: Comparison): string {
  const head = `| model | ${METRIC_NAMES.map((m) => m.toUpperCase()).join(" | ")} |`;
  const sep = `|---|${METRIC_NAMES.map(() => "---").join("|")}|`;
  const base = `| ${c.baselineName} | ${
    METRIC_NAMES.map((m) => `${pct(c.overall[m].baseline.mean)} ± ${pct(c.overall[m].baseline.sd)}`).join(" | ")
  } |`;
  const ref = `| ${c.refinedName} | ${
    METRIC_NAMES.map((m) => {
      const o = c.overall[m];
      return `${pct(o.refined.mean)} ± ${pct(o.refined.sd)} (${signed(o.delta)})${stars(o.test?.pValue)}`;
    }).join(" | ")
  } |`;
  const tests = METRIC_NAMES.map((m) => {
    const t = c.overall[m].test;
    return t ? `${m}: W = ${t.statistic}, p = ${t.pValue.toPrecision(3)} (${t.method}, n = ${t.n})` : `${m}: no test`;
  }).join("; ");
  return [
    head,
    sep,
    base,
    ref,
    "",
    `Values in %, mean ± sd over task × seed; change vs the baseline in parentheses; ` +
    `Wilcoxon signed-rank over task × seed pairs (** p < 0.01, *** p < 0.001). ${tests}.`,
  ].join("\n");
}

/**
 * Per-task balanced accuracy with gains.
 * @param c the comparison
 * @param metric the metric shown
 * @returns a Markdown table
 */
export function markdownPerTask(c: Comparison, metric: keyof Metrics = "bacc"): string {
  const lines = [`| task | ${c.baselineName} | ${c.refinedName} | gain |`, "|---|---|---|---|"];
  for (const t of c.tasks) {
    lines.push(
      `| ${t.task} | ${pct(t.baseline[metric].mean)} ± ${pct(t.baseline[metric].sd)} | ${
        pct(t.refined[metric].mean)
      } ± ${pct(t.refined[metric].sd)} | ${signed(t.delta[metric])} |`,
    );
  }
  const o = c.overall[metric];
  lines.push(
    `| **mean** | ${pct(o.baseline.mean)} | ${pct(o.refined.mean)} | **${signed(o.delta)}** (p = ${
      o.test ? o.test.pValue.toPrecision(3) : "n/a"
    }) |`,
  );
  return lines.join("\n");
}

/**
 * One model's per-task table (no comparison).
 * @param r the model's results
 * @returns a Markdown table
 */
export function markdownSingle(r: ModelResults): string {
  const lines = [
    `| task | ${METRIC_NAMES.map((m) => m.toUpperCase()).join(" | ")} |`,
    `|---|${METRIC_NAMES.map(() => "---").join("|")}|`,
  ];
  for (const t of r.tasks) {
    lines.push(
      `| ${t.task} | ${METRIC_NAMES.map((m) => `${pct(mean(values(t, m)))} ± ${pct(sd(values(t, m)))}`).join(" | ")} |`,
    );
  }
  return lines.join("\n");
}

/**
 * Per-task, per-seed rows for every model.
 * @param models the models' results
 * @returns CSV text with a header row
 */
export function perSeedCsv(models: ModelResults[]): string {
  const rows = [`model,task,seed,${METRIC_NAMES.join(",")},epochs,best_epoch,val_bacc,stop`];
  for (const mr of models) {
    for (const t of mr.tasks) {
      for (const s of t.seeds) {
        rows.push(
          [
            JSON.stringify(mr.name),
            t.task,
            s.seed,
            ...METRIC_NAMES.map((m) => s.metrics[m]),
            s.epochs,
            s.bestEpoch,
            s.valBacc,
            s.stop,
          ].join(","),
        );
      }
    }
  }
  return rows.join("\n") + "\n";
}

/**
 * A plain-text table for the terminal.
 * @param c the comparison
 * @returns the table's lines joined with newlines
 */
export function terminalTable(c: Comparison): string {
  const w = Math.max(10, ...c.tasks.map((t) => t.task.length));
  const lines = [
    `${"task".padEnd(w)}  ${"baseline".padStart(13)}  ${"refined".padStart(13)}  ${
      "gain".padStart(7)
    }   (balanced accuracy, %)`,
  ];
  for (const t of c.tasks) {
    const f = (s: MeanSd) => `${pct(s.mean).padStart(5)} ± ${pct(s.sd).padStart(4)}`;
    lines.push(`${t.task.padEnd(w)}  ${f(t.baseline.bacc)}  ${f(t.refined.bacc)}  ${signed(t.delta.bacc).padStart(7)}`);
  }
  const o = c.overall.bacc;
  lines.push(
    `${"mean".padEnd(w)}  ${pct(o.baseline.mean).padStart(13)}  ${pct(o.refined.mean).padStart(13)}  ${
      signed(o.delta).padStart(7)
    }   ` +
      (o.test
        ? `Wilcoxon p = ${o.test.pValue.toPrecision(3)} (${o.test.method}, ${o.test.n} task × seed pairs)`
        : "no test"),
  );
  return lines.join("\n");
}
