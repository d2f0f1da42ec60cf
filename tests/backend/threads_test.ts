/**
 * The cpu backend's thread pool: every kernel it shares out gives the same bits on one thread and on two (values,
 * gradients, AdamW's weights and moments), ranges really go to a worker, a failing range throws and leaves the pool
 * working, and idle workers do not keep a process alive.
 */
import { assert, assertEquals, assertThrows } from "../_assert.ts";
import {
  fusedCrossEntropy,
  fusedDropout,
  fusedLayerNorm,
  fusedMergeHeads,
  fusedResidual,
  fusedSoftmax,
  fusedSplitHeads,
  setupBackend,
} from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { parallelFor, sharedJobs, startThreads, stopThreads, threadCount } from "../../src/backend/threads.ts";
import { adamwStep, createAdamWState } from "../../src/optim/adamw.ts";
import { ADAMW_DEFAULTS } from "../../src/refine/mod.ts";
import { Rng } from "../../src/util/rng.ts";

await setupBackend({ backend: "cpu-onnx", threads: 2, log: null });

async function twoThreads(): Promise<void> {
  startThreads(2);
  const t0 = Date.now();
  while (threadCount() < 2) {
    if (Date.now() - t0 > 30_000) throw new Error("the worker did not start in 30 s");
    await new Promise((r) => setTimeout(r, 20));
  }
}

const rng = new Rng(7);
const randArray = (n: number, scale = 1) => Float32Array.from({ length: n }, () => rng.normal() * scale);
const rand = (shape: number[], scale = 1) => tf.tensor(randArray(shape.reduce((a, b) => a * b, 1), scale), shape);

/** The value and the gradients w.r.t. `xs` of `sum(f(xs) · w)`, as arrays. */
function valueAndGrads(xs: tf.Tensor[], w: tf.Tensor, f: (...t: tf.Tensor[]) => tf.Tensor): Float32Array[] {
  return tf.tidy(() => {
    const y = f(...xs).dataSync() as Float32Array;
    const grads = tf.grads((...t: tf.Tensor[]) => tf.sum(tf.mul(f(...t), w)))(xs);
    return [y, ...grads.map((g) => g.dataSync() as Float32Array)];
  });
}

Deno.test("every shared kernel gives the same bits on one thread and on two, and two threads are used", async () => {
  await twoThreads();
  const B = 32, L = 50, H = 3, d = 64, D = H * d; // above COPY_GRAIN·2 for the copies
  const x = rand([B, L, D], 2), gamma = rand([D]), beta = rand([D]);
  const scores = rand([B, H, L, L], 3);
  const keep = tf.tensor(
    Uint8Array.from({ length: B * L * D }, () => (rng.uniform() < 0.9 ? 1 : 0)),
    [B, L, D],
    "bool",
  );
  const branch = rand([B, L, D]);
  const rowScale = tf.tensor(Float32Array.from({ length: B }, (_, i) => (i % 3 === 0 ? 0 : 1.25)), [B, 1, 1]);
  const ceTargets = Int32Array.from({ length: 600 }, (_, i) => (i * 31) % 700);
  const cases: [string, tf.Tensor[], (...t: tf.Tensor[]) => tf.Tensor][] = [
    ["LayerNorm (x, γ, β)", [x, gamma, beta], (x, g, b) => fusedLayerNorm(x, g, b, 1e-6)],
    ["LayerNorm without affine", [x], (x) => fusedLayerNorm(x, undefined, undefined, 1e-12)],
    ["softmax (its gradient)", [scores], (s) => fusedSoftmax(s, 0.125)],
    ["dropout", [x], (x) => fusedDropout(x, keep.dataSync() as Uint8Array, 0.9)],
    ["residual", [x, branch], (x, b) => fusedResidual(x, b)],
    ["drop-path residual", [x, branch], (x, b) => fusedResidual(x, b, rowScale.dataSync() as Float32Array)],
    ["split and merge heads", [x], (x) => fusedMergeHeads(tf.mul(fusedSplitHeads(x, H), 2))],
    ["cross-entropy with label smoothing", [rand([600, 700], 3)], (z) => fusedCrossEntropy(z, ceTargets, 0.1)],
    ["sums over leading and trailing axes", [x], (x) => tf.add(tf.sum(x, [0, 1]), tf.sum(x, 2).sum())],
  ];
  for (const [label, xs, f] of cases) {
    const w = rand(f(...xs).shape);
    startThreads(2);
    await twoThreads();
    const before = sharedJobs();
    const shared = valueAndGrads(xs, w, f);
    assert(sharedJobs() > before, `${label}: no range went to the worker`);
    stopThreads();
    const alone = valueAndGrads(xs, w, f);
    assertEquals(threadCount(), 1);
    shared.forEach((a, i) => assertEquals(a, alone[i], `${label}: output ${i} differs between 2 threads and 1`));
    w.dispose();
  }
  tf.dispose([x, gamma, beta, scores, keep, branch, rowScale]);
  await twoThreads();
});

Deno.test("AdamW's update gives the same weights and moments on one thread and on two", async () => {
  const n = 200_003; // not a multiple of the split
  const runSteps = () => {
    const r = new Rng(3);
    const p = tf.variable(tf.tensor(Float32Array.from({ length: n }, () => r.normal())));
    const params = new Map([["w", p]]);
    const state = createAdamWState();
    for (let s = 0; s < 3; s++) {
      const g = tf.tensor(Float32Array.from({ length: n }, () => r.normal() * 0.1));
      adamwStep(params, new Map([["w", g]]), state, { ...ADAMW_DEFAULTS, lr: 1e-3 });
      g.dispose();
    }
    const out = [p.dataSync().slice() as Float32Array, state.m.get("w")!.slice(), state.v.get("w")!.slice()];
    p.dispose();
    return out;
  };
  await twoThreads();
  const before = sharedJobs();
  const shared = runSteps();
  assert(sharedJobs() >= before + 3, "AdamW's ranges did not go to the worker");
  stopThreads();
  const alone = runSteps();
  shared.forEach((a, i) => assertEquals(a, alone[i], `AdamW output ${i}`));
  await twoThreads();
});

Deno.test("a range that throws fails the call, after the workers finish, and the pool keeps working", async () => {
  await twoThreads();
  const rows = 2000, n = 64;
  const y = randArray(rows * n), dy = randArray(rows * n);
  // No output array: every range throws a TypeError, the caller's first.
  assertThrows(() => parallelFor("softmaxGrad", [y, dy], [n, 1], rows, 100), /undefined|null/);
  const a = new Float32Array(rows * n), b = new Float32Array(rows * n);
  const before = sharedJobs();
  parallelFor("softmaxGrad", [y, dy, a], [n, 0.5], rows, 100);
  assert(sharedJobs() > before);
  stopThreads();
  parallelFor("softmaxGrad", [y, dy, b], [n, 0.5], rows, 100);
  assertEquals(a, b);
  await twoThreads();
});

Deno.test("idle workers do not keep a process alive", async () => {
  const url = new URL("../../src/backend/mod.ts", import.meta.url).href;
  const script = `
    import { setupBackend, fusedLayerNorm, tensorflow as tf } from "${url}";
    import { threadCount } from "${new URL("../../src/backend/threads.ts", import.meta.url).href}";
    await setupBackend({ backend: "cpu-onnx", threads: 2, log: null });
    while (threadCount() < 2) await new Promise((r) => setTimeout(r, 20));
    fusedLayerNorm(tf.ones([512, 256]), undefined, undefined, 1e-6).dataSync();
    console.log("done", threadCount());`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", script],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  assertEquals(text, "done 2");
});
