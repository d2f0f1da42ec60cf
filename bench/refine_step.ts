/**
 * One RetFiner optimisation step (ViT + BERT with cross-attention in every
 * layer; ITC + ITM + MLM + GM; AdamW), as `deno task bench` times, profiles and
 * measures it. Run as a script it times the step in a fresh process and
 * reports that process's peak RSS, so the memory figure is the step's alone:
 *
 *   deno run -A bench/refine_step.ts '<RefineBenchConfig as JSON>' <backend>
 *
 * prints one JSON line `{seconds, peak_rss_mib}`.
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

/** Builds randomly initialised models and a fixed batch; `step()` runs one full optimisation step. */
export function refineStepWork(c: RefineBenchConfig): { step: () => Promise<void>; dispose: () => void } {
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
  const B = c.batch;
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
    const { value, grads } = tf.variableGrads(
      () => retfinerLosses(model, batch, ALL_LOSSES, new Rng(k++), true).total as tf.Scalar,
      [...params.values()],
    );
    const byName = new Map<string, tf.Tensor>();
    for (const [n, p] of params) if (grads[p.name]) byName.set(n, grads[p.name]);
    // The CPU path on `cpu`; on WebGPU the device path (weights and moments stay on the GPU).
    await adamwStepAsync(params, byName, state, ADAMW_DEFAULTS);
    tf.dispose([value, ...Object.values(grads)]);
  };
  const dispose = () => {
    for (const p of params.values()) p.dispose();
    disposeAdamWState(state);
  };
  return { step, dispose };
}

if (import.meta.main) {
  const cfg = JSON.parse(Deno.args[0]) as RefineBenchConfig;
  await setupBackend({ backend: Deno.args[1] as BackendName, log: null });
  const work = refineStepWork(cfg);
  // One warm-up step (kernels compiled, optimiser state allocated), then the median of the timed ones.
  const seconds = await timeIt(work.step, Number(Deno.args[2] ?? 2));
  console.log(JSON.stringify({ seconds, peak_rss_mib: peakRssMiB() }));
}
