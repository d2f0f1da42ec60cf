import { assert, assertAllClose, assertEquals, assertRejects, maxAbsDiff } from "../_assert.ts";
import { readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import { affine, type AffineParams, loadGreyImage, resizeGrey, toModelInput } from "../../src/dataset/mod.ts";
import { DatasetError } from "../../src/util/errors.ts";
import { encodeNpy } from "../../src/io/mod.ts";
import { Rng } from "../../src/util/rng.ts";
import { augmentProbe } from "../../src/dataset/augment.ts";

const dir = new URL("../fixtures/dataset/", import.meta.url).pathname;
const exp = readSafetensors(`${dir}expected.safetensors`).tensors;
const e = (k: string) => toFloat32(exp.get(k)!);

Deno.test("decodes PNG, 8/16-bit TIFF, BMP, RGB (PIL grey weights) and .npy to the same grey values as PIL/numpy", async () => {
  const cases: [string, string, number][] = [
    ["grey8.png", "grey8", 1e-7],
    ["grey8.tif", "grey8", 1e-7],
    ["grey8.bmp", "grey8", 1e-7],
    ["grey8.npy", "grey8", 1e-7],
    ["float.npy", "grey8", 1e-7],
    ["float255.npy", "grey8", 1e-7],
    ["grey16.tif", "grey16", 1e-7],
    ["grey16.npy", "grey16", 1e-7],
    ["rgb.png", "rgb_as_L", 1e-7],
    ["rgb24.bmp", "rgb_as_L", 1e-7],
    ["grey8.jpg", "jpg_as_L", 2 / 255],
  ];
  for (const [file, key, tol] of cases) {
    const img = await loadGreyImage(`${dir}${file}`);
    assertEquals([img.height, img.width], [47, 61], file);
    assertAllClose(img.data, e(key), tol, file);
  }
});

Deno.test("bad images give a DatasetError naming the file", async () => {
  await assertRejects(
    () => loadGreyImage(`${dir}not_an_image.png`),
    /not_an_image\.png: truncated or corrupt PNG header/,
    DatasetError,
  );
  await assertRejects(() => loadGreyImage(`${dir}missing.png`), /missing\.png: image file not found/, DatasetError);
  const empty = await Deno.makeTempFile({ suffix: ".png" });
  await assertRejects(() => loadGreyImage(empty), /image file is empty/, DatasetError);
  const npy4d = await Deno.makeTempFile({ suffix: ".npy" });
  await Deno.writeFile(npy4d, encodeNpy({ dtype: "F32", shape: [2, 2, 3, 4], data: new Float32Array(48) }));
  await assertRejects(
    () => loadGreyImage(npy4d),
    /expected a 2-D B-scan or a 3-D volume.*got shape \(2,2,3,4\)/,
    DatasetError,
  );
  const rgb = await Deno.makeTempFile({ suffix: ".npy" });
  await Deno.writeFile(rgb, encodeNpy({ dtype: "F32", shape: [8, 9, 3], data: new Float32Array(216) }));
  await assertRejects(
    () => loadGreyImage(rgb),
    /shape \(8,9,3\) looks like a channels-last colour image/,
    DatasetError,
  );
  await Deno.remove(empty);
  await Deno.remove(npy4d);
  await Deno.remove(rgb);
});

Deno.test("bicubic resize matches torch F.interpolate(bicubic, align_corners=False, antialias=True)", async () => {
  // torchvision >= 0.17 (the authors' torch 2.4.1) antialiases tensor resizes by default: shrinking and enlarging.
  const img = await loadGreyImage(`${dir}grey8.png`);
  for (const [h, w] of [[30, 40], [64, 80], [13, 17], [40, 100]]) {
    const r = resizeGrey(img, w, h, "bicubic");
    const d = maxAbsDiff(r.data, e(`bicubic_${h}x${w}`));
    assert(d < 1e-5, `bicubic ${h}x${w}: ${d}`);
  }
});

Deno.test("bicubic-noaa resize matches torch F.interpolate(bicubic) without antialiasing (torchvision < 0.17)", async () => {
  const img = await loadGreyImage(`${dir}grey8.png`);
  for (const [h, w] of [[30, 40], [64, 80], [13, 17], [40, 100]]) {
    const r = resizeGrey(img, w, h, "bicubic-noaa");
    const d = maxAbsDiff(r.data, e(`bicubic_noaa_${h}x${w}`));
    assert(d < 1e-5, `bicubic-noaa ${h}x${w}: ${d}`);
    // The two differ where it matters: shrinking without a low-pass keeps more high-frequency energy.
    if (h < 48) assert(maxAbsDiff(r.data, e(`bicubic_${h}x${w}`)) > 1e-3, `${h}x${w}: antialiasing changed nothing`);
  }
});

Deno.test("bilinear resize matches PIL's Image.resize(BILINEAR) within one grey level", async () => {
  const img = await loadGreyImage(`${dir}grey8.png`);
  for (const [h, w] of [[24, 33], [64, 80]]) {
    const r = resizeGrey(img, w, h, "bilinear", { pil8bit: true });
    const d = maxAbsDiff(r.data, e(`pil_bilinear_${h}x${w}`));
    assert(d <= 1 / 255 + 1e-6, `bilinear ${h}x${w}: ${d * 255} grey levels`);
  }
});

Deno.test("affine warp matches torchvision F.affine (bilinear, fill 0)", async () => {
  const img = await loadGreyImage(`${dir}grey8.png`);
  const params = JSON.parse(await Deno.readTextFile(`${dir}affine_params.json`)) as AffineParams[];
  params.forEach((p, i) => {
    const d = maxAbsDiff(affine(img, p).data, e(`affine_${i}`));
    assert(d < 1e-4, `affine ${i}: ${d}`);
  });
});

Deno.test("probe augmentation is seeded and keeps values in [0, 1]", async () => {
  const img = await loadGreyImage(`${dir}grey8.png`);
  const a = augmentProbe(img, new Rng(5));
  const b = augmentProbe(img, new Rng(5));
  const c = augmentProbe(img, new Rng(6));
  assertEquals(a.data, b.data);
  assert(maxAbsDiff(a.data, c.data) > 0.01);
  assert(a.data.every((v) => v >= 0 && v <= 1));
});

Deno.test("toModelInput repeats to 3 channels and normalises per channel", async () => {
  const img = await loadGreyImage(`${dir}grey8.png`);
  const x = toModelInput(img, { size: 16, resize: "bilinear", mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.5] });
  assertEquals(x.length, 3 * 16 * 16);
  const g = resizeGrey(img, 16, 16, "bilinear").data;
  for (const [c, m, s] of [[0, 0.5, 0.2], [1, 0.4, 0.25], [2, 0.3, 0.5]]) {
    assertAllClose(x.subarray(c * 256, (c + 1) * 256), g.map((v) => (v - m) / s), 1e-6, `channel ${c}`);
  }
});
