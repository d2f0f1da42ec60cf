/**
 * Writes notebooks/{retfound,urfound,visionfm}.ipynb from one template, so the
 * three walkthroughs stay identical apart from the model. Run:
 *   deno run -A notebooks/_make_notebooks.ts
 */
type Cell = { cell_type: "markdown" | "code"; source: string; tags?: string[] };

const FAMILIES = {
  retfound: {
    title: "RETFound",
    paper: "RetFiner-R",
    gain: "+5.8",
    arch: "ViT-L/16 (MAE), with a new 1024→768 projection for refinement",
  },
  urfound: {
    title: "UrFound",
    paper: "RetFiner-U",
    gain: "+3.9",
    arch: "ViT-B/16, tokens taken before the final norm",
  },
  visionfm: {
    title: "VisionFM",
    paper: "RetFiner-V",
    gain: "+2.1",
    arch: "ViT-B/16 (DINO/iBOT-style), tokens after the final norm",
  },
} as const;

function notebook(family: keyof typeof FAMILIES): Record<string, unknown> {
  const f = FAMILIES[family];
  const cells: Cell[] = [
    {
      cell_type: "markdown",
      source: `# Refining ${f.title} with clinical text (RetFiner)

**RetFiner** (Fecso et al., MICCAI 2025) takes a retinal OCT foundation model that was pretrained on images alone and
refines it with paired B-scans and clinical reports. A BERT with cross-attention in every layer reads the reports; four
objectives tie the two together: image-text contrastive learning (ITC), image-text matching with hard negatives (ITM),
masked language modelling conditioned on the image (MLM) and a generative, causally masked variant (GM). Only the refined
vision encoder is kept.

What the refinement buys is measured by **linear probing**: the encoder is frozen, a linear head is trained on its
features for each downstream task, and balanced accuracy is compared before and after. In the paper, ${f.title}
(${f.arch}) gained ${f.gain} points of balanced accuracy on average over seven OCT tasks (${f.paper}). This notebook
walks through the same experiment with this package; by default on the synthetic OCT benchmark and the shipped
${f.title}-like stand-in, so that it runs anywhere in a few minutes.`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source: `import * as rf from "../mod.ts";

// Quick settings keep the run to a few minutes on a laptop CPU; set RETFINER_NOTEBOOK_QUICK=0 for the full experiment.
const QUICK = (Deno.env.get("RETFINER_NOTEBOOK_QUICK") ?? "1") !== "0";
// Outputs go to the repository's runs/ folder whether Jupyter started in notebooks/ or at the root.
const ROOT = Deno.cwd().endsWith("/notebooks") ? ".." : ".";
const backend = await rf.setupBackend({ log: null });
await rf.showMarkdown(\`**Compute backend:** \\\`\${backend.name}\\\` — matrix products by \${backend.matmul}\${backend.skipped.length ? \` (not available: \${backend.skipped.map((s) => s.split(":")[0]).join(", ")})\` : ""}\`);`,
    },
    {
      cell_type: "markdown",
      source: `## The model

Set \`WEIGHTS\` (or the environment variable \`RETFINER_WEIGHTS\`) to a real ${f.title} checkpoint to refine it; the
release layout is recognised. Left empty, the ${f.title}-like stand-in is used: a small ViT pretrained with an
image-only objective on unlabelled synthetic B-scans.`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source: `// ▶ Path to real ${f.title} weights, or "" for the stand-in.
const WEIGHTS: string = Deno.env.get("RETFINER_WEIGHTS") ?? "";

const vit = rf.loadVision("${family}", WEIGHTS || undefined);
const c = vit.config;
await rf.showMarkdown(\`Loaded **\${WEIGHTS || "the ${f.title}-like stand-in"}**: ViT width \${c.embedDim}, depth \${c.depth}, \${c.numHeads} heads, patch \${c.patchSize}, input \${c.imgSize} px, family \\\`\${c.family}\\\`, \${rf.countParams(vit.params).toLocaleString()} parameters.\`);`,
    },
    {
      cell_type: "markdown",
      source: `## Data: B-scans with reports, and seven probing tasks

The synthetic benchmark is generated once (deterministically) and cached under \`runs/cache/\`. Each B-scan of the
pair corpus comes with a report that describes its findings, with severities, negations and laterality.`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source:
        `const bench = await rf.ensureBenchmark({ size: "small", seed: 0, root: \`\${ROOT}/\${rf.benchmarkDir("small", 0)}\`, onProgress: rf.notebookProgress() });
const pairs = (await rf.readPairManifest(\`\${bench.root}/pairs/pairs.csv\`)).records;
const examples = pairs.filter((p) => p.split === "train").slice(0, 4);
await rf.showScans(await Promise.all(examples.map(async (p) => ({ image: await rf.loadGreyImage(p.image), caption: p.report }))));`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source: `const TASKS = QUICK ? ["amd_vs_normal", "glaucoma_vs_normal", "normal_drusen_cnv"] : undefined;
const SEEDS = QUICK ? [0, 1] : [0, 1, 2];
const tasks = await rf.loadTasks(bench.root, TASKS);
await rf.showMarkdown(tasks.map((t) => "\`\`\`\\n" + rf.formatClassCounts(t) + "\\n\`\`\`").join("\\n"));`,
    },
    {
      cell_type: "markdown",
      source: `## Baseline: linear probing of the image-only model

The authors' protocol: the \`concat\` representation (mean of patch tokens and CLS, per ${f.title}'s recipe), a linear
head with AdamW, warmup and cosine, label smoothing, early stopping on validation balanced accuracy, the best state
tested once. Fast mode caches the features.`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source:
        `const baseline = await rf.probeModel(vit, rf.baselineName("${family}", !WEIGHTS), tasks, { seeds: SEEDS }, rf.notebookProgress());
await rf.showMarkdown(rf.markdownSingle(baseline));`,
    },
    {
      cell_type: "markdown",
      source: `## Refinement with the four objectives

The text side is the shipped text stand-in (a small BERT pretrained on report text only). The progress display below
updates in place; the loss curves follow.`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source: `const model = rf.buildModel(vit);
// Zero-shot classification and image↔report retrieval before refinement (beyond the paper; compared at the end).
const zsBefore = await rf.zeroShotSummary(model, tasks, pairs, QUICK ? 100 : 200);
const runDir = \`\${ROOT}/runs/notebook-${family}-\${Date.now()}\`;
const trainPairs = QUICK ? [...pairs.filter((p) => p.split === "train").slice(0, 640), ...pairs.filter((p) => p.split === "val").slice(0, 96)] : pairs;
const result = await rf.refine({ ...rf.DEMO_REFINE, model, pairs: trainPairs, runDir, epochs: QUICK ? 2 : rf.DEMO_REFINE.epochs, onProgress: rf.notebookProgress() });
await rf.showMarkdown(\`Stopped by **\${result.stopReason}** after \${result.loop.step} steps; best epoch \${result.loop.bestEpoch + 1}.\`);`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source:
        `const steps = (await Deno.readTextFile(\`\${runDir}/log.jsonl\`)).trim().split("\\n").map((l) => JSON.parse(l)).filter((e) => e.kind === "step");
await rf.showFigure({
  data: ["itc", "itm", "mlm", "gm"].map((k) => ({ type: "scatter", mode: "lines", name: k.toUpperCase(), x: steps.map((s) => s.step), y: steps.map((s) => s[k]) })),
  layout: { title: { text: "Refinement losses per step" }, xaxis: { title: { text: "step" } }, yaxis: { title: { text: "loss" } }, width: 800, height: 380 },
});`,
    },
    {
      cell_type: "markdown",
      source: `## After refinement: probe again and compare

With the quick settings (two epochs on 640 pairs: 80 optimiser steps) refinement has barely started: on this benchmark
ITC stays at chance for the first 250–350 steps, while the model finds image features of the pathologies that
generalise across pairs (README, *What the default run shows*). Expect changes near zero here. The full settings
(\`RETFINER_NOTEBOOK_QUICK=0\`, 700 steps) give the README's table.`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source:
        `const refined = await rf.probeModel(model.vit, rf.REFINED_NAMES["${family}"], tasks, { seeds: SEEDS }, rf.notebookProgress());
const comparison = rf.compareModels(baseline, refined);
await rf.showMarkdown(rf.markdownSummary(comparison) + "\\n\\n" + rf.markdownPerTask(comparison));`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source: `await rf.showFigure(rf.gainsFigure(comparison));`,
    },
    {
      cell_type: "markdown",
      source: `## Beyond the paper: zero-shot classification and retrieval

The refined model also has a text side. With it, each task can be classified without training, by comparing a scan's
image feature with descriptions of the classes (ITC features), and reports can be retrieved for scans. Chance is
1/classes for the accuracy and 5/n for R@5.`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source: `const zsAfter = await rf.zeroShotSummary(model, tasks, pairs, QUICK ? 100 : 200);
await rf.showMarkdown(rf.zeroShotMarkdown(zsBefore, zsAfter));`,
    },
    {
      cell_type: "markdown",
      source: `## Export

The refined backbone was written with timm names and no prefix, as the authors' extraction script does: a PyTorch
\`.pth\` (loads with \`torch.load(path, weights_only=True)\`) and safetensors. The text encoder, heads and tokenizer are
saved beside it.`,
    },
    {
      cell_type: "code",
      tags: ["expect-output"],
      source: `const { files } = await rf.writeProbeReport(runDir, { baseline, refined });
await rf.showMarkdown([\`- backbone: \\\`\${result.backbone.pth}\\\`\`, \`- safetensors: \\\`\${result.backbone.safetensors}\\\`\`, \`- report: \\\`\${files.markdown}\\\`\`, \`- chart: \\\`\${files.html}\\\`\`].join("\\n"));`,
    },
  ];
  return {
    cells: cells.map((c) => ({
      cell_type: c.cell_type,
      metadata: c.tags ? { tags: c.tags } : {},
      source: c.source.split("\n").map((l, i, a) => (i < a.length - 1 ? l + "\n" : l)),
      ...(c.cell_type === "code" ? { execution_count: null, outputs: [] } : {}),
    })),
    metadata: {
      kernelspec: { display_name: "Deno", language: "typescript", name: "deno" },
      language_info: {
        file_extension: ".ts",
        mimetype: "text/x.typescript",
        name: "typescript",
        nbconvert_exporter: "script",
        pygments_lexer: "typescript",
        version: "5",
      },
    },
    nbformat: 4,
    nbformat_minor: 5,
  };
}

const dir = new URL(".", import.meta.url).pathname;
for (const family of Object.keys(FAMILIES) as (keyof typeof FAMILIES)[]) {
  Deno.writeTextFileSync(`${dir}${family}.ipynb`, JSON.stringify(notebook(family), null, 1) + "\n");
}
console.log("notebooks written");
