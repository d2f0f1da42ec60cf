/**
 * `deno task bench --only scaling`: how cost grows with threads and with work, ours beside PyTorch in the same run
 * (issue 22, item 3). Every configuration runs in a fresh process on each side, one after the other, so that each
 * peak RSS is that configuration's alone:
 * - threads: the refinement step (ViT-B/16 + BERT-base with cross-attention, batch 8, all four objectives + AdamW)
 *   on 1 and 2 threads (and on every core when there are more);
 * - batch: that step at batch 4, 8, 16 and 32, on every core;
 * - encode: 8, 64 and 512 images through ViT-B/16 at 224 px, in forward passes of 16 (the probing default);
 * - probe: fast-mode probing of 1, 3 and 7 tasks of the synthetic benchmark (size `small`) with the shipped
 *   RETFound-like stand-in (ViT 192×6 at 112 px), seeds 0–2; PyTorch repeats the same work (decode, features once,
 *   one linear head per seed for as many epochs as our early stopping trained);
 * - standin: the default run's step (the stand-ins at batch 16) on 1 and 2 threads.
 *
 * Threads: ours through `RETFINER_THREADS` (ONNX Runtime's intra-op pool, src/backend/setup.ts) and
 * `OPENBLAS_NUM_THREADS` (the OpenBLAS products; OpenBLAS reads it when it loads), PyTorch through
 * `torch.set_num_threads` and the same environment. Big configurations time one step after one warm-up step.
 *
 * A child whose resident memory passes what the machine has available (MemAvailable at its start less 1 GiB) is
 * killed and its cells left empty with the reason, and a batch whose peak RSS, extrapolated from the two smaller
 * batches, would not fit is not started: the machine is shared, and the OOM killer would pick someone else.
 * `--quick` keeps the shape at small sizes (about two minutes). Groups alone:
 *
 *   deno run -A bench/scaling.ts [--quick] [--json] [cpu-onnx|cpu-blas] [threads batch encode probe standin]
 * @module
 */
import { fileURLToPath } from "node:url";
import { REFINE_STANDIN_B16, REFINE_VITB_BERTBASE_B8, type RefineBenchConfig } from "./refine_step.ts";
import type { EncodeWork, ProbeOutcome, ProbeWork } from "./scaling_work.ts";
import { THREAD_ENV } from "./measure.ts";

/** Seconds and peak RSS of one side of one configuration. */
export interface SideResult {
  seconds: number;
  peak_rss_mib: number;
}

/** The groups of the table, in order. */
export type ScalingGroup = "threads" | "batch" | "encode" | "probe" | "standin";

/** One configuration, measured on both sides. */
export interface ScalingRow {
  group: ScalingGroup;
  /** e.g. "refine ViT-B+BERT-base b8, 1 thread". */
  label: string;
  /** Threads of each side. */
  threads: number;
  /** Units of work (pairs, images, tasks). */
  units: number;
  /** What a unit is. */
  unit: string;
  ours: SideResult | null;
  torch: SideResult | null;
  /**
   * Thread groups above 1 thread: PyTorch again with OpenMP at `threads` and OpenBLAS at 1. With both pools at
   * `threads` (what `THREAD_ENV` gives every side) they oversubscribe the cores, which costs PyTorch much on small
   * kernels, so its faster setting is the fair comparison there.
   */
  torchOneBlas?: SideResult | null;
  /** Why a side is missing. */
  notes: string[];
}

/** The whole measurement. */
export interface ScalingReport {
  backend: string;
  quick: boolean;
  rows: ScalingRow[];
  /** Load average at the start and the end, cores, what was shortened. */
  notes: string[];
}

/** MemAvailable of this machine, MiB. */
function availableMiB(): number {
  const m = /MemAvailable:\s+(\d+)/.exec(Deno.readTextFileSync("/proc/meminfo"));
  return m ? Number(m[1]) / 1024 : Infinity;
}

function rssMiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/**
 * Runs a child, killing it when its RSS passes `capMiB` or it runs past `timeoutS`; returns its last JSON line.
 * @returns the parsed line, or the reason there is none
 */
async function runChild(
  cmd: string,
  args: string[],
  env: Record<string, string>,
  capMiB: number,
  timeoutS: number,
): Promise<{ value: Record<string, unknown> } | { error: string }> {
  const child = new Deno.Command(cmd, { args, env, stdout: "piped", stderr: "piped" }).spawn();
  let why: string | null = null;
  let seen = 0;
  const t0 = performance.now();
  const timer = setInterval(() => {
    const rss = rssMiB(child.pid);
    seen = Math.max(seen, rss);
    if (why) return;
    if (rss > capMiB) {
      why = `killed at ${gib(rss)} RSS (cap ${gib(capMiB)}: the memory available at its start less 1 GiB)`;
    } else if (performance.now() - t0 > timeoutS * 1000) why = `killed after ${timeoutS} s`;
    if (why) {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
    }
  }, 200);
  const out = await child.output();
  clearInterval(timer);
  if (why) return { error: why };
  const stdout = new TextDecoder().decode(out.stdout).trim();
  if (!out.success || !stdout) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" | ");
    return { error: `failed (exit ${out.code}${seen ? `, RSS seen ${gib(seen)}` : ""}): ${err.slice(-300)}` };
  }
  return { value: JSON.parse(stdout.split("\n").at(-1)!) };
}

function gib(mib: number): string {
  return mib >= 1024 ? `${(mib / 1024).toFixed(1)} GiB` : `${Math.round(mib)} MiB`;
}

const BENCH_DIR = fileURLToPath(new URL(".", import.meta.url));

/** Our side of an encode or probe row: `scaling_work.ts` in a child process, under {@link runChild}'s guards. */
function runOurWork(
  work: EncodeWork | ProbeWork,
  backend: string,
  env: Record<string, string>,
  capMiB: number,
  timeoutS: number,
): ReturnType<typeof runChild> {
  const args = ["run", "-A", `${BENCH_DIR}scaling_work.ts`, JSON.stringify(work), backend];
  return runChild(Deno.execPath(), args, env, capMiB, timeoutS);
}
const TORCH = `${BENCH_DIR}reference/torch_bench.py`;

/** Whether /usr/bin/python3 imports torch. */
async function hasTorch(): Promise<boolean> {
  try {
    return (await new Deno.Command("/usr/bin/python3", { args: ["-c", "import torch"], stdout: "null", stderr: "null" })
      .output()).success;
  } catch {
    return false;
  }
}

/** A smaller step for `--quick`: the stand-ins' sizes with 2 ViT blocks and 1 BERT layer. */
export const REFINE_QUICK: RefineBenchConfig = {
  ...REFINE_STANDIN_B16,
  name: "refine_step_quick",
  depth: 2,
  text_layers: 1,
  batch: 8,
};

/** Options of {@link measureScaling}. */
export interface ScalingOptions {
  /** Our backend (e.g. cpu-onnx). */
  backend: string;
  /** Small sizes, about two minutes. */
  quick?: boolean;
  /** Groups to run (default all). */
  groups?: ScalingGroup[];
  /** Called with each row as it is measured. */
  onRow?: (row: ScalingRow) => void;
}

/**
 * Measures every configuration, ours then PyTorch's, each in fresh processes.
 * @param options backend, size, groups, a per-row callback
 * @returns the rows and notes
 */
export async function measureScaling(options: ScalingOptions): Promise<ScalingReport> {
  const quick = !!options.quick;
  const groups = new Set<ScalingGroup>(options.groups ?? ["threads", "batch", "encode", "probe", "standin"]);
  const cores = navigator.hardwareConcurrency;
  const threadCounts = [...new Set([1, 2, cores])].filter((n) => n <= Math.max(2, cores));
  const torchOk = await hasTorch();
  const notes = [`load average ${Deno.loadavg().map((x) => x.toFixed(2)).join(" ")} at the start, ${cores} cores`];
  if (Deno.loadavg()[0] > cores - 0.5) {
    notes.push(
      "the machine was busy at the start: ratios are unreliable, PyTorch's multi-threaded rows most (its OpenMP threads wait on each other when a core is taken)",
    );
  }
  if (!torchOk) notes.push("no PyTorch at /usr/bin/python3: its columns are not measured");
  const timeoutS = quick ? 300 : 1800;
  const rows: ScalingRow[] = [];
  const memo = new Map<string, { ours: SideResult | null; torch: SideResult | null; notes: string[] }>();

  const side = async (
    run: (cap: number) => Promise<{ value: Record<string, unknown> } | { error: string }>,
    projected: number | null,
    who: string,
    rowNotes: string[],
  ): Promise<SideResult | null> => {
    const cap = availableMiB() - 1024;
    if (projected !== null && projected > cap) {
      rowNotes.push(
        `${who}: not run, peak RSS projected from the smaller batches ${gib(projected)} > ${gib(cap)} free`,
      );
      return null;
    }
    const r = await run(cap);
    if ("error" in r) {
      rowNotes.push(`${who}: ${r.error}`);
      return null;
    }
    return { seconds: Number(r.value.seconds), peak_rss_mib: Number(r.value.peak_rss_mib) };
  };

  const refineRow = async (
    group: ScalingGroup,
    label: string,
    cfg: RefineBenchConfig,
    threads: number,
    repeats: number,
  ) => {
    const key = `refine ${JSON.stringify(cfg)} ${threads} ${repeats}`;
    let m = memo.get(key);
    if (!m) {
      const rowNotes: string[] = [];
      // Extrapolate the peak RSS of a batch from the two smaller ones already measured at these threads.
      const project = (pick: (r: ScalingRow) => SideResult | null) => {
        const prev = rows.filter((r) => r.group === "batch" && r.threads === threads && pick(r) && r.units < cfg.batch)
          .sort((a, b) => a.units - b.units).slice(-2);
        if (prev.length < 2) return null;
        const [a, b] = prev;
        const slope = (pick(b)!.peak_rss_mib - pick(a)!.peak_rss_mib) / (b.units - a.units);
        return pick(b)!.peak_rss_mib + slope * (cfg.batch - b.units);
      };
      const env = THREAD_ENV(threads);
      const ours = await side(
        (cap) =>
          runChild(
            Deno.execPath(),
            [
              "run",
              "-A",
              `${BENCH_DIR}refine_step.ts`,
              JSON.stringify(cfg),
              options.backend,
              String(repeats),
            ],
            env,
            cap,
            timeoutS,
          ),
        group === "batch" ? project((r) => r.ours) : null,
        "ours",
        rowNotes,
      );
      /** PyTorch's step under `torchEnv`, in a fresh process. */
      const runTorch = (torchEnv: Record<string, string>) => (cap: number) =>
        runChild(
          "/usr/bin/python3",
          [TORCH, JSON.stringify({ threads, jobs: [{ kind: "refine_step", repeats, ...cfg }] })],
          torchEnv,
          cap,
          timeoutS,
        );
      const torch = torchOk
        ? await side(runTorch(env), group === "batch" ? project((r) => r.torch) : null, "PyTorch", rowNotes)
        : null;
      const oneBlas = torchOk && threads > 1 && (group === "threads" || group === "standin")
        ? await side(runTorch({ ...env, OPENBLAS_NUM_THREADS: "1" }), null, "PyTorch (OpenBLAS 1 thread)", rowNotes)
        : undefined;
      m = { ours, torch, ...(oneBlas !== undefined ? { torchOneBlas: oneBlas } : {}), notes: rowNotes };
      memo.set(key, m);
    }
    const row: ScalingRow = { group, label, threads, units: cfg.batch, unit: "pair", ...m };
    rows.push(row);
    options.onRow?.(row);
  };

  const big = quick ? REFINE_QUICK : REFINE_VITB_BERTBASE_B8;
  const bigName = quick ? "refine stand-ins 2+1 layers" : "refine ViT-B+BERT-base";
  const bigRepeats = quick ? 1 : 1;
  const plural = (n: number) => `${n} thread${n > 1 ? "s" : ""}`;
  if (groups.has("threads")) {
    for (const t of threadCounts) {
      await refineRow("threads", `${bigName} b${big.batch}, ${plural(t)}`, big, t, bigRepeats);
    }
  }
  if (groups.has("batch")) {
    for (const b of [4, 8, 16, 32]) {
      await refineRow("batch", `${bigName} b${b}, ${plural(cores)}`, { ...big, batch: b }, cores, bigRepeats);
    }
  }
  if (groups.has("encode")) {
    const depth = quick ? 2 : undefined;
    const imgSize = quick ? 112 : 224;
    for (const images of [8, 64, 512]) {
      const work: EncodeWork = { kind: "encode", preset: "visionfm", imgSize, depth, images, batch: 16 };
      const rowNotes: string[] = [];
      const env = THREAD_ENV(cores);
      const ours = await side(
        (cap) => runOurWork(work, options.backend, env, cap, timeoutS),
        null,
        "ours",
        rowNotes,
      );
      const torch = torchOk
        ? await side(
          (cap) =>
            runChild(
              "/usr/bin/python3",
              [
                TORCH,
                JSON.stringify({
                  threads: cores,
                  jobs: [{
                    kind: "encode_images",
                    name: "encode",
                    dim: 768,
                    heads: 12,
                    depth: depth ?? 12,
                    img: imgSize,
                    images,
                    batch: 16,
                  }],
                }),
              ],
              env,
              cap,
              timeoutS,
            ),
          null,
          "PyTorch",
          rowNotes,
        )
        : null;
      const row: ScalingRow = {
        group: "encode",
        label: `encode ViT-B/16${quick ? " 2 blocks" : ""} @${imgSize}, ${images} images`,
        threads: cores,
        units: images,
        unit: "image",
        ours,
        torch,
        notes: rowNotes,
      };
      rows.push(row);
      options.onRow?.(row);
    }
  }
  if (groups.has("probe")) {
    const { ensureBenchmark } = await import("../src/experiment/mod.ts");
    const { root } = await ensureBenchmark({ size: quick ? "tiny" : "small", onProgress: undefined });
    const names: string[] = [];
    for await (const e of Deno.readDir(`${root}/tasks`)) if (e.isDirectory) names.push(e.name);
    names.sort();
    const seeds = quick ? [0] : [0, 1, 2];
    for (const n of [1, 3, 7].filter((n) => n <= names.length)) {
      const work: ProbeWork = { kind: "probe", root, names, tasks: n, seeds, family: "retfound" };
      const rowNotes: string[] = [];
      const env = THREAD_ENV(cores);
      const got: { outcome?: ProbeOutcome } = {};
      const ours = await side(
        async (cap) => {
          const r = await runOurWork(work, options.backend, env, cap, timeoutS);
          if ("value" in r) got.outcome = r.value as unknown as ProbeOutcome;
          return r;
        },
        null,
        "ours",
        rowNotes,
      );
      let torch: SideResult | null = null;
      const o = got.outcome;
      if (torchOk && !o) rowNotes.push("PyTorch: not run (it repeats our run's epochs, and ours failed)");
      else if (torchOk && o) {
        // Every image path goes along, more than one command-line argument may hold: the spec goes in a file.
        const specFile = await Deno.makeTempFile({ suffix: ".json" });
        const job = {
          kind: "probe",
          name: "probe",
          vit: o.vit,
          weightDecay: o.weightDecay,
          hyper: o.hyper,
          tasks: o.tasks,
        };
        await Deno.writeTextFile(specFile, JSON.stringify({ threads: cores, jobs: [job] }));
        try {
          torch = await side(
            (cap) => runChild("/usr/bin/python3", [TORCH, `@${specFile}`], env, cap, timeoutS),
            null,
            "PyTorch",
            rowNotes,
          );
        } finally {
          await Deno.remove(specFile).catch(() => {});
        }
      }
      const row: ScalingRow = {
        group: "probe",
        label: `probe fast, stand-in, synth ${quick ? "tiny" : "small"}, ${n} task${
          n > 1 ? "s" : ""
        } × ${seeds.length} seed${seeds.length > 1 ? "s" : ""}`,
        threads: cores,
        units: n,
        unit: "task",
        ours,
        torch,
        notes: rowNotes,
      };
      rows.push(row);
      options.onRow?.(row);
    }
  }
  if (groups.has("standin")) {
    for (const t of threadCounts) {
      await refineRow("standin", `refine stand-ins b16, ${plural(t)}`, REFINE_STANDIN_B16, t, quick ? 1 : 3);
    }
  }
  notes.push(`load average ${Deno.loadavg().map((x) => x.toFixed(2)).join(" ")} at the end`);
  if (!quick) {
    notes.push(
      "big configurations: one warm-up step then one timed; the stand-ins' step: the median of 3; encode: one pass of 16 (or fewer) as warm-up, then all images once",
    );
  } else {notes.push(
      "--quick: small sizes (a 2-block stand-in step, a 2-block ViT-B at 112 px, the tiny benchmark, 1 seed)",
    );}
  return { backend: options.backend, quick, rows, notes };
}

/** Derived numbers of a row: ratios, and within its group the thread speed-up or the growth against the first row. */
export interface ScalingDerived {
  speed_vs_torch: number | null;
  /** Against PyTorch's faster thread setting (both pools at n, or OpenMP n with OpenBLAS 1) where both were run. */
  speed_vs_torch_best: number | null;
  rss_vs_torch: number | null;
  /** Seconds per unit, ours and PyTorch's. */
  per_unit: { ours: number | null; torch: number | null };
  /** Threads groups: this row's speed-up over the 1-thread row. Work groups: seconds / the first row's seconds. */
  vs_first: { ours: number | null; torch: number | null };
  /** Work groups: units / the first row's units. */
  work_vs_first: number | null;
}

/**
 * Ratios and within-group comparisons of one row.
 * @param rows all rows (for the group's first row)
 * @param row the row
 * @returns the derived numbers (null where a side is missing)
 */
export function deriveRow(rows: ScalingRow[], row: ScalingRow): ScalingDerived {
  const first = rows.find((r) => r.group === row.group)!;
  const div = (a: number | undefined, b: number | undefined) => (a && b ? a / b : null);
  const threadGroup = row.group === "threads" || row.group === "standin";
  const best = Math.min(row.torch?.seconds ?? Infinity, row.torchOneBlas?.seconds ?? Infinity);
  return {
    speed_vs_torch: div(row.torch?.seconds, row.ours?.seconds),
    speed_vs_torch_best: Number.isFinite(best) ? div(best, row.ours?.seconds) : null,
    rss_vs_torch: div(row.ours?.peak_rss_mib, row.torch?.peak_rss_mib),
    per_unit: {
      ours: row.ours ? row.ours.seconds / row.units : null,
      torch: row.torch ? row.torch.seconds / row.units : null,
    },
    vs_first: threadGroup
      ? { ours: div(first.ours?.seconds, row.ours?.seconds), torch: div(first.torch?.seconds, row.torch?.seconds) }
      : { ours: div(row.ours?.seconds, first.ours?.seconds), torch: div(row.torch?.seconds, first.torch?.seconds) },
    work_vs_first: threadGroup ? null : row.units / first.units,
  };
}

/**
 * The JSON object of one row (`--json`).
 * @param rows all rows
 * @param row the row
 * @param backend our backend
 * @returns a flat object
 */
export function scalingJson(rows: ScalingRow[], row: ScalingRow, backend: string): Record<string, unknown> {
  const d = deriveRow(rows, row);
  const threadGroup = row.group === "threads" || row.group === "standin";
  return {
    name: `scaling_${row.group}`,
    section: "scaling",
    group: row.group,
    label: row.label,
    backend,
    threads: row.threads,
    units: row.units,
    unit: row.unit,
    ours_s: row.ours?.seconds ?? null,
    torch_s: row.torch?.seconds ?? null,
    speed_vs_torch: d.speed_vs_torch,
    ...(row.torchOneBlas !== undefined
      ? { torch_openblas1_s: row.torchOneBlas?.seconds ?? null, speed_vs_torch_best: d.speed_vs_torch_best }
      : {}),
    ours_peak_rss_mib: row.ours ? Math.round(row.ours.peak_rss_mib) : null,
    torch_peak_rss_mib: row.torch ? Math.round(row.torch.peak_rss_mib) : null,
    rss_vs_torch: d.rss_vs_torch,
    ours_s_per_unit: d.per_unit.ours,
    torch_s_per_unit: d.per_unit.torch,
    ...(threadGroup
      ? { ours_speedup_vs_1_thread: d.vs_first.ours, torch_speedup_vs_1_thread: d.vs_first.torch }
      : { work_vs_first: d.work_vs_first, ours_time_vs_first: d.vs_first.ours, torch_time_vs_first: d.vs_first.torch }),
    notes: row.notes,
  };
}

/**
 * The text table: one line per configuration (ours s, PyTorch s, speed ratio, ours RSS, PyTorch RSS, memory ratio),
 * and after each group its speed-up from 1 thread or its growth with work.
 * @param r the measurement
 * @returns lines to print
 */
export function formatScaling(r: ScalingReport): string {
  const s = (x: number | null | undefined) => (x == null ? "n/a" : x < 10 ? x.toFixed(3) : x.toFixed(1));
  const x = (v: number | null) => (v === null ? "n/a" : `${v.toFixed(2)}x`);
  const mem = (v: SideResult | null) => (v ? gib(v.peak_rss_mib) : "n/a");
  const w = 52;
  const lines = [
    `scaling: ours on ${r.backend} beside PyTorch, each configuration in a fresh process per side${
      r.quick ? " (--quick)" : ""
    }; speed = PyTorch s / ours, memory = ours peak RSS / PyTorch's`,
    `  ${"configuration".padEnd(w)} ${"ours s".padStart(8)} ${"PyTorch s".padStart(9)} ${"speed".padStart(6)} ${
      "ours RSS".padStart(9)
    } ${"PyTorch RSS".padStart(11)} ${"memory".padStart(6)}`,
  ];
  const groups = [...new Set(r.rows.map((row) => row.group))];
  for (const g of groups) {
    const rows = r.rows.filter((row) => row.group === g);
    for (const row of rows) {
      const d = deriveRow(r.rows, row);
      lines.push(
        `  ${row.label.padEnd(w)} ${s(row.ours?.seconds).padStart(8)} ${s(row.torch?.seconds).padStart(9)} ${
          x(d.speed_vs_torch).padStart(6)
        } ${mem(row.ours).padStart(9)} ${mem(row.torch).padStart(11)} ${x(d.rss_vs_torch).padStart(6)}`,
      );
      if (row.torchOneBlas !== undefined) {
        lines.push(
          `    PyTorch with OpenBLAS at 1 thread: ${
            s(row.torchOneBlas?.seconds)
          } s; against PyTorch's faster setting ours ${x(d.speed_vs_torch_best)}`,
        );
      }
      for (const n of row.notes) lines.push(`    note: ${n}`);
    }
    if (g === "threads" || g === "standin") {
      for (const row of rows.slice(1)) {
        const d = deriveRow(r.rows, row);
        lines.push(
          `    speed-up 1 → ${row.threads} threads: ours ${x(d.vs_first.ours)}, PyTorch ${x(d.vs_first.torch)}`,
        );
      }
    } else if (rows.length > 1) {
      const ds = rows.map((row) => deriveRow(r.rows, row));
      const per = (k: "ours" | "torch") => ds.map((d) => s(d.per_unit[k])).join(" → ");
      const grow = (k: "ours" | "torch") =>
        ds.map((d) => (d.vs_first[k] === null ? "n/a" : `×${d.vs_first[k]!.toFixed(2)}`)).join(" ");
      lines.push(
        `    s per ${rows[0].unit}: ours ${per("ours")}, PyTorch ${per("torch")}`,
        `    time for work ${ds.map((d) => `×${d.work_vs_first}`).join(" ")}: ours ${grow("ours")}, PyTorch ${
          grow("torch")
        }`,
      );
    }
  }
  for (const n of r.notes) lines.push(`  note: ${n}`);
  return lines.join("\n");
}

if (import.meta.main) {
  // One or more groups alone: deno run -A bench/scaling.ts [--quick] [--json] [cpu-onnx|cpu-blas] [threads batch …]
  const args = Deno.args.filter((a) => !a.startsWith("--"));
  const backend = args.find((a) => a.startsWith("cpu")) ?? "cpu-onnx";
  const groups = args.filter((a) => !a.startsWith("cpu")) as ScalingGroup[];
  const json = Deno.args.includes("--json");
  const rows: ScalingRow[] = [];
  const m = await measureScaling({
    backend,
    quick: Deno.args.includes("--quick"),
    groups: groups.length ? groups : undefined,
    onRow: (row) => {
      rows.push(row);
      if (json) console.log(JSON.stringify(scalingJson(rows, row, backend)));
    },
  });
  if (!json) console.log(formatScaling(m));
}
