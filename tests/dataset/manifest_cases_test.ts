/**
 * Manifests from the wild (issue 16 items 1, 4, 5): the cases in tests/fixtures/data_cases/ (copied from
 * ../shared/cases/data) and more of each kind: bad images found before training, with or without --skip-bad;
 * BOMs, delimiters, encodings, duplicated columns, split values; reports that are not strings; a validation
 * split too small for a loss; large manifests.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "../_assert.ts";
import { assignSplits, checkValidationSplit, decodeText, parseCsv, readPairManifest } from "../../src/dataset/mod.ts";
import { DatasetError } from "../../src/util/errors.ts";
import { encodeTiff } from "./_tiff.ts";

const cases = new URL("../fixtures/data_cases/", import.meta.url).pathname;
const fx = new URL("../fixtures/dataset/", import.meta.url).pathname;
const jpg = await Deno.readFile(`${fx}grey8.jpg`);

/** A temp folder with the case's manifest and images/ holding real (small) images under the case's names. */
async function caseDir(manifest: string, extra: Record<string, Uint8Array> = {}): Promise<string> {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/images`);
  for (const n of ["CNV-1001-1.jpeg", "NORMAL-1004-1.jpeg", "DME-1002-1.jpeg", "DRUSEN-1003-1.jpeg"]) {
    await Deno.writeFile(`${dir}/images/${n}`, jpg);
  }
  await Deno.writeFile(`${dir}/images/NORMAL-PatientB_000002_c.jpg`, jpg);
  for (const [n, b] of Object.entries(extra)) await Deno.writeFile(`${dir}/${n}`, b);
  await Deno.copyFile(`${cases}${manifest}`, `${dir}/${manifest}`);
  return `${dir}/${manifest}`;
}

async function c14(): Promise<string> {
  return await caseDir("C14_bad_images.csv", {
    "images/lfs_pointer.png": await Deno.readFile(`${cases}lfs_pointer.png`),
    "images/truncated_download.jpeg": await Deno.readFile(`${cases}truncated_download.jpeg`),
    "images/bscan_f32.tif": await Deno.readFile(`${cases}bscan_f32_crop.tif`),
  });
}

Deno.test("C14: undecodable images are found before training; the error names file and manifest line", async () => {
  const m = await c14();
  await assertRejects(
    () => readPairManifest(m),
    /C14_bad_images\.csv:6: image .*lfs_pointer\.png: this is a Git LFS pointer/,
    DatasetError,
  );
});

Deno.test("C14 with skipBad: the LFS pointer and the truncated JPEG are skipped with line and reason; the float TIFF is kept", async () => {
  const { records, skipped } = await readPairManifest(await c14(), { skipBad: true });
  assertEquals(skipped.map((s) => s.origin.split("/").pop()), ["C14_bad_images.csv:6", "C14_bad_images.csv:7"]);
  assert(/Git LFS pointer/.test(skipped[0].reason), skipped[0].reason);
  assert(/truncated_download\.jpeg: truncated or corrupt JPEG/.test(skipped[1].reason), skipped[1].reason);
  assertEquals(records.length, 6);
  assert(records.some((r) => r.image.endsWith("bscan_f32.tif")));
});

Deno.test("more bad images of the kinds: GIF, SVG, HTML, empty, wrong extension, too large, volume without a slice", async () => {
  const dir = await Deno.makeTempDir();
  const files: Record<string, Uint8Array> = {
    "ok.jpg": jpg,
    "anim.png": new TextEncoder().encode("GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
    "vector.jpg": new TextEncoder().encode("<svg width='99999' height='99999'/>"),
    "page.png": new TextEncoder().encode("<html><body>Access denied</body></html>"),
    "empty.png": new Uint8Array(0),
    "renamed.png": jpg,
    "volume.tif": encodeTiff([new Uint8Array(12), new Uint8Array(12)], 4, 3),
  };
  for (const [n, b] of Object.entries(files)) await Deno.writeFile(`${dir}/${n}`, b);
  const names = Object.keys(files);
  await Deno.writeTextFile(`${dir}/m.csv`, "image,report\n" + names.map((n) => `${n},report of ${n}\n`).join(""));
  const { records, skipped } = await readPairManifest(`${dir}/m.csv`, { skipBad: true, concurrency: 3 });
  assertEquals(records.map((r) => r.image.split("/").pop()), ["ok.jpg"]);
  const reasons = skipped.map((s) => `${s.origin.split("/").pop()} ${s.reason}`);
  const expect = [
    /m\.csv:3 .*GIF/,
    /m\.csv:4 .*SVG/,
    /m\.csv:5 .*HTML/,
    /m\.csv:6 .*empty/,
    /m\.csv:7 .*content is JPEG/,
    /m\.csv:8 .*volume of 2/,
  ];
  expect.forEach((re, i) => assert(re.test(reasons[i]), reasons[i]));
  // Volumes: one pair per B-scan with slice "all", or the chosen one.
  await Deno.writeTextFile(`${dir}/v.csv`, "image,report\nvolume.tif,two scans\n");
  const all = await readPairManifest(`${dir}/v.csv`, { image: { slice: "all" } });
  assertEquals(all.records.map((r) => [r.image.split("/").pop(), r.report]), [
    ["volume.tif#slice=0", "two scans"],
    ["volume.tif#slice=1", "two scans"],
  ]);
  const one = await readPairManifest(`${dir}/v.csv`, { image: { slice: 1 } });
  assertEquals(one.records.length, 1);
  await assertRejects(
    () => readPairManifest(`${dir}/m.csv`, { image: { maxPixels: 100 } }),
    /m\.csv:2: image .*exceeds the limit of 100/,
  );
});

Deno.test("C11: JSONL reports that are a number, an object or null are errors naming the line (a BOM is ignored)", async () => {
  const m = await caseDir("C11_pairs.jsonl");
  await assertRejects(
    () => readPairManifest(m),
    /C11_pairs\.jsonl:3: "report" is a number, not a string/,
    DatasetError,
  );
  const { records, skipped } = await readPairManifest(m, { skipBad: true });
  assertEquals(records.map((r) => r.report), ["OD: CNV"]);
  assertEquals(skipped.map((s) => `${s.origin.split(":").pop()} ${s.reason.split(",")[0]}`), [
    '3 "report" is a number',
    '4 "report" is an object',
    '5 "report" is null',
  ]);
  // An image path that is not a string, too; a numeric patient id is fine.
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/m.jsonl`, '{"image": ["a.jpg"], "report": "x", "patient": 7}\n');
  await assertRejects(() => readPairManifest(`${dir}/m.jsonl`), /m\.jsonl:1: "image" is an array, not a string/);
});

Deno.test("C2 and other delimiters: the error says the file looks semicolon/tab/pipe-delimited", async () => {
  const m = await caseDir("C2_semicolon.csv");
  await assertRejects(() => readPairManifest(m), /C2_semicolon\.csv:2: .*looks semicolon-delimited/, DatasetError);
  assertThrows(() => parseCsv("image\treport\na.png\tx, y\n", "t.tsv"), /looks tab-delimited/);
  assertThrows(() => parseCsv("image|report\na.png|x, y\n", "p.csv"), /looks pipe-delimited/);
  // With the delimiter given, it parses.
  assertEquals(parseCsv("image;report\na.png;x, y\n", "s.csv", { delimiter: ";" }).rows[0].values.report, "x, y");
});

Deno.test("encodings: UTF-8 BOM dropped, UTF-16 with BOM decoded, UTF-16 without BOM and cp1252 named", () => {
  const text = "image,report\na.png,Befund: Ödem\n";
  const utf16le = new Uint8Array([
    0xff,
    0xfe,
    ...new Uint8Array(new Uint16Array([...text].map((c) => c.charCodeAt(0))).buffer),
  ]);
  assertEquals(decodeText(utf16le, "le.csv"), text);
  const be = [0xfe, 0xff];
  for (const c of text) be.push(c.charCodeAt(0) >> 8, c.charCodeAt(0) & 255);
  assertEquals(decodeText(new Uint8Array(be), "be.csv"), text);
  assertEquals(decodeText(new Uint8Array([0xef, 0xbb, 0xbf, ...new TextEncoder().encode(text)]), "bom.csv"), text);
  assertThrows(
    () => decodeText(utf16le.subarray(2), "nobom.csv"),
    /nobom\.csv: the text looks like UTF-16 without a byte-order mark/,
  );
  const cp1252 = Uint8Array.from([..."image,report\na.png,Befund: \xd6dem\n"].map((c) => c.charCodeAt(0)));
  assertThrows(
    () => decodeText(cp1252, "win.csv"),
    /win\.csv:2: text is not valid UTF-8 \(it looks like cp1252\/Latin-1, e\.g\. ".*Ödem"/,
  );
});

Deno.test("C1 (Excel/pandas: BOM, CRLF, quoted newlines, unnamed index column) reads; duplicated columns are named", async () => {
  const m = await caseDir("C1_excel_utf8_bom_crlf.csv");
  const { records } = await readPairManifest(m, { checkFiles: false });
  assert(records.length >= 2);
  assertEquals(records[0].report, 'Right eye: subretinal fluid, PED; "active" CNV.');
  assertThrows(
    () => parseCsv("image,report,image\na,b,c\n", "d.csv"),
    /d\.csv:1: column "image" appears twice \(columns 1 and 3\)/,
  );
  assertEquals(parseCsv(",image\n0,a\n", "i.csv").header, ["Unnamed: 0", "image"]);
});

Deno.test("split values: any case and validation/training accepted; unknown values listed", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeFile(`${dir}/a.jpg`, jpg);
  await Deno.writeTextFile(`${dir}/m.csv`, "image,report,split\na.jpg,x,Train\na.jpg,y,VALIDATION\na.jpg,z, test \n");
  const { records } = await readPairManifest(`${dir}/m.csv`);
  assertEquals(records.map((r) => r.split), ["train", "val", "test"]);
  await Deno.writeTextFile(`${dir}/b.csv`, "image,report,split\na.jpg,x,train\na.jpg,y,dev\n");
  await assertRejects(
    () => readPairManifest(`${dir}/b.csv`),
    /b\.csv:3: split "dev" is not train.*values: "train", "dev"/,
  );
});

Deno.test("a validation split of one pair: a drawn one takes a second pair; a given one is an error, not val NaN", () => {
  const recs = (n: number) =>
    Array.from({ length: n }, (_, i) => ({ image: `${i}`, report: "r", origin: `m.csv:${i + 2}` }));
  // C14 after skipping: 6 pairs, --val-fraction 0.1 would draw one validation pair.
  const six = assignSplits(recs(6), { val: 0.1 });
  assertEquals(six.filter((r) => r.split === "val").length, 2);
  assertEquals(six.filter((r) => r.split === "train").length, 4);
  assertEquals(assignSplits(recs(10), { val: 0.2 }).filter((r) => r.split === "val").length, 2);
  assertEquals(assignSplits(recs(10), { val: 0 }).filter((r) => r.split === "val").length, 0);
  const given = recs(5).map((r, i) => ({ ...r, split: i === 0 ? "val" : "train" }));
  assertThrows(() => assignSplits(given, { val: 0.1 }), /validation split has 1 pair \(m\.csv:2\)/, DatasetError);
  assertThrows(() => checkValidationSplit([{ image: "a", report: "r", origin: "x:2", split: "val" }]), /1 pair/);
});

Deno.test("CSV parsing is linear: 200,000 rows and a 20 MB cell, no recursion limit, text sliced not concatenated", () => {
  const rows: string[] = ["image,report,patient"];
  for (let i = 0; i < 200_000; i++) rows.push(`img/${i}.png,"report ${i}, with ""quotes""",P${i % 977}`);
  let t0 = performance.now();
  const big = parseCsv(rows.join("\n"), "big.csv");
  const ms = performance.now() - t0;
  assertEquals(big.rows.length, 200_000);
  assertEquals(big.rows[199_999].values.report, 'report 199999, with "quotes"');
  assertEquals(big.rows[199_999].line, 200_001);
  assert(ms < 5000, `${ms} ms`);
  const cell = "x".repeat(20_000_000);
  t0 = performance.now();
  const one = parseCsv(`image,report\na.png,"${cell}"\n`, "cell.csv");
  assertEquals(one.rows[0].values.report.length, 20_000_000);
  assert(performance.now() - t0 < 2000, "a 20 MB cell parses in well under 2 s");
});
