/**
 * `deno task bench --only mpi`: how the default run's refinement step scales from one to two ranks here, ours
 * (`mpiexec -n 2`, src/dist/mpi.ts) beside PyTorch's DistributedDataParallel (gloo) doing the same step, in the
 * same run. Why these three rows: data parallelism is only worth it if two single-threaded ranks beat one process
 * with the same two cores as threads (the honest baseline: same global batch, same micro-batches, so the same
 * computation), and the one-thread row says how much of a core each configuration gets out of its second one.
 *
 * The step is the stand-ins' (bench/refine_step.ts `REFINE_STANDIN_B16`: ViT 192×6 at 112 px + BERT 128×2, the
 * default run's batch of 16) as two micro-batches of 8: one process accumulates both; two ranks take one each and
 * sum gradients in one float32 allreduce (ours) or DDP's bucketed allreduce (PyTorch). ITC/ITM negatives stay within
 * each micro-batch on both sides, so every configuration does the same work. Each configuration runs in fresh
 * processes, one after the other; times are the median of a few steps after a warm-up one.
 * @module
 */
import { fileURLToPath } from "node:url";
import { REFINE_STANDIN_B16, type RefineBenchConfig } from "./refine_step.ts";
import { THREAD_ENV } from "./measure.ts";

/** One configuration's seconds per step, ours and PyTorch's (null: not measured, with the reason in `notes`). */
export interface ScalingRow {
  /** e.g. "2 ranks × 1 thread". */
  label: string;
  /** Processes. */
  ranks: number;
  /** Threads per process. */
  threads: number;
  /** Our seconds per step. */
  ours: number | null;
  /** PyTorch's seconds per step. */
  torch: number | null;
}

/** The measured scaling and what was left out. */
export interface MpiScaling {
  /** The step measured. */
  config: RefineBenchConfig;
  /** Pairs per micro-batch. */
  micro: number;
  /** Timed steps per configuration (after one warm-up step). */
  steps: number;
  /** Our backend. */
  backend: string;
  /** 1 process × 1 thread, 1 process × 2 threads, 2 ranks × 1 thread. */
  rows: ScalingRow[];
  /** Why something was not measured; the machine's load. */
  notes: string[];
}

async function hasCommand(cmd: string, args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output()).success;
  } catch {
    return false;
  }
}

async function lastJson(cmd: Deno.Command, what: string): Promise<Record<string, number>> {
  const out = await cmd.output();
  const stdout = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) throw new Error(`${what} failed:\n${new TextDecoder().decode(out.stderr).slice(-2000)}`);
  return stdout ? JSON.parse(stdout.split("\n").at(-1)!) : {}; // only rank 0 prints
}

/** Our step in fresh Deno processes: alone, or under `mpiexec -n ranks`. */
async function ours(
  c: RefineBenchConfig,
  backend: string,
  micro: number,
  steps: number,
  ranks: number,
  threads: number,
): Promise<number> {
  const script = fileURLToPath(new URL("./refine_step.ts", import.meta.url));
  const args = ["run", "-A", script, JSON.stringify(c), backend, String(steps), String(micro)];
  const launch = ranks === 1 ? [Deno.execPath(), ...args] : ["mpiexec", "-n", String(ranks), Deno.execPath(), ...args];
  const cmd = new Deno.Command("timeout", {
    args: ["600", ...launch],
    env: THREAD_ENV(threads),
    stdout: "piped",
    stderr: "piped",
  });
  return (await lastJson(cmd, `our step on ${ranks} rank(s)`)).seconds;
}

/** PyTorch's step: one process, or `ranks` processes in DDP over gloo (file:// rendezvous in a fresh folder). */
async function torch(
  c: RefineBenchConfig,
  micro: number,
  steps: number,
  ranks: number,
  threads: number,
): Promise<number> {
  const script = fileURLToPath(new URL("./reference/torch_ddp.py", import.meta.url));
  const dir = await Deno.makeTempDir();
  try {
    const procs = Array.from({ length: ranks }, (_, rank) =>
      lastJson(
        new Deno.Command("timeout", {
          args: [
            "600",
            "/usr/bin/python3",
            script,
            JSON.stringify({
              job: c,
              micro,
              threads,
              warmup: 1,
              steps,
              rank,
              world: ranks,
              init: `file://${dir}/rendezvous`,
            }),
          ],
          env: THREAD_ENV(threads),
          stdout: "piped",
          stderr: "piped",
        }),
        `PyTorch step, process ${rank} of ${ranks}`,
      ));
    const done = await Promise.allSettled(procs);
    const failed = done.find((d) => d.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    return (done[0] as PromiseFulfilledResult<Record<string, number>>).value.seconds;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * Measures the stand-ins' refinement step on 1 process × 1 thread, 1 process × 2 threads and 2 ranks × 1 thread,
 * ours and PyTorch's. A missing `mpiexec` (or PyTorch) leaves its cells null and says so in `notes`.
 * @param options `backend` (ours), `quick` (one timed step instead of three)
 * @returns the rows and notes
 * @throws {Error} when a measurement that could run fails (its stderr included)
 */
export async function mpiScaling(options: { backend: string; quick?: boolean }): Promise<MpiScaling> {
  const config = REFINE_STANDIN_B16;
  const micro = config.batch / 2;
  const steps = options.quick ? 1 : 3;
  const notes: string[] = [];
  const mpi = await hasCommand("mpiexec", ["--version"]);
  if (!mpi) notes.push("no mpiexec on PATH (apt-get install mpich): the two-rank row of ours is not measured");
  const py = await hasCommand("/usr/bin/python3", [
    "-c",
    "import torch.distributed as d; assert d.is_gloo_available()",
  ]);
  if (!py) notes.push("no PyTorch with gloo at /usr/bin/python3: its column is not measured");
  const load = Deno.loadavg()[0];
  notes.push(`load average at the start ${load.toFixed(2)} on ${navigator.hardwareConcurrency} cores`);
  const rows: ScalingRow[] = [];
  for (const [ranks, threads] of [[1, 1], [1, 2], [2, 1]]) {
    const label = ranks === 1 ? `1 process × ${threads} thread${threads > 1 ? "s" : ""}` : `${ranks} ranks × 1 thread`;
    rows.push({
      label,
      ranks,
      threads,
      ours: ranks === 1 || mpi ? await ours(config, options.backend, micro, steps, ranks, threads) : null,
      torch: py ? await torch(config, micro, steps, ranks, threads) : null,
    });
  }
  return { config, micro, steps, backend: options.backend, rows, notes };
}

/**
 * The scaling as a text table: seconds per step, then the speed-ups (1 process × 2 threads → 2 ranks, and
 * 1 thread → 2 ranks) and ours against PyTorch.
 * @param m the measurement
 * @returns lines to print
 */
export function formatMpiScaling(m: MpiScaling): string {
  const c = m.config;
  const s = (x: number | null) => (x === null ? "n/a" : `${x.toFixed(3)} s`);
  const r = (a: number | null, b: number | null) => (a === null || b === null ? "n/a" : `${(a / b).toFixed(2)}x`);
  const lines = [
    `mpi scaling: ${c.name} (ViT ${c.dim}x${c.depth} @${c.img} + BERT ${c.text_width}x${c.text_layers}, global ` +
    `batch ${c.batch} = ${c.batch / m.micro} micro-batches of ${m.micro}), seconds per step, median of ${m.steps} ` +
    `after 1 warm-up; ours on ${m.backend}, PyTorch DDP on gloo`,
    `  ${"".padEnd(24)} ${"ours".padStart(9)} ${"PyTorch".padStart(9)} ${"ours vs PyTorch".padStart(16)}`,
  ];
  for (const row of m.rows) {
    lines.push(
      `  ${row.label.padEnd(24)} ${s(row.ours).padStart(9)} ${s(row.torch).padStart(9)} ${
        r(row.torch, row.ours).padStart(16)
      }`,
    );
  }
  const [one, two, ranks] = m.rows;
  lines.push(
    `  speed-up, 1 process × 2 threads → 2 ranks: ours ${r(two.ours, ranks.ours)}, PyTorch ${
      r(two.torch, ranks.torch)
    }`,
    `  speed-up, 1 thread → 2 ranks:              ours ${r(one.ours, ranks.ours)}, PyTorch ${
      r(one.torch, ranks.torch)
    }`,
    ...m.notes.map((n) => `  note: ${n}`),
  );
  return lines.join("\n");
}
