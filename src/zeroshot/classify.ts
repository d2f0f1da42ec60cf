/** Zero-shot classification from class descriptions: prompt ensembles as open_clip, scored with the contrastive heads. */
import type { ProbeDataset } from "../dataset/folders.ts";
import { ITC_TEMPERATURE } from "../losses/objectives.ts";
import { classificationMetrics, type Metrics } from "../probe/metrics.ts";
import type { RetfinerModel } from "../model/model.ts";
import { ProbeError, UsageError } from "../util/errors.ts";
import type { ProgressCallback } from "../util/progress.ts";
import { embedImages, embedTexts } from "./embed.ts";

/** Prompt templates (open_clip-style ensembles, in report language); `{}` is a class description. */
export const PROMPT_TEMPLATES: readonly string[] = [
  "od: {}.",
  "os: {}.",
  "right eye: {}.",
  "left eye: {}.",
  "{}.",
  "impression: {}.",
];

/** Class descriptions for the synthetic benchmark's classes, in the words of its reports. */
export const SYNTH_CLASS_PROMPTS: Record<string, string[]> = {
  AMD: ["consistent with dry amd", "drusen beneath the rpe", "age related macular degeneration"],
  Control: ["normal macula", "no drusen", "unremarkable scan"],
  NORMAL: ["normal macula", "unremarkable scan", "no pathology"],
  NO: ["normal macula", "unremarkable scan", "no pathology"],
  glaucoma: ["consistent with glaucoma", "rnfl thinning", "thinning of the nerve fiber layer"],
  non_glaucoma: ["rnfl within normal limits", "normal nerve fiber layer", "normal macula"],
  DME: ["consistent with diabetic macular edema", "intraretinal fluid", "cystoid macular edema"],
  ERM: ["epiretinal membrane", "erm with wrinkling", "epiretinal fibrosis"],
  RAO: ["consistent with artery occlusion", "inner retinal hyperreflectivity", "ischemic inner retina"],
  RVO: ["consistent with vein occlusion", "rvo with edema", "intraretinal cysts"],
  VID: ["vitreomacular interface disease", "vitreomacular traction", "vitreous traction on the fovea"],
  CSR: ["central serous chorioretinopathy", "subretinal fluid", "serous retinal detachment"],
  DR: ["diabetic retinopathy", "hard exudates", "hyperreflective foci"],
  MH: ["macular hole", "full thickness macular hole", "foveal defect with hole"],
  CNV: ["consistent with wet amd", "pigment epithelial detachment", "choroidal neovascular membrane"],
  DRUSEN: ["drusen beneath the rpe", "soft drusen", "consistent with dry amd"],
  advanced: ["marked thinning of the nerve fiber layer", "severe rnfl thinning", "extensive ganglion cell loss"],
  early: ["mild rnfl thinning", "subtle thinning of the nerve fiber layer", "minimal ganglion cell loss"],
};

/**
 * Class embeddings: the mean of every template × description embedding, renormalised (open_clip).
 * @param model the RetFiner model
 * @param classes the class names
 * @param prompts descriptions per class name
 * @param templates sentence templates with `{}` for a description
 * @returns row-major `[classes, E]` unit vectors
 * @throws {ProbeError} when a class has no description
 */
export async function classEmbeddings(
  model: RetfinerModel,
  classes: string[],
  prompts: Record<string, string[]>,
  templates: readonly string[] = PROMPT_TEMPLATES,
): Promise<Float32Array> {
  const E = model.heads.get("contra_head_t.weight")!.shape[0];
  const out = new Float32Array(classes.length * E);
  for (const [k, c] of classes.entries()) {
    const descs = prompts[c];
    if (!descs?.length) {
      throw new ProbeError(`no prompt for class "${c}" (give descriptions for: ${classes.join(", ")})`);
    }
    const texts = descs.flatMap((d) => templates.map((t) => t.replace("{}", d)));
    const e = await embedTexts(model, texts);
    const m = new Float64Array(E);
    for (let i = 0; i < texts.length; i++) for (let d = 0; d < E; d++) m[d] += e[i * E + d];
    const norm = Math.sqrt(m.reduce((s, v) => s + v * v, 0)) || 1;
    for (let d = 0; d < E; d++) out[k * E + d] = m[d] / norm;
  }
  return out;
}

function softmaxRow(x: number[]): number[] {
  const max = Math.max(...x);
  const e = x.map((v) => Math.exp(v - max));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Zero-shot result of one task. */
export interface ZeroShotResult {
  /** Task name. */
  task: string;
  /** Metrics on the test split, as for probing. */
  metrics: Metrics;
}

/**
 * Zero-shot classification of a dataset's test split from class descriptions.
 * @param model the RetFiner model
 * @param dataset the task (only its test split is used)
 * @param prompts descriptions per class name
 * @param options progress
 * @returns the task's name and the five metrics of softmax(image · class / τ)
 * @throws {ProbeError} when a class has no description
 */
export async function zeroShotTask(
  model: RetfinerModel,
  dataset: ProbeDataset,
  prompts: Record<string, string[]> = SYNTH_CLASS_PROMPTS,
  options: { onProgress?: ProgressCallback } = {},
): Promise<ZeroShotResult> {
  const test = dataset.items.filter((i) => i.split === "test");
  const E = model.heads.get("contra_head_t.weight")!.shape[0];
  const cls = await classEmbeddings(model, dataset.classes, prompts);
  const img = await embedImages(model, test.map((i) => i.path), { recipe: "probe", onProgress: options.onProgress });
  const probs = test.map((_, n) => {
    const logits = dataset.classes.map((_, k) => {
      let s = 0;
      for (let d = 0; d < E; d++) s += img[n * E + d] * cls[k * E + d];
      return s / ITC_TEMPERATURE;
    });
    return softmaxRow(logits);
  });
  return { task: dataset.name, metrics: classificationMetrics(test.map((i) => i.label), probs) };
}

/**
 * Zero-shot classification of several tasks in turn (each test split): the loop of `deno task zeroshot` and the
 * experiment's zero-shot summary. A path is read (with `read`) just before its task is classified.
 *
 * @param model The refined model (its contrastive heads).
 * @param tasks Datasets, or paths of probing datasets, classified in this order.
 * @param prompts Class descriptions per class name.
 * @param options `read`: how a path becomes a dataset; `onProgress`: progress updates.
 * @returns One result per task, in order.
 * @throws {ProbeError} When a class has no description.
 * @throws {UsageError} When a task is given as a path but no `read` is.
 *
 * @example
 * ```ts
 * import { zeroShotTasks } from "./classify.ts";
 * // const results = await zeroShotTasks(run, ["data/OCTID"], SYNTH_CLASS_PROMPTS, { read: readProbeDataset });
 * ```
 */
export async function zeroShotTasks(
  model: RetfinerModel,
  tasks: (ProbeDataset | string)[],
  prompts: Record<string, string[]> = SYNTH_CLASS_PROMPTS,
  options: { read?: (path: string) => Promise<ProbeDataset>; onProgress?: ProgressCallback } = {},
): Promise<ZeroShotResult[]> {
  const results: ZeroShotResult[] = [];
  for (const t of tasks) {
    let ds: ProbeDataset;
    if (typeof t === "string") {
      if (!options.read) throw new UsageError(`zeroShotTasks: ${t} is a path; pass options.read to read it`);
      ds = await options.read(t);
    } else ds = t;
    results.push(await zeroShotTask(model, ds, prompts, { onProgress: options.onProgress }));
  }
  return results;
}
