/**
 * Generates the synthetic OCT benchmark on disk, deterministically from a
 * seed: an image-report pair corpus (split by patient) for refinement, and
 * seven probing tasks in the authors' `train/val/test/<class>/` layout.
 * The pair corpus and the tasks draw from disjoint random streams, so they
 * never share images.
 * @module
 */
import { join } from "node:path";
import { Rng } from "../../util/rng.ts";
import { exists, writeFileAtomic, writeJsonAtomic } from "../../util/fs.ts";
import type { ProgressCallback } from "../../util/progress.ts";
import { encodePng } from "../image.ts";
import { DIAGNOSES, type Diagnosis, samplePathology } from "./diseases.ts";
import { renderBscan } from "./render.ts";
import { writeReport } from "./reports.ts";
import { SYNTH_TASKS, type TaskSpec } from "./tasks.ts";

/** Bumped whenever the generator's output changes, so stale caches are not reused. */
export const SYNTH_VERSION = 1;

/** Sizes of the benchmark. */
export interface SynthSizes {
  /** Scans per split of the pair corpus. */
  pairs: { train: number; val: number };
  /** Scans per split of each probing task (spread evenly over its classes). */
  task: { train: number; val: number; test: number };
  /** Rendered B-scan size in pixels (square). */
  imageSize: number;
}

/** Named sizes: `tiny` for tests, `small` for the default CPU demo, `medium` for longer runs. */
export const SYNTH_PRESETS: Record<"tiny" | "small" | "medium", SynthSizes> = {
  tiny: { pairs: { train: 24, val: 8 }, task: { train: 12, val: 6, test: 6 }, imageSize: 64 },
  small: { pairs: { train: 1600, val: 320 }, task: { train: 140, val: 56, test: 112 }, imageSize: 256 },
  medium: { pairs: { train: 6000, val: 1000 }, task: { train: 420, val: 140, test: 280 }, imageSize: 256 },
};

/** Options of {@link generateBenchmark}. */
export interface SynthOptions {
  /** Output directory. */
  root: string;
  /** Seed of everything. */
  seed?: number;
  /** Sizes. */
  sizes?: SynthSizes;
  /** Tasks to generate (default all seven). */
  tasks?: readonly TaskSpec[];
  /** Progress updates. */
  onProgress?: ProgressCallback;
  /** Regenerate even if a matching benchmark exists. */
  force?: boolean;
}

/** What was generated (also written to `benchmark.json`). */
export interface BenchmarkInfo {
  /** Generator version. */
  version: number;
  /** Seed. */
  seed: number;
  /** Sizes. */
  sizes: SynthSizes;
  /** The pair manifest (CSV: image, report, patient, eye, split, diagnosis). */
  pairsManifest: string;
  /** Task folders, relative to the root. */
  tasks: { id: string; title: string; mirrors: string; dir: string; classes: string[] }[];
}

function csvField(s: string): string {
  return /[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/** Distributes `n` items over `k` classes as evenly as possible. */
function perClass(n: number, k: number): number[] {
  return Array.from({ length: k }, (_, i) => Math.floor(n / k) + (i < n % k ? 1 : 0));
}

/** Mix of diagnoses in the pair corpus (a clinic's case load). */
const PAIR_MIX: [Diagnosis, number][] = DIAGNOSES.map((
  d,
) => [d, d === "normal" ? 4 : d === "amd_dry" || d === "glaucoma" || d === "dme" ? 2 : 1]);

/**
 * Generates (or reuses) the benchmark under `options.root`.
 *
 * @param options where, seed, sizes and tasks
 * @returns the benchmark's description (also written as `benchmark.json`)
 * @example
 * ```ts ignore
 * import { generateBenchmark, SYNTH_PRESETS } from "./generate.ts";
 * const info = await generateBenchmark({ root: "runs/synth", seed: 0, sizes: SYNTH_PRESETS.tiny });
 * console.log(info.tasks.map((t) => t.id));
 * ```
 */
export async function generateBenchmark(options: SynthOptions): Promise<BenchmarkInfo> {
  const seed = options.seed ?? 0;
  const sizes = options.sizes ?? SYNTH_PRESETS.small;
  const tasks = options.tasks ?? SYNTH_TASKS;
  const root = options.root;
  const infoPath = join(root, "benchmark.json");
  const info: BenchmarkInfo = {
    version: SYNTH_VERSION,
    seed,
    sizes,
    pairsManifest: "pairs/pairs.csv",
    tasks: tasks.map((t) => ({
      id: t.id,
      title: t.title,
      mirrors: t.mirrors,
      dir: `tasks/${t.id}`,
      classes: t.classes.map((c) => c.name).sort(),
    })),
  };
  if (!options.force && (await exists(infoPath))) {
    const old = JSON.parse(await Deno.readTextFile(infoPath));
    if (JSON.stringify(old) === JSON.stringify(info)) return info;
  }
  const S = sizes.imageSize;
  const totalTask = sizes.task.train + sizes.task.val + sizes.task.test;
  const total = sizes.pairs.train + sizes.pairs.val + tasks.length * totalTask;
  let done = 0;
  const tick = (phase: string) => options.onProgress?.({ phase, done: ++done, total });
  const pending: Promise<void>[] = [];
  const writePng = async (path: string, img: ReturnType<typeof renderBscan>) => {
    await writeFileAtomic(path, await encodePng(img));
  };
  const flush = async (limit: number) => {
    if (pending.length >= limit) await Promise.all(pending.splice(0));
  };

  // Pair corpus: patients with both eyes, split by patient.
  const rows = ["image,report,patient,eye,split,diagnosis"];
  const nPairs = sizes.pairs.train + sizes.pairs.val;
  const mixTotal = PAIR_MIX.reduce((s, [, w]) => s + w, 0);
  for (let i = 0; i < nPairs; i++) {
    const patient = Math.floor(i / 2);
    const eye = i % 2 === 0 ? "OD" : "OS";
    const split = patient * 2 < sizes.pairs.train ? "train" : "val";
    const rng = new Rng(seed, `pairs/${i}`);
    let r = rng.uniform() * mixTotal;
    let diagnosis: Diagnosis = "normal";
    for (const [d, w] of PAIR_MIX) {
      r -= w;
      if (r < 0) {
        diagnosis = d;
        break;
      }
    }
    const pathology = samplePathology(diagnosis, rng);
    const image = `images/${String(i).padStart(6, "0")}.png`;
    const report = writeReport(pathology, diagnosis, eye, rng);
    pending.push(writePng(join(root, "pairs", image), renderBscan({ eye, pathology, seed: i }, rng, S, S)));
    rows.push([image, csvField(report), `P${String(patient).padStart(5, "0")}`, eye, split, diagnosis].join(","));
    tick("synth pairs");
    await flush(16);
  }
  await flush(0);
  await writeFileAtomic(join(root, "pairs", "pairs.csv"), rows.join("\n") + "\n");

  // Probing tasks.
  for (const task of tasks) {
    const classes = [...task.classes].sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const split of ["train", "val", "test"] as const) {
      const counts = perClass(sizes.task[split], classes.length);
      for (let c = 0; c < classes.length; c++) {
        for (let j = 0; j < counts[c]; j++) {
          const rng = new Rng(seed, `task/${task.id}/${split}/${classes[c].name}/${j}`);
          const { pathology } = classes[c].draw(rng);
          const eye = rng.uniform() < 0.5 ? "OD" : "OS";
          const path = join(
            root,
            "tasks",
            task.id,
            split,
            classes[c].name,
            `${split}_${classes[c].name}_${String(j).padStart(5, "0")}.png`,
          );
          pending.push(writePng(path, renderBscan({ eye, pathology, seed: j }, rng, S, S)));
          tick(`synth ${task.id}`);
          await flush(16);
        }
      }
    }
    await flush(0);
    await writeJsonAtomic(join(root, "tasks", task.id, "task.json"), {
      id: task.id,
      title: task.title,
      mirrors: task.mirrors,
      classes: classes.map((c) => c.name),
    });
  }
  await writeJsonAtomic(infoPath, info);
  return info;
}
