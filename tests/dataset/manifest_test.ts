import { assert, assertEquals, assertRejects } from "../_assert.ts";
import { assignSplits, AUTHORS_LAYOUT, parseCsv, readPairManifest } from "../../src/dataset/mod.ts";
import { DatasetError } from "../../src/util/errors.ts";
import { assertThrows } from "../_assert.ts";

const synth = new URL("../../data/synth-tiny/", import.meta.url).pathname;
const fx = new URL("../fixtures/dataset/", import.meta.url).pathname;

async function tmpDir(files: Record<string, string | Uint8Array>): Promise<string> {
  const dir = await Deno.makeTempDir();
  for (const [name, content] of Object.entries(files)) {
    await Deno.mkdir(`${dir}/${name}`.replace(/\/[^/]+$/, ""), { recursive: true });
    if (typeof content === "string") await Deno.writeTextFile(`${dir}/${name}`, content);
    else await Deno.writeFile(`${dir}/${name}`, content);
  }
  return dir;
}

Deno.test("CSV parser handles quotes, embedded commas/newlines, CRLF and reports line numbers", () => {
  const { header, rows } = parseCsv('a,b\r\n1,"x, ""y"""\r\n2,"multi\nline"\n3,z\n', "t.csv");
  assertEquals(header, ["a", "b"]);
  assertEquals(rows.map((r) => r.values.b), ['x, "y"', "multi\nline", "z"]);
  assertEquals(rows.map((r) => r.line), [2, 3, 5]);
  assertThrows(() => parseCsv("a,b\n1,2,3\n", "t.csv"), /t\.csv:2: row has 3 fields, the header has 2/, DatasetError);
  assertThrows(() => parseCsv('a\n"open\n', "t.csv"), /t\.csv:2: unterminated quoted field/, DatasetError);
});

Deno.test("the synthetic pair manifest reads with its patient ids and splits", async () => {
  const { records, skipped } = await readPairManifest(`${synth}pairs/pairs.csv`);
  assertEquals(skipped, []);
  assertEquals(records.length, 32);
  assertEquals(records.filter((r) => r.split === "train").length, 24);
  assert(records.every((r) => r.report.length > 0 && r.patient?.startsWith("P")));
});

Deno.test("the authors' CSV layout (scan, eye, OD_OCT/OS_OCT) works through AUTHORS_LAYOUT", async () => {
  const dir = await tmpDir({
    "vibes.csv": 'scan,eye,OD_OCT,OS_OCT,OD_FUNDUS\nA1,right,right report,left report,x\nA2,left,r2,"left, two",y\n',
    "A1.npy": "x",
    "A2.npy": "x",
  });
  const { records } = await readPairManifest(`${dir}/vibes.csv`, { ...AUTHORS_LAYOUT, checkFiles: false });
  assertEquals(records.map((r) => [r.image.split("/").pop(), r.report]), [["A1.npy", "right report"], [
    "A2.npy",
    "left, two",
  ]]);
});

Deno.test("JSONL manifests work and bad rows name the file and line; --skip-bad lists them", async () => {
  const dir = await tmpDir({
    "m.jsonl":
      '{"image": "a.png", "report": "fine"}\n{"image": "b.png", "report": "  "}\n{"image": "missing.png", "report": "x"}\n',
    "a.png": await Deno.readFile(`${fx}grey8.png`),
    "b.png": await Deno.readFile(`${fx}grey8.png`),
  });
  await assertRejects(
    () => readPairManifest(`${dir}/m.jsonl`),
    /m\.jsonl:2: empty report in column "report"/,
    DatasetError,
  );
  const { records, skipped } = await readPairManifest(`${dir}/m.jsonl`, { skipBad: true });
  assertEquals(records.length, 1);
  assertEquals(skipped.map((s) => s.origin.split("/").pop()), ["m.jsonl:2", "m.jsonl:3"]);
  assert(/missing\.png: image file not found/.test(skipped[1].reason), skipped[1].reason);
});

Deno.test("missing columns and bad encodings are clear errors", async () => {
  const dir = await tmpDir({
    "m.csv": "path,text\na.png,hi\n",
    "bad.csv": new Uint8Array([0x69, 0x6d, 0x61, 0x67, 0x65, 0x0a, 0xff, 0xfe, 0x0a]),
  });
  await assertRejects(
    () => readPairManifest(`${dir}/m.csv`),
    /missing column "image" \(image path\); columns are: path, text/,
    DatasetError,
  );
  await assertRejects(() => readPairManifest(`${dir}/bad.csv`), /bad\.csv:2: text is not valid UTF-8/, DatasetError);
  await assertRejects(() => readPairManifest(`${dir}/none.csv`), /none\.csv: cannot read manifest/, DatasetError);
});

Deno.test("assignSplits keeps every patient's scans together and is seeded", () => {
  const recs = Array.from(
    { length: 40 },
    (_, i) => ({ image: `${i}`, report: "r", patient: `p${Math.floor(i / 4)}`, origin: "" }),
  );
  const a = assignSplits(structuredClone(recs), { val: 0.2, test: 0.2 }, 1);
  const b = assignSplits(structuredClone(recs), { val: 0.2, test: 0.2 }, 1);
  assertEquals(a.map((r) => r.split), b.map((r) => r.split));
  const byPatient = new Map<string, Set<string>>();
  for (const r of a) byPatient.set(r.patient!, (byPatient.get(r.patient!) ?? new Set()).add(r.split!));
  assert([...byPatient.values()].every((s) => s.size === 1));
  assertEquals(a.filter((r) => r.split === "val").length, 8);
  assertEquals(a.filter((r) => r.split === "test").length, 8);
});
