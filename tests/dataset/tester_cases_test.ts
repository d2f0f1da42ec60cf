/**
 * The data bugs a tester found after issue 16 (issue 17): NaN/infinite and negative float pixels, symbolic links
 * back into the dataset, unclosed quotes merging manifest rows, tab/pipe headers, files directly under a split
 * folder, extreme aspect ratios. The tester's files are in tests/fixtures/data_cases/tester/ (images from its
 * make_tester_images.py); other layouts are built here with a small real JPEG.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "../_assert.ts";
import {
  classCounts,
  expandVolumes,
  inspectImage,
  listImageFiles,
  listTaskFolders,
  loadGreyImage,
  parseCsv,
  readImageFolderDataset,
  readLabelCsv,
  readPairManifest,
  setImageNoticeHandler,
} from "../../src/dataset/mod.ts";
import { encodeNpy } from "../../src/io/npy.ts";
import { DatasetError } from "../../src/util/errors.ts";
import { encodeTiff } from "./_tiff.ts";
import { buildTree } from "./_tree.ts";

const tester = new URL("../fixtures/data_cases/tester/", import.meta.url).pathname;
const jpg = await Deno.readFile(new URL("../fixtures/dataset/grey8.jpg", import.meta.url).pathname);

const build = buildTree;

/** The tester's generator: g = (i mod 251) + 4 on a 64x64 grid, NaN where g > 200. */
function nanCountAndFirst(): { count: number; row: number; col: number } {
  let count = 0;
  let first = -1;
  for (let i = 0; i < 64 * 64; i++) {
    if ((i % 251) + 4 > 200) {
      if (first < 0) first = i;
      count++;
    }
  }
  return { count, row: Math.floor(first / 64), col: first % 64 };
}

Deno.test("NaN pixels (.npy float64, float32 TIFF) are errors naming the file, the count and the first one", async () => {
  const { count, row, col } = nanCountAndFirst();
  const want = new RegExp(
    `${count} of 4096 values are NaN or infinite \\(the first, NaN, at row ${row}, column ${col}\\)`,
  );
  for (const f of ["n_f64_nan.npy", "t_f32_nan.tif"]) {
    // Decoding refuses it, and so does the header pre-pass (float values are scanned there).
    await assertRejects(() => loadGreyImage(`${tester}${f}`), new RegExp(`^${tester}${f}: `), DatasetError);
    await assertRejects(() => loadGreyImage(`${tester}${f}`), want);
    await assertRejects(() => inspectImage(`${tester}${f}`), want);
  }
  // Infinity too, in either float width; an integer image is never scanned beyond its header.
  const inf = new Float32Array(16).fill(0.5);
  inf[9] = -Infinity;
  const root = await build({ "inf.tif": encodeTiff([inf], 4, 4), "ok.jpg": jpg });
  await assertRejects(
    () => inspectImage(`${root}/inf.tif`),
    /1 of 16 values are NaN or infinite \(the first, -Infinity, at row 2, column 1\)/,
  );
  assertEquals((await inspectImage(`${root}/ok.jpg`)).sample, "uint8");
});

Deno.test("a NaN slice of a float volume: the pre-pass names the slice when every B-scan is taken", async () => {
  const vol = new Float32Array(3 * 8 * 8).fill(0.25);
  vol[2 * 64 + 10] = NaN;
  const root = await build({ "vol.npy": encodeNpy({ dtype: "F32", shape: [3, 8, 8], data: vol }) });
  assertEquals((await inspectImage(`${root}/vol.npy`, { slice: 0 })).slices, 3);
  await assertRejects(
    () => inspectImage(`${root}/vol.npy#slice=2`),
    /vol\.npy#slice=2: 1 of 64 values are NaN or infinite \(the first, NaN, at row 1, column 2\)/,
  );
  await assertRejects(() => expandVolumes([`${root}/vol.npy`]), /vol\.npy#slice=2: 1 of 64 values are NaN or infinite/);
});

Deno.test("a NaN image in a manifest or label CSV: the error names the line before training; --skip-bad skips it", async () => {
  const nan = await Deno.readFile(`${tester}n_f64_nan.npy`);
  const root = await build({
    "nan.npy": nan,
    "a.jpg": jpg,
    "b.jpg": jpg,
    "pairs.csv": "image,report\na.jpg,left eye normal\nnan.npy,right eye drusen\nb.jpg,no fluid\n",
    "labels.csv": "path,label,split\na.jpg,A,train\nb.jpg,B,train\nnan.npy,A,train\na.jpg,A,val\nb.jpg,B,test\n",
  });
  await assertRejects(
    () => readPairManifest(`${root}/pairs.csv`),
    /pairs\.csv:3: image .*nan\.npy: 864 of 4096 values are NaN/,
  );
  const m = await readPairManifest(`${root}/pairs.csv`, { skipBad: true });
  assertEquals(m.records.map((r) => r.image.slice(root.length + 1)), ["a.jpg", "b.jpg"]);
  assertEquals(m.skipped.map((s) => s.origin), [`${root}/pairs.csv:3`]);
  await assertRejects(() => readLabelCsv(`${root}/labels.csv`), /labels\.csv:4: image .*nan\.npy: 864 of 4096 values/);
});

Deno.test("negative float data need --intensity-range, as negative int16 do; with it they decode", async () => {
  // t_f32_neg.tif holds g - 128 with g = (i mod 251) + 4: -124..126.
  await assertRejects(
    () => loadGreyImage(`${tester}t_f32_neg.tif`),
    /t_f32_neg\.tif: float32 data with negative values \(-124\.\.126\) have no standard scaling; give --intensity-range/,
  );
  await assertRejects(() => inspectImage(`${tester}t_f32_neg.tif`), /--intensity-range/, DatasetError);
  const npy = new Float64Array(16).fill(0.5);
  npy[3] = -0.25;
  const root = await build({ "neg.npy": encodeNpy({ dtype: "F64", shape: [4, 4], data: npy }) });
  await assertRejects(() => loadGreyImage(`${root}/neg.npy`), /float64 data with negative values \(-0\.25\.\.0\.5\)/);
  const img = await loadGreyImage(`${tester}t_f32_neg.tif`, { intensityRange: [-128, 127] });
  // Pixel 0 holds g = 4, stored as -124: (-124 + 128) / 255.
  assert(Math.abs(img.data[0] - 4 / 255) < 1e-6, String(img.data[0]));
});

Deno.test("an aspect ratio beyond 20:1 prints a notice naming the file (it is stretched to a square)", async () => {
  const notes: string[] = [];
  setImageNoticeHandler((m) => notes.push(m));
  try {
    const info = await inspectImage(`${tester}wide_1x100000.png`);
    assertEquals([info.width, info.height], [100000, 1]);
    assert(notes.some((n) => /wide_1x100000\.png: 100000x1 has an aspect ratio of 100000:1/.test(n)), notes.join("\n"));
    notes.length = 0;
    setImageNoticeHandler((m) => notes.push(m));
    const root = await build({ "ok.jpg": jpg });
    await inspectImage(`${root}/ok.jpg`);
    assertEquals(notes.filter((n) => /aspect/.test(n)), []);
  } finally {
    setImageNoticeHandler(null);
  }
});

Deno.test("links to an enclosing folder are skipped at the link: classes keep their own images (tester's loop)", async () => {
  const files: Record<string, Uint8Array> = {};
  for (const s of ["train", "val", "test"]) {
    for (const c of ["A", "B"]) for (const k of [1, 2]) files[`${s}/${c}/${c}${k}.jpg`] = jpg;
  }
  const root = await build(files);
  await Deno.symlink("..", `${root}/train/A/up`);
  await Deno.symlink("../../train", `${root}/train/B/back`);
  // Inside the dataset but not enclosing: another split's class (would leak val into train under class A).
  await Deno.symlink("../../val/B", `${root}/train/A/leak`);
  const notes: string[] = [];
  const ds = await readImageFolderDataset(root, { onNotice: (m) => notes.push(m) });
  assertEquals(classCounts(ds), { train: [2, 2], val: [2, 2], test: [2, 2] });
  assert(notes.some((n) => n.includes(`${root}/train/A/up: a link back to an enclosing folder`)), notes.join("\n"));
  assert(notes.some((n) => n.includes(`${root}/train/B/back: a link back to an enclosing folder`)), notes.join("\n"));
  assert(
    notes.some((n) => n.includes(`${root}/train/A/leak: a link to`) && n.includes("read where it is")),
    notes.join("\n"),
  );
  // A class folder that is a link back up is not a class.
  await Deno.symlink("..", `${root}/val/C`);
  const again = await readImageFolderDataset(root, { onNotice: () => {} });
  assertEquals(again.classes, ["A", "B"]);
});

Deno.test("encode's folders: a link outside is followed once; a second link to it, or one into the folder, is skipped", async () => {
  const outside = await build({ "e1.jpg": jpg, "e2.jpg": jpg });
  const root = await build({ "in/a.jpg": jpg, "in/sub/b.jpg": jpg });
  await Deno.symlink(outside, `${root}/in/ext`);
  await Deno.symlink(outside, `${root}/in/sub/ext2`);
  await Deno.symlink("..", `${root}/in/sub/dup`); // encloses sub
  await Deno.symlink(`${root}/in/sub`, `${root}/in/again`); // inside the folder walked
  const notes: string[] = [];
  const paths = await listImageFiles(`${root}/in`, (m) => notes.push(m));
  assertEquals(paths.map((p) => p.slice(root.length)), [
    "/in/a.jpg",
    "/in/ext/e1.jpg",
    "/in/ext/e2.jpg",
    "/in/sub/b.jpg",
  ]);
  assert(notes.some((n) => n.includes("/in/sub/ext2: a second link to")), notes.join("\n"));
  assert(notes.some((n) => n.includes("/in/sub/dup: a link back to an enclosing folder")), notes.join("\n"));
  assert(notes.some((n) => n.includes("/in/again: a link to")), notes.join("\n"));
});

Deno.test("task discovery uses the same link rule: links back up or into tasks/ are skipped, outside ones kept", async () => {
  const outside = await build({ "x": "" });
  const root = await build({ "tasks/t1/x": "", "tasks/.hidden/x": "", "tasks/file.txt": "" });
  await Deno.symlink("t1", `${root}/tasks/t2`);
  await Deno.symlink("..", `${root}/tasks/t3`);
  await Deno.symlink(outside, `${root}/tasks/t4`);
  const notes: string[] = [];
  const dirs = await listTaskFolders(`${root}/tasks`, (m) => notes.push(m));
  assertEquals(dirs.map((d) => d.slice(root.length)), ["/tasks/t1", "/tasks/t4"]);
  assertEquals(notes.length, 2, notes.join("\n"));
});

Deno.test("files directly under a split folder belong to no class: a notice, not silence", async () => {
  const files: Record<string, Uint8Array | string> = { "train/stray.jpg": jpg, "train/notes.txt": "x" };
  for (const s of ["train", "val", "test"]) for (const c of ["A", "B"]) files[`${s}/${c}/1.jpg`] = jpg;
  const root = await build(files);
  const notes: string[] = [];
  const ds = await readImageFolderDataset(root, { onNotice: (m) => notes.push(m) });
  assertEquals(classCounts(ds).train, [1, 1]);
  assert(
    notes.some((n) =>
      n.includes(`${root}/train: 2 file(s) directly under the split folder belong to no class`) &&
      n.includes("1 image(s); e.g. stray.jpg")
    ),
    notes.join("\n"),
  );
});

Deno.test("an unclosed quote merging rows is an error naming the line it opened on (tester's manifest)", async () => {
  const text = await Deno.readTextFile(`${tester}unterminated_quote.csv`);
  assertThrows(
    () => parseCsv(text, "uq.csv"),
    /uq\.csv:2: unterminated quoted field\? the quote opened on line 2 runs on to line 3, which starts like a new row/,
    DatasetError,
  );
  assertThrows(
    () => parseCsv('image,report\na.png,"no end\nmore text\n', "e.csv"),
    /e\.csv:2: unterminated quoted field: the quote opened on line 2 is never closed/,
  );
  // A report that really spans lines still reads, with its line numbers.
  const ok = parseCsv('image,report\na.png,"line one\nimpression: normal, see a.png"\nb.png,x\n', "m.csv");
  assertEquals(ok.rows.map((r) => [r.line, r.values.report]), [[2, "line one\nimpression: normal, see a.png"], [
    4,
    "x",
  ]]);
});

Deno.test("a tab- or pipe-delimited manifest: the missing-column error says it looks delimited by it", async () => {
  await assertRejects(
    () => readPairManifest(`${tester}tab.csv`, { checkFiles: false }),
    /missing column "image".*the header "image\\treport\\tpatient" looks tab-delimited: 3 names separated by tabs/,
  );
  await assertRejects(
    () => readPairManifest(`${tester}pipe.csv`, { checkFiles: false }),
    /missing column "image".*looks pipe-delimited: 3 names separated by "\|"/,
  );
  const root = await build({ "l.csv": "path;label;split\na.jpg;A;train\n" });
  await assertRejects(() => readLabelCsv(`${root}/l.csv`), /missing column "path".*looks semicolon-delimited/);
  // One real column with no other delimiter in it: no hint.
  const r2 = await build({ "l.csv": "path\na.jpg\n" });
  await assertRejects(() => readLabelCsv(`${r2}/l.csv`), /missing column "label"; columns are: path$/);
});
