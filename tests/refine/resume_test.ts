/** A run killed with SIGKILL and resumed reaches bit-identical final weights. */
import { assert, assertEquals } from "../_assert.ts";
import { readSafetensors } from "../../src/io/mod.ts";
import { LAST_CHECKPOINT } from "../../src/refine/mod.ts";

const driver = new URL("./_resume_driver.ts", import.meta.url).pathname;

function start(runDir: string, resume: boolean): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", driver, runDir, resume ? "resume" : ""],
    stdout: "null",
    stderr: "piped",
  }).spawn();
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

Deno.test("kill -9 mid-run, then --resume: the same final weights and optimiser state as an uninterrupted run", async () => {
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  const full = await start(a, false).output();
  assert(full.success, new TextDecoder().decode(full.stderr));

  const child = start(b, false);
  while ((await steps(b)) < 5) await new Promise((r) => setTimeout(r, 20));
  child.kill("SIGKILL");
  const status = await child.status;
  assert(!status.success, "the child was killed");
  const killedAt = await steps(b);
  assert(killedAt < 16, `killed after ${killedAt} of 16 steps`);
  const resumed = await start(b, true).output();
  assert(resumed.success, new TextDecoder().decode(resumed.stderr));

  const wa = finalWeights(a);
  const wb = finalWeights(b);
  assertEquals([...wb.keys()], [...wa.keys()]);
  for (const [k, v] of wa) {
    const u = wb.get(k)!;
    assert(v.length === u.length && v.every((x, i) => Object.is(x, u[i])), `${k} differs after resume`);
  }
  const bytesA = await Deno.readFile(`${a}/best-model_${a.split("/").pop()}_bscan.safetensors`);
  assert(bytesA.length > 0);
});
