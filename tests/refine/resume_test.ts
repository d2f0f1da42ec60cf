/**
 * A run killed with SIGKILL (or stopped mid-epoch) and resumed reaches bit-identical final weights, with a log that
 * has every step once, no temp files left behind, and each epoch's train loss over all its steps.
 */
import { assert, assertEquals } from "../_assert.ts";
import { readSafetensors } from "../../src/io/mod.ts";
import { LAST_CHECKPOINT } from "../../src/refine/mod.ts";

const driver = new URL("./_resume_driver.ts", import.meta.url).pathname;

function start(runDir: string, resume: boolean, every = 2, maxSteps?: number): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", driver, runDir, resume ? "resume" : "", String(every), maxSteps ? String(maxSteps) : ""],
    stdout: "null",
    stderr: "piped",
  }).spawn();
}

async function finish(child: Deno.ChildProcess): Promise<string> {
  const out = await child.output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert(out.success, stderr);
  return stderr;
}

interface Entry {
  kind: string;
  step?: number;
  epoch?: number;
  trainLoss?: number;
  valLoss?: number;
  terms?: Record<string, number>;
}

async function logEntries(runDir: string): Promise<Entry[]> {
  const text = await Deno.readTextFile(`${runDir}/log.jsonl`).catch(() => "");
  return text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
}

async function steps(runDir: string): Promise<number> {
  try {
    return (await Deno.readTextFile(`${runDir}/log.jsonl`)).split("\n").filter((l) => l.includes('"kind":"step"'))
      .length;
  } catch {
    return 0;
  }
}

function finalWeights(runDir: string): Map<string, Float32Array> {
  const st = readSafetensors(`${runDir}/${LAST_CHECKPOINT}`).tensors;
  return new Map(
    [...st].filter(([k]) => k.startsWith("param/") || k.startsWith("adam_")).map((
      [k, t],
    ) => [k, t.data as Float32Array]),
  );
}

/** The resumed run `b` against the uninterrupted run `a`: weights, log, epoch losses, leftovers. */
async function assertSameAsUninterrupted(a: string, b: string): Promise<void> {
  const wa = finalWeights(a);
  const wb = finalWeights(b);
  assertEquals([...wb.keys()], [...wa.keys()]);
  for (const [k, v] of wa) {
    const u = wb.get(k)!;
    assert(v.length === u.length && v.every((x, i) => Object.is(x, u[i])), `${k} differs after resume`);
  }
  const la = await logEntries(a);
  const lb = await logEntries(b);
  const stepsA = la.filter((e) => e.kind === "step").map((e) => e.step);
  assertEquals(stepsA, Array.from({ length: 12 }, (_, i) => i + 1));
  assertEquals(lb.filter((e) => e.kind === "step").map((e) => e.step), stepsA, "every step logged once, in order");
  const epochs = (l: Entry[]) =>
    l.filter((e) => e.kind === "epoch").map((e) => ({
      epoch: e.epoch,
      train: e.trainLoss,
      val: e.valLoss,
      terms: e.terms,
    }));
  assertEquals(epochs(lb), epochs(la), "epoch losses over all their steps");
  assertEquals(epochs(la).length, 4);
  const names = [...Deno.readDirSync(b)].map((e) => e.name);
  assertEquals(names.filter((n) => n.endsWith(".tmp")), [], "no temp files left");
  assert(names.some((n) => /^best-model_.*_bscan\.safetensors$/.test(n)), names.join(", "));
}

Deno.test("kill -9 mid-run, then --resume: same weights, optimiser state, log and epoch losses as an uninterrupted run", async () => {
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  await finish(start(a, false));

  const child = start(b, false);
  while ((await steps(b)) < 5) await new Promise((r) => setTimeout(r, 20));
  child.kill("SIGKILL");
  const status = await child.status;
  assert(!status.success, "the child was killed");
  const killedAt = await steps(b);
  assert(killedAt < 12, `killed after ${killedAt} of 12 steps`);
  // What a kill can also leave: the temp file of a checkpoint being written, and a log line cut short.
  await Deno.writeFile(`${b}/${LAST_CHECKPOINT}.4194399.0badf00d.tmp`, new Uint8Array(1000));
  await Deno.writeTextFile(`${b}/log.jsonl`, '{"kind":"step","step":', { append: true });
  const notices = await finish(start(b, true));
  assert(/removed \d+ temp file\(s\) of interrupted writes/.test(notices), notices);
  assert(/resuming from .* after step \d+ \(epoch \d+, batch \d+\); dropped \d+ log entries/.test(notices), notices);
  await assertSameAsUninterrupted(a, b);
});

Deno.test("stopped mid-epoch with the log ahead of the checkpoint, then resumed: no repeated step, epoch loss over all steps", async () => {
  const a = await Deno.makeTempDir();
  const c = await Deno.makeTempDir();
  await finish(start(a, false));
  // A stop by --max-steps checkpoints where it stopped: step 4, epoch 2, after its first batch.
  await finish(start(c, false, 2, 4));
  const ckpt = JSON.parse(readSafetensors(`${c}/${LAST_CHECKPOINT}`).metadata["retfiner.checkpoint"]);
  assertEquals([ckpt.step, ckpt.epoch, ckpt.batchInEpoch, ckpt.epochSteps], [4, 1, 1, 1]);
  // A process that died after logging step 5 but before its checkpoint: the uninterrupted run's step-5 line.
  const step5 = (await Deno.readTextFile(`${a}/log.jsonl`)).split("\n").find((l) => /"kind":"step","step":5,/.test(l));
  assert(step5, "the uninterrupted run logged step 5");
  await Deno.writeTextFile(`${c}/log.jsonl`, step5 + "\n", { append: true });
  assertEquals((await logEntries(c)).filter((e) => e.kind === "step").length, 5);
  const notices = await finish(start(c, true));
  assert(notices.includes("after step 4 (epoch 2, batch 1); dropped 1 log entries"), notices);
  await assertSameAsUninterrupted(a, c);
});
