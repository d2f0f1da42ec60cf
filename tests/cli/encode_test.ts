/** `deno task encode` end to end: a folder of PNG/JPEG/16-bit TIFF B-scans through a VisionFM-layout checkpoint. */
import { assert, assertEquals, maxAbsDiff } from "../_assert.ts";
import { parseNpy, readSafetensors, toFloat32 } from "../../src/io/mod.ts";

const root = new URL("../../", import.meta.url).pathname;
const fixtures = `${root}tests/fixtures/`;

async function runEncode(args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}src/cli/encode.ts`, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("encode: folder of PNG/JPEG/TIFF → cls and concat features match PyTorch", async () => {
  const dir = await Deno.makeTempDir();
  const files = JSON.parse(await Deno.readTextFile(`${fixtures}encoders/encode_files.json`)) as string[];
  for (const f of files) await Deno.copyFile(`${fixtures}dataset/${f}`, `${dir}/${f}`);
  const expected = readSafetensors(`${fixtures}encoders/encode_expected.safetensors`).tensors;
  const outDir = await Deno.makeTempDir();
  for (const mode of ["cls", "concat"]) {
    const out = `${outDir}/${mode}.npy`;
    const r = await runEncode([
      "--weights",
      `${fixtures}encoders/visionfm_tiny.pth`,
      "--heads",
      "4",
      "--input",
      dir,
      "--tokens",
      mode,
      "--out",
      out,
    ]);
    assertEquals(r.code, 0, r.stderr);
    // `deno task test:webgpu` runs this file with RETFINER_BACKEND=webgpu: the CLI must really have used it.
    const wanted = Deno.env.get("RETFINER_BACKEND");
    if (wanted) assert(r.stderr.includes(`backend: ${wanted} `), r.stderr);
    const arr = parseNpy(await Deno.readFile(out));
    assertEquals(arr.shape, expected.get(mode)!.shape);
    const want = toFloat32(expected.get(mode)!);
    const got = arr.data as Float32Array;
    // PNG and TIFF decode bit-exactly; JPEG decoders (libvips vs PIL) may differ by a grey level.
    const per = want.length / files.length;
    files.forEach((f, i) => {
      const d = maxAbsDiff(got.subarray(i * per, (i + 1) * per), want.subarray(i * per, (i + 1) * per));
      assert(d < (f.endsWith(".jpg") ? 0.05 : 2e-4), `${mode} ${f}: max |diff| ${d}`);
    });
    const order = (await Deno.readTextFile(`${out}.paths.txt`)).trim().split("\n").map((p) => p.split("/").pop());
    assertEquals(order, files);
  }
});

Deno.test("encode: all tokens to safetensors with metadata; bad flags are clear errors", async () => {
  const dir = await Deno.makeTempDir();
  const out = `${dir}/t.safetensors`;
  const r = await runEncode([
    "--weights",
    `${fixtures}encoders/urfound_tiny.pth`,
    "--heads",
    "4",
    "--input",
    `${fixtures}dataset/grey8.png`,
    "--tokens",
    "all",
    "--out",
    out,
  ]);
  assertEquals(r.code, 0, r.stderr);
  const st = readSafetensors(out);
  assertEquals(st.tensors.get("features")!.shape, [1, 197, 64]);
  assertEquals(st.metadata["retfiner.family"], "urfound");
  const bad = await runEncode([
    "--weights",
    `${fixtures}encoders/urfound_tiny.pth`,
    "--input",
    dir,
    "--out",
    `${dir}/x.txt`,
  ]);
  assertEquals(bad.code, 1);
  assert(/--out must end in \.npy or \.safetensors/.test(bad.stderr), bad.stderr);
  const missing = await runEncode(["--weights", "/nope.pth", "--input", dir, "--out", `${dir}/x.npy`]);
  assertEquals(missing.code, 1);
  assert(/\/nope\.pth: file not found/.test(missing.stderr), missing.stderr);
});

Deno.test("encode: links followed, hidden files skipped, BOM manifests read, volumes by --slice, --skip-bad lists bad images", async () => {
  const dir = await Deno.makeTempDir();
  const src = await Deno.makeTempDir();
  const o = await Deno.makeTempDir(); // outputs (a feature .npy in the input folder would be an input)
  await Deno.copyFile(`${fixtures}dataset/grey8.png`, `${src}/a.png`);
  await Deno.copyFile(`${fixtures}dataset/grey8.jpg`, `${src}/b.jpg`);
  await Deno.copyFile(`${fixtures}dataset/grey8.tif`, `${dir}/c.tif`);
  await Deno.symlink(`${src}/a.png`, `${dir}/a.png`);
  await Deno.mkdir(`${dir}/linked`);
  await Deno.symlink(src, `${dir}/linked/src`);
  await Deno.writeTextFile(`${dir}/._c.tif`, "AppleDouble");
  await Deno.writeTextFile(`${dir}/.DS_Store`, "junk");
  await Deno.mkdir(`${dir}/.ipynb_checkpoints`);
  await Deno.copyFile(`${fixtures}dataset/grey8.png`, `${dir}/.ipynb_checkpoints/x-checkpoint.png`);
  const args = (input: string, out: string, ...more: string[]) => [
    "--weights",
    `${fixtures}encoders/urfound_tiny.pth`,
    "--heads",
    "4",
    "--input",
    input,
    "--out",
    out,
    ...more,
  ];
  const r = await runEncode(args(dir, `${o}/f.npy`));
  assertEquals(r.code, 0, r.stderr);
  const order = (await Deno.readTextFile(`${o}/f.npy.paths.txt`)).trim().split("\n").map((p) => p.slice(dir.length));
  assertEquals(order, ["/a.png", "/c.tif", "/linked/src/a.png", "/linked/src/b.jpg"]);
  // A manifest with a BOM and CRLF (Excel) and a path column.
  await Deno.writeFile(
    `${dir}/m.csv`,
    new TextEncoder().encode("\ufeffpath,label,split\r\na.png,CNV ,train\r\nc.tif,NORMAL,train\r\n"),
  );
  const m = await runEncode(args(`${dir}/m.csv`, `${o}/m.npy`));
  assertEquals(m.code, 0, m.stderr);
  assertEquals(parseNpy(await Deno.readFile(`${o}/m.npy`)).shape, [2, 64]);
  // A 3-page volume: an error without --slice; --slice all encodes every B-scan.
  const { encodeTiff } = await import("../dataset/_tiff.ts");
  const page = (k: number) => Uint8Array.from({ length: 20 * 16 }, (_, i) => (i * 7 + 50 * k) % 256);
  await Deno.writeFile(`${dir}/vol.tif`, encodeTiff([page(0), page(1), page(2)], 20, 16));
  const v0 = await runEncode(args(`${dir}/vol.tif`, `${o}/v.npy`));
  assertEquals(v0.code, 1);
  assert(/vol\.tif: a volume of 3 B-scans \(TIFF pages\); choose one with --slice/.test(v0.stderr), v0.stderr);
  const v = await runEncode(args(`${dir}/vol.tif`, `${o}/v.npy`, "--slice", "all"));
  assertEquals(v.code, 0, v.stderr);
  const vf = parseNpy(await Deno.readFile(`${o}/v.npy`));
  assertEquals(vf.shape, [3, 64]);
  const d = vf.data as Float32Array;
  assert(maxAbsDiff(d.subarray(0, 64), d.subarray(64, 128)) > 1e-4, "the three B-scans differ");
  assertEquals((await Deno.readTextFile(`${o}/v.npy.paths.txt`)).trim().split("\n").map((p) => p.split("/").pop()), [
    "vol.tif#slice=0",
    "vol.tif#slice=1",
    "vol.tif#slice=2",
  ]);
  // Bad images: an error listing them, or skipped and listed with --skip-bad.
  await Deno.copyFile(`${fixtures}data_cases/lfs_pointer.png`, `${dir}/lfs.png`);
  await Deno.copyFile(`${fixtures}data_cases/i01b_bomb_16383x16383_grey.png`, `${dir}/bomb.png`);
  await Deno.remove(`${dir}/vol.tif`);
  const bad = await runEncode(args(dir, `${o}/b.npy`));
  assertEquals(bad.code, 1);
  assert(/2 image\(s\) cannot be used/.test(bad.stderr) && /bomb\.png: 16383x16383/.test(bad.stderr), bad.stderr);
  const skip = await runEncode(args(dir, `${o}/b.npy`, "--skip-bad"));
  assertEquals(skip.code, 0, skip.stderr);
  assertEquals(parseNpy(await Deno.readFile(`${o}/b.npy`)).shape, [4, 64]);
  const listed = await Deno.readTextFile(`${o}/b.npy.skipped.txt`);
  assert(/bomb\.png\t.*exceeds the limit/.test(listed) && /lfs\.png\t.*Git LFS pointer/.test(listed), listed);
  // From a manifest, a bad image is named with its manifest line.
  await Deno.writeTextFile(`${dir}/bad.csv`, "path,label,split\na.png,CNV,train\nlfs.png,CNV,train\n");
  const badRow = await runEncode(args(`${dir}/bad.csv`, `${o}/br.npy`));
  assertEquals(badRow.code, 1);
  assert(/bad\.csv:3: .*lfs\.png.*Git LFS pointer/.test(badRow.stderr), badRow.stderr);
  // A lower --max-pixels refuses the 61x47 images too.
  const small = await runEncode(args(`${dir}/c.tif`, `${o}/s.npy`, "--max-pixels", "1000"));
  assertEquals(small.code, 1);
  assert(/61x47 = 2867 pixels exceeds the limit of 1000/.test(small.stderr), small.stderr);
});
