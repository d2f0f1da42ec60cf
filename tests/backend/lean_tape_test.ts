/** The lean tape frees during the backward pass and gives the same gradients as tfjs's own. */
import { assert, maxAbsDiff } from "../_assert.ts";
import {
  bufferPoolStats,
  drainBufferPool,
  fusedGelu,
  fusedLayerNorm,
  fusedSoftmax,
  installLeanTape,
  leanTapeFreed,
  setupBackend,
  uninstallLeanTape,
} from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { Rng } from "../../src/util/rng.ts";

await setupBackend({ backend: "cpu-onnx", log: null });
const rng = new Rng(3);
const rand = (shape: number[]) =>
  tf.variable(tf.tensor(Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rng.normal()), shape));

// A small transformer-like block: tensors used several times (residuals, shared weights), fused custom-gradient ops,
// a transpose and a split, so gradients accumulate and pass through unchanged in places.
const w1 = rand([16, 32]);
const w2 = rand([32, 16]);
const g = rand([16]);
const b = rand([16]);
const x = rand([2, 5, 16]);
/** Identity whose gradient hands its dy on unchanged: the lean tape must not free that dy. */
const passThrough = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
  value: (args[0] as tf.Tensor).clone(),
  gradFunc: (dy: tf.Tensor | tf.Tensor[]) => dy as tf.Tensor,
}));
function loss(): tf.Scalar {
  const h = passThrough(fusedLayerNorm(x, g, b, 1e-6)) as tf.Tensor;
  const a = fusedGelu(tf.matMul(tf.reshape(h, [10, 16]), w1));
  const y = tf.add(tf.reshape(tf.matMul(a, w2), [2, 5, 16]), x);
  const att = fusedSoftmax(tf.matMul(y, y, false, true), 0.25);
  const z = tf.matMul(att, y);
  const [p, q] = tf.split(tf.transpose(z, [0, 2, 1]), 2, 1);
  return tf.add(tf.sum(tf.mul(p, q)), tf.sum(tf.mul(z, y))) as tf.Scalar;
}

function gradsWith(lean: boolean): Float32Array[] {
  if (lean) installLeanTape();
  else uninstallLeanTape();
  const { value, grads } = tf.variableGrads(loss, [w1, w2, g, b, x]);
  const out = [w1, w2, g, b, x].map((v) => grads[v.name].dataSync() as Float32Array);
  tf.dispose([value, ...Object.values(grads)]);
  installLeanTape();
  return out;
}

Deno.test("lean tape: gradients equal tfjs's own tape, and no tensor leaks", () => {
  const reference = gradsWith(false);
  const before = tf.memory().numTensors;
  const freed0 = leanTapeFreed();
  const lean = gradsWith(true);
  for (let i = 0; i < 3; i++) gradsWith(true);
  assert(leanTapeFreed() > freed0, "the lean tape freed nothing early");
  assert(tf.memory().numTensors === before, `tensors leaked: ${before} -> ${tf.memory().numTensors}`);
  for (let i = 0; i < reference.length; i++) {
    const d = maxAbsDiff(lean[i], reference[i]);
    assert(d === 0, `gradient ${i} differs from tfjs's tape by ${d}`);
  }
});

Deno.test("lean tape: higher-order gradients are left to tfjs", () => {
  const f = (t: tf.Tensor) => tf.sum(tf.mul(tf.mul(t, t), t));
  const ddf = tf.grad(tf.grad(f));
  const t = tf.tensor1d([1, 2, 3]);
  const d = ddf(t).dataSync(); // d²/dt² of Σt³ = 6t
  assert(maxAbsDiff(d, new Float32Array([6, 12, 18])) < 1e-5, `second derivative wrong: ${d}`);
  t.dispose();
});

Deno.test("lean tape: Reshape, Add, Sub, Sum, Mean, Slice, Concat and PadV2 keep shapes, not data; same gradients", () => {
  const u = rand([3, 8]);
  const v = rand([8]);
  const shapeOps = (): tf.Scalar => {
    const r = tf.reshape(tf.mul(u, 2), [3, 2, 4]); // Reshape's input: a temporary only Reshape would hold
    const a = tf.sub(tf.add(r, tf.reshape(v, [2, 4])), 1); // broadcasting Add and Sub
    const s = tf.slice(a, [0, 1, 0], [3, 1, 4]);
    const c = tf.concat([s, tf.pad(s, [[0, 0], [0, 0], [1, 1]])], 2);
    return tf.add(tf.sum(tf.mul(c, c)), tf.mean(tf.mul(a, a))) as tf.Scalar;
  };
  const run = (lean: boolean) => {
    if (lean) installLeanTape();
    else uninstallLeanTape();
    let heldBytes = 0;
    const { value, grads } = tf.variableGrads(() => {
      const out = shapeOps();
      // deno-lint-ignore no-explicit-any
      for (const n of (tf.engine() as any).state.activeTape) {
        if (SHAPE_ONLY_KERNELS.includes(n.kernelName)) {
          for (const t of n.saved ?? []) if (!t.isDisposed) heldBytes += 4 * t.size;
        }
      }
      return out;
    }, [u, v]);
    const out = [u, v].map((w) => grads[w.name].dataSync() as Float32Array);
    tf.dispose([value, ...Object.values(grads)]);
    installLeanTape();
    return { out, heldBytes };
  };
  const reference = run(false);
  const before = tf.memory().numTensors;
  const lean = run(true);
  assert(tf.memory().numTensors === before, `tensors leaked: ${before} -> ${tf.memory().numTensors}`);
  assert(reference.heldBytes > 0, "tfjs's own tape keeps these kernels' inputs");
  assert(lean.heldBytes === 0, `the lean tape kept ${lean.heldBytes} bytes for shape-only gradients`);
  for (let i = 0; i < 2; i++) assert(maxAbsDiff(lean.out[i], reference.out[i]) === 0, `gradient ${i} differs`);
});

const SHAPE_ONLY_KERNELS = ["Reshape", "Add", "Sub", "Sum", "Mean", "Slice", "Concat", "PadV2"];

Deno.test("a weight used many times: each use's gradient is freed once tfjs has added it to the sum", () => {
  const uses = 16;
  const w = rand([128, 128]); // 64 KiB: its gradients come from the buffer pool, which counts the bytes in use
  const xs = Array.from(
    { length: uses },
    () => tf.tensor(Float32Array.from({ length: 128 }, () => rng.normal()), [1, 128]),
  );
  const f = () => tf.addN(xs.map((xi) => tf.sum(tf.matMul(xi, w)))) as tf.Scalar;
  drainBufferPool(); // restarts the high-water mark from the bytes in use now
  const start = bufferPoolStats().liveBytes;
  const { value, grads } = tf.variableGrads(f, [w]);
  const peak = bufferPoolStats().liveHighWater - start;
  const wBytes = w.size * 4;
  // tfjs alone keeps every use's gradient until the pass ends (≥ uses × the weight); freed, a few weights' worth.
  assert(peak <= 4 * wBytes, `${peak} B of gradients at once during the backward pass, a weight is ${wBytes} B`);
  // The sum is still right: d/dW Σ_i sum(x_i W) = Σ_i x_iᵀ 1.
  const expected = tf.tidy(() => tf.matMul(tf.concat(xs, 0), tf.ones([uses, 128]), true, false));
  const d = maxAbsDiff(grads[w.name].dataSync(), expected.dataSync());
  assert(d < 1e-4, `accumulated gradient off by ${d}`);
  tf.dispose([value, grads[w.name], expected, w, ...xs]);
});

Deno.test("a custom gradient may return a tensor it does not own: the lean tape leaves it alone", () => {
  // tfjs adds the custom gradient's tensor into w's earlier gradient (from the Multiply by 3, whose backward runs
  // first) and leaves it alone; the lean tape must too, also once the next node (the Multiply by 5) starts.
  const constant = tf.ones([128, 128]); // owned by this test
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
    value: tf.mul(args[0] as tf.Tensor, 2),
    gradFunc: () => constant,
  }));
  const w = rand([128, 128]);
  const w2 = rand([128, 128]);
  const f = () => {
    const a = tf.mul(w2, 5);
    const y = op(w) as tf.Tensor;
    return tf.sum(tf.add(tf.add(y, tf.mul(w, 3)), a)) as tf.Scalar;
  };
  const { value, grads } = tf.variableGrads(f, [w, w2]);
  assert(!constant.isDisposed, "the lean tape freed a tensor the custom gradient returned but does not own");
  const d = maxAbsDiff(grads[w.name].dataSync(), new Float32Array(128 * 128).fill(4)); // 1 (the constant) + 3
  assert(d === 0, `gradient off by ${d}`);
  tf.dispose([value, grads[w.name], grads[w2.name], constant, w, w2]);
});

Deno.test("the dy a caller passes to tf.grads stays the caller's", () => {
  const x = rand([64, 64]);
  const dy = tf.fill([64, 64], 0.5);
  const [g] = tf.grads((t: tf.Tensor) => tf.mul(tf.mul(t, 2), 3))([x], dy);
  assert(!dy.isDisposed, "the lean tape freed the caller's dy");
  assert(maxAbsDiff(g.dataSync(), new Float32Array(64 * 64).fill(3)) === 0, "gradient wrong");
  tf.dispose([g, dy, x]);
});
