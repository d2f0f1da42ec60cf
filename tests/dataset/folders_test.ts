import { assert, assertEquals, assertRejects } from "../_assert.ts";
import {
  batchIndices,
  classCounts,
  formatClassCounts,
  InputCache,
  loadImageBatch,
  prefetch,
  probingSpec,
  readImageFolderDataset,
  readLabelCsv,
} from "../../src/dataset/mod.ts";
import { DatasetError } from "../../src/util/errors.ts";
import { Rng } from "../../src/util/rng.ts";

const tasks = new URL("../../data/synth-tiny/tasks/", import.meta.url).pathname;

Deno.test("ImageFolder layout: classes sorted, per-split counts", async () => {
  const ds = await readImageFolderDataset(`${tasks}octdl_7class`);
  assertEquals(ds.classes, ["AMD", "DME", "ERM", "NO", "RAO", "RVO", "VID"]);
  const counts = classCounts(ds);
  assertEquals(counts.train.reduce((a, b) => a + b), 12);
  assertEquals(counts.val.reduce((a, b) => a + b), 6);
  assertEquals(counts.test.reduce((a, b) => a + b), 6);
  assert(formatClassCounts(ds).includes("octdl_7class: 7 classes"));
  assert(ds.items.every((it) => it.path.includes(`/${it.split}/${ds.classes[it.label]}/`)));
});

Deno.test("label CSV layout, and a class missing from train is an error", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/d.csv`, "path,label,split\na.png,b,train\nc.png,a,train\nd.png,b,test\n");
  const ds = await readLabelCsv(`${dir}/d.csv`, { checkImages: false });
  assertEquals(ds.classes, ["a", "b"]);
  assertEquals(ds.items.map((i) => [i.split, i.label]), [["train", 0], ["train", 1], ["test", 1]]);
  await Deno.writeTextFile(`${dir}/e.csv`, "path,label,split\na.png,b,train\nd.png,z,val\n");
  await assertRejects(
    () => readLabelCsv(`${dir}/e.csv`, { checkImages: false }),
    /e\.csv:3: label "z" does not occur in the train split/,
    DatasetError,
  );
  await assertRejects(() => readImageFolderDataset(dir), /no class folders under train/, DatasetError);
});

Deno.test("batchIndices shuffles reproducibly and covers every index once", () => {
  const a = batchIndices(10, 4, { rng: new Rng(3) });
  assertEquals(a.map((b) => b.length), [4, 4, 2]);
  assertEquals(a.flat().sort((x, y) => x - y), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assertEquals(batchIndices(10, 4, { rng: new Rng(3) }), a);
  assertEquals(batchIndices(10, 4, { dropLast: true }).length, 2);
});

Deno.test("prefetch runs loaders ahead, keeps order and bounds the number in flight", async () => {
  let running = 0;
  let maxRunning = 0;
  const loaders = Array.from({ length: 6 }, (_, i) => async () => {
    running++;
    maxRunning = Math.max(maxRunning, running);
    await new Promise((r) => setTimeout(r, 5));
    running--;
    return i;
  });
  const got: number[] = [];
  for await (const v of prefetch(loaders, 2)) got.push(v);
  assertEquals(got, [0, 1, 2, 3, 4, 5]);
  assertEquals(maxRunning, 2);
});

Deno.test("loadImageBatch: preprocessing, cache, and skip-bad reporting", async () => {
  const ds = await readImageFolderDataset(`${tasks}amd_vs_normal`);
  const paths = [...ds.items.slice(0, 3).map((i) => i.path), "/nonexistent.png"];
  const spec = probingSpec(32, { mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] });
  await assertRejects(
    () => loadImageBatch(paths, [0, 1, 2, 3], spec),
    /nonexistent\.png: image file not found/,
    DatasetError,
  );
  const cache = new InputCache();
  const b = await loadImageBatch(paths, [2, 3, 0], spec, { skipBad: true, cache });
  assertEquals(b.n, 2);
  assertEquals(b.indices, [2, 0]);
  assertEquals(b.skipped.map((s) => s.path), ["/nonexistent.png"]);
  assertEquals(b.data.length, 2 * 3 * 32 * 32);
  assert(cache.get(paths[0]) !== undefined);
  await assertRejects(
    () => loadImageBatch(paths, [3], spec, { origins: ["m.csv:2", "m.csv:3", "m.csv:4", "m.csv:5"] }),
    /^m\.csv:5: image \/nonexistent\.png: image file not found/,
    DatasetError,
  );
  const again = await loadImageBatch(paths, [0], spec, { cache });
  assertEquals(again.data, b.data.subarray(3 * 32 * 32));
});
