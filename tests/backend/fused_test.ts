/** Fused kernels against tfjs's own composite ops: values and gradients. */
import { assert, assertEquals, assertThrows, maxAbsDiff } from "../_assert.ts";
import {
  activeMatMulGemm,
  currentBackend,
  fusedCrossEntropy,
  fusedDropout,
  fusedGelu,
  fusedLayerNorm,
  fusedMergeHeads,
  fusedResidual,
  fusedSoftmax,
  fusedSplitHeads,
  installFusedKernels,
  setupBackend,
  uninstallFusedKernels,
} from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { linear } from "../../src/encoders/layers.ts";
import { Rng } from "../../src/util/rng.ts";

await setupBackend({ backend: "cpu-onnx", log: null });
const activeVectorMath = activeMatMulGemm()!.vectorMath!;
const rng = new Rng(42);
const rand = (shape: number[], scale = 1) =>
  tf.tensor(Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal() * scale), shape);

/** Value and gradients of `f` w.r.t. `xs`, computed with the fused kernels on or off. */
function run(
  fused: boolean,
  xs: tf.Tensor[],
  w: tf.Tensor,
  f: (...t: tf.Tensor[]) => tf.Tensor,
): { y: Float32Array; grads: Float32Array[] } {
  if (fused) installFusedKernels();
  else uninstallFusedKernels();
  const g = tf.grads((...t: tf.Tensor[]) => tf.sum(tf.mul(f(...t), w)));
  const y = f(...xs).dataSync() as Float32Array;
  const grads = g(xs).map((t) => t.dataSync() as Float32Array);
  installFusedKernels();
  return { y, grads };
}

function compare(label: string, xs: tf.Tensor[], f: (...t: tf.Tensor[]) => tf.Tensor, tol = 2e-5) {
  const w = rand(f(...xs).shape); // a random cotangent, so every output element matters
  const a = run(true, xs, w, f);
  const b = run(false, xs, w, f);
  const dy = maxAbsDiff(a.y, b.y);
  assert(dy < tol, `${label} value: ${dy}`);
  a.grads.forEach((g, i) => {
    const d = maxAbsDiff(g, b.grads[i]);
    assert(d < tol * 10, `${label} grad ${i}: ${d}`);
  });
}

Deno.test("fused LayerNorm equals the composite (moments) version, with and without affine, values and gradients", () => {
  const x = rand([3, 5, 16], 2);
  const g = rand([16]);
  const b = rand([16]);
  compare("ln affine", [x, g, b], (x, g, b) => fusedLayerNorm(x, g, b, 1e-6));
  compare("ln plain", [x], (x) => fusedLayerNorm(x, undefined, undefined, 1e-12));
});

Deno.test("fused cross-entropy equals logSoftmax with a one-hot product, values and gradients, smoothed or not", () => {
  const logits = rand([37, 53], 3);
  const targets = Int32Array.from({ length: 37 }, (_, i) => (i === 5 ? -100 : (i * 7) % 53)); // one ignored row
  for (const eps of [0, 0.1]) compare(`ce ε=${eps}`, [logits], (x) => fusedCrossEntropy(x, targets, eps), 1e-5);
  // Against the definition in float64 for one row: (1 − ε)(lse − x_t) + ε(lse − mean x).
  const x = logits.dataSync(), row = 3, C = 53, t = targets[row];
  let max = -Infinity, sum = 0, mean = 0;
  for (let j = 0; j < C; j++) max = Math.max(max, x[row * C + j]);
  for (let j = 0; j < C; j++) (sum += Math.exp(x[row * C + j] - max)), (mean += x[row * C + j] / C);
  const lse = max + Math.log(sum);
  const want = 0.9 * (lse - x[row * C + t]) + 0.1 * (lse - mean);
  const got = fusedCrossEntropy(logits, targets, 0.1).dataSync()[row];
  assert(Math.abs(got - want) < 1e-5, `row ${row}: ${got} vs ${want}`);
});

Deno.test("fused cross-entropy's gradient is float32-accurate for large logits (the log-sum-exp kept to ~48 bits)", () => {
  const N = 16, C = 50, eps = 0.1;
  const x = Float32Array.from({ length: N * C }, () => 1000 + rng.normal() * 3);
  const targets = Int32Array.from({ length: N }, (_, i) => (i * 7) % C);
  const g = tf.grad((t: tf.Tensor) => tf.sum(fusedCrossEntropy(t, targets, eps)))(tf.tensor(x, [N, C])).dataSync();
  let worst = 0;
  for (let r = 0; r < N; r++) {
    let max = -Infinity, sum = 0;
    for (let j = 0; j < C; j++) max = Math.max(max, x[r * C + j]);
    for (let j = 0; j < C; j++) sum += Math.exp(x[r * C + j] - max);
    for (let j = 0; j < C; j++) {
      const want = Math.exp(x[r * C + j] - max) / sum - eps / C - (j === targets[r] ? 1 - eps : 0);
      worst = Math.max(worst, Math.abs(g[r * C + j] - want));
    }
  }
  // A log-sum-exp rounded to float32 near 1000 (step 6e-5) gave errors up to 4e-6; tfjs's composite about 4e-8.
  assert(worst < 2e-7, `max |error| ${worst}`);
});

Deno.test("fused GELU equals 0.5·x·(1+erf(x/√2)) from tfjs ops, values and gradients", () => {
  compare("gelu", [rand([4, 33], 3)], (x) => fusedGelu(x));
  // Long enough for ONNX Runtime's vectorised GELU (and its gradient graph) under cpu-onnx.
  compare("gelu long", [rand([8, 1024], 3)], (x) => fusedGelu(x));
});

Deno.test("ONNX Runtime's vectorised GELU and gradient match the JavaScript kernel to float precision", () => {
  const math = currentBackend()!;
  assertEquals(math.name, "cpu-onnx");
  const x = rand([16, 1024], 4);
  const dy = rand([16, 1024]);
  const grad = (t: tf.Tensor) => tf.grad((v: tf.Tensor) => tf.sum(tf.mul(fusedGelu(v), dy)))(t);
  const [yOrt, gOrt] = [fusedGelu(x).dataSync(), grad(x).dataSync()];
  installFusedKernels(null); // JavaScript loops
  const [yJs, gJs] = [fusedGelu(x).dataSync(), grad(x).dataSync()];
  installFusedKernels(activeVectorMath);
  assert(maxAbsDiff(yOrt as Float32Array, yJs as Float32Array) < 2e-6, "gelu values");
  assert(maxAbsDiff(gOrt as Float32Array, gJs as Float32Array) < 2e-6, "gelu grads");
  // They are different code paths: the results are not bit-identical.
  assert(!(yOrt as Float32Array).every((v, i) => v === yJs[i]), "ORT path was not taken");
});

Deno.test("fused scaled/masked softmax equals tf.softmax(scale·x + mask), values and gradients", () => {
  const x = rand([2, 3, 4, 6], 2);
  compare("softmax", [x], (x) => fusedSoftmax(x, 0.25));
  const padMask = tf.tensor([0, 0, -10000, 0, -10000, 0, 0, 0, 0, 0, 0, -10000], [2, 1, 1, 6]);
  compare("softmax pad mask", [x], (x) => fusedSoftmax(x, 0.5, padMask));
  const fullMask = tf.mul(tf.sub(1, tf.linalg.bandPart(tf.ones([4, 6]), -1, 0)), -10000).reshape([1, 1, 4, 6]);
  compare("softmax causal mask", [x], (x) => fusedSoftmax(x, 1, fullMask as tf.Tensor));
});

Deno.test("ONNX Runtime's softmax (scores long enough for it) equals tf.softmax and the JavaScript kernel", () => {
  const x = rand([2, 3, 30, 50], 3); // 9000 scores: past the vectorised path's minimum
  const pad = tf.tensor(Float32Array.from({ length: 100 }, (_, i) => (i % 7 === 3 ? -10000 : 0)), [2, 1, 1, 50]);
  const causal = tf.mul(tf.sub(1, tf.linalg.bandPart(tf.ones([30, 50]), -1, 0)), -10000).reshape([1, 1, 30, 50]);
  compare("softmax long", [x], (x) => fusedSoftmax(x, 0.125));
  compare("softmax long, pad mask", [x], (x) => fusedSoftmax(x, 0.125, pad));
  compare("softmax long, causal mask", [x], (x) => fusedSoftmax(x, 1, causal as tf.Tensor));
  for (const mask of [undefined, pad, causal as tf.Tensor]) {
    const ort = fusedSoftmax(x, 0.125, mask).dataSync() as Float32Array;
    installFusedKernels(null); // JavaScript loops
    const js = fusedSoftmax(x, 0.125, mask).dataSync() as Float32Array;
    installFusedKernels(activeVectorMath);
    assert(maxAbsDiff(ort, js) < 1e-6, `softmax: ONNX Runtime and JavaScript differ by ${maxAbsDiff(ort, js)}`);
    assert(!ort.every((v, i) => v === js[i]), "ORT path was not taken");
  }
});

Deno.test("fused dropout with a byte mask equals x times the float mask, values and gradients bit for bit", () => {
  const x = rand([3, 5, 7]);
  const keep = 0.8;
  const bits = Uint8Array.from({ length: x.size }, () => (rng.uniform() < keep ? 1 : 0));
  const floats = Float32Array.from(bits, (b) => (b ? 1 / keep : 0));
  const w = rand(x.shape);
  const viaFloats = run(false, [x], w, (t) => tf.mul(t, tf.tensor(floats, t.shape)));
  const fused = run(true, [x], w, (t) => fusedDropout(t, bits, keep));
  const plain = run(false, [x], w, (t) => fusedDropout(t, bits, keep)); // the fallback other backends take
  assertEquals(fused.y, viaFloats.y);
  assertEquals(fused.grads[0], viaFloats.grads[0]);
  assertEquals(plain.y, viaFloats.y);
  assertEquals(plain.grads[0], viaFloats.grads[0]);
  assert(bits.includes(0) && bits.includes(1), "the mask both keeps and drops");
  // The backward pass holds 1 byte per element (the mask), not the input and a float32 mask.
  const saved = tf.engine().runKernel("RetfinerDropout", { x, keep: tf.tensor(bits, x.shape, "bool") }, {
    scale: 1 / keep,
  }) as tf.Tensor;
  assertEquals(saved.dtype, "float32");
  const grad = tf.getGradient("RetfinerDropout")!;
  assertEquals(grad.inputsToSave, ["keep"]);
  assertEquals(grad.outputsToSave, undefined);
});

Deno.test("fused residual (with and without drop-path factors) equals tfjs's Add and Multiply bit for bit", () => {
  const x = rand([4, 3, 5]);
  const branch = rand([4, 3, 5]);
  const factors = Float32Array.of(1.25, 0, 1.25, 1.25);
  const w = rand(x.shape);
  const col = tf.tensor(factors, [4, 1, 1]);
  const cases: [string, (a: tf.Tensor, b: tf.Tensor) => tf.Tensor, (a: tf.Tensor, b: tf.Tensor) => tf.Tensor][] = [
    ["plain", (a, b) => tf.add(a, b), (a, b) => fusedResidual(a, b)],
    ["drop-path", (a, b) => tf.add(a, tf.mul(b, col)), (a, b) => fusedResidual(a, b, factors)],
  ];
  for (const [label, composite, fused] of cases) {
    const want = run(false, [x, branch], w, composite);
    for (const on of [true, false]) { // the fused kernel, and the fallback other backends take
      const got = run(on, [x, branch], w, fused);
      assertEquals(got.y, want.y, label);
      assertEquals(got.grads, want.grads, label);
    }
  }
  // Nothing of the operands is kept for the backward pass: at most the per-row factors.
  assertEquals(tf.getGradient("RetfinerResidual")!.inputsToSave, undefined);
  assertEquals(tf.getGradient("RetfinerResidualScaled")!.inputsToSave, ["scale"]);
  assertThrows(() => fusedResidual(x, rand([4, 15])), /shapes must be equal/, RangeError);
  assertThrows(() => fusedResidual(x, branch, Float32Array.of(1, 1)), /2 row factors for 4 rows/, RangeError);
});

Deno.test("fused head split and merge equal tfjs's Reshape and Transpose, values and gradients, keeping nothing", () => {
  const x = rand([2, 5, 12]);
  const w = rand([2, 3, 5, 4]);
  const split = (t: tf.Tensor) => tf.transpose(tf.reshape(t, [2, 5, 3, 4]), [0, 2, 1, 3]);
  const want = run(false, [x], w, split);
  for (const on of [true, false]) {
    const got = run(on, [x], w, (t) => fusedSplitHeads(t, 3));
    assertEquals(got.y, want.y);
    assertEquals(got.grads, want.grads);
  }
  const h = rand([2, 3, 5, 4]);
  const w2 = rand([2, 5, 12]);
  const merge = (t: tf.Tensor) => tf.reshape(tf.transpose(t, [0, 2, 1, 3]), [2, 5, 12]);
  const wantM = run(false, [h], w2, merge);
  for (const on of [true, false]) {
    const got = run(on, [h], w2, (t) => fusedMergeHeads(t));
    assertEquals(got.y, wantM.y);
    assertEquals(got.grads, wantM.grads);
  }
  assertEquals(tf.getGradient("RetfinerSplitHeads")!.inputsToSave, undefined);
  assertEquals(tf.getGradient("RetfinerMergeHeads")!.inputsToSave, undefined);
  assertThrows(() => fusedSplitHeads(x, 5), /cannot split \[2,5,12\] into 5 heads/, RangeError);
});

Deno.test("linear (x·Wᵀ + b) equals tf.fused.matMul, values and gradients, and keeps no output for the backward", () => {
  const x = rand([2, 3, 6]);
  const wt = rand([4, 6]);
  const b = rand([4]);
  const w = rand([2, 3, 4]);
  const viaTf = (t: tf.Tensor, m: tf.Tensor, c?: tf.Tensor) =>
    tf.reshape(
      tf.fused.matMul({ a: tf.reshape(t, [6, 6]) as tf.Tensor2D, b: m as tf.Tensor2D, transposeB: true, bias: c }),
      [2, 3, 4],
    );
  for (const withBias of [true, false]) {
    const xs = withBias ? [x, wt, b] : [x, wt];
    const want = run(true, xs, w, (t, m, c) => viaTf(t, m, c));
    const got = run(true, xs, w, (t, m, c) => linear(t, m, c));
    assertEquals(got.y, want.y);
    assertEquals(got.grads, want.grads);
  }
  // What the tape keeps for the product: x and W, not the output (tf.fused.matMul keeps all three).
  const keptBy = (f: (t: tf.Tensor, m: tf.Tensor) => tf.Tensor) => {
    const shapes: string[] = [];
    const x5 = rand([2, 3, 5]);
    const wv = tf.variable(rand([4, 5]));
    tf.variableGrads(() => {
      const out = tf.sum(f(x5, wv)) as tf.Scalar;
      // deno-lint-ignore no-explicit-any
      for (const n of (tf.engine() as any).state.activeTape) {
        if (n.kernelName === "Sum") continue; // the loss's own sum keeps its input
        // Shape-only stand-ins (the lean tape's, for Reshape) hold no data.
        for (const t of n.saved ?? []) if (!t.isDisposed) shapes.push(`[${t.shape}]`);
      }
      return out;
    }, [wv]);
    wv.dispose();
    return shapes;
  };
  const ours = keptBy((t, m) => linear(t, m));
  assert(ours.includes("[6,5]") && ours.includes("[4,5]") && !ours.some((x) => x.endsWith("4]")), `kept ${ours}`);
  const tfs = keptBy((t, m) =>
    tf.fused.matMul({ a: tf.reshape(t, [6, 5]) as tf.Tensor2D, b: m as tf.Tensor2D, transposeB: true })
  );
  assert(tfs.some((x) => x.endsWith("6,4]")), `tf.fused.matMul keeps its output: ${tfs}`);
});

Deno.test("fast Transpose equals tfjs's for every permutation used, any rank and dtype", () => {
  const cases: [number[], number[]][] = [
    [[2, 3], [1, 0]],
    [[2, 3, 4, 5], [0, 2, 1, 3]],
    [[2, 3, 4, 5, 6], [2, 0, 3, 1, 4]],
    [[2, 1, 3, 4, 2, 3], [0, 2, 4, 1, 3, 5]],
    [[0, 3], [1, 0]],
  ];
  for (const [shape, perm] of cases) {
    for (const dtype of ["float32", "int32"] as const) {
      const x = tf.cast(rand(shape, 10), dtype);
      uninstallFusedKernels();
      const ref = tf.transpose(x, perm);
      installFusedKernels();
      const got = tf.transpose(x, perm);
      assertEquals(got.shape, ref.shape);
      assertEquals(Array.from(got.dataSync()), Array.from(ref.dataSync()));
    }
  }
});

Deno.test("fused ops leak no tensors over a long loop", () => {
  const x = rand([2, 4, 8]);
  const g = rand([8]);
  const before = tf.memory().numTensors;
  for (let i = 0; i < 50; i++) {
    tf.dispose(
      tf.tidy(() =>
        tf.grads((x: tf.Tensor) =>
          tf.sum(fusedSoftmax(fusedGelu(fusedLayerNorm(x, g, undefined, 1e-6)).reshape([2, 1, 4, 8]), 0.5))
        )([x])
      ),
    );
  }
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("fast UnsortedSegmentSum (gather's gradient) equals tfjs's, repeated and unused ids included", () => {
  const table = rand([7, 5]);
  const ids = tf.tensor1d([3, 0, 3, 6, 3, 1], "int32");
  compare("gather grad", [table], (t) => tf.gather(t, ids));
  const x = rand([6, 2, 3]);
  const seg = tf.tensor1d([2, 2, 0, 4, 4, 4], "int32");
  uninstallFusedKernels();
  const ref = tf.unsortedSegmentSum(x, seg, 5);
  installFusedKernels();
  const got = tf.unsortedSegmentSum(x, seg, 5);
  assertEquals(got.shape, [5, 2, 3]);
  assert(maxAbsDiff(got.dataSync(), ref.dataSync()) < 1e-6);
});

Deno.test("large same-shape Add/Sub/Mul/Div (ONNX Runtime's under cpu-onnx) equal tfjs's bit for bit", () => {
  const shape = [512, 300]; // past the vectorised path's minimum
  const a = rand(shape);
  const b = tf.add(tf.abs(rand(shape)), 0.5);
  const ops = { add: tf.add, sub: tf.sub, mul: tf.mul, div: tf.div };
  for (const [name, op] of Object.entries(ops)) {
    for (const [x, y] of [[a, b], [a, a]]) {
      uninstallFusedKernels();
      const ref = op(x, y).dataSync() as Float32Array;
      installFusedKernels(activeVectorMath);
      const got = op(x, y).dataSync() as Float32Array;
      assert(got.every((v, i) => Object.is(v, ref[i])), `${name}: not bit-identical to tfjs's kernel`);
    }
  }
});

Deno.test("float32 tensors cast from int32 or bool (tfjs keeps their integer arrays) take the right path", () => {
  const n = 1 << 17; // past every vectorised path's minimum
  const ints = tf.cast(tf.range(0, n, 1, "int32"), "float32");
  const bools = tf.cast(tf.greater(rand([n]), 0), "float32");
  const b = rand([n]);
  for (const [label, x] of [["int32", ints], ["bool", bools]] as const) {
    const plain = Float32Array.from(x.dataSync());
    const sum = tf.add(x, b).dataSync();
    const bv = b.dataSync();
    assert(sum.every((v, i) => v === Math.fround(plain[i] + bv[i])), `Add of a cast ${label} tensor is wrong`);
    const y = fusedGelu(x).dataSync();
    assert(Math.abs(y[n - 1] - fusedGelu(tf.tensor1d([plain[n - 1]])).dataSync()[0]) < 1e-5, `GELU of ${label}`);
    const prod = tf.matMul(tf.reshape(x, [n / 256, 256]), tf.ones([256, 2])).dataSync();
    const want = plain.subarray(0, 256).reduce((p, q) => p + q, 0);
    assert(Math.abs(prod[0] - want) <= 1e-3 * Math.max(1, Math.abs(want)), `matMul of a cast ${label} tensor`);
  }
  const scores = rand([2, 3, 40, 50]);
  const castMask = tf.reshape(tf.cast(tf.greater(rand([2, 50]), 0), "float32"), [2, 1, 1, 50]);
  const got = fusedSoftmax(scores, 0.5, castMask).dataSync() as Float32Array;
  const want = tf.softmax(tf.add(tf.mul(scores, 0.5), tf.add(castMask, tf.zeros(castMask.shape)))).dataSync();
  assert(maxAbsDiff(got, want as Float32Array) < 1e-6, "softmax with a mask cast from bool");
});

/** Runs `f` with tfjs's own kernels, then with ours, and compares: shape, dtype, values within `tol` (0: bit for bit). */
function againstTfjs(label: string, f: () => tf.Tensor, tol: number) {
  uninstallFusedKernels();
  const ref = f();
  installFusedKernels();
  const got = f();
  assertEquals(got.shape, ref.shape, label);
  assertEquals(got.dtype, ref.dtype, label);
  if (tol === 0) assertEquals(Array.from(got.dataSync()), Array.from(ref.dataSync()), label);
  else assert(maxAbsDiff(got.dataSync(), ref.dataSync()) < tol, label);
}

Deno.test("fast Add/Sub/Mul/Div (with broadcasting), Sum, Slice, SplitV and PadV2 equal tfjs's", () => {
  const pairs: [number[], number[]][] = [
    [[3, 4], [3, 4]],
    [[3, 4], [4]],
    [[2, 3, 4], [2, 1, 4]],
    [[2, 1, 4], [1, 3, 1]],
    [[5], []],
    [[], [2, 2]],
    [[4, 1], [1, 6]],
    [[0, 3], [3]],
  ];
  const ops = [tf.add, tf.sub, tf.mul, tf.div] as const;
  const check = (label: string, f: () => tf.Tensor) => againstTfjs(label, f, 1e-5);
  for (const [sa, sb] of pairs) {
    const a = rand(sa);
    const b = tf.add(tf.abs(rand(sb)), 0.5);
    ops.forEach((op, i) => check(`op ${i} ${sa} ${sb}`, () => op(a, b)));
  }
  const x = rand([3, 4, 5]);
  for (
    const [axis, keep] of [[0, false], [[0, 1], true], [2, false], [[1, 2], false], [1, true], [null, false]] as const
  ) {
    check(`sum ${axis}`, () => tf.sum(x, axis as never, keep));
  }
  check("slice", () => tf.slice(x, [1, 0, 2], [2, 4, 2]));
  check("slice to end", () => tf.slice(x, [0, 2, 0], [-1, -1, 3]));
  check("split", () => tf.concat(tf.split(x, [1, 3], 1).map((t, i) => tf.mul(t, i + 1)), 1));
  check("pad", () => tf.pad(x, [[1, 0], [0, 2], [3, 1]], 0.5));
  const g = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(tf.slice(t, [0, 1, 1], [2, 2, 3]), 2)));
  check("slice grad (pad)", () => g([x])[0]);
});

Deno.test("fast Concat, and Slice/SplitV copying long runs, equal tfjs's bit for bit on every axis and dtype", () => {
  const check = (label: string, f: () => tf.Tensor) => againstTfjs(label, f, 0);
  assertEquals(tf.getKernel("Concat", "cpu")?.kernelFunc.name, "concatKernel"); // ours, not tfjs's, is under test
  // Rows of 3·70 values: runs past the length where copies switch to TypedArray.set, and short ones.
  const parts = [rand([2, 3, 70]), rand([2, 1, 70]), rand([2, 0, 70]), rand([2, 4, 70])];
  check("concat axis 1", () => tf.concat(parts, 1));
  const [a, b, c] = [rand([2, 3, 5]), rand([2, 3, 2]), rand([1, 3, 5])];
  check("concat axis -1", () => tf.concat([a, b], -1));
  check("concat axis 0", () => tf.concat([c, a], 0));
  check(
    "concat int32",
    () => tf.concat([tf.tensor([[1, 2], [3, 4]], undefined, "int32"), tf.tensor([[5], [6]], undefined, "int32")], 1),
  );
  check(
    "concat bool",
    () =>
      tf.concat([tf.tensor([[true], [false]], undefined, "bool"), tf.tensor([[false], [true]], undefined, "bool")], 1),
  );
  check(
    "concat of float32 tensors cast from int32 (Int32Array storage)",
    () =>
      tf.concat([
        tf.cast(tf.tensor([[1, 2], [3, 4]], undefined, "int32"), "float32"),
        tf.cast(tf.tensor([[5], [6]], undefined, "int32"), "float32"),
      ], 1),
  );
  const x = rand([3, 4, 130]);
  check("slice long runs", () => tf.slice(x, [1, 1, 0], [2, 3, 130]));
  check("slice long inner runs", () => tf.slice(x, [0, 0, 3], [3, 4, 100]));
  check("split long runs", () => tf.split(x, [100, 30], 2)[0]);
  // The qkv split's gradient is a Concat over the last axis.
  const g = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(tf.split(t, 3, 2)[1], 2)));
  const qkv = rand([2, 5, 192]);
  check("split grad", () => g([qkv])[0]);
});

Deno.test("fast GatherV2 equals tfjs's on several axes and index shapes", () => {
  const x = rand([4, 5, 3]);
  for (const [axis, ind] of [[0, [3, 0, 3]], [1, [[4, 0], [2, 2]]], [2, [1]], [-1, [2, 0, 1, 1]]] as const) {
    const indices = tf.tensor(ind as unknown as number[], undefined, "int32");
    uninstallFusedKernels();
    const ref = tf.gather(x, indices, axis);
    installFusedKernels();
    const got = tf.gather(x, indices, axis);
    assertEquals(got.shape, ref.shape);
    assertEquals(Array.from(got.dataSync()), Array.from(ref.dataSync()));
  }
});
