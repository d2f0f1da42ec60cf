/**
 * Run by `mpiexec -n 2` from mpi_test.ts: one rank of a data-parallel run.
 * `collectives`: prints each collective's result; `refine <runDir> <maxSteps|-> [resume]`: refines the tiny model.
 */
import { setupBackend } from "../../src/backend/mod.ts";
import { worldFromEnv } from "../../src/dist/mpi.ts";
import { refine } from "../../src/refine/mod.ts";
import { tinyModel, tinyPairs } from "../refine/_tiny.ts";

await setupBackend({ log: null, backend: "cpu-onnx" });
const world = worldFromEnv();
const [mode, runDir, maxSteps, resume] = Deno.args;
if (mode === "collectives") {
  const f = Float32Array.of(world.rank + 1, 10);
  world.allreduceSum(f);
  const d = Float64Array.of(0.1 * (world.rank + 1));
  world.allreduceSum(d);
  const g = world.allgather(Float64Array.of(world.rank, -world.rank));
  const b = Float32Array.of(world.rank === 1 ? 7 : 0, world.rank === 1 ? 8 : 0);
  world.broadcast(b, 1);
  world.barrier();
  console.log(JSON.stringify({ rank: world.rank, size: world.size, f: [...f], d: [...d], g: [...g], b: [...b] }));
} else if (mode === "refine") {
  const model = await tinyModel(0);
  await refine({
    model,
    pairs: await tinyPairs(),
    runDir,
    batchSize: 8,
    accumulate: 2,
    epochs: 3,
    patience: 100,
    checkpointEvery: 2,
    optimizer: { lr: 1e-3 },
    seed: 1,
    maxSteps: maxSteps === "-" ? undefined : Number(maxSteps),
    resume: resume === "resume",
    collective: world,
    onNotice: () => {},
  });
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
