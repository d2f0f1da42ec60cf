/**
 * Writes a probing run's outputs under a run directory: `results.csv`
 * (per task, per seed), `summary.json`, `report.md`, and with a baseline to
 * compare against, `gains.html` (interactive, offline) and `gains.png`.
 * @module
 */
import { join } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "../util/fs.ts";
import { absoluteFigure, figurePng, figuresHtml, gainsFigure } from "./chart.ts";
import {
  compareModels,
  type Comparison,
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
  /** Static chart (with a comparison). */
  png?: string;
}

/**
 * Writes the report of one model, or of a baseline and its refinement.
 * @param dir the output folder
 * @param models one model's results, or a baseline and its refinement
 * @param options the report's title, notes and extra Markdown sections
 * @returns the files written (`results.csv`, `summary.json`, `report.md`; with a comparison also the HTML and PNG
 *   charts) and the comparison
 */
export async function writeProbeReport(
  dir: string,
  models: { baseline: ModelResults; refined?: ModelResults },
  options: { title?: string; notes?: string[]; extraSections?: { title: string; markdown: string }[] } = {},
): Promise<{ files: ProbeReportFiles; comparison?: Comparison }> {
  const all = [models.baseline, ...(models.refined ? [models.refined] : [])];
  const files: ProbeReportFiles = {
    csv: join(dir, "results.csv"),
    json: join(dir, "summary.json"),
    markdown: join(dir, "report.md"),
  };
  await writeFileAtomic(files.csv, perSeedCsv(all));
  const title = options.title ??
    (models.refined ? `${models.refined.name} vs ${models.baseline.name}` : `Linear probing: ${models.baseline.name}`);
  const md = [`# ${title}`, ""];
  let comparison: Comparison | undefined;
  if (models.refined) {
    comparison = compareModels(models.baseline, models.refined);
    md.push(
      "## Average over all tasks",
      "",
      markdownSummary(comparison),
      "",
      "## Balanced accuracy per task",
      "",
      markdownPerTask(comparison),
      "",
    );
    const gains = gainsFigure(comparison);
    files.html = join(dir, "gains.html");
    files.png = join(dir, "gains.png");
    await writeFileAtomic(
      files.html,
      figuresHtml(title, [gains, absoluteFigure(comparison)], `<pre>${markdownPerTask(comparison)}</pre>`),
    );
    await writeFileAtomic(files.png, await figurePng(gains));
    md.push("![per-task gains](gains.png)", "");
  }
  for (const m of all) md.push(`## ${m.name}: all metrics per task`, "", markdownSingle(m), "");
  for (const sct of options.extraSections ?? []) md.push(`## ${sct.title}`, "", sct.markdown, "");
  if (options.notes?.length) md.push("## Notes", "", ...options.notes.map((n) => `- ${n}`), "");
  await writeFileAtomic(files.markdown, md.join("\n"));
  await writeJsonAtomic(files.json, { title, models: all, comparison });
  return { files, comparison };
}
