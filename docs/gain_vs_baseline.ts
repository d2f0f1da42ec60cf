/**
 * Draws `docs/gain-vs-baseline.png`, the README's chart of the refinement gain against the stand-in's strength
 * (README, "Stand-in foundation models"). The numbers are the runs' reports (`deno task refine --model <family>
 * --weights <stand-in>`, default settings, refinement seed 0, fast probe, seeds 0–2, the default benchmark), copied
 * here by hand. Run: `deno run -A docs/gain_vs_baseline.ts`.
 * @module
 */
import { figurePng } from "../src/probe/chart.ts";

/**
 * One stand-in's run: mean BAcc of its baseline and of raw pixels, and the mean gain with its 95 % CI over tasks
 * (`left`: label on the marker's left).
 */
const RUNS = [
  { name: "RETFound-like MAE (shipped)", base: 35.5, pixels: 49.4, gain: 6.3, lo: 2.8, hi: 10.3 },
  { name: "VisionFM-like f3", base: 46.9, pixels: 49.9, gain: 6.3, lo: 2.7, hi: 9.8 },
  { name: "RETFound-like f3, presence", base: 51.9, pixels: 49.4, gain: 2.4, lo: -0.8, hi: 5.6, left: true },
  { name: "UrFound-like f3", base: 52.2, pixels: 49.2, gain: 1.2, lo: -1.5, hi: 4.5 },
  { name: "RETFound-like f3", base: 56.0, pixels: 49.4, gain: -0.6, lo: -3.0, hi: 1.6 },
  { name: "RETFound-like f6, presence", base: 58.0, pixels: 49.4, gain: -1.7, lo: -5.0, hi: 1.4 },
  { name: "RETFound-like f6", base: 60.1, pixels: 49.4, gain: -3.2, lo: -5.2, hi: -1.2, left: true },
];

const figure = {
  data: [{
    type: "scatter",
    mode: "markers+text",
    x: RUNS.map((r) => r.base - r.pixels),
    y: RUNS.map((r) => r.gain),
    text: RUNS.map((r) => r.name),
    textposition: RUNS.map((r) => ("left" in r ? "middle left" : "middle right")),
    textfont: { size: 11 },
    error_y: {
      type: "data",
      symmetric: false,
      array: RUNS.map((r) => r.hi - r.gain),
      arrayminus: RUNS.map((r) => r.gain - r.lo),
    },
    marker: { size: 9, color: "#1f77b4" },
  }],
  layout: {
    width: 820,
    height: 460,
    title: {
      text:
        "Refinement gain against the stand-in’s strength (default refinement, seed 0; fast probe; 95 % CI over 7 tasks)",
      font: { size: 14 },
    },
    xaxis: { title: { text: "stand-in baseline − raw pixels (mean BAcc, points)" }, zeroline: true, range: [-17, 13] },
    yaxis: { title: { text: "mean gain after refinement (BAcc points)" }, zeroline: true },
    showlegend: false,
    margin: { t: 60, l: 70, r: 30, b: 60 },
  },
};
Deno.writeFileSync(new URL("./gain-vs-baseline.png", import.meta.url), await figurePng(figure));
