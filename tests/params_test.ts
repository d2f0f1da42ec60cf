/**
 * Run settings (src/params.ts): the two presets, the deep merge, and that the CLIs, `refine()` and
 * `runExperiment()` read the same defaults. The CLI defaults expected here are the values `deno task refine` and
 * `deno task probe` had before the settings moved into one module (written out, not read from the code).
 */
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import {
  AUTHORS,
  CPU_DEMO,
  deepMerge,
  NOTEBOOK_QUICK,
  PROBE_HEAD,
  PROBE_TASK_DEFAULTS,
  type RunParams,
} from "../src/params.ts";
import { setupBackend } from "../src/backend/mod.ts";
import { refine, refineSettings } from "../src/refine/mod.ts";
import { ADAMW_DEFAULTS } from "../src/refine/mod.ts";
import { PROBE_DEFAULTS, probeWeightDecay } from "../src/probe/mod.ts";
import { runExperiment } from "../src/experiment/mod.ts";
import { tinyModel, tinyPairs } from "./refine/_tiny.ts";
import { SYNTH_TINY } from "./refine/_tiny.ts";
import { tinyFiles } from "./experiment/_tiny_files.ts";

await setupBackend({ log: null });

/** `flag → default` from a task's `--help`. */
async function helpDefaults(cli: string): Promise<Map<string, string>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(`../src/cli/${cli}.ts`, import.meta.url).pathname, "--help"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert(out.success, text);
  const defaults = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = /^\s+--([\w-]+)\b.*\(default: ([^)]*)\)\s*$/.exec(line);
    if (m) defaults.set(m[1], m[2]);
  }
  return defaults;
}

/** Steps logged by a refinement run. */
async function loggedSteps(runDir: string): Promise<{ lr: number; step: number }[]> {
  return (await Deno.readTextFile(`${runDir}/log.jsonl`)).split("\n").filter(Boolean).map((l) => JSON.parse(l))
    .filter((e) => e.kind === "step");
}

Deno.test("deepMerge: nested objects merge, arrays and other values replace, undefined is ignored", () => {
  const base = { a: 1, o: { lr: 3e-4, weightDecay: 0.01 }, list: [0, 1, 2], f: () => 1, d: new Date(0) };
  const f2 = () => 2;
  const d2 = new Date(5);
  const merged = deepMerge(base, { o: { weightDecay: 0.05 }, list: [7], a: undefined, f: f2, d: d2 });
  assertEquals(merged.o, { lr: 3e-4, weightDecay: 0.05 });
  assertEquals(merged.list, [7]);
  assertEquals(merged.a, 1);
  assert(merged.f === f2 && merged.d === d2, "functions and class instances are taken whole");
  // Neither input changes, and the result shares no plain object or array with them.
  assertEquals(base.o, { lr: 3e-4, weightDecay: 0.01 });
  assertEquals(base.list, [0, 1, 2]);
  merged.list.push(8);
  assert(deepMerge(base).list !== base.list && deepMerge(base).o !== base.o);
  // Later overrides win; undefined overrides are skipped.
  assertEquals(deepMerge({ x: { y: 1, z: 1 } }, { x: { y: 2 } }, undefined, { x: { z: 3 } }), { x: { y: 2, z: 3 } });
});

Deno.test("presets: the authors' settings (method notes §1.6, §2.3) and the CPU demo's, frozen", () => {
  assertEquals(
    [AUTHORS.refine.batchSize, AUTHORS.refine.epochs, AUTHORS.refine.patience, AUTHORS.refine.maxLength],
    [128, 20, 3, 30],
  );
  assertEquals(AUTHORS.refine.optimizer, { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 });
  assertEquals(AUTHORS.refine.schedule.kind, "constant");
  assertEquals(AUTHORS.refine.losses, { itc: 1, itm: 1, mlm: 1, gm: 1 });
  assertEquals(AUTHORS.probe, { seeds: [0, 1, 2, 3, 4], mode: "faithful" });
  assertEquals(
    [PROBE_HEAD.lr, PROBE_HEAD.minLr, PROBE_HEAD.warmupEpochs, PROBE_HEAD.maxEpochs, PROBE_HEAD.labelSmoothing],
    [1e-3, 1e-8, 10, 1000, 0.1],
  );
  assertEquals([PROBE_HEAD.patience, PROBE_HEAD.startFrom, PROBE_HEAD.delta], [20, 20, 0.001]);
  assertEquals([probeWeightDecay("retfound"), probeWeightDecay("visionfm"), probeWeightDecay("urfound")], [
    0.05,
    0.01,
    0.01,
  ]);
  // The demo differs from the authors' only where it says so.
  assertEquals(
    deepMerge<RunParams>(AUTHORS, {
      name: "cpu-demo",
      refine: { batchSize: 16, epochs: 7, optimizer: { lr: 3e-4 } },
      probe: { seeds: [0, 1, 2], mode: "fast" },
    }),
    CPU_DEMO,
  );
  // The old constants are the presets' values (one definition).
  assertEquals(ADAMW_DEFAULTS, AUTHORS.refine.optimizer);
  assertEquals(PROBE_DEFAULTS, PROBE_HEAD);
  // Frozen: a consumer cannot change a default for everyone else.
  assertThrows(
    () => {
      (CPU_DEMO.refine.optimizer as { lr: number }).lr = 1;
    },
    /read.only|not extensible|Cannot assign/i,
    TypeError,
  );
  assertThrows(() => (CPU_DEMO.probe.seeds as number[]).push(3), /not extensible|read.only|Cannot add/i, TypeError);
  assertEquals(CPU_DEMO.refine.optimizer.lr, 3e-4);
  // The notebooks' quick settings lay over the demo.
  const quick = deepMerge(CPU_DEMO, NOTEBOOK_QUICK.overrides);
  assertEquals([quick.refine.epochs, quick.refine.batchSize, quick.probe.seeds, quick.zeroShot.maxPairs], [
    2,
    16,
    [0, 1],
    100,
  ]);
});

Deno.test("deno task refine: flag defaults unchanged and equal to the CPU demo preset and to refine()'s", async () => {
  const d = await helpDefaults("refine");
  // The values the CLI had before the settings moved into src/params.ts.
  const before: Record<string, string> = {
    batch: "16",
    accumulate: "1",
    epochs: "7",
    patience: "3",
    lr: "0.0003",
    "weight-decay": "0.01",
    schedule: "constant",
    warmup: "0",
    losses: "itc,itm,mlm,gm",
    seed: "0",
    "max-length": "30",
    "checkpoint-every": "25",
    "val-fraction": "0.1",
    seeds: "0,1,2",
    "probe-mode": "fast",
    "synth-size": "small",
  };
  for (const [flag, value] of Object.entries(before)) assertEquals(d.get(flag), value, `--${flag}`);
  // The library's refine() without settings uses the same values.
  const s = refineSettings({});
  assertEquals(
    {
      batch: String(s.batchSize),
      accumulate: String(s.accumulate),
      epochs: String(s.epochs),
      patience: String(s.patience),
      lr: String(s.optimizer.lr),
      "weight-decay": String(s.optimizer.weightDecay),
      schedule: s.schedule.kind,
      warmup: String(s.schedule.warmupSteps),
      losses: Object.entries(s.losses).filter(([, w]) => w > 0).map(([k]) => k).join(","),
      seed: String(s.seed),
      "max-length": String(s.maxLength),
      "checkpoint-every": String(s.checkpointEvery),
      "val-fraction": String(CPU_DEMO.refine.valFraction),
      seeds: CPU_DEMO.probe.seeds.join(","),
      "probe-mode": CPU_DEMO.probe.mode,
      "synth-size": CPU_DEMO.synth.size,
    },
    before,
  );
  // The help names the authors' values where they differ.
  const help = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../src/cli/refine.ts", import.meta.url).pathname, "--help"],
    stdout: "piped",
  }).output();
  const text = new TextDecoder().decode(help.stdout);
  assert(/--batch <n>.*the authors: 128/.test(text) && /--lr <x>.*the authors: 0\.0001/.test(text), text);
});

Deno.test("deno task probe: flag defaults unchanged (the authors' five seeds, fast mode, 1000 epochs)", async () => {
  const d = await helpDefaults("probe");
  assertEquals([d.get("seeds"), d.get("mode"), d.get("max-epochs")], ["0,1,2,3,4", "fast", "1000"]);
  assertEquals(
    [PROBE_TASK_DEFAULTS.seeds.join(","), PROBE_TASK_DEFAULTS.mode, String(PROBE_HEAD.maxEpochs)],
    [d.get("seeds"), d.get("mode"), d.get("max-epochs")],
  );
});

Deno.test("refine() without settings trains as deno task refine does (batch 16, 7 epochs, lr 3e-4), and says so", async () => {
  const runDir = await Deno.makeTempDir();
  const notices: string[] = [];
  const phases = new Set<string>();
  let batches = 0;
  await refine({
    model: await tinyModel(0),
    pairs: await tinyPairs(),
    runDir,
    maxSteps: 1,
    onNotice: (m) => notices.push(m),
    onProgress: (p) => {
      phases.add(p.phase);
      batches = p.total;
    },
  });
  // 24 training pairs: 2 batches of 16 (at the authors' 128 it would be 1), epoch 1 of 7, lr 3e-4.
  assertEquals(batches, 2);
  assert(phases.has("refine epoch 1/7"), [...phases].join(", "));
  assertEquals((await loggedSteps(runDir)).map((e) => e.lr), [3e-4]);
  const said = notices.find((n) => n.includes("cpu-demo preset"));
  assert(
    said && /batch 16, 7 epochs, patience 3, lr 0\.0003/.test(said) && said.includes("AUTHORS"),
    notices.join("\n"),
  );

  // Given settings print nothing of the kind; a preset given is used silently.
  const quiet: string[] = [];
  const dir2 = await Deno.makeTempDir();
  let total2 = 0;
  await refine({
    model: await tinyModel(0),
    pairs: await tinyPairs(),
    runDir: dir2,
    preset: AUTHORS,
    maxSteps: 1,
    onNotice: (m) => quiet.push(m),
    onProgress: (p) => (total2 = p.total),
  });
  assert(!quiet.some((n) => n.includes("preset")), quiet.join("\n"));
  assertEquals(total2, 1, "the authors' batch 128 holds all 24 training pairs");
  assertEquals((await loggedSteps(dir2)).map((e) => e.lr), [1e-4]);
});

Deno.test("refine() and runExperiment(): { optimizer: { weightDecay } } keeps the demo lr (deep merge)", async () => {
  assertEquals(refineSettings({ optimizer: { weightDecay: 0.05 } }).optimizer, {
    lr: 3e-4,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: 0.05,
  });
  assertEquals(refineSettings({ preset: AUTHORS, optimizer: { weightDecay: 0.05 } }).optimizer.lr, 1e-4);
  const f = await tinyFiles("retfound");
  const runDir = await Deno.makeTempDir();
  const phases = new Set<string>();
  const r = await runExperiment({
    family: "retfound",
    runDir,
    weights: f.vision,
    text: f.text,
    benchmark: SYNTH_TINY,
    tasks: ["amd_vs_normal"],
    probe: { maxEpochs: 3 },
    refine: { optimizer: { weightDecay: 0.05 }, maxSteps: 1, onNotice: () => {} },
    onProgress: (p) => phases.add(p.phase),
  });
  assertEquals((await loggedSteps(runDir)).map((e) => e.lr), [3e-4]);
  assert(phases.has("refine epoch 1/7"), [...phases].join(", "));
  // Probe seeds default to the demo's three.
  assertEquals(r.baseline.tasks[0].seeds.map((s) => s.seed), [0, 1, 2]);
});
