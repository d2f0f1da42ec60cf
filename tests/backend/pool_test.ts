/** The output-buffer pool: buffers are reused, and never while anything can still see them. */
import { assert, assertEquals } from "../_assert.ts";
import { bufferPoolStats, setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";

await setupBackend({ backend: "cpu-onnx", log: null });
const N = 1 << 15; // above the pool's minimum size

function filled(value: number): tf.Tensor {
  return tf.add(tf.fill([N], value), tf.zeros([N]));
}

/** Allocates and frees many pool-sized tensors, so any buffer wrongly pooled gets overwritten. */
function churn(): void {
  for (let i = 0; i < 20; i++) {
    tf.tidy(() => {
      tf.add(tf.fill([N], 1000 + i), tf.fill([N], 1));
    });
  }
}

Deno.test("pool: a freed output buffer is reused by the next kernel of the same size", () => {
  const before = bufferPoolStats();
  for (let i = 0; i < 50; i++) {
    tf.tidy(() => {
      tf.mul(filled(i), 2);
    });
  }
  const after = bufferPoolStats();
  assert(after.hits - before.hits >= 90, `expected reuse, got ${after.hits - before.hits} hits`);
  assert(after.misses - before.misses <= 4, `expected few new buffers, got ${after.misses - before.misses}`);
  const t = tf.mul(filled(3), 2);
  assertEquals(t.dataSync()[N - 1], 6);
  t.dispose();
});

Deno.test("pool: an array handed out by dataSync is never reused", () => {
  const t = filled(7);
  const values = t.dataSync();
  t.dispose();
  churn();
  assert(values.every((v) => v === 7), "a dataSync() array was overwritten after its tensor was disposed");
});

Deno.test("pool: a reshaped tensor sharing the buffer keeps it alive", () => {
  const t = filled(5);
  const r = tf.reshape(t, [N / 2, 2]);
  t.dispose();
  churn();
  const v = tf.tidy(() => tf.add(r, 0).dataSync());
  r.dispose();
  assert(v.every((x) => x === 5), "the buffer was pooled while a reshape still held it");
});

Deno.test("pool: a tensor viewing part of a pooled buffer (tfjs's unstack) keeps it from the pool", () => {
  const t = tf.tidy(() => tf.reshape(filled(9), [2, N / 2])); // t alone holds the buffer
  const rows = tf.unstack(t); // tfjs's contiguous slice: views of t's buffer
  t.dispose();
  churn();
  for (const row of rows) {
    const v = tf.tidy(() => tf.add(row, 0).dataSync());
    assert(v.every((x) => x === 9), "a view's parent buffer was pooled and overwritten");
    row.dispose();
  }
});

Deno.test("pool: arrays passed in by the user are never pooled", () => {
  const mine = new Float32Array(N).fill(4);
  const t = tf.tensor(mine);
  const y = tf.add(t, 1);
  t.dispose();
  y.dispose();
  churn();
  assert(mine.every((x) => x === 4), "a user's array was reused as a kernel output");
});

Deno.test("pool: pooled buffers are not cleared, so kernels that accumulate ask for zeros", () => {
  // UnsortedSegmentSum (embedding gradient) and Sum accumulate; run them after dirtying the pool.
  churn();
  const ids = tf.tensor1d([0, 0, 2], "int32");
  const x = tf.ones([3, N / 4]);
  const s = tf.unsortedSegmentSum(x, ids, 4);
  const v = s.dataSync();
  assertEquals([v[0], v[N / 4], v[2 * (N / 4)], v[3 * (N / 4)]], [2, 0, 1, 0]);
  tf.dispose([ids, x, s]);
});
