/**
 * Charts with plotly.js: the per-task gains figure as Plotly JSON, a
 * self-contained HTML page (plotly.min.js inlined, so it works offline), and
 * a static PNG rendered without a browser (jsdom + Plotly's SVG export + sharp).
 * @module
 */
import { createRequire } from "node:module";
import { JSDOM } from "jsdom";
import sharp from "sharp";
import type { Metrics } from "./metrics.ts";
import type { Comparison, ModelResults } from "./report.ts";
import { mean, sd } from "./stats.ts";

/** A Plotly figure: traces and layout, as `application/vnd.plotly.v1+json`. */
export interface PlotlyFigure {
  /** Traces. */
  data: Record<string, unknown>[];
  /** Layout. */
  layout: Record<string, unknown>;
}

/**
 * Bar chart of the per-task change in `metric` (percentage points, ± sd over seeds of the paired differences), green
 * up, red down; the title gives the mean gain with its 95 % bootstrap interval and Wilcoxon p over tasks.
 * @param c the comparison
 * @param metric the metric shown
 * @param title the figure's title (default: derived from the metric)
 * @returns a Plotly figure
 */
export function gainsFigure(c: Comparison, metric: keyof Metrics = "bacc", title?: string): PlotlyFigure {
  const tasks = c.tasks.map((t) => t.task);
  const gains = c.tasks.map((t) => 100 * t.delta[metric]);
  const o = c.overall[metric];
  const ot = c.overTasks[metric];
  const pp = (x: number) => `${x >= 0 ? "+" : "−"}${Math.abs(100 * x).toFixed(1)}`;
  const ci = ot.ci ? ` [95 % CI ${pp(ot.ci.low)}, ${pp(ot.ci.high)}]` : "";
  const p = ot.test ? ` · Wilcoxon over ${ot.test.n} tasks p = ${ot.test.pValue.toPrecision(2)}` : "";
  return {
    data: [
      {
        type: "bar",
        x: tasks,
        y: gains,
        marker: { color: gains.map((g) => (g >= 0 ? "#2a9d8f" : "#e76f51")) },
        error_y: {
          type: "data",
          array: c.tasks.map((t) => 100 * t.deltaSd[metric]),
          visible: true,
          color: "#555",
        },
        text: gains.map((g) => `${g >= 0 ? "+" : ""}${g.toFixed(1)}`),
        textposition: "outside",
        hovertemplate: "%{x}: %{y:+.2f} pp<extra></extra>",
        name: `Δ ${metric}`,
      },
    ],
    layout: {
      title: {
        text: title ??
          `${c.refinedName} vs ${c.baselineName}: change in ${metric.toUpperCase()} per task<br>` +
            `<sup>mean ${pp(o.delta)} pp${ci}${p}</sup>`,
        font: { size: 15 },
      },
      yaxis: {
        title: { text: `Δ ${metric.toUpperCase()} (percentage points)` },
        zeroline: true,
        zerolinecolor: "#333",
        zerolinewidth: 1,
      },
      xaxis: { tickangle: -20 },
      margin: { t: 70, b: 110, l: 70, r: 20 },
      plot_bgcolor: "white",
      paper_bgcolor: "white",
      showlegend: false,
      width: 900,
      height: 480,
    },
  };
}

/**
 * Grouped bars of baseline and refined `metric` per task, with seed sd error bars, beside reference models (the
 * raw-pixel probe, a random-weight ViT) drawn lighter, so a reader sees what the foundation model adds over pixels.
 * @param c the comparison
 * @param metric the metric shown
 * @param references reference models' results (their tasks matched by name; missing tasks are gaps)
 * @returns a Plotly figure
 */
export function absoluteFigure(
  c: Comparison,
  metric: keyof Metrics = "bacc",
  references: ModelResults[] = [],
): PlotlyFigure {
  const tasks = c.tasks.map((t) => t.task);
  const refColors = ["#e9c46a", "#cdb4db", "#a8dadc"];
  const refBars = references.map((r, i) => {
    const byTask = new Map(r.tasks.map((t) => [t.task, t.seeds.map((s) => s.metrics[metric])]));
    const pick = (task: string) => byTask.get(task) ?? [];
    return {
      type: "bar",
      name: r.name,
      x: tasks,
      y: tasks.map((t) => (pick(t).length ? 100 * mean(pick(t)) : null)),
      error_y: { type: "data", array: tasks.map((t) => 100 * sd(pick(t))), visible: true },
      marker: { color: refColors[i % refColors.length] },
    };
  });
  const bar = (
    name: string,
    pick: (t: Comparison["tasks"][number]) => { mean: number; sd: number },
    color: string,
  ) => ({
    type: "bar",
    name,
    x: tasks,
    y: c.tasks.map((t) => 100 * pick(t).mean),
    error_y: { type: "data", array: c.tasks.map((t) => 100 * pick(t).sd), visible: true },
    marker: { color },
  });
  const data = [
    ...refBars,
    bar(c.baselineName, (t) => t.baseline[metric], "#8d99ae"),
    bar(c.refinedName, (t) => t.refined[metric], "#2b2d42"),
  ];
  return {
    data,
    layout: {
      barmode: "group",
      // The key is in the title: the static PNG is laid out without text measurement (jsdom), which clips a legend.
      title: {
        text: `${metric.toUpperCase()} per task (mean ± sd over seeds)<br><sup>${
          data.map((d) => `<span style="color:${d.marker.color}">■</span> ${d.name}`).join("   ")
        }</sup>`,
        font: { size: 15 },
      },
      showlegend: false,
      yaxis: { title: { text: `${metric.toUpperCase()} (%)` } },
      xaxis: { tickangle: -20 },
      margin: { t: 80, b: 110, l: 70, r: 20 },
      plot_bgcolor: "white",
      paper_bgcolor: "white",
      width: 900,
      height: 520,
    },
  };
}

let plotlySource: string | undefined;

/**
 * The plotly.min.js source (from the npm package).
 * @returns the script's text (read once)
 */
export function plotlyJs(): string {
  if (!plotlySource) plotlySource = Deno.readTextFileSync(createRequire(import.meta.url).resolve("plotly.js-dist-min"));
  return plotlySource;
}

/**
 * A self-contained HTML page with the figures (and optional HTML above them).
 * @param title the page title
 * @param figures the figures, one div each
 * @param preamble HTML placed above the figures
 * @returns the page
 */
export function figuresHtml(title: string, figures: PlotlyFigure[], preamble = ""): string {
  const divs = figures.map((_, i) => `<div id="fig${i}"></div>`).join("\n");
  const calls = figures.map((f, i) =>
    `Plotly.newPlot("fig${i}", ${JSON.stringify(f.data)}, ${JSON.stringify(f.layout)}, {responsive: true});`
  ).join("\n");
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${title}</title>
<style>body{font-family:system-ui,sans-serif;margin:24px;color:#222} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} th:first-child,td:first-child{text-align:left}</style>
<script>${plotlyJs()}</script></head>
<body>
<h1>${title}</h1>
${preamble}
${divs}
<script>${calls}</script>
</body></html>
`;
}

/**
 * An HTML fragment for a figure (for notebooks): a div and its newPlot call; Plotly must already be loaded.
 * @param figure the figure
 * @param id the div's id (default: random)
 * @returns the HTML fragment
 */
export function figureDiv(figure: PlotlyFigure, id = `retfiner-${crypto.randomUUID().slice(0, 8)}`): string {
  return `<div id="${id}"></div><script>Plotly.newPlot("${id}", ${JSON.stringify(figure.data)}, ${
    JSON.stringify(figure.layout)
  });</script>`;
}

/**
 * Renders a figure to PNG without a browser: Plotly in jsdom → SVG → sharp.
 * @param figure the figure
 * @returns PNG bytes
 */
export async function figurePng(figure: PlotlyFigure): Promise<Uint8Array> {
  const dom = new JSDOM(`<!DOCTYPE html><html><body><div id="c"></div></body></html>`, {
    pretendToBeVisual: true,
    runScripts: "outside-only",
  });
  const w = dom.window as unknown as Record<string, any>;
  w.HTMLCanvasElement.prototype.getContext = () => null;
  w.URL.createObjectURL = () => "";
  w.eval(plotlyJs());
  const width = (figure.layout.width as number) ?? 900;
  const height = (figure.layout.height as number) ?? 480;
  const div = w.document.getElementById("c");
  await w.Plotly.newPlot(div, figure.data, figure.layout, { staticPlot: true });
  const url: string = await w.Plotly.toImage(div, { format: "svg", width, height });
  const svg = decodeURIComponent(url.replace(/^data:image\/svg\+xml,/, ""));
  dom.window.close();
  const png = await sharp(new TextEncoder().encode(svg), { density: 96 }).png().toBuffer();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}
