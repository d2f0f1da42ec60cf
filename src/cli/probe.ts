/**
 * `deno task probe`: linear probing of one vision encoder, or of a refined one against its baseline.
 *
 * Under `mpiexec -n N` every rank loads the same tasks and models; features are computed on shards of the images and
 * gathered, and the (task, seed) head-training jobs (in faithful mode with their per-epoch augmented features) are
 * shared out over the ranks (`probeTasks` of src/probe/protocol.ts), so the report equals the one-process report.
 * Rank 0 alone prints and writes; a failing rank ends the job. Without `mpiexec` nothing changes.
 * @module
 */
import { basename } from "node:path";
import { formatClassCounts, type ProbeDataset, readProbeDataset } from "../dataset/mod.ts";
import { findTaskDirs } from "../experiment/tasks.ts";
import { loadVit, type VitFamily, vitFamilyOf, type VitModel } from "../encoders/mod.ts";
import {
  describeProbe,
  type ModelResults,
  pixelSource,
  probeTasks,
  terminalTable,
  writeProbeReport,
} from "../probe/mod.ts";
import { compareModels, markdownSingle } from "../probe/report.ts";
import { numberFlag, parseCli, runMain } from "../util/cli.ts";
import { UsageError } from "../util/errors.ts";
import { PROBE_HEAD, PROBE_TASK_DEFAULTS } from "../params.ts";
import { ProgressBar } from "../util/progress.ts";
import { BACKEND_FLAG, backendFromFlagsOnRank, noticeLog, parseSeeds, timestamp } from "./common.ts";
import { worldFromEnv } from "../dist/mpi.ts";
import { applyImageFlags, IMAGE_FLAGS } from "./image_flags.ts";

await runMain(async () => {
  const { values } = parseCli(Deno.args, {
    usage: "deno task probe",
    summary:
      "Linear probing with the authors' protocol (method notes §2): the concat representation of each model family, " +
      "a linear head trained with AdamW, warmup + cosine, label smoothing and early stopping on validation balanced " +
      "accuracy, the best state tested once, over several seeds. With --compare, the second model is compared against " +
      "the first (the baseline) with a Wilcoxon signed-rank test over task × seed pairs and a per-task gains chart.",
    flags: {
      weights: {
        type: "string",
        valueName: "<file>",
        description: "Vision encoder weights (the baseline when --compare is given).",
      },
      compare: { type: "string", valueName: "<file>", description: "Refined weights to compare against --weights." },
      arch: {
        type: "string",
        valueName: "<arch>",
        description: "Model family (both models).",
        choices: ["auto", "retfound", "visionfm", "urfound", "timm"],
        default: "auto",
      },
      tasks: {
        type: "string",
        multiple: true,
        valueName: "<dir|csv>",
        description: "Probing datasets: train/val/test/<class>/ folders or path,label,split CSVs (repeatable).",
      },
      benchmark: {
        type: "string",
        valueName: "<dir>",
        description: "A synthetic benchmark root: probe all its tasks (tasks/*).",
      },
      mode: {
        type: "string",
        valueName: "<mode>",
        description:
          "fast: features computed once, no augmentation; faithful: the authors' per-epoch augmented features.",
        choices: ["fast", "faithful"],
        default: PROBE_TASK_DEFAULTS.mode,
      },
      seeds: {
        type: "string",
        valueName: "<list>",
        description: "Comma-separated seeds.",
        default: PROBE_TASK_DEFAULTS.seeds.join(","),
      },
      out: { type: "string", valueName: "<dir>", description: "Output directory (default runs/probe-<timestamp>)." },
      heads: { type: "string", valueName: "<n>", description: "Attention heads, if not width/64." },
      "no-strict": {
        type: "boolean",
        description: "Load matching keys only instead of failing on mismatched weights (lists what was left out).",
      },
      "max-epochs": {
        type: "string",
        valueName: "<n>",
        description: `Maximum epochs of the head (the authors: ${PROBE_HEAD.maxEpochs}).`,
        default: String(PROBE_HEAD.maxEpochs),
      },
      ...IMAGE_FLAGS,
      ...BACKEND_FLAG,
    },
    examples: [
      "deno task probe --weights RETFound_oct_weights.pth --tasks data/OCTID --tasks data/OCTDL",
      "deno task probe --weights data/models/retfound-standin.safetensors --compare runs/X/best-model_X_retfound_bscan.safetensors --benchmark runs/cache/synth-small-v1-seed0",
      "RETFINER_THREADS=1 mpiexec -n 2 deno task probe --weights RETFound_oct_weights.pth --tasks data/OCTID --out runs/octid",
    ],
  });
  if (!values.weights) throw new UsageError("--weights is required (see --help)");
  const seeds = parseSeeds(String(values.seeds));
  const dirs = await findTaskDirs({
    tasks: values.tasks as string[] | undefined,
    benchmark: values.benchmark as string | undefined,
  });
  if (dirs.length === 0) throw new UsageError("give probing datasets with --tasks (repeatable) or --benchmark");
  const slice = applyImageFlags(values);
  // Started by mpiexec with several ranks: the probe's work is shared out; rank 0 alone prints and writes.
  const world = worldFromEnv();
  const lead = world.rank === 0;
  const say = (line: string) => lead && console.error(line);
  if (world.size > 1) {
    say(
      `probing on ${world.size} ranks over ${world.library}: features on shards of the images, ` +
        `(task, seed) jobs on rank job mod ${world.size}`,
    );
  }
  await backendFromFlagsOnRank(values, world.rank);
  const heads = numberFlag(values, "heads", { integer: true, min: 1 });
  const load = (p: string): VitModel =>
    loadVit(p, {
      arch: values.arch as VitFamily | "auto",
      numHeads: heads,
      strict: !values["no-strict"],
      log: lead ? noticeLog : () => {},
      strictHint: "pass --no-strict",
      headsHint: "set --heads",
    }).model;
  // A comparison of two families is no refined model against its baseline: said before anything runs.
  const familyNotes: string[] = [];
  if (values.compare) {
    const arch = { arch: values.arch as VitFamily | "auto" };
    const a = vitFamilyOf(String(values.weights), arch);
    const b = vitFamilyOf(String(values.compare), arch);
    if (a.family !== b.family) {
      familyNotes.push(
        `--weights ${values.weights} is ${a.family} (${a.reason}) but --compare ${values.compare} is ${b.family} ` +
          `(${b.reason}): two model families, each probed with its own recipe; the paired test then compares ` +
          `the families, not a refined model with the model it was refined from`,
      );
      for (const n of familyNotes) say(`notice: ${n}`);
    }
  }
  const datasets: ProbeDataset[] = [];
  for (const d of dirs) {
    const ds = await readProbeDataset(d, slice === "all" ? { image: { slice } } : {});
    say(formatClassCounts(ds));
    datasets.push(ds);
  }
  const out = String(values.out ?? `runs/probe-${timestamp()}`);
  const bar = new ProgressBar({ quiet: !lead });
  const probeAll = async (path: string): Promise<ModelResults> => {
    const vit = load(path);
    const tasks = await probeTasks(vit, datasets, {
      seeds,
      mode: values.mode as "fast" | "faithful",
      hyper: { maxEpochs: numberFlag(values, "max-epochs", { integer: true, min: 1 }) },
      onProgress: bar.callback,
      collective: world,
    });
    bar.finish();
    return { name: basename(path).replace(/\.(pth|safetensors|ckpt|bin)$/, ""), tasks };
  };
  const baseline = await probeAll(String(values.weights));
  const refined = values.compare ? await probeAll(String(values.compare)) : undefined;
  // The raw-pixel reference: what a linear probe gets from the same inputs without any model.
  const pixels = pixelSource(load(String(values.weights)).config);
  const references = [{
    name: `raw pixels (${pixels.kind.replace("raw pixels ", "")})`,
    tasks: await probeTasks(pixels, datasets, {
      seeds,
      mode: values.mode as "fast" | "faithful",
      hyper: { maxEpochs: numberFlag(values, "max-epochs", { integer: true, min: 1 }) },
      onProgress: bar.callback,
      collective: world,
    }),
  }];
  bar.finish();
  if (!lead) {
    world.barrier(); // the other ranks end once rank 0 has written the report
    world.finalize();
    return;
  }
  try {
    await report();
  } catch (err) {
    if (world.size === 1) throw err;
    console.error(`probe: rank 0 of ${world.size} failed, ending all ranks: ${(err as Error).message}`);
    world.abort(1);
  }
  world.barrier();
  world.finalize();

  async function report(): Promise<void> {
    const { files } = await writeProbeReport(out, { baseline, refined }, {
      probe: describeProbe(values.mode as "fast" | "faithful", seeds),
      references,
      notes: familyNotes,
    });
    console.log(refined ? terminalTable(compareModels(baseline, refined)) : markdownSingle(baseline));
    console.log(
      `\nreport: ${files.markdown}${
        files.html ? `, ${files.html}, ${files.png}, ${files.absolutePng}` : ""
      }; per-seed results: ${files.csv}`,
    );
  }
});
