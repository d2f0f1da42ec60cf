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
