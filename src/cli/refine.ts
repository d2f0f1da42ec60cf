/**
 * `deno task refine`: RetFiner refinement. With no arguments it runs the
 * paper's experiment end to end on the embedded default (synthetic benchmark,
 * RETFound-like stand-in); with --pairs it refines on your image-report pairs.
 */
import { join } from "node:path";
import { AUTHORS_LAYOUT, type ManifestOptions } from "../dataset/mod.ts";
import {
  type ExperimentFamily,
  type ExperimentOptions,
  refineOnPairs,
  runAblation,
  runExperiment,
  skippedLine,
} from "../experiment/mod.ts";
import { checkTextFiles, resolveTextFiles, TEXT_STANDIN, type WeightLoading } from "../model/mod.ts";
import { BEST_CHECKPOINT, LAST_CHECKPOINT, type LossWeights, OBJECTIVES, type RefineOptions } from "../refine/mod.ts";
import { exists } from "../util/fs.ts";
import { pct, terminalTable } from "../probe/mod.ts";
import { type CommandSpec, numberFlag, parseCli, runMain, withConfigFile } from "../util/cli.ts";
import { UsageError } from "../util/errors.ts";
import { AUTHORS, CPU_DEMO } from "../params.ts";
import { disposeParams, loadVit } from "../encoders/mod.ts";
import { formatDuration, ProgressBar } from "../util/progress.ts";
import { BACKEND_FLAG, backendFromFlags, noticeLog, parseSeeds, timestamp } from "./common.ts";
import { applyImageFlags, IMAGE_FLAGS } from "./image_flags.ts";
import { worldFromEnv } from "../dist/mpi.ts";

const SPEC: CommandSpec = {
  usage: "deno task refine",
  summary: "Refines a retinal foundation model with clinical reports using RetFiner's four objectives (ITC, ITM with " +
    "hard negatives, image-conditioned MLM, GM) and exports the refined vision backbone. With no arguments it runs the " +
    "paper's experiment on the embedded default: it generates (or reuses) the synthetic OCT benchmark, loads the " +
    "RETFound-like stand-in, probes it on seven tasks, refines it on the synthetic image-report pairs, probes again, and " +
    "writes the comparison (Markdown, HTML and PNG charts) under runs/<timestamp>/. With --pairs it refines on your data.",
  flags: {
    model: {
      type: "string",
      valueName: "<family>",
      description: "Vision family: its token and probing recipes.",
      choices: ["retfound", "visionfm", "urfound"],
      default: "retfound",
    },
    weights: {
      type: "string",
      valueName: "<file>",
      description:
        "Vision encoder weights (RETFound/VisionFM/UrFound release, timm, or an export); default: the family's stand-in.",
    },
    "text-weights": {
      type: "string",
      valueName: "<file>",
      description: "BERT weights (pytorch_model.bin or model.safetensors); default: the text stand-in.",
    },
    "text-config": {
      type: "string",
      valueName: "<file>",
      description: "BERT config.json for --text-weights; default: the config.json in its folder (said).",
    },
    heads: {
      type: "string",
      valueName: "<n>",
      description: "Attention heads of --weights, if not width/64 (plain weights do not store it).",
    },
    "no-strict": {
      type: "boolean",
      description: "Load the matching keys of --weights and --text-weights only instead of failing on a mismatch; " +
        "prints the missing, unexpected, mis-shaped and dropped keys.",
    },
    tokenizer: {
      type: "string",
      valueName: "<path>",
      description: "tokenizer.json, vocab.txt or a folder, for --text-weights; default: the one in its folder (said).",
    },
    "text-from-scratch": {
      type: "boolean",
      description: "Train a small BERT from scratch with a vocabulary built from the reports instead of the stand-in.",
    },
    pairs: {
      type: "string",
      valueName: "<file>",
      description: "Image-report manifest (CSV or JSONL). Without it, the synthetic pairs are used.",
    },
    "image-column": {
      type: "string",
      valueName: "<name>",
      description: "Manifest column with the image path.",
      default: "image",
    },
    "text-column": {
      type: "string",
      valueName: "<name>",
      description: "Manifest column with the report.",
      default: "report",
    },
    "authors-layout": {
      type: "boolean",
      description: "Read the authors' CSV layout (scan, eye, OD_OCT/OS_OCT; images <scan>.npy).",
    },
    "val-fraction": {
      type: "string",
      valueName: "<f>",
      description: "Validation share (by patient) for pairs without a split column.",
      default: String(CPU_DEMO.refine.valFraction),
    },
    "skip-bad": {
      type: "boolean",
      description: "Skip bad rows and unusable images instead of stopping: every image's header is checked before " +
        "training; skipped rows are listed with their manifest line and reason at the start, at the end and in " +
        "<run>/skipped_rows.tsv.",
    },
    benchmark: {
      type: "string",
      valueName: "<dir>",
      description: "Probing benchmark root (tasks/<task>/{train,val,test}/<class>/); default: the synthetic one.",
    },
    "synth-size": {
      type: "string",
      valueName: "<preset>",
      description: "Synthetic benchmark size when it is generated.",
      choices: ["tiny", "small", "medium"],
      default: CPU_DEMO.synth.size,
    },
    "no-probe": { type: "boolean", description: "Refine only; skip the baseline and refined probes." },
    ablation: {
      type: "boolean",
      description: "Also refine once without each objective and tabulate the gains (five refinements).",
    },
    seeds: {
      type: "string",
      valueName: "<list>",
      description: `Probe seeds (the authors: ${AUTHORS.probe.seeds.join(",")}).`,
      default: CPU_DEMO.probe.seeds.join(","),
    },
    "probe-mode": {
      type: "string",
      valueName: "<mode>",
      description: `Probe mode (the authors: ${AUTHORS.probe.mode}).`,
      choices: ["fast", "faithful"],
      default: CPU_DEMO.probe.mode,
    },
    batch: {
      type: "string",
      valueName: "<n>",
      description: `Pairs per optimiser step (the authors: ${AUTHORS.refine.batchSize}).`,
      default: String(CPU_DEMO.refine.batchSize),
    },
    accumulate: {
      type: "string",
      valueName: "<n>",
      description: "Micro-batches per step; ITC/ITM negatives stay within each micro-batch.",
      default: String(CPU_DEMO.refine.accumulate),
    },
    "global-negatives": {
      type: "boolean",
      description: "Under mpiexec: split every micro-batch across the ranks and draw ITC/ITM negatives from the " +
        "whole batch (features gathered with gradient, as open_clip and BLIP), so N ranks equal one process at " +
        "the same --batch. Default: per-rank negatives, as the authors' DDP. No effect in one process.",
    },
    epochs: {
      type: "string",
      valueName: "<n>",
      description: `Maximum epochs (the authors: ${AUTHORS.refine.epochs} for RETFound).`,
      default: String(CPU_DEMO.refine.epochs),
    },
    patience: {
      type: "string",
      valueName: "<n>",
      description: `Early-stopping patience on the validation loss (the authors: ${AUTHORS.refine.patience}).`,
      default: String(CPU_DEMO.refine.patience),
    },
    lr: {
      type: "string",
      valueName: "<x>",
      description: `AdamW learning rate (the authors: ${AUTHORS.refine.optimizer.lr}).`,
      default: String(CPU_DEMO.refine.optimizer.lr),
    },
    "weight-decay": {
      type: "string",
      valueName: "<x>",
      description: `AdamW weight decay (the authors: ${AUTHORS.refine.optimizer.weightDecay}).`,
      default: String(CPU_DEMO.refine.optimizer.weightDecay),
    },
    "vision-lr-scale": {
      type: "string",
      valueName: "<x>",
      description: "The pretrained vision encoder's learning rate relative to --lr (new modules keep --lr; the " +
        `authors: ${AUTHORS.refine.visionLrScale}, one parameter group).`,
      default: String(CPU_DEMO.refine.visionLrScale),
    },
    "freeze-vision-steps": {
      type: "string",
      valueName: "<n>",
      description: "First N optimiser steps with the pretrained vision encoder's learning rate at 0 (its AdamW " +
        "moments advance), so the new heads and cross-attention layers warm up before they move it (LP-FT; the " +
        `authors: ${AUTHORS.refine.freezeVisionSteps}).`,
      default: String(CPU_DEMO.refine.freezeVisionSteps),
    },
    schedule: {
      type: "string",
      valueName: "<kind>",
      description: `Learning-rate schedule (the authors: ${AUTHORS.refine.schedule.kind}).`,
      choices: ["constant", "cosine"],
      default: CPU_DEMO.refine.schedule.kind,
    },
    warmup: {
      type: "string",
      valueName: "<steps>",
      description: "Warmup steps for the cosine schedule.",
      default: String(CPU_DEMO.refine.schedule.warmupSteps),
    },
    losses: {
      type: "string",
      valueName: "<list>",
      description: "Objectives to use, comma-separated.",
      default: OBJECTIVES.filter((k) => CPU_DEMO.refine.losses[k] > 0).join(","),
    },
    seed: {
      type: "string",
      valueName: "<n>",
      description: "Seed of every random draw.",
      default: String(CPU_DEMO.refine.seed),
    },
    "max-length": {
      type: "string",
      valueName: "<n>",
      description: `Report length in tokens (the authors: ${AUTHORS.refine.maxLength}).`,
      default: String(CPU_DEMO.refine.maxLength),
    },
    "checkpoint-every": {
      type: "string",
      valueName: "<n>",
      description: "Resumable checkpoint every N steps (0: epoch ends only).",
      default: String(CPU_DEMO.refine.checkpointEvery),
    },
    resume: {
      type: "boolean",
      description:
        "Continue the run in --out from its last checkpoint (log entries after it are dropped, temp files of " +
        "interrupted writes removed). Without it, an --out holding a checkpoint is refused.",
    },
    "max-steps": { type: "string", valueName: "<n>", description: "Stop after N optimiser steps." },
    out: { type: "string", valueName: "<dir>", description: "Run directory (default runs/<timestamp>)." },
    config: {
      type: "string",
      valueName: "<file>",
      description: "JSON file of flag values (flags given on the command line win).",
    },
    ...IMAGE_FLAGS,
    ...BACKEND_FLAG,
  },
  examples: [
    "deno task refine",
    "deno task refine --model visionfm",
    "deno task refine --weights RETFound_oct_weights.pth --text-weights bert/pytorch_model.bin --text-config bert/config.json --tokenizer bert/ --pairs reports.csv --batch 128 --epochs 20 --lr 1e-4",
    "deno task refine --ablation",
  ],
};

function parseLosses(list: string): LossWeights {
  const chosen = list.split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);
  for (const c of chosen) {
    if (!(OBJECTIVES as readonly string[]).includes(c)) {
      throw new UsageError(`--losses: unknown objective "${c}" (itc, itm, mlm, gm)`);
    }
  }
  if (chosen.length === 0) throw new UsageError("--losses: at least one objective is needed");
  return Object.fromEntries(OBJECTIVES.map((k) => [k, chosen.includes(k) ? 1 : 0])) as LossWeights;
}

await runMain(async () => {
  const parsed = parseCli(Deno.args, SPEC);
  const v = await withConfigFile(parsed.values, parsed.given, SPEC, parsed.values.config as string | undefined);
  const int = (name: string, min = 0) => numberFlag(v, name, { integer: true, min });
  let family = v.model as ExperimentFamily;
  const out = String(v.out ?? join("runs", timestamp()));
  const slice = applyImageFlags(v);
  const seeds = parseSeeds(String(v.seeds));
  const refineOptions: Partial<RefineOptions> = {
    batchSize: int("batch", 2),
    accumulate: int("accumulate", 1),
    epochs: int("epochs", 1),
    patience: int("patience", 1),
    optimizer: { lr: numberFlag(v, "lr", { min: 0 })!, weightDecay: numberFlag(v, "weight-decay", { min: 0 })! },
    schedule: v.schedule === "cosine" ? { kind: "cosine", warmupSteps: int("warmup") } : { kind: "constant" },
    losses: parseLosses(String(v.losses)),
    seed: int("seed"),
    maxLength: int("max-length", 2),
    checkpointEvery: int("checkpoint-every"),
    resume: !!v.resume,
    globalNegatives: !!v["global-negatives"],
    visionLrScale: numberFlag(v, "vision-lr-scale", { min: 0 })!,
    freezeVisionSteps: int("freeze-vision-steps"),
    maxSteps: v["max-steps"] !== undefined ? int("max-steps", 1) : undefined,
  };
  // A Hugging Face model folder holds its config.json and tokenizer: used (and said) when the flags are left out.
  const resolved = v["text-weights"]
    ? resolveTextFiles(
      String(v["text-weights"]),
      v["text-config"] ? String(v["text-config"]) : undefined,
      v.tokenizer ? String(v.tokenizer) : undefined,
    )
    : undefined;
  for (const line of resolved?.notices ?? []) console.error(line);
  const text = resolved
    ? { weights: resolved.weights, config: resolved.config, tokenizer: resolved.tokenizer }
    : undefined;
  if (!text && (v.tokenizer || v["text-config"])) {
    throw new UsageError(
      `${
        v.tokenizer ? "--tokenizer" : "--text-config"
      } is only used with --text-weights (the text stand-in has its own)`,
    );
  }
  if (v.heads !== undefined && !v.weights) {
    throw new UsageError("--heads is for --weights (the stand-ins store their head count)");
  }
  // A tokenizer the BERT cannot embed is an error now, not after the benchmark and the baseline probe.
  const textConfig = v["text-from-scratch"] && v.pairs ? undefined : checkTextFiles(text ?? TEXT_STANDIN);
  const loading: WeightLoading = {
    strict: !v["no-strict"],
    numHeads: numberFlag(v, "heads", { integer: true, min: 1 }),
    strictHint: "pass --no-strict",
    headsHint: "set --heads",
    // A RETFound file has no proj: the new one is made at the BERT's width (the authors' 768 is BERT-base's).
    newProjDim: textConfig?.hiddenSize,
  };
  const backend = await backendFromFlags(v);
  // --model given on the command line or in the --config file overrides what the weights say.
  const modelGiven = parsed.given.has("model") ||
    (v.config !== undefined && Object.hasOwn(JSON.parse(await Deno.readTextFile(String(v.config))), "model"));
  /**
   * The family is decided once, from the file (metadata, layout, then name) unless --model sets it, and printed with
   * how, with every other loading notice (guessed head count, the --no-strict report) printed once, here.
   * @returns The loaded vision encoder (undefined for the stand-in).
   */
  const decideFamily = () => {
    if (!v.weights) return undefined;
    // Notices are held until the family is accepted: a refused file should not first say which recipe "is used".
    const held: string[] = [];
    let decided: ReturnType<typeof loadVit>;
    try {
      decided = loadVit(String(v.weights), {
        arch: modelGiven ? family : "auto",
        log: (line: string) => held.push(line),
        archFlag: "--model",
        archChoices: "retfound|visionfm|urfound",
        strict: loading.strict,
        numHeads: loading.numHeads,
        newProjDim: loading.newProjDim,
        strictHint: loading.strictHint,
        headsHint: loading.headsHint,
      });
    } catch (err) {
      for (const line of held) noticeLog(line); // what was learnt before the failure still helps
      throw err;
    }
    if (decided.family.family === "timm") {
      disposeParams(decided.model.params);
      throw new UsageError(
        `${v.weights}: nothing in the file or its name says which foundation model this is (a ${decided.mapped.layout} ` +
          `state dict); refinement follows one of the three recipes: pass --model retfound|visionfm|urfound`,
      );
    }
    for (const line of held) noticeLog(line);
    family = decided.family.family as ExperimentFamily;
    return decided.model;
  };
  // Started by mpiexec with several ranks: data-parallel refinement (src/dist/mpi.ts); rank 0 reports.
  const world = worldFromEnv();
  if (world.size > 1 && (!v.pairs || v.ablation)) {
    throw new UsageError(
      `started with ${world.size} MPI ranks: data-parallel refinement takes --pairs (without --ablation); the ` +
        "end-to-end experiment runs in one process",
    );
  }
  if (world.size > 1 && world.rank === 0) {
    console.error(
      `data parallel: ${world.size} ranks over ${world.library}; --batch ${v.batch ?? "(preset)"} is the global batch` +
        (v["global-negatives"]
          ? "; global negatives: every micro-batch is split across the ranks, features gathered"
          : "; per-rank negatives (the authors' DDP)"),
    );
  }
  const bar = new ProgressBar({ quiet: world.rank !== 0 });
  const t0 = performance.now();
  console.error(`run directory: ${out}`);
  if (!v.resume) {
    // Fail before the benchmark and the baseline probe, not at the start of refinement.
    for (const f of [LAST_CHECKPOINT, BEST_CHECKPOINT]) {
      if (await exists(join(out, f))) {
        throw new UsageError(`--out ${out} already holds a run (${f}): pass --resume to continue it, or another --out`);
      }
    }
  }

  if (!v.pairs) {
    // The embedded default: the paper's experiment on the synthetic benchmark.
    const decided = decideFamily();
    if (decided) disposeParams(decided.params);
    const opts: ExperimentOptions = {
      family,
      runDir: out,
      weights: v.weights as string | undefined,
      text,
      loading,
      benchmark: v.benchmark as string | undefined,
      synth: { size: v["synth-size"] as "tiny" | "small" | "medium", seed: CPU_DEMO.synth.seed },
      probe: { seeds, mode: v["probe-mode"] as "fast" | "faithful" },
      refine: {
        ...refineOptions,
        onNotice: (m) => {
          bar.finish();
          console.error(m);
        },
      },
      onProgress: bar.callback,
      log: (line) => {
        bar.finish();
        console.error(line);
      },
    };
    if (v.ablation) {
      const { markdown } = await runAblation(opts);
      bar.finish();
      console.log(
        `\nAblation (each objective removed in turn; balanced accuracy averaged over tasks × seeds, %):\n\n${markdown}\n`,
      );
      console.log(`written: ${join(out, "ablation.md")}; total ${formatDuration((performance.now() - t0) / 1000)}`);
      return;
    }
    const r = await runExperiment(opts);
    bar.finish();
    console.log("\n" + terminalTable(r.comparison));
    const zs = (x: typeof r.zeroShot.after) => x.tasks.reduce((a, t) => a + t.metrics.bacc, 0) / x.tasks.length;
    console.log(
      `\nbeyond the paper: zero-shot balanced accuracy ${pct(zs(r.zeroShot.before))} → ${
        pct(zs(r.zeroShot.after))
      } %; ` +
        `image→report R@5 ${pct(r.zeroShot.before.retrieval.imageToText.r5)} → ${
          pct(r.zeroShot.after.retrieval.imageToText.r5)
        } % ` +
        `(${r.zeroShot.after.retrieval.n} held-out pairs)`,
    );
    console.log(
      `\nbackend: ${backend.name}; total time ${formatDuration(r.seconds.total)} ` +
        `(benchmark ${r.seconds.benchmark.toFixed(0)} s, baseline probe ${
          r.seconds.baseline.toFixed(0)
        } s, refinement ${r.seconds.refine.toFixed(0)} s, refined probe ${r.seconds.refined.toFixed(0)} s)`,
    );
    console.log(
      `report: ${r.files.markdown} · chart: ${r.files.html}, ${r.files.png} · refined backbone: ${r.refinement.backbone.pth}`,
    );
    return;
  }

  // Refinement on the user's pairs.
  if (v.ablation) {
    throw new UsageError(
      "--ablation runs the end-to-end experiment on the synthetic benchmark; it does not apply to --pairs",
    );
  }
  const manifest: ManifestOptions = v["authors-layout"]
    ? { ...AUTHORS_LAYOUT, skipBad: !!v["skip-bad"] }
    : { imageColumn: String(v["image-column"]), textColumn: String(v["text-column"]), skipBad: !!v["skip-bad"] };
  if (slice === "all") manifest.image = { slice };
  const notice = (m: string) => {
    if (world.rank !== 0) return;
    bar.finish();
    console.error(m);
  };
  const r = await refineOnPairs({
    pairs: String(v.pairs),
    manifest,
    valFraction: numberFlag(v, "val-fraction", { min: 0 })!,
    runDir: out,
    family,
    vision: () => {
      const vit = decideFamily();
      return vit ? { vit, family } : undefined;
    },
    weights: v.weights as string | undefined,
    loading,
    text,
    textFromScratch: !!v["text-from-scratch"],
    // Every rank probes its share (features on shards, (task, seed) jobs shared out); rank 0 writes the report.
    benchmark: v.benchmark && !v["no-probe"] ? String(v.benchmark) : undefined,
    probe: { seeds, mode: v["probe-mode"] as "fast" | "faithful" },
    refine: {
      ...refineOptions,
      collective: world,
      onNotice: notice,
      onEpoch: (e) =>
        notice(
          `epoch ${e.epoch + 1}: train ${e.trainLoss.toFixed(4)}, ${
            Number.isNaN(e.valLoss) ? "no validation" : `val ${e.valLoss.toFixed(4)}`
          } (${Object.entries(e.terms).map(([k, x]) => `${k} ${x.toFixed(3)}`).join(", ")})`,
        ),
    },
    onProgress: bar.callback,
    log: (line) => world.rank === 0 && console.error(line),
    onRefined: (result) => {
      bar.finish();
      if (world.rank !== 0) return;
      console.log(
        `stopped: ${result.stopReason} after ${result.loop.step} steps; ${
          result.loop.bestEpoch >= 0 ? `best epoch ${result.loop.bestEpoch + 1}` : "no validation yet"
        }`,
      );
      console.log(`refined backbone: ${result.backbone.pth} and ${result.backbone.safetensors}`);
    },
  });
  if (r.probe && world.rank === 0) {
    bar.finish();
    console.log("\n" + terminalTable(r.probe.comparison) + `\nreport: ${r.probe.files.markdown}`);
  }
  if (r.skipped.length && world.rank === 0) {
    for (const s of r.skipped) console.error(skippedLine(s));
    console.error(`${r.skipped.length} row(s) skipped; listed in ${join(out, "skipped_rows.tsv")}`);
  }
  world.finalize();
});
