/**
 * Probing and encoding on MPI ranks (`mpiexec -n 2`, MPICH): features computed on shards and gathered equal one
 * process's bit for bit; a probe over two ranks (features on shards, (task, seed) jobs shared out) gives the same
 * numbers as one process, in fast and faithful mode; `deno task encode` and `deno task probe` under mpiexec write
 * the same files as without it, rank 0 alone printing; a failing rank ends the job. Runs where `mpiexec` exists
 * (CI installs MPICH); elsewhere the MPI tests are skipped with a message.
 */
import { assert, assertEquals } from "../_assert.ts";
import { gatherBatches, ownBatches } from "../../src/probe/features.ts";

const root = new URL("../../", import.meta.url).pathname;
const driver = `${root}tests/dist/_probe_driver.ts`;
const tasks = `${root}data/synth-tiny/tasks`;
const weights = `${root}tests/fixtures/encoders/visionfm_tiny.pth`;
const hasMpiexec = await new Deno.Command("mpiexec", { args: ["--version"], stdout: "null", stderr: "null" }).output()
  .then((o) => o.success).catch(() => false);
if (!hasMpiexec && Deno.env.get("CI")) throw new Error("CI has no mpiexec: .ci/run installs MPICH");
if (!hasMpiexec) console.error("tests/dist/parallel_probe_test.ts: no mpiexec on PATH, the two-rank tests are skipped");
const ignore = !hasMpiexec;

/** Runs `script args` alone (ranks 1) or under `mpiexec -n ranks`, one thread a rank. */
async function run(ranks: number, script: string, args: string[], timeoutS = 180) {
  const command = ranks === 1
    ? [`${timeoutS}`, Deno.execPath(), "run", "-A", script, ...args]
    : [`${timeoutS}`, "mpiexec", "-n", `${ranks}`, Deno.execPath(), "run", "-A", script, ...args];
  const out = await new Deno.Command("timeout", {
    args: command,
    env: { NO_COLOR: "1", RETFINER_THREADS: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

function count(text: string, part: string): number {
  return text.split(part).length - 1;
}

Deno.test("batch k belongs to rank k mod N; one process gathers every batch in order", async () => {
  assertEquals(ownBatches(5, 0, 2), [0, 2, 4]);
  assertEquals(ownBatches(5, 1, 2), [1, 3]);
  assertEquals(ownBatches(1, 1, 2), []);
  const x = await gatherBatches(
    [[0, 1], [2, 3], [4]],
    2,
    (idx) => Promise.resolve(idx),
    (idx) => Float32Array.from(idx.flatMap((i) => [i, -i])),
  );
  assertEquals([...x], [0, -0, 1, -1, 2, -2, 3, -3, 4, -4]);
});

Deno.test("features gathered from two ranks equal one process's, bit for bit", { ignore }, async () => {
  const dir = await Deno.makeTempDir();
  const one = await run(1, driver, ["features", `${dir}/one.f32`]);
  assertEquals(one.code, 0, one.stderr);
  const two = await run(2, driver, ["features", `${dir}/two.f32`]);
  assertEquals(two.code, 0, two.stderr);
  const a = await Deno.readFile(`${dir}/one.f32`);
  assertEquals(a.length, 24 * 64 * 4); // 24 images × concat of a 32-wide ViT
  assertEquals(await Deno.readFile(`${dir}/two.f32`), a);
});

for (const mode of ["fast", "faithful"]) {
  Deno.test(`a ${mode} probe over two ranks gives one process's numbers`, { ignore }, async () => {
    const dir = await Deno.makeTempDir();
    const one = await run(1, driver, ["probe", `${dir}/one.json`, mode]);
    assertEquals(one.code, 0, one.stderr);
    const two = await run(2, driver, ["probe", `${dir}/two.json`, mode]);
    assertEquals(two.code, 0, two.stderr);
    const a = JSON.parse(await Deno.readTextFile(`${dir}/one.json`));
    assertEquals(a.length, 2);
    assertEquals(a[0].seeds.length, 3);
    assertEquals(JSON.parse(await Deno.readTextFile(`${dir}/two.json`)), a);
  });
}

Deno.test("a rank that fails while the other waits in the gather ends the job with its error", { ignore }, async () => {
  const t0 = performance.now();
  const r = await run(2, driver, ["fail"], 60);
  assert(r.code !== 0 && r.code !== 124, `exit ${r.code}: ${r.stderr}`);
  assert(r.stderr.includes("rank 1 of 2 failed, ending all ranks: simulated failure on rank 1"), r.stderr);
  assert(performance.now() - t0 < 50_000, "ended, did not hang");
});

Deno.test(
  "deno task encode under mpiexec -n 2 writes one process's file; rank 0 alone prints",
  { ignore },
  async () => {
    const images = await Deno.makeTempDir();
    for (const split of ["train", "val", "test"]) {
      for await (const c of Deno.readDir(`${tasks}/normal_amd_dme/${split}`)) {
        for await (const f of Deno.readDir(`${tasks}/normal_amd_dme/${split}/${c.name}`)) {
          await Deno.copyFile(`${tasks}/normal_amd_dme/${split}/${c.name}/${f.name}`, `${images}/${split}-${f.name}`);
        }
      }
    }
    const dir = await Deno.makeTempDir();
    const args = (out: string) => [
      "--weights",
      weights,
      "--heads",
      "4",
      "--input",
      images,
      "--tokens",
      "concat",
      "--batch",
      "5",
      "--out",
      out,
    ];
    const one = await run(1, `${root}src/cli/encode.ts`, args(`${dir}/one.npy`));
    assertEquals(one.code, 0, one.stderr);
    const two = await run(2, `${root}src/cli/encode.ts`, args(`${dir}/two.npy`));
    assertEquals(two.code, 0, two.stderr);
    assertEquals(await Deno.readFile(`${dir}/two.npy`), await Deno.readFile(`${dir}/one.npy`));
    assertEquals(
      await Deno.readTextFile(`${dir}/two.npy.paths.txt`),
      await Deno.readTextFile(`${dir}/one.npy.paths.txt`),
    );
    for (const line of ["encoding on 2 ranks", "backend: ", "model: ", "wrote "]) {
      assertEquals(count(two.stderr, line), 1, `"${line}" once:\n${two.stderr}`);
    }
  },
);

Deno.test(
  "deno task probe under mpiexec -n 2 writes one process's results; rank 0 alone prints",
  { ignore },
  async () => {
    const dir = await Deno.makeTempDir();
    const args = (out: string) => [
      "--weights",
      weights,
      "--heads",
      "4",
      "--tasks",
      `${tasks}/amd_vs_normal`,
      "--tasks",
      `${tasks}/normal_amd_dme`,
      "--seeds",
      "0,1,2",
      "--max-epochs",
      "10",
      "--out",
      out,
    ];
    const one = await run(1, `${root}src/cli/probe.ts`, args(`${dir}/one`));
    assertEquals(one.code, 0, one.stderr);
    const two = await run(2, `${root}src/cli/probe.ts`, args(`${dir}/two`));
    assertEquals(two.code, 0, two.stderr);
    const csv = await Deno.readTextFile(`${dir}/one/results.csv`);
    assertEquals(csv.trim().split("\n").length, 1 + 2 * 2 * 3); // the model and raw pixels, 2 tasks × 3 seeds
    assertEquals(await Deno.readTextFile(`${dir}/two/results.csv`), csv);
    assertEquals(two.stdout.replaceAll(`${dir}/two`, `${dir}/one`), one.stdout);
    for (const line of ["probing on 2 ranks", "backend: ", "amd_vs_normal: 2 classes"]) {
      assertEquals(count(two.stderr, line), 1, `"${line}" once:\n${two.stderr}`);
    }
  },
);
