/**
 * The pieces of `--global-negatives` that one process can check: per-sample random streams (dropout, drop-path,
 * token masks, negative draws independent of the rest of the batch), and the sharded ITC/ITM arithmetic (the shares
 * of the ranks add up to one process's loss; the negatives drawn for a shard's rows are one process's). The
 * collectives themselves, and the gradients through them, are tested over `mpiexec -n 2` in tests/dist/mpi_test.ts.
 */
import { assert, assertAlmostEquals, assertEquals, assertThrows } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { dropMask, makeParam, type Params } from "../../src/encoders/layers.ts";
import {
  itcLoss,
  itcLossSharded,
  maskTokens,
  sampleHardNegatives,
  sampleHardNegativesSharded,
  SampleStreams,
  shardCounts,
  shardOffset,
} from "../../src/losses/mod.ts";
import { Rng } from "../../src/util/rng.ts";
import { ALL_LOSSES, type PairBatch, retfinerLosses } from "../../src/refine/mod.ts";
import { SINGLE_PROCESS } from "../../src/dist/mpi.ts";
import { tinyModel } from "../refine/_tiny.ts";

await setupBackend({ log: null });

Deno.test("sample streams: a sample draws the same at any row, in any batch; purposes and steps differ", () => {
  const s = new SampleStreams(3, "step/7");
  const a = s.rows([0, 1, 2, 3], "text/dropout").map((r) => r.uniform());
  const b = s.rows([2, 3], "text/dropout").map((r) => r.uniform());
  assertEquals(b, a.slice(2));
  assert(s.sample(2, "mlm/mask").uniform() !== a[2]);
  assert(new SampleStreams(3, "step/8").sample(2, "text/dropout").uniform() !== a[2]);
  assertEquals(s.sample(2, "text/dropout").uniform(), new Rng(3, "step/7/sample/2/text/dropout").uniform());
});

Deno.test("dropout masks: one generator draws row-major as before; per-row generators make rows independent", () => {
  const one = new Rng(5);
  const legacy = Float32Array.from({ length: 24 }, () => (one.uniform() < 0.75 ? 1 / 0.75 : 0));
  assertEquals(dropMask([4, 2, 3], 0.75, new Rng(5)), legacy);
  const s = new SampleStreams(1, "step/0");
  const whole = dropMask([4, 6], 0.5, s.rows([0, 1, 2, 3], "d"));
  const tail = dropMask([2, 6], 0.5, s.rows([2, 3], "d"));
  assertEquals(tail, whole.subarray(12));
  assertThrows(() => dropMask([3, 2], 0.5, s.rows([0, 1], "d")), /row 2/, RangeError);
});

Deno.test("token masks: per-row generators mask a row the same whatever the other rows", () => {
  const L = 12;
  const ids = Int32Array.from({ length: 4 * L }, (_, k) => (k % L === 0 ? 101 : k % L > 9 ? 0 : 1000 + k));
  const opts = { prob: 0.6, maskId: 103, randomRange: [106, 200] as [number, number] };
  const s = new SampleStreams(2, "step/1");
  const all = maskTokens(ids, 4, L, { ...opts, rng: s.rows([0, 1, 2, 3], "gm/mask") });
  const last = maskTokens(ids.subarray(2 * L), 2, L, { ...opts, rng: s.rows([2, 3], "gm/mask") });
  assertEquals(last.inputIds, all.inputIds.subarray(2 * L));
  assertEquals(last.labels, all.labels.subarray(2 * L));
});

function heads(): Params {
  const p: Params = new Map();
  const rng = new Rng(11);
  const w = () => Float32Array.from({ length: 64 }, () => rng.normal() * 0.3);
  makeParam(p, "shardtest", "contra_head_v.weight", w(), [8, 8]);
  makeParam(p, "shardtest", "contra_head_t.weight", w(), [8, 8]);
  return p;
}

Deno.test("sharded ITC: the shares of uneven shards add up to the loss of the whole batch; rows are its rows", () => {
  const h = heads();
  const rng = new Rng(4);
  const B = 7;
  const img = tf.tensor(Float32Array.from({ length: B * 8 }, () => rng.normal()), [B, 8]);
  const txt = tf.tensor(Float32Array.from({ length: B * 8 }, () => rng.normal()), [B, 8]);
  const whole = itcLoss(h, img, txt);
  const sim = whole.simI2T.dataSync() as Float32Array;
  const counts = shardCounts(B, 3);
  assertEquals(counts, [3, 2, 2]);
  // Rank r's rows, with every other rank's projected features standing in for the gather (forward only).
  const project = (name: string, x: tf.Tensor) => {
    const y = tf.matMul(x, h.get(`${name}.weight`)!, false, true);
    return tf.div(y, tf.norm(y, 2, -1, true));
  };
  const allImg = project("contra_head_v", img);
  const allTxt = project("contra_head_t", txt);
  let sum = 0;
  for (let r = 0; r < 3; r++) {
    const offset = shardOffset(counts, r);
    const rows = (x: tf.Tensor) => tf.slice(x, [offset, 0], [counts[r], 8]);
    let calls = 0; // itcLossSharded gathers the image features, then the text features
    const all = () => [allImg, allTxt][calls++];
    const share = itcLossSharded(h, rows(img), rows(txt), { rows: all, offset, total: B });
    assertEquals(calls, 2);
    sum += share.loss.dataSync()[0];
    const mine = share.simI2T.dataSync();
    const t2i = share.simT2I.dataSync();
    for (let i = 0; i < counts[r]; i++) {
      for (let j = 0; j < B; j++) {
        assertAlmostEquals(mine[i * B + j], sim[(offset + i) * B + j], 1e-5);
        assertAlmostEquals(t2i[i * B + j], sim[j * B + offset + i], 1e-5);
      }
    }
  }
  assertAlmostEquals(sum, whole.loss.dataSync()[0], 1e-5);
});

Deno.test("sharded hard negatives: a shard's rows draw from the world batch exactly what one process draws", () => {
  const rng = new Rng(9);
  const B = 6;
  const sim = Float32Array.from({ length: B * B }, () => rng.normal() * 3);
  const s = new SampleStreams(1, "step/3");
  const streams = (samples: number[]) => ({
    image: s.rows(samples, "itm/negative-image"),
    text: s.rows(samples, "itm/negative-text"),
  });
  const whole = sampleHardNegatives(sim, B, streams([0, 1, 2, 3, 4, 5]));
  const [offset, rows] = [2, 3];
  const i2t = sim.slice(offset * B, (offset + rows) * B);
  const t2i = Float32Array.from({ length: rows * B }, (_, k) => sim[(k % B) * B + offset + Math.floor(k / B)]);
  const shard = sampleHardNegativesSharded(i2t, t2i, rows, offset, B, streams([2, 3, 4]));
  assertEquals(shard.negImage, whole.negImage.slice(offset, offset + rows));
  assertEquals(shard.negText, whole.negText.slice(offset, offset + rows));
  for (let b = 0; b < rows; b++) assert(shard.negImage[b] !== offset + b && shard.negText[b] !== offset + b);
});

Deno.test("per-sample streams in the step: a sample's losses do not depend on the micro-batch it is in", async () => {
  // Training mode (dropout, drop-path, masks) without ITC/ITM (whose negatives do depend on the batch): the
  // per-sample MLM loss sums of two halves equal the whole batch's, weighted by their masked positions.
  const model = await tinyModel(0);
  const B = 4;
  const L = 8;
  const rng = new Rng(2);
  const ids = Int32Array.from({ length: B * L }, (_, k) => (k % L === 0 ? 2 : k % L > 6 ? 0 : 10 + rng.int(100)));
  const batch = (rows: number[]): PairBatch => ({
    images: Float32Array.from(
      { length: rows.length * 3 * 32 * 32 },
      (_, k) => Math.sin(k + 1000 * rows[Math.floor(k / (3 * 32 * 32))]),
    ),
    inputIds: Int32Array.from(rows.flatMap((r) => [...ids.subarray(r * L, (r + 1) * L)])),
    attentionMask: Int32Array.from(rows.flatMap((r) => [...ids.subarray(r * L, (r + 1) * L)].map((v) => +(v !== 0)))),
    size: rows.length,
    length: L,
    samples: rows,
  });
  const s = new SampleStreams(1, "step/0");
  const only = { itc: 0, itm: 0, mlm: 1, gm: 0 };
  const masked = (rows: number[]) =>
    maskTokens(batch(rows).inputIds, rows.length, L, {
      prob: 0.15,
      maskId: model.tokenizer.maskId,
      randomRange: model.tokenizer.randomTokenRange,
      padId: model.tokenizer.padId,
      rng: s.rows(rows, "mlm/mask"),
    }).labels.filter((l) => l !== -100).length;
  const loss = (rows: number[]) =>
    tf.tidy(() => retfinerLosses(model, batch(rows), only, s, true).terms.mlm!.dataSync()[0]) * masked(rows);
  assertAlmostEquals(loss([0, 1]) + loss([2, 3]), loss([0, 1, 2, 3]), 1e-4);
  // A global batch needs per-sample streams.
  const shard = { world: SINGLE_PROCESS, counts: [B] };
  const global = { shard, inputIds: ids, attentionMask: ids.map((v) => +(v !== 0)), samples: [0, 1, 2, 3] };
  assertThrows(() => retfinerLosses(model, batch([0, 1, 2, 3]), ALL_LOSSES, new Rng(1), true, global));
});
