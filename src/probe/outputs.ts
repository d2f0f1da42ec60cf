/**
 * Writes a probing run's outputs under a run directory: `results.csv`
 * (per task, per seed, reference models included), `summary.json`, `report.md`, and with a baseline to
 * compare against, `gains.html` (the report and interactive charts, offline), `gains.png` and `bacc.png`.
 * @module
 */
import { join } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "../util/fs.ts";
import { markdownToHtml } from "./html.ts";
import { absoluteFigure, figurePng, figuresHtml, gainsFigure } from "./chart.ts";
import {
  compareModels,
  type Comparison,
  markdownEffect,
  markdownPerTask,
  markdownSingle,
  markdownSummary,
  type ModelResults,
  perSeedCsv,
} from "./report.ts";

/** Paths written by {@link writeProbeReport}. */
export interface ProbeReportFiles {
  /** Per-task, per-seed CSV. */
  csv: string;
  /** Summary JSON. */
  json: string;
  /** Markdown report. */
  markdown: string;
  /** Interactive chart (with a comparison). */
  html?: string;
  /** Static chart of the per-task gains (with a comparison). */
  png?: string;
  /** Static chart of the per-task balanced accuracy of every model, references included (with a comparison). */
  absolutePng?: string;
}

/** Options of {@link writeProbeReport}. */
export interface ProbeReportOptions {
  /** Title (default: derived from the model names). */
  title?: string;
  /** How the probe was run, printed under the title, e.g. "fast mode (features once, no augmentation), seeds 0, 1, 2". */
  probe?: string;
  /** Reference models probed with the same protocol and seeds (raw pixels, a random-weight ViT). */
  references?: ModelResults[];
  /** Bullet points at the end. */
  notes?: string[];
  /** Extra Markdown sections. */
  extraSections?: { title: string; markdown: string }[];
}

/**
 * Writes the report of one model, or of a baseline and its refinement.
 * @param dir the output folder
 * @param models one model's results, or a baseline and its refinement
 * @param options the report's title, probe description, reference models, notes and extra Markdown sections
 * @returns the files written (`results.csv`, `summary.json`, `report.md`; with a comparison also the HTML report and
 *   the PNG charts) and the comparison
 */
export async function writeProbeReport(
  dir: string,
  models: { baseline: ModelResults; refined?: ModelResults },
  options: ProbeReportOptions = {},
): Promise<{ files: ProbeReportFiles; comparison?: Comparison }> {
  const references = options.references ?? [];
  const all = [models.baseline, ...(models.refined ? [models.refined] : [])];
  const files: ProbeReportFiles = {
    csv: join(dir, "results.csv"),
    json: join(dir, "summary.json"),
    markdown: join(dir, "report.md"),
  };
  await writeFileAtomic(files.csv, perSeedCsv([...references, ...all]));
  const title = options.title ??
    (models.refined ? `${models.refined.name} vs ${models.baseline.name}` : `Linear probing: ${models.baseline.name}`);
  const md = [`# ${title}`, ""];
  if (options.probe) md.push(`Linear probe: ${options.probe}.`, "");
  let comparison: Comparison | undefined;
  if (models.refined) {
    comparison = compareModels(models.baseline, models.refined);
    md.push(
      "## Average over all tasks",
      "",
      markdownSummary(comparison, references),
      "",
      "## Refinement effect",
      "",
      markdownEffect(comparison),
      "",
      "## Balanced accuracy per task",
      "",
      markdownPerTask(comparison, "bacc", references),
      "",
      "![balanced accuracy per task](bacc.png)",
      "",
      "![per-task gains](gains.png)",
      "",
    );
    const gains = gainsFigure(comparison);
    const absolute = absoluteFigure(comparison, "bacc", references);
    files.html = join(dir, "gains.html");
    files.png = join(dir, "gains.png");
    files.absolutePng = join(dir, "bacc.png");
    await writeFileAtomic(files.png, await figurePng(gains));
    await writeFileAtomic(files.absolutePng, await figurePng(absolute));
  } else if (references.length) {
    md.push("## References", "", ...references.flatMap((r) => [`### ${r.name}`, "", markdownSingle(r), ""]));
  }
  for (const m of all) md.push(`## ${m.name}: all metrics per task`, "", markdownSingle(m), "");
  for (const sct of options.extraSections ?? []) md.push(`## ${sct.title}`, "", sct.markdown, "");
  if (options.notes?.length) md.push("## Notes", "", ...options.notes.map((n) => `- ${n}`), "");
  await writeFileAtomic(files.markdown, md.join("\n"));
  if (comparison) {
    // The HTML report is the Markdown report rendered (tables as tables), with the charts interactive.
    const body = md.slice(1).join("\n").replace(/^!\[[^\]]*\]\((gains|bacc)\.png\)$/gm, "");
    await writeFileAtomic(
      files.html!,
      figuresHtml(
        title,
        [gainsFigure(comparison), absoluteFigure(comparison, "bacc", references)],
        markdownToHtml(body),
      ),
    );
  }
  await writeJsonAtomic(files.json, { title, probe: options.probe, references, models: all, comparison });
  return { files, comparison };
}
