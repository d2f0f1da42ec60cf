/**
 * Run by `mpiexec -n 2` from mpi_test.ts: one rank of a data-parallel run.
 * `collectives`: prints each collective's result; `refine <json>`: refines the tiny model (a `TinyRun` of
 * _tiny_run.ts); `fail`: rank 1 fails.
 */
import { setupBackend } from "../../src/backend/mod.ts";
import { worldFromEnv } from "../../src/dist/mpi.ts";
import { refine } from "../../src/refine/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { gatherRowsWithGrad } from "../../src/losses/gather.ts";
import { type TinyRun, tinyRunOptions } from "./_tiny_run.ts";

await setupBackend({ log: null, backend: "cpu-onnx" });
const world = worldFromEnv();
const mode = Deno.args[0];
if (mode === "collectives") {
  const f = Float32Array.of(world.rank + 1, 10);
  world.allreduceSum(f);
  const d = Float64Array.of(0.1 * (world.rank + 1));
  world.allreduceSum(d);
  const g = world.allgather(Float64Array.of(world.rank, -world.rank));
  const h = world.allgather(Float32Array.of(world.rank + 0.5));
  const rs = world.reduceScatterSum(Float32Array.of(1, 2, 10 * (world.rank + 1), 20));
  const b = Float32Array.of(world.rank === 1 ? 7 : 0, world.rank === 1 ? 8 : 0);
  world.broadcast(b, 1);
  world.barrier();
  console.log(
    JSON.stringify({
      rank: world.rank,
      size: world.size,
      f: [...f],
      d: [...d],
      g: [...g],
      h: [...h],
      rs: [...rs],
      b: [...b],
    }),
  );
} else if (mode === "gather") {
  // Uneven shards (rank 0 holds 2 rows, rank 1 one): forward gathers in rank order; every rank's loss reads every
  // row, so x's gradient is the sum over ranks of each rank's gradient of its own rows.
  const counts = [2, 1];
  const x = tf.tensor(world.rank === 0 ? [1, 2, 3, 4] : [5, 6], [counts[world.rank], 2]);
  const weight = tf.tensor([[1, 10], [100, 1000], [(world.rank + 1) * 3, 7]]);
  const f = (t: tf.Tensor) => tf.sum(tf.mul(gatherRowsWithGrad(t, { world, counts }), weight)) as tf.Scalar;
  const all = Array.from(gatherRowsWithGrad(x, { world, counts }).dataSync());
  const grad = Array.from(tf.grad(f)(x).dataSync());
  console.log(JSON.stringify({ rank: world.rank, all, grad }));
} else if (mode === "refine") {
  await refine({ ...(await tinyRunOptions(JSON.parse(Deno.args[1]) as TinyRun)), collective: world });
} else if (mode === "fail") {
  // Rank 1 fails before a collective that rank 0 waits in: the job must end, not hang.
  if (world.rank === 1) {
    console.error("rank 1: simulated failure");
    world.abort(3);
  }
  world.barrier();
  await new Promise((r) => setTimeout(r, 60_000));
}
world.finalize();
