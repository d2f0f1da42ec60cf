/**
 * Data-parallel refinement over MPI (`mpiexec -n 2`, MPICH): the collectives, a two-rank run equal to one process
 * with the same global batch and accumulation, resume under MPI, and a failing rank ending the job. Runs where
 * `mpiexec` exists (CI installs MPICH); without MPI the package runs as one process and these are skipped.
 */
import { assert, assertEquals } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import { SINGLE_PROCESS, worldSizeFromEnv } from "../../src/dist/mpi.ts";
import { refine } from "../../src/refine/mod.ts";
import { type TinyRun, tinyRunArgs, tinyRunOptions } from "./_tiny_run.ts";

const driver = new URL("./_rank_driver.ts", import.meta.url).pathname;
const hasMpiexec = await new Deno.Command("mpiexec", { args: ["--version"], stdout: "null", stderr: "null" }).output()
  .then((o) => o.success).catch(() => false);
if (!hasMpiexec && Deno.env.get("CI")) throw new Error("CI has no mpiexec: .ci/run installs MPICH");
const ignore = !hasMpiexec;

async function mpiexec(ranks: number, args: string[], timeoutMs = 240_000) {
  const out = await new Deno.Command("timeout", {
    args: [`${timeoutMs / 1000}`, "mpiexec", "-n", `${ranks}`, Deno.execPath(), "run", "-A", driver, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

function exported(dir: string): Map<string, Float32Array> {
  const name = dir.split("/").filter(Boolean).pop();
  const t = readSafetensors(`${dir}/best-model_${name}_retfound_bscan.safetensors`).tensors;
  return new Map([...t].map(([k, v]) => [k, toFloat32(v)]));
}

/**
 * The largest difference of two sets of tensors, per tensor relative to the tensor's largest value, and absolute.
 * @param skip names left out
 */
function diffs(
  a: Map<string, Float32Array>,
  b: Map<string, Float32Array>,
  skip: (name: string) => boolean = () => false,
): { rel: number; abs: number; over: number } {
  assertEquals([...a.keys()].sort(), [...b.keys()].sort());
  let rel = 0;
  let abs = 0;
  let over = 0;
  for (const [k, x] of a) {
    if (skip(k)) continue;
    const y = b.get(k)!;
    let d = 0;
    let s = 0;
    for (let i = 0; i < x.length; i++) {
      const e = Math.abs(x[i] - y[i]);
      d = Math.max(d, e);
      if (e > GLOBAL_TOLERANCE) over++;
      s = Math.max(s, Math.abs(y[i]));
    }
    rel = Math.max(rel, d / Math.max(s, 1e-12));
    abs = Math.max(abs, d);
  }
  return { rel, abs, over };
}

function maxRelDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): number {
  return diffs(a, b).rel;
}

/** The tiny run on two ranks (through the driver). */
async function twoRanks(run: TinyRun) {
  const r = await mpiexec(2, tinyRunArgs(run));
  assertEquals(r.code, 0, r.stderr);
}

/** The same tiny run in this process. */
async function oneProcess(run: TinyRun) {
  await setupBackend({ log: null, backend: "cpu-onnx" });
  await refine({ ...(await tinyRunOptions(run)), collective: SINGLE_PROCESS });
}

/** Each logged step's loss terms. */
async function stepLosses(dir: string): Promise<Record<string, number>[]> {
  return (await Deno.readTextFile(`${dir}/log.jsonl`)).split("\n").filter(Boolean).map((l) => JSON.parse(l))
    .filter((e) => e.kind === "step");
}

Deno.test("without mpiexec the package is one process and loads no MPI library", () => {
  assertEquals(worldSizeFromEnv(), Deno.env.get("PMI_SIZE") ? Number(Deno.env.get("PMI_SIZE")) : 1);
  assertEquals([SINGLE_PROCESS.rank, SINGLE_PROCESS.size], [0, 1]);
});

Deno.test(
  "MPI collectives over two ranks: allreduce (float32, float64), allgather (float64, float32), reduce-scatter, " +
    "broadcast",
  { ignore },
  async () => {
    const r = await mpiexec(2, ["collectives"]);
    assertEquals(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l)).sort((a, b) => a.rank - b.rank);
    assertEquals(lines.length, 2);
    for (const l of lines) {
      assertEquals(l.size, 2);
      assertEquals(l.f, [3, 20]);
      assert(Math.abs(l.d[0] - 0.3) < 1e-15, String(l.d));
      assertEquals(l.g, [0, 0, 1, -1]); // rank 0 sent -0, which JSON writes as 0
      assertEquals(l.h, [0.5, 1.5]);
      assertEquals(l.rs, l.rank === 0 ? [2, 4] : [30, 40]);
      assertEquals(l.b, [7, 8]);
    }
  },
);

Deno.test(
  "gather with gradient over uneven shards: rows in rank order; the gradient summed over ranks, own rows kept",
  { ignore },
  async () => {
    const r = await mpiexec(2, ["gather"]);
    assertEquals(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l)).sort((a, b) => a.rank - b.rank);
    assertEquals(lines.map((l) => l.all), [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]]);
    // Rows 0-1 (rank 0's) had the same weights on both ranks; row 2 (rank 1's) weights 3·(rank+1) and 7.
    assertEquals(lines.map((l) => l.grad), [[2, 20, 200, 2000], [9, 14]]);
  },
);

Deno.test(
  "two ranks refine exactly as one process with the same global batch and accumulation",
  { ignore },
  async () => {
    const root = await Deno.makeTempDir();
    await twoRanks({ runDir: `${root}/mpi` });
    await oneProcess({ runDir: `${root}/single` });
    // Same micro-batches, negatives and random draws; gradients summed in one float32 buffer: equal to rounding.
    const d = maxRelDiff(exported(`${root}/mpi`), exported(`${root}/single`));
    assert(d <= 1e-6, `two ranks vs one process: max relative difference ${d}`);
    const log = (dir: string) => Deno.readTextFile(`${dir}/log.jsonl`);
    assertEquals((await log(`${root}/mpi`)).split("\n").length, (await log(`${root}/single`)).split("\n").length);
  },
);

Deno.test(
  "resume under MPI: interrupted after 4 steps and resumed equals the uninterrupted two-rank run",
  { ignore },
  async () => {
    const root = await Deno.makeTempDir();
    await twoRanks({ runDir: `${root}/whole` });
    await twoRanks({ runDir: `${root}/cut`, maxSteps: 4 });
    await twoRanks({ runDir: `${root}/cut`, resume: true });
    assertEquals(maxRelDiff(exported(`${root}/cut`), exported(`${root}/whole`)), 0);
  },
);

/**
 * Global negatives: two ranks holding 4 pairs each of a batch of 8 compute one process's losses and gradients at
 * batch 8, but not its float32 sums: a gradient that one process accumulates inside one matrix product (over the 8
 * rows of a similarity matrix, or the 24 ITM pairs) is here two partial products added by the allreduce, and the
 * similarities come from [4, 8] products instead of one [8, 8]. The losses then agree to about 1e-7 relative and
 * the weights, after 6 AdamW steps at lr 1e-3, to under 1e-6 (measured 6.2e-7): {@link GLOBAL_TOLERANCE}. With the
 * fused cross-entropy and the shared cross-attention keys and values (other summation orders) one weight of the
 * ~200k, whose gradient is near AdamW's ε, differed by 9.6e-6 after 6 steps with accumulation (every other one under
 * 1e-7): AdamW's first steps are about lr · sign(g), so rounding in a near-zero gradient moves that weight by up to
 * the learning rate. So at most {@link ISOLATED} weights may exceed the tolerance, and none by more than
 * {@link LOOSE_TOLERANCE}, a tenth of one step.
 *
 * Except attention key biases (ViT `qkv.bias`, whose middle third is the key bias; BERT `key.bias`): a key bias adds
 * the same q·b to every logit of a softmax row, so its gradient is zero up to rounding, and AdamW (which divides by
 * √v) turns that rounding noise into steps of up to the learning rate. Its noise differs with the summation order:
 * measured up to 4.6e-5 after 6 steps; {@link KEY_BIAS_TOLERANCE}. A wrong gradient (a missing gather, a per-rank
 * mean, another rank's dropout or negatives) moves weights by about the learning rate, 1e-3, per step.
 */
const GLOBAL_TOLERANCE = 5e-6;
/** See {@link GLOBAL_TOLERANCE}. */
const ISOLATED = 3;
/** See {@link GLOBAL_TOLERANCE}. */
const LOOSE_TOLERANCE = 1e-4;
/** See {@link GLOBAL_TOLERANCE}. */
const KEY_BIAS_TOLERANCE = 5e-4;
const keyBias = (name: string) => /(qkv|key)\.bias$/.test(name);

Deno.test(
  "global negatives: two ranks at batch 8 equal one process at batch 8 (weights, export and losses, to float32 " +
    "summation order)",
  { ignore },
  async () => {
    const root = await Deno.makeTempDir();
    const run = { accumulate: 1, maxSteps: 6, globalNegatives: true };
    await twoRanks({ ...run, runDir: `${root}/two` });
    await oneProcess({ ...run, runDir: `${root}/one` });
    // The flag changes nothing in one process.
    await oneProcess({ ...run, globalNegatives: false, runDir: `${root}/plain` });
    assertEquals(diffs(exported(`${root}/one`), exported(`${root}/plain`)).abs, 0);
    // The export, and the whole model (checkpoints hold every parameter: heads and BERT too).
    const ckpt = (dir: string) => {
      const t = readSafetensors(`${dir}/last.ckpt.safetensors`).tensors;
      return new Map([...t].filter(([k]) => k.startsWith("param/")).map(([k, v]) => [k, toFloat32(v)]));
    };
    for (const [what, load] of [["export", exported], ["checkpoint", ckpt]] as const) {
      const d = diffs(load(`${root}/two`), load(`${root}/one`), keyBias);
      const k = diffs(load(`${root}/two`), load(`${root}/one`), (n) => !keyBias(n));
      console.log(
        `global negatives, 2 ranks vs 1 process, ${what} after 6 steps: max abs ${d.abs} (key biases ${k.abs})`,
      );
      assert(d.over <= ISOLATED && d.abs <= LOOSE_TOLERANCE, `${what}: max abs difference ${d.abs} (${d.over} over)`);
      assert(k.abs <= KEY_BIAS_TOLERANCE, `${what}: key biases' max abs difference ${k.abs}`);
    }
    const [a, b] = [await stepLosses(`${root}/two`), await stepLosses(`${root}/one`)];
    assertEquals(a.length, 6);
    assertEquals(b.length, 6);
    a.forEach((e, i) => {
      for (const k of ["itc", "itm", "mlm", "gm", "total"]) {
        assert(Math.abs(e[k] - b[i][k]) <= 1e-4 * Math.abs(b[i][k]), `step ${i + 1} ${k}: ${e[k]} vs ${b[i][k]}`);
      }
    });
  },
);

Deno.test(
  "global negatives with accumulation: resumed under MPI equals uninterrupted, and one process with --accumulate 2",
  { ignore },
  async () => {
    const root = await Deno.makeTempDir();
    // Batch 8 in 2 micro-batches of 4, each split 2 + 2 over the ranks.
    const run = { accumulate: 2, maxSteps: 6, globalNegatives: true };
    await twoRanks({ ...run, runDir: `${root}/whole` });
    await twoRanks({ ...run, maxSteps: 3, runDir: `${root}/cut` });
    await twoRanks({ ...run, resume: true, runDir: `${root}/cut` });
    assertEquals(maxRelDiff(exported(`${root}/cut`), exported(`${root}/whole`)), 0);
    await oneProcess({ ...run, runDir: `${root}/one` });
    const [a, b] = [exported(`${root}/whole`), exported(`${root}/one`)];
    const d = diffs(a, b, keyBias);
    const k = diffs(a, b, (n) => !keyBias(n));
    console.log(`global negatives, accumulate 2, 2 ranks vs 1 process: max abs ${d.abs} (key biases ${k.abs})`);
    assert(d.over <= ISOLATED && d.abs <= LOOSE_TOLERANCE, `max abs difference ${d.abs} (${d.over} over)`);
    assert(k.abs <= KEY_BIAS_TOLERANCE, `key biases' max abs difference ${k.abs}`);
  },
);

Deno.test("a rank that fails ends the whole job with an error, not a hang", { ignore }, async () => {
  const t0 = performance.now();
  const r = await mpiexec(2, ["fail"], 60_000);
  assert(r.code !== 0 && r.code !== 124, `exit ${r.code} (124 = timed out: a hang)`);
  assert(r.stderr.includes("rank 1: simulated failure"), r.stderr);
  assert(performance.now() - t0 < 50_000, "ended well before the 60 s the surviving rank would wait");
});

/** `deno task refine` on the tiny pairs for 3 steps at batch 8: on `ranks` MPI ranks, or in this process's way. */
async function cliRefine(ranks: number, out: string, extra: string[] = []) {
  const cli = new URL("../../src/cli/refine.ts", import.meta.url).pathname;
  const pairs = new URL("../../data/synth-tiny/pairs/pairs.csv", import.meta.url).pathname;
  const args = ["run", "-A", cli, "--pairs", pairs, "--batch", "8", "--max-steps", "3", "--backend", "cpu-onnx"];
  const command = ranks > 1
    ? new Deno.Command("timeout", {
      args: ["240", "mpiexec", "-n", `${ranks}`, Deno.execPath(), ...args, "--out", out, ...extra],
      stdout: "piped",
      stderr: "piped",
    })
    : new Deno.Command(Deno.execPath(), { args: [...args, "--out", out, ...extra], stdout: "piped", stderr: "piped" });
  const r = await command.output();
  const stderr = new TextDecoder().decode(r.stderr);
  assertEquals(r.code, 0, stderr);
  return stderr;
}

Deno.test("mpiexec -n 2 deno task refine --pairs --max-steps 3 exports what one process with --accumulate 2 does", {
  ignore,
}, async () => {
  const root = await Deno.makeTempDir();
  // With the closing probe on the tiny benchmark: every rank probes its share, rank 0 writes the report.
  const probe = ["--benchmark", new URL("../../data/synth-tiny", import.meta.url).pathname, "--seeds", "0,1"];
  const err2 = await cliRefine(2, `${root}/two`, probe);
  assert(err2.includes("data parallel: 2 ranks over MPI"), err2);
  assert(err2.includes("per-rank negatives"), err2);
  assert(err2.includes("accumulate 1 raised to a multiple of the ranks"), err2);
  await cliRefine(1, `${root}/one`, ["--accumulate", "2", ...probe]);
  assertEquals(maxRelDiff(exported(`${root}/two`), exported(`${root}/one`)), 0);
  // The same weights probed on 2 ranks and in one process: the same per-task, per-seed results.
  const csv = (dir: string) => Deno.readTextFileSync(`${dir}/results.csv`);
  assert(csv(`${root}/two`).split("\n").length > 4, csv(`${root}/two`));
  assertEquals(csv(`${root}/two`), csv(`${root}/one`));
});

Deno.test("mpiexec -n 2 deno task refine --global-negatives exports what one process at the same --batch does", {
  ignore,
}, async () => {
  const root = await Deno.makeTempDir();
  const err2 = await cliRefine(2, `${root}/two`, ["--global-negatives"]);
  assert(err2.includes("global negatives: every micro-batch is split across the ranks"), err2);
  assert(!err2.includes("raised to a multiple"), err2);
  await cliRefine(1, `${root}/one`, ["--global-negatives"]); // no effect in one process
  const [a, b] = [exported(`${root}/two`), exported(`${root}/one`)];
  const d = diffs(a, b, keyBias);
  const k = diffs(a, b, (n) => !keyBias(n));
  console.log(`deno task refine --global-negatives, 2 ranks vs 1 process: max abs ${d.abs} (key biases ${k.abs})`);
  // The stand-ins (5 blocks at 112 px, lr 3e-4): more weights whose gradient is near zero, where AdamW's first steps
  // (about lr · sign(g)) pass rounding on at full size; measured 8.6e-6 (key biases 1.3e-4) after 3 steps. Bounded
  // in units of the most a weight can move, lr · steps = 9e-4: 5 % of it, key biases 50 %; a wrong gradient moves
  // many weights by about all of it.
  const reach = 3e-4 * 3;
  assert(d.abs <= 0.05 * reach, `max abs difference ${d.abs}`);
  assert(k.abs <= 0.5 * reach, `key biases' max abs difference ${k.abs}`);
});
