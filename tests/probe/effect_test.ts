import { assert, assertAlmostEquals, assertEquals, assertThrows } from "../_assert.ts";
import { bootstrapMeanCi, compareModels, markdownEffect, wilcoxon } from "../../src/probe/mod.ts";
import type { ModelResults } from "../../src/probe/report.ts";
import type { Metrics } from "../../src/probe/metrics.ts";
import { ProbeError } from "../../src/util/errors.ts";

const fx = JSON.parse(await Deno.readTextFile(new URL("../fixtures/probe/bootstrap.json", import.meta.url)));

for (const c of fx.cases) {
  Deno.test(`bootstrap CI of the mean matches ${c.exact ? "numpy over all n^n resamples" : "SciPy"}: ${c.name}`, () => {
    const ci = bootstrapMeanCi(c.values);
    assertEquals(ci.method, c.exact ? "exact" : "monte-carlo");
    // Exact: the same numbers up to summation order. Monte Carlo: within 3 % of the interval's width.
    const tol = c.exact ? 1e-9 : 0.03 * (c.high - c.low);
    assertAlmostEquals(ci.low, c.low, tol, "low");
    assertAlmostEquals(ci.high, c.high, tol, "high");
    assert(ci.low <= ci.mean && ci.mean <= ci.high);
  });
}

Deno.test("bootstrap CI refuses an empty sample and non-finite values", () => {
  assertThrows(() => bootstrapMeanCi([]), /no values/, ProbeError);
  assertThrows(() => bootstrapMeanCi([0.1, NaN]), /value 1 is NaN/, ProbeError);
});

function metrics(bacc: number): Metrics {
  return { bacc, auroc: bacc, ap: bacc, f1: bacc, mcc: bacc };
}

function model(name: string, perTask: number[][]): ModelResults {
  return {
    name,
    tasks: perTask.map((seeds, i) => ({
      task: `t${i}`,
      classes: ["a", "b"],
      sizes: { train: 1, val: 1, test: 1 },
      seeds: seeds.map((v, seed) => ({
        seed,
        metrics: metrics(v),
        epochs: 1,
        bestEpoch: 1,
        valBacc: v,
        stop: "max-epochs",
      })),
      featureSeconds: 0,
      trainSeconds: 0,
    })),
  } as ModelResults;
}

Deno.test("compareModels: the effect over tasks uses one value per task; task × seed uses every pair", () => {
  const base = model("base", [[0.5, 0.52, 0.51], [0.6, 0.6, 0.62], [0.4, 0.41, 0.42], [0.7, 0.69, 0.71], [
    0.3,
    0.31,
    0.3,
  ]]);
  const ref = model("ref", [[0.55, 0.56, 0.57], [0.61, 0.59, 0.64], [0.47, 0.45, 0.46], [0.69, 0.7, 0.73], [
    0.36,
    0.33,
    0.35,
  ]]);
  const c = compareModels(base, ref);
  const taskMean = (m: ModelResults) => m.tasks.map((t) => t.seeds.reduce((s, x) => s + x.metrics.bacc, 0) / 3);
  const deltas = taskMean(ref).map((r, i) => r - taskMean(base)[i]);
  const t = c.overTasks.bacc;
  assertEquals(t.n, 5);
  const w = wilcoxon(taskMean(ref), taskMean(base));
  assertEquals(t.test!.n, 5);
  assertAlmostEquals(t.test!.pValue, w.pValue, 1e-12);
  assertEquals(c.overall.bacc.test!.n, 15, "task × seed pairs");
  assert(c.overall.bacc.test!.pValue < t.test!.pValue, "15 correlated pairs look more significant than 5 tasks");
  const ci = bootstrapMeanCi(deltas);
  assertAlmostEquals(t.ci!.low, ci.low, 1e-12);
  assertAlmostEquals(t.ci!.high, ci.high, 1e-12);
  // Per task: the sd over seeds of the paired differences (task 0: 0.05, 0.04, 0.06 → sd 0.01).
  assertAlmostEquals(c.tasks[0].deltaSd.bacc, 0.01, 1e-12);
  const md = markdownEffect(c);
  assert(md.includes("| task (mean over seeds) | 5 |"), md);
  assert(md.includes("| task × seed pair | 15 |"), md);
});

Deno.test("the effect table with few tasks: no interval under 5 tasks, each row's n is its own unit", () => {
  const base = model("base", [[0.5, 0.6], [0.4, 0.4]]);
  const ref = model("ref", [[0.55, 0.6], [0.3, 0.4]]);
  const c = compareModels(base, ref);
  assertEquals(c.overTasks.bacc.ci, null);
  const md = markdownEffect(c);
  // Task gains +2.5 and −5.0: mean −1.25.
  assert(/\| task \(mean over seeds\) \| 2 \| −1\.[23] \| n\/a \(fewer than 5 tasks\) \|/.test(md), md);
  // 4 pairs, of which 2 differ: the row says so, and that so few cannot reach p < 0.05.
  assert(
    /\| task × seed pair \| 4 \| −1\.[23] \| .* \(approx, 2 non-zero of 4; too few for any p < 0\.05\)/.test(md),
    md,
  );
});
