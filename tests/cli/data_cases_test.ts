/**
 * The real-data cases end to end through `deno task refine` and `deno task probe` with the stand-in weights
 * (issue 16): C14 with and without --skip-bad, a nested/hidden/linked probing folder, a 12-bit TIFF volume.
 */
import { assert, assertEquals } from "../_assert.ts";
import { encodeTiff } from "../dataset/_tiff.ts";

const root = new URL("../../", import.meta.url).pathname;
const fx = `${root}tests/fixtures/`;
const jpg = await Deno.readFile(`${fx}dataset/grey8.jpg`);

async function run(cli: string, args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}src/cli/${cli}.ts`, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: r.code, out: d.decode(r.stdout) + d.decode(r.stderr) };
}

async function c14(): Promise<string> {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/images`);
  for (
    const n of [
      "CNV-1001-1.jpeg",
      "NORMAL-1004-1.jpeg",
      "DME-1002-1.jpeg",
      "DRUSEN-1003-1.jpeg",
      "NORMAL-PatientB_000002_c.jpg",
    ]
  ) {
    await Deno.writeFile(`${dir}/images/${n}`, jpg);
  }
  await Deno.copyFile(`${fx}data_cases/lfs_pointer.png`, `${dir}/images/lfs_pointer.png`);
  await Deno.copyFile(`${fx}data_cases/truncated_download.jpeg`, `${dir}/images/truncated_download.jpeg`);
  await Deno.copyFile(`${fx}data_cases/bscan_f32_crop.tif`, `${dir}/images/bscan_f32.tif`);
  await Deno.copyFile(`${fx}data_cases/C14_bad_images.csv`, `${dir}/C14_bad_images.csv`);
  return dir;
}

Deno.test("refine C14: without --skip-bad the error names file and line before training; with it, the run lists them", async () => {
  const dir = await c14();
  const args = [
    "--pairs",
    `${dir}/C14_bad_images.csv`,
    "--batch",
    "4",
    "--max-steps",
    "1",
    "--epochs",
    "1",
    "--no-probe",
  ];
  const bad = await run("refine", [...args, "--out", `${dir}/run0`]);
  assertEquals(bad.code, 1, bad.out);
  assert(/C14_bad_images\.csv:6: image .*lfs_pointer\.png: this is a Git LFS pointer/.test(bad.out), bad.out);
  assert(!/refine epoch/.test(bad.out), "stopped before training");
  const ok = await run("refine", [...args, "--skip-bad", "--out", `${dir}/run`]);
  assertEquals(ok.code, 0, ok.out);
  assert(/pairs: 4 train, 2 val; 2 rows skipped/.test(ok.out), ok.out);
  const tsv = await Deno.readTextFile(`${dir}/run/skipped_rows.tsv`);
  const rows = tsv.trim().split("\n").slice(1).map((l) => l.split("\t"));
  assertEquals(rows.map((r) => r[0].split("/").pop()), ["C14_bad_images.csv:6", "C14_bad_images.csv:7"]);
  assert(/Git LFS pointer/.test(rows[0][1]) && /truncated or corrupt JPEG/.test(rows[1][1]), tsv);
  assert(/2 row\(s\) skipped; listed in .*skipped_rows\.tsv/.test(ok.out), ok.out);
});

Deno.test("probe: nested volumes, hidden folders and linked classes; a 12-bit TIFF volume with --slice and --intensity-range", async () => {
  const dir = await Deno.makeTempDir();
  const u12 = (k: number) => Uint16Array.from({ length: 32 * 24 }, (_, i) => ((i * 13 + k * 700) % 4096));
  for (const split of ["train", "val", "test"]) {
    for (const cls of ["a", "b"]) {
      await Deno.mkdir(`${dir}/ds/${split}/${cls}/vol1`, { recursive: true });
      await Deno.writeFile(`${dir}/ds/${split}/${cls}/vol1/x.jpg`, jpg);
      await Deno.writeFile(`${dir}/ds/${split}/${cls}/v.tif`, encodeTiff([u12(0), u12(cls === "a" ? 1 : 2)], 32, 24));
    }
    await Deno.mkdir(`${dir}/ds/${split}/.ipynb_checkpoints`);
  }
  const args = ["--weights", `${root}data/models/retfound-standin.safetensors`, "--tasks", `${dir}/ds`, "--seeds", "0"];
  const noSlice = await run("probe", args);
  assertEquals(noSlice.code, 1, noSlice.out);
  assert(
    /6 image\(s\) cannot be used/.test(noSlice.out) && /v\.tif: a volume of 2 B-scans/.test(noSlice.out),
    noSlice.out,
  );
  const all = await run("probe", [...args, "--slice", "all", "--intensity-range", "0,4095"]);
  assertEquals(all.code, 0, all.out);
  // Per class and split: the JPEG plus two B-scans of the volume.
  assert(/a\s+3\s+3\s+3\n\s*b\s+3\s+3\s+3/.test(all.out), all.out);
  assert(!/12-bit data\?/.test(all.out), "no 12-bit notice with --intensity-range");
  const mid = await run("probe", [...args, "--slice", "middle"]);
  assertEquals(mid.code, 0, mid.out);
  assert(/using slice 1 \(--slice middle\)/.test(mid.out) && /12-bit data\?/.test(mid.out), mid.out);
});

Deno.test("issue 17: encode --skip-bad skips a NaN .npy; probe on the tester's link loop keeps 2 images a class", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/in`);
  await Deno.writeFile(`${dir}/in/ok.jpg`, jpg);
  await Deno.copyFile(`${fx}data_cases/tester/n_f64_nan.npy`, `${dir}/in/nan.npy`);
  const weights = `${root}data/models/retfound-standin.safetensors`;
  const bad = await run("encode", ["--weights", weights, "--input", `${dir}/in`, "--out", `${dir}/f.npy`]);
  assertEquals(bad.code, 1, bad.out);
  assert(/nan\.npy: 864 of 4096 values are NaN or infinite/.test(bad.out), bad.out);
  const skip = await run("encode", [
    "--weights",
    weights,
    "--input",
    `${dir}/in`,
    "--out",
    `${dir}/f.npy`,
    "--skip-bad",
  ]);
  assertEquals(skip.code, 0, skip.out);
  assertEquals(await Deno.readTextFile(`${dir}/f.npy.paths.txt`), `${dir}/in/ok.jpg\n`);
  assert((await Deno.readTextFile(`${dir}/f.npy.skipped.txt`)).startsWith(`${dir}/in/nan.npy\t`));
  for (const s of ["train", "val", "test"]) {
    for (const c of ["A", "B"]) {
      await Deno.mkdir(`${dir}/loop/${s}/${c}`, { recursive: true });
      for (const k of [1, 2]) await Deno.writeFile(`${dir}/loop/${s}/${c}/${k}.jpg`, jpg);
    }
  }
  await Deno.symlink("..", `${dir}/loop/train/A/up`);
  await Deno.symlink("../../train", `${dir}/loop/train/B/back`);
  const p = await run("probe", [
    "--weights",
    weights,
    "--seeds",
    "0",
    "--max-epochs",
    "5",
    "--tasks",
    `${dir}/loop`,
    "--out",
    `${dir}/probe`,
  ]);
  assertEquals(p.code, 0, p.out);
  assert(/\nA\s+2\s+2\s+2\n/.test(p.out) && /\nB\s+2\s+2\s+2\n/.test(p.out), p.out);
  assert(p.out.includes(`${dir}/loop/train/A/up: a link back to an enclosing folder`), p.out);
});
