/**
 * Run by parallel_probe_test.ts, alone (one process) and under `mpiexec -n 2`: features and probes of a tiny ViT on
 * the committed tiny tasks, written by rank 0 for the test to compare.
 * `features <out.f32>`: concat features of one task's images; `probe <out.json> <fast|faithful>`: two tasks × three
 * seeds; `fail`: rank 1 throws while rank 0 waits in the gather (the job must end, not hang).
 */
import { setupBackend } from "../../src/backend/mod.ts";
import { readImageFolderDataset } from "../../src/dataset/mod.ts";
import { worldFromEnv } from "../../src/dist/mpi.ts";
import { createVit, vitPreset } from "../../src/encoders/mod.ts";
import { gatherBatches, vitSource } from "../../src/probe/features.ts";
import { probeTasks } from "../../src/probe/protocol.ts";
import { Rng } from "../../src/util/rng.ts";

await setupBackend({ log: null, backend: "cpu-onnx" });
const world = worldFromEnv();
const tasks = new URL("../../data/synth-tiny/tasks/", import.meta.url).pathname;
const vit = createVit(vitPreset("urfound", { imgSize: 32, patchSize: 8, embedDim: 32, depth: 2, numHeads: 2 }), {
  rng: new Rng(5),
});
const [mode, out, probeMode] = Deno.args;
if (mode === "features") {
  const ds = await readImageFolderDataset(`${tasks}normal_amd_dme`);
  // 5 images a batch: uneven rounds over two ranks and a short last batch.
  const x = await vitSource(vit).extract(ds.items.map((i) => i.path), { batchSize: 5, collective: world });
  if (world.rank === 0) await Deno.writeFile(out, new Uint8Array(x.buffer));
} else if (mode === "probe") {
  const ds = [
    await readImageFolderDataset(`${tasks}amd_vs_normal`),
    await readImageFolderDataset(`${tasks}normal_amd_dme`),
  ];
  const r = await probeTasks(vit, ds, {
    seeds: [0, 1, 2],
    mode: probeMode as "fast" | "faithful",
    hyper: { maxEpochs: probeMode === "faithful" ? 2 : 20 },
    featureBatch: 5,
    collective: world,
  });
  // Seconds differ from run to run; everything else must not.
  const numbers = r.map(({ featureSeconds: _f, trainSeconds: _t, ...rest }) => rest);
  if (world.rank === 0) await Deno.writeTextFile(out, JSON.stringify(numbers));
} else if (mode === "fail") {
  await gatherBatches(
    [[0], [1], [2], [3]],
    1,
    (idx) => Promise.resolve(idx),
    (idx) => {
      if (world.rank === 1) throw new Error("simulated failure on rank 1");
      return Float32Array.of(idx[0]);
    },
    { collective: world },
  );
}
world.finalize();
