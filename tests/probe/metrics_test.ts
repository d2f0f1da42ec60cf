import { assert, assertAlmostEquals, assertEquals, assertThrows } from "../_assert.ts";
import { classificationMetrics, normalSf, wilcoxon } from "../../src/probe/mod.ts";
import { binaryAuc, binaryAveragePrecision } from "../../src/probe/metrics.ts";
import { rankdata } from "../../src/probe/stats.ts";
import { checkFeatures } from "../../src/probe/features.ts";
import { ProbeError } from "../../src/util/errors.ts";

const fx = JSON.parse(await Deno.readTextFile(new URL("../fixtures/probe/metrics.json", import.meta.url)));

for (const c of fx.metrics) {
  Deno.test(`metrics match scikit-learn ${fx.sklearn} to 1e-9: ${c.name}`, () => {
    const m = classificationMetrics(c.labels, c.probs);
    for (const k of ["bacc", "ap", "f1", "mcc"] as const) assertAlmostEquals(m[k], c.expected[k], 1e-9, k);
    if (c.expected.auroc === null) assert(Number.isNaN(m.auroc), "sklearn refuses AUROC here; we report NaN");
    else assertAlmostEquals(m.auroc, c.expected.auroc, 1e-9, "auroc");
  });
}

for (const c of fx.wilcoxon) {
  Deno.test(`wilcoxon matches SciPy ${fx.scipy}: ${c.name}`, () => {
    const r = wilcoxon(c.x, c.y);
    assertEquals(r.statistic, c.statistic);
    assertAlmostEquals(r.pValue, c.pValue, Math.max(1e-12, 1e-9 * c.pValue), `p (${r.method})`);
  });
}

Deno.test("normal tail to double precision", () => {
  assertAlmostEquals(normalSf(0), 0.5, 1e-16);
  assertAlmostEquals(normalSf(1.959963984540054), 0.025, 1e-15);
  assertAlmostEquals(normalSf(5), 2.866515718791939e-7, 1e-20);
  assertAlmostEquals(normalSf(10), 7.619853024160527e-24, 1e-36);
  assertAlmostEquals(normalSf(-1), 0.8413447460685429, 1e-15);
});

Deno.test("bad metric and test inputs are clear errors", () => {
  assertThrows(() => classificationMetrics([0, 1], [[1, 0]]), /2 labels but 1 probability rows/, ProbeError);
  assertThrows(
    () => classificationMetrics([0, 3], [[1, 0], [0, 1]]),
    /labels must be integers in \[0, 2\)/,
    ProbeError,
  );
  assertThrows(() => wilcoxon([1, 2], [1]), /different lengths/, ProbeError);
  assertThrows(() => wilcoxon([1, 2], [1, 2]), /every difference is zero/, ProbeError);
});

Deno.test("non-finite scores, ranks and features are typed errors, never a hang (NaN equals nothing)", () => {
  // Grouping equal scores with === never advanced past a NaN: the probe hung on NaN features.
  assertThrows(() => binaryAveragePrecision([true, false, true], [0.2, NaN, 0.9]), /score 1 is NaN/, ProbeError);
  assertThrows(() => binaryAuc([true, false], [Infinity, 0.1]), /score 0 is Infinity/, ProbeError);
  assertThrows(
    () => classificationMetrics([0, 1, 1], [[0.5, 0.5], [NaN, NaN], [0.1, 0.9]]),
    /probability row 1 is \[NaN, NaN\]/,
    ProbeError,
  );
  assertThrows(() => rankdata([1, NaN, 2]), /value 1 is NaN/, ProbeError);
  assertThrows(() => wilcoxon([0.1, 0.2, 0.3], [0.2, -Infinity, 0.1]), /y\[1\] is -Infinity/, ProbeError);
  // Finite inputs are unchanged: sklearn's AP of this ranking is (1/2)(1) + (1/2)(2/3).
  assertAlmostEquals(binaryAveragePrecision([true, false, true], [0.9, 0.5, 0.2]), 0.5 + (0.5 * 2) / 3, 1e-12);
  const feats = new Float32Array([1, 2, 3, 4, NaN, Infinity]);
  assertThrows(
    () => checkFeatures(feats, 2, ["a.png", "b.png", "c.png"]),
    /c\.png: .* 2 non-finite value\(s\) of 2/,
    ProbeError,
  );
  checkFeatures(feats.subarray(0, 4), 2, ["a.png", "b.png"]);
});
