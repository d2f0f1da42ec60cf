/**
 * Paper-style reporting of probing results (method notes §3): per-task,
 * per-seed CSV; a summary JSON; a Markdown table with mean ± sd per metric,
 * the change against the baseline in parentheses and Wilcoxon stars
 * (** p < 0.01, *** p < 0.001) over task × seed pairs; the refinement effect with tasks as the unit (bootstrap
 * interval, Wilcoxon) beside the task × seed test; and the per-task gains.
 * @module
 */
import { METRIC_NAMES, type Metrics } from "./metrics.ts";
import type { TaskResult } from "./protocol.ts";
import { type BootstrapCi, bootstrapMeanCi, mean, sd, wilcoxon, type WilcoxonResult } from "./stats.ts";

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
  /** Standard deviation over seeds of the paired (same seed) differences, per metric (0 for one seed). */
  deltaSd: Record<keyof Metrics, number>;
}

/** The refinement effect with the task as the unit (one gain per task: the mean over its seeds). */
export interface TaskLevelEffect {
  /** Tasks. */
  n: number;
  /** Mean gain over tasks and its 95 % percentile-bootstrap interval, resampling tasks (null under 5 tasks). */
  ci: BootstrapCi | null;
  /** Wilcoxon signed-rank over the tasks' mean values (null when nothing pairs or every difference is zero). */
  test: WilcoxonResult | null;
}

/** Baseline vs refined over all tasks. */
export interface Comparison {
  /** Baseline model name. */
  baselineName: string;
  /** Refined model name. */
  refinedName: string;
  /** Per task. */
  tasks: TaskComparison[];
  /** Over all task × seed values, per metric: means, sds, change and Wilcoxon test (unit: task × seed pair). */
  overall: Record<
    keyof Metrics,
    { baseline: MeanSd; refined: MeanSd; delta: number; test: WilcoxonResult | null; pairs: number }
  >;
  /** Per metric, with tasks as the unit: bootstrap interval of the mean gain and Wilcoxon over tasks. */
  overTasks: Record<keyof Metrics, TaskLevelEffect>;
}

/** Fewest tasks a bootstrap interval over tasks is computed for. */
export const MIN_TASKS_FOR_CI: number = 5;

function safeWilcoxon(x: number[], y: number[]): WilcoxonResult | null {
  if (!x.length) return null;
  try {
    return wilcoxon(x, y);
  } catch {
    return null; // all differences zero
  }
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
    const dsd = {} as TaskComparison["deltaSd"];
    for (const m of METRIC_NAMES) {
      b[m] = stat(values(bt, m));
      r[m] = stat(values(rt, m));
      d[m] = r[m].mean - b[m].mean;
      const diffs: number[] = [];
      for (const s of rt.seeds) {
        const bs = bt.seeds.find((x) => x.seed === s.seed);
        if (bs && Number.isFinite(bs.metrics[m]) && Number.isFinite(s.metrics[m])) {
          pairs[m][0].push(bs.metrics[m]);
          pairs[m][1].push(s.metrics[m]);
          diffs.push(s.metrics[m] - bs.metrics[m]);
        }
      }
      dsd[m] = sd(diffs);
    }
    tasks.push({ task: rt.task, baseline: b, refined: r, delta: d, deltaSd: dsd });
  }
  const overall = {} as Comparison["overall"];
  const overTasks = {} as Comparison["overTasks"];
  for (const m of METRIC_NAMES) {
    const [bv, rv] = pairs[m];
    overall[m] = {
      baseline: stat(bv),
      refined: stat(rv),
      delta: mean(rv) - mean(bv),
      test: safeWilcoxon(rv, bv),
      pairs: bv.length,
    };
    const ok = tasks.filter((t) => Number.isFinite(t.delta[m]));
    overTasks[m] = {
      n: ok.length,
      // Fewer than 5 tasks have too few distinct resamples (2 tasks: 3 means) for an interval to mean anything.
      ci: ok.length >= MIN_TASKS_FOR_CI ? bootstrapMeanCi(ok.map((t) => t.delta[m])) : null,
      test: safeWilcoxon(ok.map((t) => t.refined[m].mean), ok.map((t) => t.baseline[m].mean)),
    };
  }
  return { baselineName: baseline.name, refinedName: refined.name, tasks, overall, overTasks };
}

function pValue(t: WilcoxonResult | null, of: number): string {
  if (!t) return "no test (every difference is zero)";
  const used = t.n === of ? "" : `, ${t.n} non-zero of ${of}`;
  const few = t.n < 6 ? "; too few for any p < 0.05" : "";
  return `W = ${t.statistic}, p = ${t.pValue.toPrecision(3)} (${t.method}${used}${few})`;
}

/**
 * The refinement effect on one metric with each unit it can be measured over: tasks (each task's mean over seeds;
 * the bootstrap interval resamples tasks) and task × seed pairs. In `fast` probing the seeds of a task share cached
 * features and differ only in the head's initialisation and batch order, so the task × seed pairs are not
 * independent and their test is optimistic; the task-level one is the conservative reading.
 * @param c the comparison
 * @param metric the metric (default balanced accuracy)
 * @returns a Markdown table with a caption
 */
export function markdownEffect(c: Comparison, metric: keyof Metrics = "bacc"): string {
  const t = c.overTasks[metric];
  const o = c.overall[metric];
  const ci = t.ci ? `[${signed(t.ci.low)}, ${signed(t.ci.high)}]` : `n/a (fewer than ${MIN_TASKS_FOR_CI} tasks)`;
  const taskMean = mean(c.tasks.map((x) => x.delta[metric]).filter(Number.isFinite));
  return [
    "| unit | n | mean gain | 95 % bootstrap CI | Wilcoxon signed-rank |",
    "|---|---|---|---|---|",
    `| task (mean over seeds) | ${t.n} | ${signed(taskMean)} | ${ci} | ${pValue(t.test, t.n)} |`,
    `| task × seed pair | ${o.pairs} | ${signed(o.delta)} | not computed (pairs are not independent) | ${
      pValue(o.test, o.pairs)
    } |`,
    "",
    `${metric.toUpperCase()} in percentage points. The interval resamples tasks with replacement` +
    (t.ci ? ` (${t.ci.method === "exact" ? `all ${t.ci.resamples} resamples` : `${t.ci.resamples} resamples`})` : "") +
    `. Seeds of one task share the benchmark and, in fast probing, the features, so the task × seed test counts ` +
    `correlated pairs as independent; read the task row.`,
  ].join("\n");
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
 * The paper's Table 1 layout: one row per model, mean ± sd per metric, change and stars; reference models (raw
 * pixels, a random-weight ViT) first, in italics, without a change.
 * @param c the comparison
 * @param references reference models probed with the same protocol and seeds
 * @returns a Markdown table
 */
export function markdownSummary(c: Comparison, references: ModelResults[] = []): string {
  const head = `| model | ${METRIC_NAMES.map((m) => m.toUpperCase()).join(" | ")} |`;
  const sep = `|---|${METRIC_NAMES.map(() => "---").join("|")}|`;
  const refs = references.map((r) => {
    // Finite values only, as the model rows' pairs: a metric undefined on a task (AUROC with a class missing from
    // the test split) is left out, not averaged in as NaN.
    const all = (m: keyof Metrics) => r.tasks.flatMap((t) => values(t, m)).filter(Number.isFinite);
    return `| *${r.name}* | ${METRIC_NAMES.map((m) => `${pct(mean(all(m)))} ± ${pct(sd(all(m)))}`).join(" | ")} |`;
  });
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
    ...refs,
    base,
    ref,
    "",
    `Values in %, mean ± sd over task × seed; change vs the baseline in parentheses; ` +
    `Wilcoxon signed-rank over task × seed pairs (\\*\\* p < 0.01, \\*\\*\\* p < 0.001). ${tests}.`,
  ].join("\n");
}

/**
 * Per-task values with gains (± the sd over seeds of the paired differences); the mean row carries the 95 %
 * bootstrap interval of the mean gain over tasks; reference models' columns come first.
 * @param c the comparison
 * @param metric the metric shown
 * @param references reference models probed with the same protocol and seeds
 * @returns a Markdown table
 */
export function markdownPerTask(
  c: Comparison,
  metric: keyof Metrics = "bacc",
  references: ModelResults[] = [],
): string {
  const refHead = references.map((r) => ` *${r.name}* |`).join("");
  const lines = [
    `| task |${refHead} ${c.baselineName} | ${c.refinedName} | gain ± sd over seeds |`,
    `|---|${references.map(() => "---|").join("")}---|---|---|`,
  ];
  const refCell = (r: ModelResults, task: string) => {
    const t = r.tasks.find((x) => x.task === task);
    return t ? ` ${pct(mean(values(t, metric)))} ± ${pct(sd(values(t, metric)))} |` : " – |";
  };
  const refMean = (r: ModelResults) => ` ${pct(mean(r.tasks.map((t) => mean(values(t, metric)))))} |`;
  for (const t of c.tasks) {
    lines.push(
      `| ${t.task} |${references.map((r) => refCell(r, t.task)).join("")} ${pct(t.baseline[metric].mean)} ± ${
        pct(t.baseline[metric].sd)
      } | ${pct(t.refined[metric].mean)} ± ${pct(t.refined[metric].sd)} | ${signed(t.delta[metric])} ± ${
        pct(t.deltaSd[metric])
      } |`,
    );
  }
  const o = c.overall[metric];
  const ot = c.overTasks[metric];
  lines.push(
    `| **mean** |${references.map(refMean).join("")} ${pct(o.baseline.mean)} | ${pct(o.refined.mean)} | **${
      signed(o.delta)
    }** ${ot.ci ? `[${signed(ot.ci.low)}, ${signed(ot.ci.high)}]` : ""} |`,
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
  const ot = c.overTasks.bacc;
  lines.push(
    `${"mean".padEnd(w)}  ${pct(o.baseline.mean).padStart(13)}  ${pct(o.refined.mean).padStart(13)}  ${
      signed(o.delta).padStart(7)
    }   ` +
      (ot.ci
        ? `95 % CI over ${ot.n} tasks [${signed(ot.ci.low)}, ${signed(ot.ci.high)}]`
        : `no interval (fewer than ${MIN_TASKS_FOR_CI} tasks)`),
    `${" ".repeat(w)}  Wilcoxon over tasks: ${
      ot.test ? `p = ${ot.test.pValue.toPrecision(3)} (n = ${ot.test.n})` : "no test"
    }; over task × seed pairs: ${o.test ? `p = ${o.test.pValue.toPrecision(3)} (n = ${o.test.n})` : "no test"}`,
  );
  return lines.join("\n");
}
