/**
 * Our side of `deno task bench --only scaling` for encoding and probing, run in a fresh process per configuration
 * so that its peak RSS is the configuration's alone (the refinement step's is bench/refine_step.ts):
 *
 *   deno run -A bench/scaling_work.ts '<ScalingWork as JSON>' <backend>
 *
 * prints one JSON line `{seconds, peak_rss_mib, ...}`. Threads come from the environment (`RETFINER_THREADS` for
 * ONNX Runtime, `OPENBLAS_NUM_THREADS` for OpenBLAS), as the parent sets them.
 * @module
 */
import { peakRssMiB } from "./measure.ts";

/** Encode `images` random images with a ViT preset in forward passes of `batch`, after one warm-up pass. */
export interface EncodeWork {
  kind: "encode";
  /** `vitPreset` family (visionfm = ViT-B/16). */
  preset: "visionfm" | "retfound";
  /** Image side, px. */
  imgSize: number;
  /** Blocks (default: the preset's). */
  depth?: number;
  images: number;
  batch: number;
}

/** Fast-mode probing of the first `tasks` tasks of a benchmark folder with a family's shipped stand-in. */
export interface ProbeWork {
  kind: "probe";
  /** Benchmark folder (with `tasks/`). */
  root: string;
  /** Task folder names, in order; the first `tasks` are probed. */
  names: string[];
  tasks: number;
  seeds: number[];
  family: "retfound" | "visionfm" | "urfound";
}

/** A configuration run by this script. */
export type ScalingWork = EncodeWork | ProbeWork;

/** What the probing run reports besides its time: enough for PyTorch to repeat the same work. */
export interface ProbeOutcome {
  vit: { imgSize: number; embedDim: number; depth: number; numHeads: number; patchSize: number };
  weightDecay: number;
  hyper: Record<string, number>;
  tasks: { name: string; classes: number; items: { path: string; label: number; split: string }[]; epochs: number[] }[];
}

async function encode(w: EncodeWork): Promise<Record<string, unknown>> {
  const { tf } = await import("../src/backend/tf.ts");
  const { createVit, disposeParams, vitFeatures, vitPreset } = await import("../src/encoders/mod.ts");
  const model = createVit(vitPreset(w.preset, { imgSize: w.imgSize, ...(w.depth ? { depth: w.depth } : {}) }), {
    init: "zeros",
  });
  const first = Math.min(w.batch, w.images);
  const x = tf.randomNormal([first, 3, w.imgSize, w.imgSize]);
  const pass = (n: number) => {
    const y = tf.tidy(() => vitFeatures(model, n === first ? x : tf.slice(x, 0, n), "all"));
    y.dataSync();
    y.dispose();
  };
  pass(first); // warm-up
  const t0 = performance.now();
  for (let done = 0; done < w.images; done += w.batch) pass(Math.min(w.batch, w.images - done));
  const seconds = (performance.now() - t0) / 1000;
  x.dispose();
  disposeParams(model.params);
  return { seconds };
}

async function probe(w: ProbeWork): Promise<Record<string, unknown>> {
  const { tf } = await import("../src/backend/tf.ts");
  const { loadTasks } = await import("../src/experiment/mod.ts");
  const { probeTask, probeWeightDecay, PROBE_DEFAULTS } = await import("../src/probe/mod.ts");
  const { loadVision } = await import("../src/model/factory.ts");
  const { vitFeatures } = await import("../src/encoders/mod.ts");
  const names = w.names.slice(0, w.tasks);
  const tasks = await loadTasks(w.root, names);
  const vit = loadVision(w.family);
  const c = vit.config;
  // Warm-up: one feature pass, so that both sides start with compiled kernels.
  tf.tidy(() => vitFeatures(vit, tf.zeros([4, 3, c.imgSize, c.imgSize]), "concat")).dispose();
  const t0 = performance.now();
  const outcome: ProbeOutcome["tasks"] = [];
  for (const t of tasks) {
    const r = await probeTask(vit, t, { seeds: w.seeds });
    outcome.push({
      name: t.name,
      classes: t.classes.length,
      items: t.items.map((i) => ({ path: i.path, label: i.label, split: i.split })),
      epochs: r.seeds.map((s) => s.epochs),
    });
  }
  const seconds = (performance.now() - t0) / 1000;
  const result: ProbeOutcome = {
    vit: { imgSize: c.imgSize, embedDim: c.embedDim, depth: c.depth, numHeads: c.numHeads, patchSize: c.patchSize },
    weightDecay: probeWeightDecay(c.family),
    hyper: { ...PROBE_DEFAULTS } as unknown as Record<string, number>,
    tasks: outcome,
  };
  return { seconds, ...result };
}

if (import.meta.main) {
  const work = JSON.parse(Deno.args[0]) as ScalingWork;
  const { setupBackend } = await import("../src/backend/mod.ts");
  await setupBackend({ backend: Deno.args[1] as never, log: null });
  const r = work.kind === "encode" ? await encode(work) : await probe(work);
  console.log(JSON.stringify({ ...r, peak_rss_mib: peakRssMiB() }));
}
