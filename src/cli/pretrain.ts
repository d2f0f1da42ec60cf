/**
 * `deno task pretrain`: remakes the shipped stand-in foundation models under
 * data/models/ — three vision stand-ins (MAE on unlabelled synthetic B-scans)
 * and the text stand-in (MLM on synthetic reports); `--objective findings`
 * makes the weakly supervised stand-ins of the README's experiments.
 * Deterministic; not part of the default run.
 */
import { join } from "node:path";
import { bertConfigToJson, bertPreset, bertStateDictForExport } from "../encoders/mod.ts";
import { writeSafetensors } from "../io/mod.ts";
import { pretrainStandin, STANDIN_SPECS, type StandinFamily, type StandinSpec } from "../pretrain/standins.ts";
import { type Finding, FINDINGS, type FindingTargets } from "../pretrain/findings.ts";
import { REPORTED_SEVERITY } from "../dataset/synth/reports.ts";
import { UsageError } from "../util/errors.ts";
import { STANDIN_DIR } from "../model/paths.ts";
import { pretrainingReports, pretrainTextEncoder } from "../pretrain/text.ts";
import { numberFlag, parseCli, runMain } from "../util/cli.ts";
import { floatToHalf, type TensorData } from "../io/mod.ts";
import { writeFileAtomic, writeJsonAtomic } from "../util/fs.ts";
import { ProgressBar } from "../util/progress.ts";
import { BACKEND_FLAG, backendFromFlags } from "./common.ts";

/** The text stand-in's architecture (its width is the vision stand-ins' token width). */
export const TEXT_STANDIN_CONFIG = bertPreset("small", {
  hiddenSize: 128,
  numHiddenLayers: 2,
  numAttentionHeads: 2,
  intermediateSize: 512,
  maxPositionEmbeddings: 32,
});

await runMain(async () => {
  const { values, given } = parseCli(Deno.args, {
    usage: "deno task pretrain",
    summary:
      "Pretrains the stand-in foundation models shipped in data/models/: the RETFound-, VisionFM- and UrFound-like " +
      "vision transformers with image-only self-supervision on unlabelled synthetic B-scans (MAE for the RETFound- and UrFound-like ones, a contrastive objective for the VisionFM-like one), like the real models, and the text " +
      "stand-in BERT with masked language modelling on synthetic reports (text only, like bert-base-uncased). Every " +
      "draw is seeded: the same command remakes the same weights. --objective findings trains the vision stand-ins " +
      "weakly supervised on the severities of a few findings instead (not image-only; stronger than raw pixels under " +
      "a linear probe: README, Stand-in foundation models).",
    flags: {
      only: {
        type: "string",
        valueName: "<list>",
        description: "Comma-separated subset of retfound, visionfm, urfound, text.",
        default: "retfound,visionfm,urfound,text",
      },
      out: { type: "string", valueName: "<dir>", description: "Output directory.", default: STANDIN_DIR },
      images: {
        type: "string",
        valueName: "<n>",
        description: "Override the number of pretraining scans (for a quick run).",
      },
      epochs: { type: "string", valueName: "<n>", description: "Override the epochs (for a quick run)." },
      objective: {
        type: "string",
        valueName: "<kind>",
        description: "Override the vision stand-ins' objective (findings: weakly supervised on --findings; README, " +
          "Stand-in foundation models).",
        choices: ["mae", "contrastive", "findings"],
      },
      findings: {
        type: "string",
        valueName: "<list>",
        description: `Findings taught by --objective findings, comma-separated, of: ${FINDINGS.join(", ")}.`,
        default: "drusen,irf,rnflThinning",
      },
      targets: {
        type: "string",
        valueName: "<kind>",
        description: "What --objective findings teaches of each finding: its severity (a soft target), or only its " +
          `presence as a report states it (severity above ${REPORTED_SEVERITY}), leaving the severity words to the reports.`,
        choices: ["severity", "presence"],
        default: "severity",
      },
      augment: {
        type: "string",
        valueName: "<p>",
        description: "Probability in [0, 1] of training on a scanner-nuisance view instead of the scan " +
          "(--objective findings only).",
        default: "0.5",
      },
      batch: { type: "string", valueName: "<n>", description: "Override the vision stand-ins' batch size." },
      lr: { type: "string", valueName: "<x>", description: "Override the vision stand-ins' peak learning rate." },
      reports: { type: "string", valueName: "<n>", description: "Reports for the text stand-in.", default: "20000" },
      ...BACKEND_FLAG,
    },
    examples: [
      "deno task pretrain",
      "deno task pretrain --only text",
      "deno task pretrain --only retfound --objective findings --batch 32 --epochs 10 --lr 5e-4 --out runs/standins",
    ],
  });
  // Every flag is checked before anything runs; a flag that would have no effect is refused, not ignored.
  const only = new Set(String(values.only).split(",").map((f) => f.trim()));
  const known = [...Object.keys(STANDIN_SPECS), "text"];
  for (const f of only) {
    if (!known.includes(f)) throw new UsageError(`--only: "${f}" is not one of ${known.join(", ")}`);
  }
  const vision = (Object.keys(STANDIN_SPECS) as StandinFamily[]).filter((f) => only.has(f));
  const out = String(values.out);
  const images = numberFlag(values, "images", { integer: true, min: 64 });
  const epochs = numberFlag(values, "epochs", { integer: true, min: 1 });
  const batchSize = numberFlag(values, "batch", { integer: true, min: 2 });
  const lr = numberFlag(values, "lr", { above: 0 });
  const objective = values.objective as StandinSpec["objective"] | undefined;
  const findings = String(values.findings).split(",").map((f) => f.trim()) as Finding[];
  for (const f of findings) {
    if (!FINDINGS.includes(f)) throw new UsageError(`--findings: "${f}" is not one of ${FINDINGS.join(", ")}`);
  }
  if (new Set(findings).size !== findings.length) {
    throw new UsageError(`--findings: "${values.findings}" names a finding twice`);
  }
  const augment = numberFlag(values, "augment", { min: 0, max: 1 })!;
  const objectiveOf = (f: StandinFamily) => objective ?? STANDIN_SPECS[f].objective;
  if (vision.length === 0) {
    for (const f of ["objective", "findings", "augment", "targets", "batch", "lr"]) {
      if (given.has(f)) {
        throw new UsageError(`--${f} applies to the vision stand-ins; --only ${values.only} trains none`);
      }
    }
  }
  if (!vision.some((f) => objectiveOf(f) === "findings")) {
    for (const f of ["findings", "augment", "targets"]) {
      if (given.has(f)) throw new UsageError(`--${f} applies to --objective findings only`);
    }
  }
  if (objective && !given.has("out")) {
    throw new UsageError(
      `--objective ${objective}: give --out <dir>; without it the shipped stand-ins in ${out} (made with their own ` +
        "objectives, README: Stand-in foundation models) would be overwritten",
    );
  }
  for (const f of vision) {
    const b = batchSize ?? STANDIN_SPECS[f].batchSize;
    const n = images ?? STANDIN_SPECS[f].images;
    if (b > n) throw new UsageError(`--batch ${b} is larger than the ${n} pretraining scans (--images)`);
  }
  await backendFromFlags(values);
  const bar = new ProgressBar({ intervalMs: Deno.stderr.isTerminal() ? 200 : 30000 });
  for (const family of vision) {
    const r = await pretrainStandin(family, {
      out: join(out, `${family}-standin.safetensors`),
      spec: {
        ...(images ? { images } : {}),
        ...(epochs ? { epochs } : {}),
        ...(batchSize ? { batchSize } : {}),
        ...(lr !== undefined ? { lr } : {}),
        ...(objective ? { objective } : {}),
        ...(objectiveOf(family) === "findings" ? { findings, augment, targets: values.targets as FindingTargets } : {}),
      },
      onProgress: bar.callback,
    });
    bar.finish();
    console.log(
      `${family}: ${r.path} (${objectiveOf(family)} loss per epoch ${r.losses.map((l) => l.toFixed(3)).join(" ")}; ${
        r.seconds.toFixed(0)
      } s)`,
    );
  }
  if (only.has("text")) {
    const t0 = performance.now();
    const reports = pretrainingReports(numberFlag(values, "reports", { integer: true, min: 128 })!, 7);
    const r = await pretrainTextEncoder(reports, TEXT_STANDIN_CONFIG, {
      seed: 7,
      epochs: epochs ?? 4,
      onProgress: bar.callback,
    });
    bar.finish();
    const dir = join(out, "bert-standin");
    // float16 keeps the shipped file small; it loads as float32.
    const sd = new Map<string, TensorData>();
    for (const [k, t] of await bertStateDictForExport(r.bert)) {
      sd.set(k, { dtype: "F16", shape: t.shape, data: Uint16Array.from(t.data as Float32Array, floatToHalf) });
    }
    await writeSafetensors(join(dir, "model.safetensors"), sd, {
      format: "pt",
      "retfiner.provenance": JSON.stringify({
        made_by: "deno task pretrain --only text",
        objective: "MLM 15%",
        reports: reports.length,
        seed: 7,
        final_loss: r.losses.at(-1),
      }),
    });
    await writeJsonAtomic(join(dir, "config.json"), bertConfigToJson(r.bert.config));
    await writeFileAtomic(join(dir, "tokenizer.json"), JSON.stringify(r.tokenizer.tokenizerJson));
    console.log(
      `text: ${dir} (MLM loss per epoch ${r.losses.map((l) => l.toFixed(3)).join(" ")}; ${
        ((performance.now() - t0) / 1000).toFixed(0)
      } s)`,
    );
  }
});
