import { assert, assertAllClose, assertAlmostEquals, assertEquals } from "../_assert.ts";
import {
  authorsBatchSize,
  EarlyStopping,
  evaluateHead,
  headOptimizer,
  type LinearHead,
  PROBE_DEFAULTS,
  probeLr,
  probeWeightDecay,
  trainHeadEpoch,
  trainProbe,
} from "../../src/probe/mod.ts";
import { Rng } from "../../src/util/rng.ts";

const fx = JSON.parse(await Deno.readTextFile(new URL("../fixtures/probe/head.json", import.meta.url)));

Deno.test("head training matches PyTorch epoch by epoch (label smoothing, AdamW wd 0.05, per-iteration schedule)", () => {
  const head: LinearHead = { dim: fx.D, classes: fx.C, W: Float32Array.from(fx.initW), b: Float32Array.from(fx.initB) };
  const opt = headOptimizer(head);
  const x = Float32Array.from(fx.x);
  const xv = Float32Array.from(fx.xv);
  const h = { ...PROBE_DEFAULTS, weightDecay: 0.05 };
  fx.epochs.forEach(
    (
      e: {
        batches: number[][];
        lrs: number[];
        valBatches: number[][];
        W: number[];
        b: number[];
        valLoss: number;
        valBacc: number;
      },
      k: number,
    ) => {
      e.lrs.forEach((lr, i) => assertAlmostEquals(probeLr(k + i / e.batches.length, h), lr, 1e-15, "schedule"));
      trainHeadEpoch(head, opt, x, fx.y, e.batches, e.lrs, h);
      assertAllClose(head.W, e.W, 2e-6, `W after epoch ${k}`);
      assertAllClose(head.b, e.b, 2e-6, `b after epoch ${k}`);
      const v = evaluateHead(head, xv, fx.yv, e.valBatches);
      assertAlmostEquals(v.loss, e.valLoss, 1e-5, "val loss");
      assertAlmostEquals(v.bacc, e.valBacc, 1e-12, "val bacc");
    },
  );
});

Deno.test("the authors' batch-size rule and weight decay", () => {
  assertEquals([
    authorsBatchSize(1),
    authorsBatchSize(40),
    authorsBatchSize(100),
    authorsBatchSize(140),
    authorsBatchSize(10000),
  ], [8, 8, 16, 32, 64]);
  assertEquals([probeWeightDecay("retfound"), probeWeightDecay("visionfm"), probeWeightDecay("urfound")], [
    0.05,
    0.01,
    0.01,
  ]);
});

Deno.test("early stopping: bacc first, loss as tie-breaker, counting from epoch 20, patience 20", () => {
  const s = new EarlyStopping(PROBE_DEFAULTS);
  assert(s.update(0, 0.5, 1));
  assert(s.update(1, 0.6, 1));
  assert(!s.update(2, 0.6005, 2), "within delta and worse loss");
  assert(s.update(3, 0.6005, 0.5), "within delta, loss better by > delta");
  for (let e = 4; e < 39; e++) s.update(e, 0.3, 9);
  assertEquals(s.counter, 19);
  assert(!s.stop);
  s.update(39, 0.3, 9);
  assert(s.stop, "stops at epoch 39 at the earliest");
  assertEquals(s.bestEpoch, 3);
});

Deno.test("trainProbe learns a separable task and stops early", async () => {
  const rng = new Rng(0);
  const make = (n: number) => {
    const x = new Float32Array(n * 4);
    const y: number[] = [];
    for (let i = 0; i < n; i++) {
      const c = i % 3;
      y.push(c);
      for (let d = 0; d < 4; d++) x[i * 4 + d] = rng.normal() * 0.3 + (d === c ? 2 : 0);
    }
    return { x, y };
  };
  const tr = make(60), va = make(30), te = make(30);
  const run = await trainProbe({
    train: tr.x,
    trainLabels: tr.y,
    val: va.x,
    valLabels: va.y,
    test: te.x,
    testLabels: te.y,
    dim: 4,
    classes: 3,
  }, new Rng(1));
  assertEquals(run.stop, "early-stopping");
  assert(run.epochs >= 39 && run.epochs < 1000);
  const acc = run.testProbs.filter((p, i) => p.indexOf(Math.max(...p)) === te.y[i]).length / 30;
  assert(acc > 0.9, `accuracy ${acc}`);
});
