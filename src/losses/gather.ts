/**
 * Gathering a global batch's rows across data-parallel ranks with gradient, for ITC and ITM negatives drawn from the
 * whole world batch (`--global-negatives`). This is open_clip's `gather_features(..., gather_with_grad=True)`
 * (`torch.distributed.nn.functional.all_gather`) and BLIP's `all_gather_with_grad`: forward, an allgather of every
 * rank's rows in rank order; backward, the gradient of the gathered tensor is summed across ranks (each rank's loss
 * used every rank's rows) and each rank keeps the gradient of its own rows.
 *
 * The collectives run inside the forward pass and inside tfjs's backward pass (a `tf.customGrad`), so they need
 * synchronous reads: the CPU backends. MPI calls through `Deno.dlopen` are synchronous, and every rank runs the same
 * graph, so every rank reaches each collective in the same order.
 * @module
 */
import { tf } from "../backend/tf.ts";
import type { Tensor } from "../backend/tf.ts";
import type { Collective } from "../dist/mpi.ts";
import { RefineError } from "../util/errors.ts";

/** How a global batch is split across ranks: rank r holds `counts[r]` consecutive rows starting at `offset(r)`. */
export interface RowShard {
  /** The ranks. */
  world: Collective;
  /** Rows each rank holds, in rank order (sums to the global batch). */
  counts: readonly number[];
}

/**
 * Splits `total` rows over `ranks` as evenly as possible, in order: the first `total mod ranks` ranks hold one more.
 * @param total rows of the global batch
 * @param ranks the world size, at least 1
 * @returns each rank's row count, in rank order
 */
export function shardCounts(total: number, ranks: number): number[] {
  return Array.from({ length: ranks }, (_, r) => Math.floor(total / ranks) + (r < total % ranks ? 1 : 0));
}

/**
 * The first global row of rank `rank`.
 * @param counts each rank's row count
 * @param rank the rank
 * @returns the sum of the counts of the ranks before it
 */
export function shardOffset(counts: readonly number[], rank: number): number {
  let o = 0;
  for (let r = 0; r < rank; r++) o += counts[r];
  return o;
}

/**
 * Every rank's rows of `x`, concatenated in rank order, differentiable: the gradient of the result is summed across
 * ranks (an allreduce) and this rank's rows of it are `x`'s gradient (open_clip's `gather_with_grad`, BLIP's
 * `all_gather_with_grad`; open_clip sums with an allreduce, a reduce-scatter gives each rank only its rows of the
 * sum). Ranks may hold different row counts (`shard.counts`); rows are padded to the largest count for the
 * collectives (MPI_Allgather and MPI_Reduce_scatter_block take equal blocks) and the padding is dropped.
 *
 * Traffic per call: forward, an allgather (every rank receives the other ranks' rows); backward, a reduce-scatter
 * of B_global rows (each rank receives the other ranks' partial gradients of its own rows). Both are about
 * (N−1)/N · B_global · (row size) · 4 bytes per rank with a ring algorithm.
 * @param x this rank's rows `[counts[rank], ...]`, float32
 * @param shard the ranks and each rank's row count
 * @returns `[sum(counts), ...]`, rank 0's rows first
 * @throws {RefineError} `x` does not hold `counts[rank]` rows
 */
export function gatherRowsWithGrad(x: Tensor, shard: RowShard): Tensor {
  const { world, counts } = shard;
  const rows = counts[world.rank];
  if (x.shape[0] !== rows) {
    throw new RefineError(`rank ${world.rank} holds ${x.shape[0]} rows of the global batch, expected ${rows}`);
  }
  if (world.size === 1) return x;
  const rest = x.shape.slice(1);
  const per = rest.reduce((a, b) => a * b, 1);
  const most = Math.max(...counts);
  const total = counts.reduce((a, b) => a + b, 0);
  // tfjs types the custom function's arguments as tensors or the save function; the one argument is x.
  const gather = tf.customGrad((...args: (Tensor | tf.GradSaveFunc)[]) => {
    const input = args[0] as Tensor;
    const send = new Float32Array(most * per);
    send.set(input.dataSync() as Float32Array);
    const all = world.allgather(send);
    const out = new Float32Array(total * per);
    let o = 0;
    for (let r = 0; r < world.size; r++) {
      out.set(all.subarray(r * most * per, (r * most + counts[r]) * per), o);
      o += counts[r] * per;
    }
    return {
      value: tf.tensor(out, [total, ...rest], "float32"),
      gradFunc: (dy: Tensor | Tensor[]) => {
        if (Array.isArray(dy)) dy = dy[0];
        // Every rank's loss read every rank's rows: sum the gradients over ranks and keep this rank's rows, one
        // reduce-scatter over blocks padded to the largest shard.
        const g = dy.dataSync() as Float32Array;
        const blocks = new Float32Array(world.size * most * per);
        let o = 0;
        for (let r = 0; r < world.size; r++) {
          blocks.set(g.subarray(o * per, (o + counts[r]) * per), r * most * per);
          o += counts[r];
        }
        const mine = world.reduceScatterSum(blocks);
        return tf.tensor(mine.slice(0, rows * per), [rows, ...rest], "float32");
      },
    };
  });
  return gather(x);
}
