/**
 * Image formats from the wild (issue 16 item 3) and image bounds (issue 17 item 5): float/signed/12-bit TIFFs,
 * volumes, content sniffing, extension agreement, the pixel limit checked from the header, the header pre-pass.
 * The expected grey values come from PIL (tests/fixtures/make_dataset.py), not from the code under test.
 */
import { assert, assertEquals, assertRejects, maxAbsDiff } from "../_assert.ts";
import { encodeNpy, readSafetensors, toFloat32 } from "../../src/io/mod.ts";
import {
  expandVolumes,
  inspectImage,
  loadGreyImage,
  parseIntensityRange,
  parseVolumeSlice,
  setImageDefaults,
  setImageNoticeHandler,
  volumeSlicePath,
} from "../../src/dataset/mod.ts";
import { DatasetError } from "../../src/util/errors.ts";
import { encodeTiff } from "./_tiff.ts";

const dir = new URL("../fixtures/dataset/", import.meta.url).pathname;
const cases = new URL("../fixtures/data_cases/", import.meta.url).pathname;
const grey8 = toFloat32(readSafetensors(`${dir}expected.safetensors`).tensors.get("grey8")!); // PIL, /255
const W = 61, H = 47, N = W * H;
const u8 = Uint8Array.from(grey8, (x) => Math.round(x * 255));

async function tmp(bytes: Uint8Array, suffix: string): Promise<string> {
  const p = await Deno.makeTempFile({ suffix });
  await Deno.writeFile(p, bytes);
  return p;
}

function collectNotices(): string[] {
  const notes: string[] = [];
  setImageNoticeHandler((m) => notes.push(m));
  return notes;
}

Deno.test("float32/float64 TIFFs (either byte order) decode like float .npy: equal to the 8-bit PNG", async () => {
  const png = await loadGreyImage(`${dir}grey8.png`);
  const f32 = Float32Array.from(u8, (x) => x / 255);
  const f64 = Float64Array.from(u8, (x) => x / 255);
  const f255 = Float32Array.from(u8); // ImageJ's float export of an 8-bit image keeps 0..255
  for (
    const [label, bytes] of [
      ["f32 LE", encodeTiff([f32], W, H)],
      ["f32 BE", encodeTiff([f32], W, H, true)],
      ["f64 LE", encodeTiff([f64], W, H)],
      ["f32 0..255", encodeTiff([f255], W, H)],
    ] as const
  ) {
    const img = await loadGreyImage(await tmp(bytes, ".tif"));
    assertEquals([img.width, img.height], [W, H], label);
    assert(maxAbsDiff(img.data, png.data) < 1e-6, `${label}: ${maxAbsDiff(img.data, png.data)}`);
  }
});

Deno.test("the case file bscan_f32.tif equals the same scan in 8 bits (bscan_u8.png = CNV-1001-1.npy) (never a black image)", async () => {
  const f = await loadGreyImage(`${cases}bscan_f32_crop.tif`);
  const p = await loadGreyImage(`${cases}bscan_u8_crop.npy`);
  assertEquals([f.width, f.height], [p.width, p.height]);
  assert(maxAbsDiff(f.data, p.data) <= 0.5 / 255 + 1e-6, `max diff ${maxAbsDiff(f.data, p.data) * 255} grey levels`);
  assert(Math.max(...f.data) > 0.4, "not black");
});

Deno.test("signed 16-bit TIFF and .npy: non-negative data scaled by 32767, negative data need --intensity-range", async () => {
  const i16 = Int16Array.from(u8, (x) => x * 128);
  const img = await loadGreyImage(await tmp(encodeTiff([i16], W, H), ".tif"));
  assert(maxAbsDiff(img.data, Float32Array.from(u8, (x) => (x * 128) / 32767)) < 1e-6);
  const npy = await loadGreyImage(await tmp(encodeNpy({ dtype: "I16", shape: [H, W], data: i16 } as never), ".npy"));
  assert(maxAbsDiff(npy.data, img.data) < 1e-7);
  const neg = Int16Array.from(u8, (x) => x * 100 - 10000);
  const p = await tmp(encodeTiff([neg], W, H, true), ".tif");
  await assertRejects(() => loadGreyImage(p), /negative values .*give --intensity-range/, DatasetError);
  const ranged = await loadGreyImage(p, { intensityRange: [-10000, 15500] });
  assert(maxAbsDiff(ranged.data, Float32Array.from(u8, (x) => (x * 100) / 25500)) < 1e-6);
});

Deno.test("12-bit data in 16 bits: a notice naming the file and the fix; --intensity-range 0,4095 scales it", async () => {
  const notes = collectNotices();
  const u12 = Uint16Array.from(u8, (x) => x * 16); // at most 4080
  const p = await tmp(encodeTiff([u12], W, H), ".tif");
  const dark = await loadGreyImage(p);
  assert(maxAbsDiff(dark.data, Float32Array.from(u12, (x) => x / 65535)) < 1e-7);
  assertEquals(notes.length, 1);
  assert(
    notes[0].includes(p) && /never exceed \d+ \(12-bit data\?\).*--intensity-range 0,4095/.test(notes[0]),
    notes[0],
  );
  const full = await loadGreyImage(p, { intensityRange: parseIntensityRange("0,4095") });
  assert(maxAbsDiff(full.data, Float32Array.from(u12, (x) => x / 4095)) < 1e-6);
  // Real 16-bit data (above 4095): no notice.
  notes.length = 0;
  await loadGreyImage(await tmp(encodeTiff([Uint16Array.from(u8, (x) => x * 257)], W, H), ".tif"));
  assertEquals(notes, []);
  setImageNoticeHandler(null);
});

Deno.test("volumes: a multi-page TIFF or 3-D .npy is an error without --slice; a chosen slice is said; all expands", async () => {
  const notes = collectNotices();
  const pages = [0, 1, 2].map((k) => Uint8Array.from(u8, (x) => Math.min(255, x + 40 * k)));
  const tif = await tmp(encodeTiff(pages, W, H), ".tif");
  const vol = new Float32Array(3 * N);
  pages.forEach((pg, k) => vol.set(Float32Array.from(pg, (x) => x / 255), k * N));
  const npy = await tmp(encodeNpy({ dtype: "F32", shape: [3, H, W], data: vol }), ".npy");
  for (const p of [tif, npy]) {
    await assertRejects(() => loadGreyImage(p), /a volume of 3 B-scans.*--slice/, DatasetError);
    await assertRejects(() => inspectImage(p), /a volume of 3 B-scans/, DatasetError);
    const mid = await loadGreyImage(p, { slice: "middle" });
    assert(maxAbsDiff(mid.data, Float32Array.from(pages[1], (x) => x / 255)) < 1e-6, p);
    const last = await loadGreyImage(volumeSlicePath(p, 2));
    assert(maxAbsDiff(last.data, Float32Array.from(pages[2], (x) => x / 255)) < 1e-6, p);
    await assertRejects(
      () => loadGreyImage(volumeSlicePath(p, 3)),
      /slice 3 requested, the volume has 3/,
      DatasetError,
    );
    assertEquals(
      await expandVolumes([p, `${dir}grey8.png`]),
      [0, 1, 2].map((k) => `${p}#slice=${k}`).concat(`${dir}grey8.png`),
    );
  }
  assert(notes.some((n) => /a volume of 3 B-scans: using slice 1 \(--slice middle\)/.test(n)), notes.join("\n"));
  assertEquals(parseVolumeSlice("All"), "all");
  assertEquals(parseVolumeSlice("7"), 7);
  setImageNoticeHandler(null);
});

Deno.test("formats are sniffed by content, must agree with the extension; vector/animated/LFS/HTML content is refused", async () => {
  const png = await Deno.readFile(`${dir}grey8.png`);
  const jpg = await Deno.readFile(`${dir}grey8.jpg`);
  const refused: [Uint8Array, string, RegExp][] = [
    [jpg, ".png", /content is JPEG but the name says \.png/],
    [png, ".tif", /content is PNG but the name says \.tif/],
    [new TextEncoder().encode('<svg xmlns="http://www.w3.org/2000/svg" width="90000" height="90000"/>'), ".png", /SVG/],
    [new TextEncoder().encode('<?xml version="1.0"?>\n<svg width="1" height="1"></svg>'), ".jpg", /SVG/],
    [new TextEncoder().encode("GIF89a\x01\x00\x01\x00\x00\x00\x00;"), ".png", /GIF content/],
    [new TextEncoder().encode("RIFF\x1a\x00\x00\x00WEBPVP8 "), ".jpeg", /WebP content/],
    [await Deno.readFile(`${cases}lfs_pointer.png`), ".png", /Git LFS pointer/],
    [new TextEncoder().encode("<!DOCTYPE html><html><body>404</body></html>"), ".png", /HTML page/],
    [Uint8Array.from([...new Uint8Array(128), ...new TextEncoder().encode("DICM"), 0, 0]), ".png", /DICOM/],
  ];
  for (const [bytes, ext, re] of refused) {
    const p = await tmp(bytes, ext);
    await assertRejects(() => loadGreyImage(p), re, DatasetError);
    await assertRejects(() => inspectImage(p), re, DatasetError);
  }
  // Upper-case extensions are fine (Kermany's .JPEG).
  const ok = await tmp(jpg, ".JPEG");
  assertEquals((await inspectImage(ok)).format, "jpeg");
});

Deno.test("the pixel limit is checked from the header before decoding (a 16383x16383 PNG bomb)", async () => {
  const bomb = `${cases}i01b_bomb_16383x16383_grey.png`;
  const t0 = performance.now();
  await assertRejects(
    () => loadGreyImage(bomb),
    /16383x16383 = 268402689 pixels exceeds the limit of 16777216/,
    DatasetError,
  );
  await assertRejects(() => inspectImage(bomb), /exceeds the limit/, DatasetError);
  assert(performance.now() - t0 < 2000, "refused quickly");
  // A smaller limit, per call or as the default.
  await assertRejects(
    () => loadGreyImage(`${dir}grey8.png`, { maxPixels: 100 }),
    /61x47 = 2867 pixels exceeds the limit of 100/,
  );
  setImageDefaults({ maxPixels: 2000 });
  try {
    for (const f of ["grey8.png", "grey8.jpg", "grey8.tif", "grey8.bmp", "grey8.npy"]) {
      await assertRejects(() => loadGreyImage(`${dir}${f}`), /exceeds the limit of 2000/, DatasetError);
      await assertRejects(() => inspectImage(`${dir}${f}`), /exceeds the limit of 2000/, DatasetError);
    }
  } finally {
    setImageDefaults({ maxPixels: 4096 * 4096 });
  }
});

Deno.test("the header pre-pass finds truncated files of every format without decoding good ones", async () => {
  const files: [string, string][] = [
    ["grey8.png", ".png"],
    ["grey8.jpg", ".jpg"],
    ["grey8.tif", ".tif"],
    ["grey8.bmp", ".bmp"],
    ["grey8.npy", ".npy"],
  ];
  for (const [f, ext] of files) {
    const full = await Deno.readFile(`${dir}${f}`);
    assertEquals((await inspectImage(`${dir}${f}`)).width, W, f);
    const cut = await tmp(full.subarray(0, Math.floor(full.length * 0.7)), ext);
    await assertRejects(() => inspectImage(cut), /truncated|corrupt/, DatasetError);
  }
  await assertRejects(() => inspectImage(`${cases}truncated_download.jpeg`), /truncated or corrupt JPEG/, DatasetError);
});

Deno.test("hostile TIFFs: IFD loops, overlapping page chains, strips past the end are refused quickly", async () => {
  const base = encodeTiff([new Uint8Array(12)], 4, 3);
  const v = new DataView(base.buffer);
  // Next-IFD pointer back to the first IFD: a loop.
  const loop = base.slice();
  new DataView(loop.buffer).setUint32(8 + 2 + 10 * 12, 8, true);
  await assertRejects(async () => inspectImage(await tmp(loop, ".tif")), /IFD loop at byte 8/, DatasetError);
  // 10,000 pages sharing one pair of 60,000-entry strip tables: 4.8 GB of table reads without a bound.
  const pages = 10_000, rows = 60_000, entries = 9;
  const ifdSize = 2 + entries * 12 + 4;
  const tables = 8 + pages * ifdSize;
  const big = new Uint8Array(tables + 8 * rows);
  big.set([0x49, 0x49, 42, 0]);
  const bv = new DataView(big.buffer);
  bv.setUint32(4, 8, true);
  for (let k = 0; k < pages; k++) {
    const at = 8 + k * ifdSize;
    bv.setUint16(at, entries, true);
    const tags = [
      [256, 4, 1, 1],
      [257, 4, 1, rows],
      [258, 3, 1, 8],
      [259, 3, 1, 1],
      [262, 3, 1, 1],
      [
        273,
        4,
        rows,
        tables,
      ],
      [277, 3, 1, 1],
      [278, 4, 1, 1],
      [279, 4, rows, tables + 4 * rows],
    ];
    tags.forEach(([tag, type, count, value], j) => {
      const e = at + 2 + 12 * j;
      bv.setUint16(e, tag, true);
      bv.setUint16(e + 2, type, true);
      bv.setUint32(e + 4, count, true);
      if (type === 3) bv.setUint16(e + 8, value, true);
      else bv.setUint32(e + 8, value, true);
    });
    bv.setUint32(at + 2 + entries * 12, k + 1 < pages ? at + ifdSize : 0, true);
  }
  const t0 = performance.now();
  await assertRejects(
    async () => inspectImage(await tmp(big, ".tif")),
    /corrupt TIFF \(its tables take more than twice the file's size to read/,
    DatasetError,
  );
  assert(performance.now() - t0 < 3000, `${performance.now() - t0} ms`);
  // A strip that points past the end of the file: truncated.
  const cut = base.slice();
  const e = 8 + 2 + 5 * 12; // StripOffsets entry
  new DataView(cut.buffer).setUint32(e + 8, 10_000, true);
  await assertRejects(async () => inspectImage(await tmp(cut, ".tif")), /truncated/, DatasetError);
  assertEquals(v.getUint16(8, true), 10);
});

Deno.test(".npy images: the header is checked as numpy checks it (a repeated or extra key is refused, naming the file)", async () => {
  const npy = (header: string) => {
    const text = header.padEnd(118, " ") + "\n";
    const out = new Uint8Array(10 + text.length + 16);
    out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
    new DataView(out.buffer).setUint16(8, text.length, true);
    out.set(new TextEncoder().encode(text), 10);
    out.fill(128, 10 + text.length);
    return out;
  };
  const dir = await Deno.makeTempDir();
  try {
    const good = `${dir}/good.npy`;
    await Deno.writeFile(good, npy("{'descr': '|u1', 'fortran_order': False, 'shape': (4, 4), }"));
    assertEquals((await inspectImage(good)).width, 4);
    for (
      const [file, header, why] of [
        ["twice.npy", "{'descr': '|u1', 'descr': '|u1', 'fortran_order': False, 'shape': (4, 4), }", /appears twice/],
        ["extra.npy", "{'descr': '|u1', 'fortran_order': False, 'shape': (4, 4), 'x': 1, }", /exactly the keys/],
      ] as const
    ) {
      await Deno.writeFile(`${dir}/${file}`, npy(header));
      const err = await assertRejects(() => inspectImage(`${dir}/${file}`), why, DatasetError);
      assert(err.message.includes(file), err.message);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
