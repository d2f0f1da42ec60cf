/**
 * One RetFiner optimisation step (ViT + BERT with cross-attention in every
 * layer; ITC + ITM + MLM + GM; AdamW), as `deno task bench` times, profiles and
 * measures it. Run as a script it times the step in a fresh process and
 * reports that process's peak RSS, so the memory figure is the step's alone:
 *
 *   deno run -A bench/refine_step.ts '<RefineBenchConfig as JSON>' <backend> [repeats] [micro-batch]
 *
 * prints one JSON line `{seconds, peak_rss_mib, ranks}`. With a micro-batch smaller than the config's batch, the
 * step accumulates gradients over `batch / micro` micro-batches; under `mpiexec -n N` those micro-batches are shared
 * out over the ranks and the gradients summed in one float32 allreduce, as the trainer does (src/refine/trainer.ts),
 * and rank 0 alone prints (`deno task bench --only mpi` measures 1 against 2 ranks this way).
 */
import { type BackendName, setupBackend } from "../src/backend/mod.ts";
import { tf } from "../src/backend/tf.ts";
import { bertPreset, createVit, vitPreset } from "../src/encoders/mod.ts";
import { ADAMW_DEFAULTS, ALL_LOSSES, createAdamWState, retfinerLosses } from "../src/refine/mod.ts";
import { adamwStepAsync, disposeAdamWState } from "../src/optim/adamw.ts";
import { assembleModel, createTextEncoder, modelParams } from "../src/model/mod.ts";
import { tokenizerFromVocab } from "../src/dataset/mod.ts";
import { Rng } from "../src/util/rng.ts";
import { peakRssMiB, timeIt } from "./measure.ts";
import { type Collective, SINGLE_PROCESS, worldFromEnv } from "../src/dist/mpi.ts";

/** Sizes of the benchmarked refinement step (mirrored by bench/reference/torch_bench.py's `refine_step`). */
export interface RefineBenchConfig {
  name: string;
  dim: number;
  depth: number;
  heads: number;
  img: number;
  text_width: number;
  text_layers: number;
  text_heads: number;
  vocab: number;
  batch: number;
}

/** ViT-B/16 + BERT-base with cross-attention, batch 8: the step issue 10 measures. */
export const REFINE_VITB_BERTBASE_B8: RefineBenchConfig = {
  name: "refine_step_vitb_bertbase_b8",
  dim: 768,
  depth: 12,
  heads: 12,
  img: 224,
  text_width: 768,
  text_layers: 12,
  text_heads: 12,
  vocab: 30522,
  batch: 8,
};

/** The shipped stand-in sizes at batch 32 (the CPU demo's step). */
export const REFINE_STANDIN_B32: RefineBenchConfig = {
  name: "refine_step_standin_b32",
  dim: 192,
  depth: 6,
  heads: 3,
  img: 112,
  text_width: 128,
  text_layers: 2,
  text_heads: 2,
  vocab: 700,
  batch: 32,
};

/** The default run's step: the shipped stand-ins (RETFound-like ViT 192×6 at 112 px, BERT 128×2) at batch 16. */
export const REFINE_STANDIN_B16: RefineBenchConfig = {
  name: "refine_step_standin_b16",
  dim: 192,
  depth: 6,
  heads: 3,
  img: 112,
  text_width: 128,
  text_layers: 2,
  text_heads: 2,
  vocab: 680,
  batch: 16,
};

/** How {@link refineStepWork} splits its global batch. */
export interface StepSharing {
  /** Pairs per forward/backward pass (default: the whole batch); must divide the batch. */
  micro?: number;
  /** The ranks that share the micro-batches (default: one process); their number must divide the micro-batch count. */
  collective?: Collective;
}

/**
 * Builds randomly initialised models and a fixed batch; `step()` runs one full optimisation step.
 * @param c the sizes and the global batch
 * @param sharing micro-batches and ranks (default: the whole batch in one pass, one process)
 * @returns the step and a dispose function
 * @throws {Error} when the micro-batch does not divide the batch or the ranks do not divide the micro-batches
 */
export function refineStepWork(
  c: RefineBenchConfig,
  sharing: StepSharing = {},
): { step: () => Promise<void>; dispose: () => void } {
  const world = sharing.collective ?? SINGLE_PROCESS;
  const micro = sharing.micro ?? c.batch;
  const chunks = c.batch / micro;
  if (!Number.isInteger(chunks) || chunks % world.size !== 0) {
    throw new Error(`batch ${c.batch} in micro-batches of ${micro} does not share out over ${world.size} rank(s)`);
  }
  const mine = chunks / world.size;
  const vocab = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    ...Array.from({ length: c.vocab - 5 }, (_, i) => `w${i}`),
  ];
  const tokenizer = tokenizerFromVocab(vocab);
  const vit = createVit(
    vitPreset("retfound", {
      imgSize: c.img,
      embedDim: c.dim,
      depth: c.depth,
      numHeads: c.heads,
      projDim: c.dim === c.text_width ? null : c.text_width,
    }),
    { rng: new Rng(1) },
  );
  const bert = createTextEncoder(
    bertPreset("small", {
      hiddenSize: c.text_width,
      numHiddenLayers: c.text_layers,
      numAttentionHeads: c.text_heads,
      intermediateSize: 4 * c.text_width,
      maxPositionEmbeddings: 512,
    }),
    tokenizer,
  );
  const model = assembleModel(vit, bert, tokenizer);
  const rng = new Rng(0);
  const B = micro;
  const L = 30;
  const batch = {
    images: new Float32Array(B * 3 * c.img * c.img).map(() => rng.normal()),
    inputIds: new Int32Array(B * L).map((_, i) => (i % L === 0 ? 2 : 5 + rng.int(c.vocab - 5))),
    attentionMask: new Int32Array(B * L).fill(1),
    size: B,
    length: L,
  };
  const params = modelParams(model);
  const state = createAdamWState();
  let k = 0;
  const step = async () => {
    let grads: Map<string, tf.Tensor> | undefined;
    for (let i = 0; i < mine; i++) {
      const { value, grads: g } = tf.variableGrads(
        () => retfinerLosses(model, batch, ALL_LOSSES, new Rng(k++), true).total as tf.Scalar,
        [...params.values()],
      );
      value.dispose();
      const byName = new Map<string, tf.Tensor>();
      for (const [n, p] of params) if (g[p.name]) byName.set(n, g[p.name]);
      if (!grads) grads = byName;
      else {
        for (const [n, t] of byName) {
          const acc = grads.get(n)!;
          grads.set(n, tf.add(acc, t));
          tf.dispose([acc, t]);
        }
      }
    }
    if (world.size > 1) grads = await allreduceGrads(world, params, grads!);
    if (chunks > 1) {
      for (const [n, t] of grads!) {
        grads!.set(n, tf.div(t, chunks));
        t.dispose();
      }
    }
    // The CPU path on `cpu`; on WebGPU the device path (weights and moments stay on the GPU).
    await adamwStepAsync(params, grads!, state, ADAMW_DEFAULTS);
    tf.dispose([...grads!.values()]);
  };
  const dispose = () => {
    for (const p of params.values()) p.dispose();
    disposeAdamWState(state);
  };
  return { step, dispose };
}

/** Sums every rank's gradients in one float32 buffer in parameter order (as the trainer's allreduce). */
async function allreduceGrads(
  world: Collective,
  params: Map<string, tf.Variable>,
  grads: Map<string, tf.Tensor>,
): Promise<Map<string, tf.Tensor>> {
  let total = 0;
  for (const p of params.values()) total += p.size;
  const flat = new Float32Array(total);
  let off = 0;
  for (const [n, p] of params) {
    const g = grads.get(n);
    if (g) flat.set((await g.data()) as Float32Array, off);
    off += p.size;
  }
  tf.dispose([...grads.values()]);
  world.allreduceSum(flat);
  const out = new Map<string, tf.Tensor>();
  off = 0;
  for (const [n, p] of params) {
    out.set(n, tf.tensor(flat.slice(off, off + p.size), p.shape));
    off += p.size;
  }
  return out;
}

if (import.meta.main) {
  const cfg = JSON.parse(Deno.args[0]) as RefineBenchConfig;
  const world = worldFromEnv();
  await setupBackend({ backend: Deno.args[1] as BackendName, log: null });
  const work = refineStepWork(cfg, { micro: Number(Deno.args[3] ?? cfg.batch), collective: world });
  // One warm-up step (kernels compiled, optimiser state allocated), then the median of the timed ones; every timed
  // step starts together on all ranks.
  const seconds = await timeIt(async () => {
    world.barrier();
    await work.step();
  }, Number(Deno.args[2] ?? 2));
  if (world.rank === 0) console.log(JSON.stringify({ seconds, peak_rss_mib: peakRssMiB(), ranks: world.size }));
  world.finalize();
}
