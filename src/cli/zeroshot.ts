/** `deno task zeroshot`: zero-shot classification, image↔report retrieval and attention maps from a saved refinement run. */
import { join } from "node:path";
import { loadGreyImage, readPairManifest, readProbeDataset, refinementSpec } from "../dataset/mod.ts";
import { loadImageBatch } from "../dataset/batches.ts";
import { METRIC_NAMES, pct } from "../probe/mod.ts";
import {
  attentionOverlayPng,
  attentionPeak,
  crossAttentionMaps,
  retrieval,
  SYNTH_CLASS_PROMPTS,
  zeroShotTasks,
} from "../zeroshot/mod.ts";
import { findTaskDirs } from "../experiment/tasks.ts";
import { loadRun } from "../model/mod.ts";
import { numberFlag, parseCli, runMain } from "../util/cli.ts";
import { UsageError } from "../util/errors.ts";
import { writeFileAtomic, writeJsonAtomic } from "../util/fs.ts";
import { ProgressBar } from "../util/progress.ts";
import { imagesTensor, type VitFamily } from "../encoders/mod.ts";
import { BACKEND_FLAG, backendFromFlags, noticeLog } from "./common.ts";
import { applyImageFlags, IMAGE_FLAGS } from "./image_flags.ts";

/**
 * Reads a `--prompts` file: a JSON object from class name to a list of descriptions.
 * @param path the file
 * @returns descriptions per class name
 * @throws {UsageError} naming the file when it is unreadable, not JSON, or not of that shape
 */
async function readPrompts(path: string): Promise<Record<string, string[]>> {
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (err) {
    throw new UsageError(`--prompts ${path}: cannot read it as JSON (${(err as Error).message})`);
  }
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    throw new UsageError(`--prompts ${path}: expected an object from class name to a list of descriptions`);
  }
  for (const [k, v] of Object.entries(json)) {
    if (!Array.isArray(v) || !v.length || !v.every((d) => typeof d === "string")) {
      throw new UsageError(
        `--prompts ${path}: class "${k}" needs a non-empty list of strings, found ${JSON.stringify(v)}`,
      );
    }
  }
  return json as Record<string, string[]>;
}

await runMain(async () => {
  const { values } = parseCli(Deno.args, {
    usage: "deno task zeroshot",
    summary:
      "Uses a saved refinement run's contrastive and matching heads: zero-shot classification of probing tasks " +
      "from class descriptions (prompt ensembles), image→report and report→image retrieval (Recall@1/5/10, median rank, " +
      "optional ITM re-ranking), and cross-attention maps of a report's tokens over a B-scan.",
    flags: {
      run: {
        type: "string",
        valueName: "<dir>",
        description:
          "Refinement run directory (holds best-model_*_bscan.safetensors, text_encoder.safetensors, heads.safetensors, tokenizer.json).",
      },
      tasks: {
        type: "string",
        multiple: true,
        valueName: "<dir|csv>",
        description: "Probing datasets to classify zero-shot (test split).",
      },
      benchmark: { type: "string", valueName: "<dir>", description: "A benchmark root: every tasks/* dataset." },
      prompts: {
        type: "string",
        valueName: "<file.json>",
        description: 'Class descriptions: {"class": ["description", ...]} (default: the synthetic benchmark\'s).',
      },
      pairs: {
        type: "string",
        valueName: "<manifest>",
        description: "Image-report pairs for retrieval (the val split if it has one).",
      },
      "itm-rerank": {
        type: "string",
        valueName: "<k>",
        description: "Re-rank each image's top-k reports with the ITM head.",
        default: "0",
      },
      attention: {
        type: "string",
        valueName: "<image>",
        description: "B-scan for cross-attention maps (needs --report).",
      },
      report: { type: "string", valueName: "<text>", description: "Report text for --attention." },
      out: { type: "string", valueName: "<dir>", description: "Where to write results (default: <run>/zeroshot)." },
      arch: {
        type: "string",
        valueName: "<arch>",
        description: "Family of the run's backbone (auto: stored in the export).",
        choices: ["auto", "retfound", "visionfm", "urfound", "timm"],
        default: "auto",
      },
      heads: {
        type: "string",
        valueName: "<n>",
        description:
          "Attention heads of the run's backbone if its file does not store them (this package's exports do).",
      },
      "no-strict": {
        type: "boolean",
        description: "Load the matching keys of the run's files only instead of failing on a mismatch; prints the " +
          "missing, unexpected, mis-shaped and dropped keys.",
      },
      ...IMAGE_FLAGS,
      ...BACKEND_FLAG,
    },
    examples: [
      "deno task zeroshot --run runs/20261128-101500 --benchmark runs/cache/synth-small-v1-seed0 --pairs runs/cache/synth-small-v1-seed0/pairs/pairs.csv --itm-rerank 16",
      'deno task zeroshot --run runs/20261128-101500 --attention scan.png --report "od: moderate subretinal fluid."',
    ],
  });
  if (!values.run) throw new UsageError("--run is required (see --help)");
  const slice = applyImageFlags(values);
  if (slice === "all" && values.attention) {
    throw new UsageError("--attention maps one B-scan: choose it with --slice <k|first|middle|last>, not --slice all");
  }
  const image = slice === "all" ? { image: { slice } } : {};
  if (!values.tasks && !values.benchmark && !values.pairs && !values.attention) {
    throw new UsageError(
      "nothing to do: give --tasks or --benchmark (classification), --pairs (retrieval) or --attention",
    );
  }
  await backendFromFlags(values);
  const run = loadRun(String(values.run), {
    strict: !values["no-strict"],
    numHeads: numberFlag(values, "heads", { integer: true, min: 1 }),
    arch: values.arch as VitFamily | "auto",
    strictHint: "pass --no-strict",
    headsHint: "set --heads",
    log: noticeLog,
  });
  const out = String(values.out ?? join(String(values.run), "zeroshot"));
  const bar = new ProgressBar();
  const summary: Record<string, unknown> = {};
  const dirs = await findTaskDirs({
    tasks: values.tasks as string[] | undefined,
    benchmark: values.benchmark as string | undefined,
  });
  if (dirs.length) {
    const prompts = values.prompts ? await readPrompts(String(values.prompts)) : SYNTH_CLASS_PROMPTS;
    const rows = [
      `| task | ${METRIC_NAMES.map((m) => m.toUpperCase()).join(" | ")} |`,
      `|---|${METRIC_NAMES.map(() => "---").join("|")}|`,
    ];
    const results = await zeroShotTasks(run, dirs, prompts, {
      read: (d) => readProbeDataset(d, image),
      onProgress: bar.callback,
    });
    for (const r of results) rows.push(`| ${r.task} | ${METRIC_NAMES.map((m) => pct(r.metrics[m])).join(" | ")} |`);
    bar.finish();
    summary.zeroShot = results;
    console.log(`Zero-shot classification (test splits, %):\n\n${rows.join("\n")}\n`);
  }
  if (values.pairs) {
    const all = (await readPairManifest(String(values.pairs), image)).records;
    const pairs = all.some((p) => p.split === "val") ? all.filter((p) => p.split === "val") : all;
    const r = await retrieval(run, pairs, {
      itmRerank: numberFlag(values, "itm-rerank", { integer: true, min: 0 }),
      onProgress: bar.callback,
    });
    bar.finish();
    summary.retrieval = r;
    const f = (x: { r1: number; r5: number; r10: number; medianRank: number }) =>
      `R@1 ${pct(x.r1)}  R@5 ${pct(x.r5)}  R@10 ${pct(x.r10)}  median rank ${x.medianRank}`;
    console.log(
      `Retrieval over ${r.n} pairs (chance R@1 = ${pct(1 / r.n)}):\n  image→report  ${
        f(r.imageToText)
      }\n  report→image  ${f(r.textToImage)}` +
        (r.imageToTextItm ? `\n  image→report, ITM re-ranked  ${f(r.imageToTextItm)}` : ""),
    );
  }
  if (values.attention) {
    if (!values.report) throw new UsageError("--attention needs --report");
    const c = run.vit.config;
    const b = await loadImageBatch([String(values.attention)], [0], refinementSpec(c.imgSize, c));
    const img = await loadGreyImage(String(values.attention));
    const { tokens, maps, grid } = await crossAttentionMaps(
      run,
      imagesTensor(b.data, 1, c.imgSize),
      String(values.report),
    );
    const written: string[] = [];
    const peaks: number[] = [];
    for (let t = 1; t < tokens.length - 1; t++) {
      peaks.push(attentionPeak(maps.subarray(t * grid * grid, (t + 1) * grid * grid)));
      const p = join(out, `attention_${String(t).padStart(2, "0")}_${tokens[t].replace(/[^a-z0-9]+/gi, "_")}.png`);
      await writeFileAtomic(
        p,
        await attentionOverlayPng(img, maps.subarray(t * grid * grid, (t + 1) * grid * grid), grid),
      );
      written.push(p);
    }
    summary.attention = { tokens, files: written, peak: peaks };
    console.log(`cross-attention overlays for ${written.length} report tokens in ${out}/`);
    // Overlays are min-max stretched: say how peaked the maps really are (1 = uniform over the patches).
    console.log(
      `attention peak (max/mean; 1 = uniform, ${grid * grid} = one patch): ` +
        tokens.slice(1, -1).map((tk, i) => `${tk} ${peaks[i].toFixed(2)}`).join(", "),
    );
  }
  await writeJsonAtomic(join(out, "zeroshot.json"), summary);
});
