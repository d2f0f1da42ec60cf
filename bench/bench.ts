/**
 * `deno task bench`: speed of this package against PyTorch on the same
 * machine, in the same run. Ratios matter, absolute times drift.
 *
 *   deno task bench [--json] [--quick] [--only matmul,vit,io,mpi] [--backends cpu-onnx,cpu-blas,cpu]
 *   deno task bench --profile [--quick]     (per-kernel breakdown of a refinement step and an encoding batch)
 *   deno task bench --gpu [--quick]         (the GPU check: adapter, WebGPU parity tests, throughput vs the CPU)
 *
 * `speed_vs_torch` = PyTorch seconds / our seconds for the same work
 * (1.0 = parity, > 1 = faster than PyTorch; null when PyTorch is absent).
 * The `mpi` section (bench/mpi_bench.ts) is the stand-ins' refinement step on 1 process × 1 and × 2 threads and on
 * `mpiexec -n 2` ranks, beside PyTorch DDP on gloo with 1 and 2 processes.
 * The `scaling` section (bench/scaling.ts, opt-in: about 40 minutes here, `--quick` about 2) measures how cost grows
 * with threads and with work (step batch, images encoded, tasks probed), ours and PyTorch's time and peak RSS.
 */
import { UsageError } from "../src/util/errors.ts";
import { fileURLToPath } from "node:url";
import { type BackendName, BACKENDS, setupBackend } from "../src/backend/mod.ts";
import { tf } from "../src/backend/tf.ts";
import { createVit, disposeParams, vitBlock, vitFeatures, vitPreset } from "../src/encoders/mod.ts";
import { parseCli, runMain } from "../src/util/cli.ts";
import { Rng } from "../src/util/rng.ts";
import { timeIt } from "./measure.ts";
import { formatProfile, type KernelProfile, profileKernels } from "./profile.ts";
import { REFINE_STANDIN_B32, REFINE_VITB_BERTBASE_B8, type RefineBenchConfig, refineStepWork } from "./refine_step.ts";

/** One benchmark result line. */
export interface BenchResult {
  name: string;
  backend: string;
  seconds: number;
  speed_vs_torch: number | null;
  /** Work-specific numbers (GFLOP/s, memory ratios, …). */
  extra?: Record<string, number | string>;
}

interface TorchJob {
  kind: string;
  name: string;
  [k: string]: unknown;
}

/** One PyTorch result: seconds, plus whatever else the job reports (e.g. `peak_rss_mib`). */
export type TorchResult = { seconds: number } & Record<string, unknown>;

/** Runs jobs in PyTorch (Debian python3-torch) if available, in one fresh process; results by job name. */
export function runTorch(jobs: TorchJob[]): Map<string, TorchResult> | null {
  const script = fileURLToPath(new URL("./reference/torch_bench.py", import.meta.url));
  let out: Deno.CommandOutput;
  try {
    out = new Deno.Command("/usr/bin/python3", { args: [script, JSON.stringify({ jobs })], stderr: "piped" })
      .outputSync();
  } catch {
    return null;
  }
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr);
    if (/No module named 'torch'/.test(err)) return null;
    const missing = /No module named '([\w.]+)'/.exec(err)?.[1];
    if (missing) {
      const pkg = { PIL: "python3-pil", torchvision: "python3-torchvision" }[missing] ??
        `the Debian package of ${missing}`;
      throw new Error(`PyTorch reference (${script}) needs the Python module '${missing}': apt-get install ${pkg}`);
    }
    throw new Error(`PyTorch reference failed:\n${err}`);
  }
  const results = new Map<string, TorchResult>();
  for (const line of new TextDecoder().decode(out.stdout).trim().split("\n")) {
    if (!line) continue;
    const r = JSON.parse(line);
    results.set(r.name, r);
  }
  return results;
}

function vitBlocksWork(depth: number, batch: number, backward: boolean) {
  const config = vitPreset("visionfm", { depth });
  const model = createVit(config, { rng: new Rng(0) });
  const x = tf.randomNormal([batch, 197, 768], 0, 1, "float32", 1);
  const vars = [...model.params.entries()].filter(([k]) => k.startsWith("blocks.")).map(([, v]) => v);
  const run = () => {
    if (!backward) {
      tf.tidy(() => {
        let h: tf.Tensor = x;
        for (let i = 0; i < depth; i++) h = vitBlock(model, i, h);
        return h;
      }).dataSync();
      return;
    }
    const { value, grads } = tf.variableGrads(() => {
      let h: tf.Tensor = x;
      for (let i = 0; i < depth; i++) h = vitBlock(model, i, h);
      return tf.mean(tf.square(h)) as tf.Scalar;
    }, vars);
    value.dataSync();
    tf.dispose([value, ...Object.values(grads)]);
  };
  const dispose = () => {
    x.dispose();
    for (const v of model.params.values()) v.dispose();
  };
  return { run, dispose };
}

async function main() {
  const { values } = parseCli(Deno.args, {
    usage: "deno task bench",
    summary: "Benchmarks this package against PyTorch on the same machine in the same run, and prints ratios.",
    flags: {
      json: { type: "boolean", description: "Print one JSON object per result line." },
      profile: {
        type: "boolean",
        description:
          "Instead of timing, break one refinement step (ViT-B/16 + BERT-base, batch 8) and one ViT-B/16 encoding batch (8 images) down by kernel.",
      },
      quick: { type: "boolean", description: "Fewer repeats and a single ViT block (for a smoke run)." },
      gpu: {
        type: "boolean",
        description:
          "The GPU check: the WebGPU adapter and its limits, the WebGPU parity tests, then encoding and refinement-step throughput on WebGPU against the CPU backend (with --quick: stand-in sizes, for a software adapter).",
      },
      only: {
        type: "string",
        valueName: "<list>",
        description:
          "Comma-separated sections to run: matmul, vit, encode, refine, probe, data, io, mpi (the default list), and " +
          "scaling (not in the default list: about 40 minutes here, --quick about 2; the refinement step on 1 and 2 " +
          "threads and at batch 4-32, encoding 8-512 images, probing 1-7 tasks, the stand-ins' step on 1 and 2 " +
          "threads, each against PyTorch with peak RSS, each configuration in a fresh process).",
        default: "matmul,vit,encode,refine,probe,data,io,mpi",
      },
      backends: {
        type: "string",
        valueName: "<list>",
        description: "Comma-separated tfjs backends to measure.",
        default: "cpu-onnx,cpu-blas,cpu",
      },
    },
  });
  const json = !!values.json;
  const quick = !!values.quick;
  if (values.gpu) {
    // The GPU check is its own run: it measures WebGPU against cpu-onnx at fixed sizes.
    const clash = ["profile", "only", "backends"].filter((k) =>
      Deno.args.some((a) => a === `--${k}` || a.startsWith(`--${k}=`))
    );
    if (clash.length) throw new UsageError(`--gpu runs the GPU check alone; it does not take --${clash.join(", --")}`);
    const { gpuCheck } = await import("./gpu.ts");
    await gpuCheck({ quick, json });
    return;
  }
  const SECTIONS = ["matmul", "vit", "encode", "refine", "probe", "data", "io", "mpi", "scaling"];
  const sections = new Set(String(values.only).split(",").map((x) => x.trim()).filter(Boolean));
  const unknownSections = [...sections].filter((x) => !SECTIONS.includes(x));
  if (unknownSections.length) {
    throw new UsageError(`--only: unknown section(s) ${unknownSections.join(", ")} (known: ${SECTIONS.join(", ")})`);
  }
  const asked = String(values.backends).split(",").map((x) => x.trim()).filter(Boolean);
  const unknownBackends = asked.filter((b) => !(BACKENDS as readonly string[]).includes(b));
  if (unknownBackends.length) {
    throw new UsageError(
      `--backends: unknown backend(s) ${unknownBackends.join(", ")} (known: ${BACKENDS.join(", ")})`,
    );
  }
  const backends = asked as BackendName[];
  const depth = quick ? 1 : 2;
  const batch = 4;
  const jobs: TorchJob[] = [];
  if (sections.has("matmul")) jobs.push({ kind: "matmul", name: "matmul_1576x768x3072", m: 1576, k: 768, n: 3072 });
  if (sections.has("vit")) {
    jobs.push({
      kind: "vit_blocks",
      name: `vitb_${depth}blocks_b${batch}_fwd`,
      dim: 768,
      heads: 12,
      depth,
      batch,
      tokens: 197,
      backward: false,
    });
    jobs.push({
      kind: "vit_blocks",
      name: `vitb_${depth}blocks_b${batch}_fwdbwd`,
      dim: 768,
      heads: 12,
      depth,
      batch,
      tokens: 197,
      backward: true,
    });
  }
  const encodeModels = sections.has("encode")
    ? (quick ? [["vitb", "visionfm"]] : [["vitb", "visionfm"], ["vitl", "retfound"]]) as [
      string,
      "visionfm" | "retfound",
    ][]
    : [];
  for (const [tag, preset] of encodeModels) {
    const c = vitPreset(preset);
    jobs.push({
      kind: "vit_encode",
      name: `encode_${tag}16_b8`,
      dim: c.embedDim,
      heads: c.numHeads,
      depth: c.depth,
      batch: 8,
      repeats: quick ? 1 : 2,
    });
  }
  // Refinement step: ViT-B/16 + BERT-base with cross-attention, batch 8 (quick: the stand-in sizes, batch 32).
  const refineCfg = quick ? REFINE_STANDIN_B32 : REFINE_VITB_BERTBASE_B8;
  if (values.profile) return await profile(refineCfg, quick, json, backends);
  if (sections.has("scaling")) {
    // First, while this process holds no tensors: every configuration runs in fresh child processes.
    const { formatScaling, measureScaling, scalingJson } = await import("./scaling.ts");
    const backend = backends.find((b) => b !== "cpu") ?? "cpu";
    const rows: import("./scaling.ts").ScalingRow[] = [];
    const m = await measureScaling({
      backend,
      quick,
      onRow: (row) => {
        rows.push(row);
        if (json) console.log(JSON.stringify(scalingJson(rows, row, backend)));
        else {
          const side = (x: { seconds: number; peak_rss_mib: number } | null) =>
            x ? `${x.seconds.toFixed(3)} s, ${Math.round(x.peak_rss_mib)} MiB` : "n/a";
          console.error(`scaling: ${row.label}: ours ${side(row.ours)}; PyTorch ${side(row.torch)}`);
        }
      },
    });
    if (!json) console.log(formatScaling(m));
  }
  // The refinement step runs in its own PyTorch process, so that its peak RSS is the step's alone.
  const torchRefine = sections.has("refine") ? runTorch([{ kind: "refine_step", repeats: 2, ...refineCfg }]) : null;
  let decodePaths: string[] = [];
  if (sections.has("data")) {
    const dir = await Deno.makeTempDir();
    const { generateBenchmark, SYNTH_PRESETS, SYNTH_TASKS } = await import("../src/dataset/mod.ts");
    await generateBenchmark({
      root: dir,
      seed: 0,
      sizes: { ...SYNTH_PRESETS.tiny, imageSize: 256, task: { train: 64, val: 0, test: 0 } },
      tasks: SYNTH_TASKS.slice(0, 1),
    });
    const { readImageFolderDataset } = await import("../src/dataset/mod.ts");
    decodePaths = (await readImageFolderDataset(`${dir}/tasks/amd_vs_normal`).catch(() =>
      null
    ))?.items.map((i) => i.path) ?? [];
    if (decodePaths.length === 0) {
      for await (const e of Deno.readDir(`${dir}/pairs/images`)) decodePaths.push(`${dir}/pairs/images/${e.name}`);
    }
    jobs.push({ kind: "decode", name: "decode_preprocess_224", paths: decodePaths, size: 224 });
  }
  const torch = jobs.length ? runTorch(jobs) : null;
  const results: BenchResult[] = [];
  const report = (r: Omit<BenchResult, "speed_vs_torch">, torchName?: string) => {
    const ts = torchName ? (torch?.get(torchName) ?? torchRefine?.get(torchName))?.seconds : undefined;
    const full: BenchResult = { ...r, speed_vs_torch: ts ? ts / r.seconds : null };
    results.push(full);
    if (json) console.log(JSON.stringify(full));
    else {
      const ratio = full.speed_vs_torch === null ? "PyTorch n/a" : `${full.speed_vs_torch.toFixed(2)}x PyTorch`;
      const extra = Object.entries(r.extra ?? {}).map(([k, v]) => `${k}=${v}`).join(" ");
      console.log(
        `${r.name.padEnd(32)} ${r.backend.padEnd(9)} ${r.seconds.toFixed(4).padStart(9)} s  ${ratio}  ${extra}`,
      );
    }
  };
  if (!json && (jobs.length || torchRefine)) {
    console.log(
      `PyTorch reference: ${torch || torchRefine ? "found (/usr/bin/python3)" : "not available"}; OPENBLAS_CORETYPE=${
        Deno.env.get("OPENBLAS_CORETYPE") ?? "unset"
      }`,
    );
    for (const [k, v] of [...(torch ?? []), ...(torchRefine ?? [])]) {
      console.log(`  torch ${k.padEnd(28)} ${v.seconds.toFixed(4)} s`);
    }
  }
  for (const backend of backends) {
    try {
      await setupBackend({ backend, log: null });
    } catch (err) {
      if (!json) console.log(`${backend}: skipped (${(err as Error).message.split("\n")[0]})`);
      continue;
    }
    if (sections.has("matmul")) {
      const a = tf.randomNormal([1576, 768]);
      const b = tf.randomNormal([768, 3072]);
      const repeats = backend === "cpu" ? 1 : quick ? 3 : 10;
      const s = await timeIt(() => tf.tidy(() => tf.matMul(a, b)).dataSync(), repeats);
      report({
        name: "matmul_1576x768x3072",
        backend,
        seconds: s,
        extra: { gflops: +(2 * 1576 * 768 * 3072 / s / 1e9).toFixed(1) },
      }, "matmul_1576x768x3072");
      tf.dispose([a, b]);
    }
    if (sections.has("vit")) {
      for (const backward of [false, true]) {
        const name = `vitb_${depth}blocks_b${batch}_${backward ? "fwdbwd" : "fwd"}`;
        const work = vitBlocksWork(depth, batch, backward);
        const s = await timeIt(work.run, backend === "cpu" ? 1 : quick ? 1 : 3);
        work.dispose();
        report({ name, backend, seconds: s }, name);
      }
    }
  }
  if (encodeModels.length) {
    for (const backend of backends.filter((b) => b !== "cpu")) {
      try {
        await setupBackend({ backend, log: null });
      } catch {
        continue;
      }
      for (const [tag, preset] of encodeModels) {
        const model = createVit(vitPreset(preset), { init: "zeros" });
        const x = tf.randomNormal([8, 3, 224, 224]);
        const s = await timeIt(() => {
          const y = tf.tidy(() => vitFeatures(model, x, "all"));
          y.dataSync();
          y.dispose();
        }, quick ? 1 : 2);
        x.dispose();
        disposeParams(model.params);
        report(
          { name: `encode_${tag}16_b8`, backend, seconds: s, extra: { images_per_s: +(8 / s).toFixed(2) } },
          `encode_${tag}16_b8`,
        );
      }
    }
  }
  if (sections.has("refine")) {
    // Each backend's step runs in a fresh Deno process (bench/refine_step.ts) so that VmHWM is the step's peak RSS.
    const script = fileURLToPath(new URL("./refine_step.ts", import.meta.url));
    const torchRss = torchRefine?.get(refineCfg.name)?.peak_rss_mib as number | undefined;
    for (const backend of backends.filter((b) => b !== "cpu")) {
      const out = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script, JSON.stringify(refineCfg), backend, "2"],
        stderr: "piped",
      }).outputSync();
      if (!out.success) {
        if (!json) console.log(`${refineCfg.name} ${backend}: failed\n${new TextDecoder().decode(out.stderr)}`);
        continue;
      }
      const r = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").at(-1)!);
      report({
        name: refineCfg.name,
        backend,
        seconds: r.seconds,
        extra: {
          pairs_per_s: +(refineCfg.batch / r.seconds).toFixed(2),
          peak_rss_mib: Math.round(r.peak_rss_mib),
          ...(torchRss
            ? { torch_peak_rss_mib: Math.round(torchRss), rss_vs_torch: +(r.peak_rss_mib / torchRss).toFixed(2) }
            : {}),
        },
      }, refineCfg.name);
    }
  }
  if (sections.has("probe")) {
    // Fast-mode probing of the seven synthetic tasks × 5 seeds with a ViT-B-sized model at 224 px, versus the
    // authors' per-epoch protocol (features recomputed with augmentation every epoch), measured on one task and
    // one seed and scaled by its epoch count.
    const { ensureBenchmark, loadTasks } = await import("../src/experiment/mod.ts");
    const { probeTask } = await import("../src/probe/mod.ts");
    await setupBackend({ backend: backends.find((b) => b !== "cpu") ?? "cpu", log: null });
    const { root } = await ensureBenchmark({ size: quick ? "tiny" : "small" });
    const tasks = await loadTasks(root);
    const vit = createVit(vitPreset("visionfm", quick ? { imgSize: 112, depth: 2 } : {}), { rng: new Rng(3) });
    const t0 = performance.now();
    let epochs = 0;
    let imageEpochs = 0; // Σ over tasks and seeds of epochs × training images: the faithful protocol's forward passes
    for (const t of tasks) {
      const r = await probeTask(vit, t, { seeds: [0, 1, 2, 3, 4] });
      epochs += r.seeds.reduce((a, s) => a + s.epochs, 0);
      imageEpochs += r.seeds.reduce((a, s) => a + s.epochs * r.sizes.train, 0);
    }
    const fast = (performance.now() - t0) / 1000;
    report({
      name: "probe_fast_7tasks_5seeds",
      backend: "-",
      seconds: fast,
      extra: { model: quick ? "ViT-B/16 2 blocks @112" : "ViT-B/16 @224", head_epochs: epochs },
    });
    // The faithful protocol runs the backbone over every training image every epoch: time one epoch of that.
    const t1 = performance.now();
    const one = await probeTask(vit, tasks[0], { seeds: [0], mode: "faithful", hyper: { maxEpochs: 1 } });
    const perEpochPerImage = (performance.now() - t1) / 1000 / one.sizes.train;
    const faithful = perEpochPerImage * imageEpochs;
    report({
      name: "probe_faithful_estimate",
      backend: "-",
      seconds: faithful,
      extra: {
        fast_speedup: +(faithful / fast).toFixed(1),
        basis: "1 measured faithful epoch, scaled by the fast run's epoch counts",
      },
    });
  }
  if (sections.has("data") && decodePaths.length) {
    const { loadImageBatch, probingSpec } = await import("../src/dataset/mod.ts");
    const spec = probingSpec(224, { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] });
    const idx = decodePaths.map((_, i) => i);
    const s = await timeIt(() => loadImageBatch(decodePaths, idx, spec), quick ? 1 : 3);
    report({
      name: "decode_preprocess_224",
      backend: "-",
      seconds: s,
      extra: { images_per_s: +(decodePaths.length / s).toFixed(1) },
    }, "decode_preprocess_224");
  }
  if (sections.has("io")) {
    const { ioBench } = await import("./io_bench.ts");
    const r = await ioBench(quick);
    report({
      name: "pth_read_retfound_mae",
      backend: "-",
      seconds: r.seconds,
      extra: { peak_rss_vs_file: +r.peakRatio.toFixed(2), file_mib: Math.round(r.fileMiB) },
    });
  }
  if (sections.has("mpi")) {
    // The data-parallel step on 1 and 2 ranks against PyTorch DDP, each configuration in fresh processes.
    const { formatMpiScaling, mpiScaling } = await import("./mpi_bench.ts");
    const m = await mpiScaling({ backend: backends.find((b) => b !== "cpu") ?? "cpu", quick });
    if (!json) console.log(formatMpiScaling(m));
    else {
      for (const row of m.rows) {
        if (row.ours === null) continue;
        const full: BenchResult = {
          name: `mpi_${m.config.name}_${row.ranks}x${row.threads}`,
          backend: m.backend,
          seconds: row.ours,
          speed_vs_torch: row.torch === null ? null : row.torch / row.ours,
          extra: { ranks: row.ranks, threads_per_rank: row.threads, torch_seconds: row.torch ?? "n/a" },
        };
        results.push(full);
        console.log(JSON.stringify(full));
      }
    }
  }
  if (!json) {
    const ratio = (n: string) => {
      const fast = results.find((r) => r.name === n && r.backend !== "cpu" && r.backend !== "-");
      const slow = results.find((r) => r.name === n && r.backend === "cpu");
      return fast && slow
        ? `${n}: ${fast.backend} is ${(slow.seconds / fast.seconds).toFixed(1)}x faster than plain cpu`
        : "";
    };
    for (const n of new Set(results.map((r) => r.name))) {
      const line = ratio(n);
      if (line) console.log(line);
    }
  }
}

/** `--profile`: per-kernel tables of one refinement step and one encoding batch on the first fast backend. */
async function profile(cfg: RefineBenchConfig, quick: boolean, json: boolean, backends: BackendName[]) {
  const backend = backends.find((b) => b !== "cpu") ?? "cpu";
  const info = await setupBackend({ backend, log: null });
  const out: Record<string, KernelProfile> = {};
  const work = refineStepWork(cfg);
  work.step(); // warm-up
  out[cfg.name] = await profileKernels(work.step);
  work.dispose();
  const vit = createVit(vitPreset("visionfm", quick ? { imgSize: 112, depth: 2 } : {}), { rng: new Rng(2) });
  const x = tf.randomNormal([8, 3, quick ? 112 : 224, quick ? 112 : 224]);
  const encode = () => {
    const y = tf.tidy(() => vitFeatures(vit, x, "all"));
    y.dataSync();
    y.dispose();
  };
  encode();
  const encName = quick ? "encode_vitb16_2blocks_112_b8" : "encode_vitb16_b8";
  out[encName] = await profileKernels(encode);
  x.dispose();
  disposeParams(vit.params);
  if (json) console.log(JSON.stringify({ backend: info.name, profiles: out }));
  else {
    console.log(`backend ${info.name} (matmul: ${info.matmul})`);
    for (const [name, p] of Object.entries(out)) console.log(`\n${formatProfile(name, p)}`);
  }
}

if (import.meta.main) await runMain(main);
