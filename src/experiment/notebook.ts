/**
 * Helpers for Jupyter notebooks with the Deno kernel: a progress display that
 * updates in place, B-scans with their reports, and Plotly figures sent as
 * Plotly JSON together with a self-contained HTML rendering (so JupyterLab,
 * VS Code and nbconvert's HTML export all show them).
 * @module
 */
import { encodePng, type GreyImage } from "../dataset/image.ts";
import { type PlotlyFigure, plotlyJs } from "../probe/chart.ts";
import { formatDuration, PhaseClocks, type Progress, type ProgressCallback } from "../util/progress.ts";

/** A Jupyter MIME bundle: MIME type → data, e.g. `{ "text/html": "<b>hi</b>" }`. */
export type MimeBundle = Record<string, unknown>;

interface JupyterApi {
  display(obj: unknown, options?: { raw?: boolean; update?: boolean; display_id?: string }): Promise<void> | void;
}

function jupyter(): JupyterApi | undefined {
  return (Deno as unknown as { jupyter?: JupyterApi }).jupyter;
}

/**
 * Shows a MIME bundle in the notebook (no-op outside Jupyter).
 * @param bundle MIME type → content
 * @param options a display id, to update an earlier output in place
 * @returns when shown
 */
export async function showBundle(
  bundle: MimeBundle,
  options: { displayId?: string; update?: boolean } = {},
): Promise<void> {
  const j = jupyter();
  if (!j) return;
  await j.display(bundle, {
    raw: true,
    ...(options.displayId ? { display_id: options.displayId } : {}),
    ...(options.update ? { update: true } : {}),
  });
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);
}

/**
 * A progress callback that draws one bar per phase and updates it in place
 * (at most every `intervalMs`); the last state stays in the saved notebook.
 * @param intervalMs the least time between redraws
 * @returns the callback
 */
export function notebookProgress(intervalMs = 1000): ProgressCallback {
  const id = `retfiner-progress-${crypto.randomUUID().slice(0, 8)}`;
  let started = false;
  let last = 0;
  const clocks = new PhaseClocks();
  const lines = new Map<string, string>();
  return (p: Progress) => {
    const now = performance.now();
    const { elapsed: el, eta } = clocks.tick(p, now);
    const frac = p.total ? p.done / p.total : 0;
    const info = p.info
      ? " · " + Object.entries(p.info).map(([k, v]) => `${k} ${typeof v === "number" ? v.toFixed(3) : v}`).join(" · ")
      : "";
    lines.set(
      p.phase,
      `<div style="font-family:monospace;margin:2px 0"><span style="display:inline-block;width:280px">${
        escapeHtml(p.phase)
      }</span>` +
        `<span style="display:inline-block;width:200px;height:10px;background:#eee;vertical-align:middle"><span style="display:block;height:10px;width:${
          (100 * frac).toFixed(1)
        }%;background:#2a9d8f"></span></span>` +
        ` ${p.done}/${p.total} · ${formatDuration(el)} elapsed · ETA ${formatDuration(eta)}${escapeHtml(info)}</div>`,
    );
    const finished = p.done >= p.total;
    if (!finished && now - last < intervalMs && started) return;
    last = now;
    const html = [...lines.values()].slice(-6).join("");
    const text = [...lines.keys()].slice(-1)[0] + ` ${p.done}/${p.total}`;
    void showBundle({ "text/html": html, "text/plain": text }, { displayId: id, update: started });
    started = true;
  };
}

/**
 * Shows B-scans side by side with their reports underneath.
 * @param scans images and their captions
 * @returns when shown
 */
export async function showScans(scans: { image: GreyImage; caption: string }[]): Promise<void> {
  const cells = await Promise.all(scans.map(async (s) => {
    const png = await encodePng(s.image);
    const b64 = btoa(Array.from(png, (c) => String.fromCharCode(c)).join(""));
    return `<figure style="display:inline-block;width:240px;margin:6px;vertical-align:top"><img src="data:image/png;base64,${b64}" style="width:240px"/>` +
      `<figcaption style="font-size:12px">${escapeHtml(s.caption)}</figcaption></figure>`;
  }));
  await showBundle({
    "text/html": `<div>${cells.join("")}</div>`,
    "text/plain": scans.map((s) => s.caption).join("\n"),
  });
}

let plotlySent = false;

/**
 * Shows a Plotly figure: `application/vnd.plotly.v1+json` for JupyterLab and
 * VS Code, with a `text/html` rendering in the same output (plotly.min.js is
 * inlined the first time per kernel) for exported HTML.
 * @param figure the figure
 * @returns when shown
 */
export async function showFigure(figure: PlotlyFigure): Promise<void> {
  const id = `retfiner-fig-${crypto.randomUUID().slice(0, 8)}`;
  const lib = plotlySent ? "" : `<script>${plotlyJs()}</script>`;
  plotlySent = true;
  const html = `${lib}<div id="${id}"></div><script>(function(){var f=${JSON.stringify(figure)};` +
    `function draw(){ if (window.Plotly) { Plotly.newPlot("${id}", f.data, f.layout); } else { setTimeout(draw, 50); } } draw();})();</script>`;
  await showBundle({
    "application/vnd.plotly.v1+json": figure,
    "text/html": html,
    "text/plain": String((figure.layout.title as { text?: string })?.text ?? "figure"),
  });
}

/**
 * Shows Markdown text.
 * @param md the Markdown
 * @returns when shown
 */
export async function showMarkdown(md: string): Promise<void> {
  await showBundle({ "text/markdown": md, "text/plain": md });
}
