/**
 * Probing folders and label CSVs from the wild (issue 16 item 2): symbolic links, nested volume folders, hidden
 * entries, empty classes, labels with spaces or other case, capitalised split values. Cases from
 * ../shared/cases/data rebuilt here with small real images (tests/fixtures/dataset/grey8.jpg).
 */
import { assert, assertEquals, assertRejects } from "../_assert.ts";
import {
  classCounts,
  isHiddenEntry,
  listImageFiles,
  readImageFolderDataset,
  readLabelCsv,
  readProbeDataset,
} from "../../src/dataset/mod.ts";
import { DatasetError } from "../../src/util/errors.ts";
import { encodeTiff } from "./_tiff.ts";
import { buildTree } from "./_tree.ts";

const fx = new URL("../fixtures/dataset/", import.meta.url).pathname;
const cases = new URL("../fixtures/data_cases/", import.meta.url).pathname;
const jpg = await Deno.readFile(`${fx}grey8.jpg`);

const build = buildTree;

const quiet = { onNotice: (_: string) => {} };

Deno.test("make_symlink_split.sh's layout: linked images and a linked class folder are followed", async () => {
  // As data/make_symlink_split.sh builds it: store/NORMAL holds files; split/*/CNV/* are links to files;
  // split/*/NORMAL is a link to store/NORMAL.
  const root = await build({
    "src/CNV-1.jpeg": jpg,
    "src/CNV-2.jpg": jpg,
    "store/NORMAL/n1.jpeg": jpg,
    "store/NORMAL/n2.jpg": jpg,
  });
  for (const split of ["train", "val", "test"]) {
    await Deno.mkdir(`${root}/split/${split}/CNV`, { recursive: true });
    await Deno.symlink(`${root}/src/CNV-1.jpeg`, `${root}/split/${split}/CNV/a.jpeg`);
    await Deno.symlink(`${root}/src/CNV-2.jpg`, `${root}/split/${split}/CNV/b.jpg`);
    await Deno.symlink(`${root}/store/NORMAL`, `${root}/split/${split}/NORMAL`);
  }
  const ds = await readImageFolderDataset(`${root}/split`, quiet);
  assertEquals(ds.classes, ["CNV", "NORMAL"]);
  assertEquals(classCounts(ds), { train: [2, 2], val: [2, 2], test: [2, 2] });
  // Relative links and a link to a link work too.
  await Deno.symlink("../../../src/CNV-1.jpeg", `${root}/split/train/CNV/rel.jpeg`);
  await Deno.symlink(`${root}/split/train/CNV/a.jpeg`, `${root}/split/train/CNV/chain.jpeg`);
  assertEquals(classCounts(await readImageFolderDataset(`${root}/split`, quiet)).train, [4, 2]);
});

Deno.test("the real make_symlink_split.sh case, when the shared cases are present", async () => {
  const script = "/work/shared/cases/data/make_symlink_split.sh";
  try {
    await Deno.stat(script);
  } catch {
    return; // the shared cases are not part of the repository
  }
  const out = await Deno.makeTempDir();
  const r = await new Deno.Command("bash", { args: [script, out], stdout: "piped" }).output();
  assert(r.success);
  const ds = await readImageFolderDataset(new TextDecoder().decode(r.stdout).trim(), quiet);
  assertEquals(classCounts(ds), { train: [2, 2], val: [2, 2], test: [2, 2] });
});

Deno.test("link loops are not followed forever; broken links are errors naming the link", async () => {
  const root = await build({ "c/x.jpg": jpg, "c/sub/y.jpg": jpg });
  await Deno.symlink(`${root}/c`, `${root}/c/sub/loop`);
  const notes: string[] = [];
  assertEquals((await listImageFiles(`${root}/c`, (m) => notes.push(m))).map((p) => p.slice(root.length)), [
    "/c/sub/y.jpg",
    "/c/x.jpg",
  ]);
  assert(notes.some((n) => /a link back to an enclosing folder/.test(n)), notes.join("\n"));
  await Deno.symlink(`${root}/nowhere.jpg`, `${root}/c/broken.jpg`);
  await assertRejects(() => listImageFiles(`${root}/c`, () => {}), /broken\.jpg: broken symbolic link/, DatasetError);
});

Deno.test("P4: class folders are walked recursively (one sub-folder per eye volume)", async () => {
  const files: Record<string, Uint8Array> = {};
  for (const split of ["train", "val", "test"]) {
    for (const cls of ["glaucoma", "normal"]) {
      for (const vol of ["0001", "0002"]) {
        for (const k of ["000", "001"]) files[`${split}/${cls}/${vol}/${vol}_${k}.jpg`] = jpg;
      }
    }
  }
  files["train/normal/0003/deeper/again/x.jpg"] = jpg;
  const ds = await readImageFolderDataset(await build(files), quiet);
  assertEquals(ds.classes, ["glaucoma", "normal"]);
  assertEquals(classCounts(ds), { train: [4, 5], val: [4, 4], test: [4, 4] });
});

Deno.test("P2 and other hidden entries: never classes nor images; a class with no training images is an error", async () => {
  const files: Record<string, Uint8Array | string> = {};
  for (const split of ["train", "val", "test"]) {
    files[`${split}/CNV/CNV-1001-1.jpeg`] = jpg;
    files[`${split}/NORMAL/NORMAL-1004-1.JPG`] = jpg;
  }
  Object.assign(files, {
    "train/.ipynb_checkpoints/CNV-1001-1-checkpoint.jpeg": jpg,
    "train/CNV/.DS_Store": "junk",
    "train/CNV/._CNV-1001-1.jpeg": "AppleDouble resource fork",
    "train/NORMAL/Thumbs.db": "junk",
    "train/NORMAL/desktop.ini": "junk",
    "__MACOSX/train/CNV/._x.jpeg": "junk",
    "val/.hidden_class/a.jpg": jpg,
    "test/CNV/.cache/x.jpg": jpg,
    "train/CNV/notes.txt": "a note",
  });
  const root = await build(files);
  const notes: string[] = [];
  const ds = await readImageFolderDataset(root, { onNotice: (m) => notes.push(m) });
  assertEquals(ds.classes, ["CNV", "NORMAL"]);
  assertEquals(classCounts(ds), { train: [1, 1], val: [1, 1], test: [1, 1] });
  assert(notes.some((n) => /1 file\(s\) without an image extension ignored \(e\.g\. .*notes\.txt\)/.test(n)));
  for (const n of [".ipynb_checkpoints", ".DS_Store", "._a.jpeg", "Thumbs.db", "__MACOSX"]) assert(isHiddenEntry(n), n);
  assert(!isHiddenEntry("CNV"));
  // An empty class folder in train is an error naming it.
  await Deno.mkdir(`${root}/train/DME`);
  await Deno.writeTextFile(`${root}/train/DME/readme.txt`, "to do");
  await assertRejects(
    () => readImageFolderDataset(root, quiet),
    /train\/DME: class "DME" has no training images/,
    DatasetError,
  );
});

Deno.test("folders: classes in val/test but not train, classes differing only by case, split folders in any case", async () => {
  const base: Record<string, Uint8Array> = {};
  for (const split of ["Train", "VAL", "test"]) base[`${split}/a/x.jpg`] = jpg;
  const root = await build({ ...base, "test/b/y.jpg": jpg });
  await assertRejects(
    () => readImageFolderDataset(root, quiet),
    /test\/b: class "b" does not exist in train/,
    DatasetError,
  );
  await Deno.remove(`${root}/test/b`, { recursive: true });
  assertEquals(classCounts(await readImageFolderDataset(root, quiet)).train, [1]);
  await Deno.mkdir(`${root}/Train/A`);
  await Deno.writeFile(`${root}/Train/A/z.jpg`, jpg);
  await assertRejects(() => readImageFolderDataset(root, quiet), /classes "A", "a" differ only by case/, DatasetError);
  await Deno.remove(`${root}/Train/A`, { recursive: true });
  await Deno.mkdir(`${root}/Train/a `);
  await Deno.writeFile(`${root}/Train/a /z.jpg`, jpg);
  await assertRejects(
    () => readImageFolderDataset(root, quiet),
    /classes "a", "a " differ only by case or surrounding spaces/,
    DatasetError,
  );
});

Deno.test("folders: undecodable images are listed before probing; volumes need a slice or expand with all", async () => {
  const root = await build({
    "train/a/ok.jpg": jpg,
    "train/a/lfs.png": await Deno.readFile(`${cases}lfs_pointer.png`),
    "val/a/cut.jpeg": await Deno.readFile(`${cases}truncated_download.jpeg`),
    "test/a/vol.tif": encodeTiff([new Uint8Array(12).fill(9), new Uint8Array(12).fill(200)], 4, 3),
  });
  const err = await assertRejects(
    () => readImageFolderDataset(root, quiet),
    /3 image\(s\) cannot be used/,
    DatasetError,
  );
  const msg = (err as Error).message;
  assert(
    /lfs\.png: this is a Git LFS pointer/.test(msg) && /cut\.jpeg: truncated/.test(msg) &&
      /vol\.tif: a volume of 2/.test(msg),
    msg,
  );
  await Deno.remove(`${root}/train/a/lfs.png`);
  await Deno.writeFile(`${root}/val/a/cut.jpeg`, jpg);
  const all = await readImageFolderDataset(root, { ...quiet, image: { slice: "all" } });
  assertEquals(all.items.filter((i) => i.split === "test").map((i) => i.path.split("/").pop()), [
    "vol.tif#slice=0",
    "vol.tif#slice=1",
  ]);
  assertEquals((await readImageFolderDataset(root, { ...quiet, image: { slice: "middle" } })).items.length, 3);
});

Deno.test("L1: a BOM and a label with a trailing space (Excel) give one class, with a notice naming the line", async () => {
  const dir = await build({ "images/CNV-1001-1.jpeg": jpg });
  for (
    const n of [
      "CNV-PatientA_000001_c.jpg",
      "DME-1002-1.jpeg",
      "DME-PatientC_000003_c.jpg",
      "DRUSEN-1003-1.jpeg",
      "NORMAL-1004-1.jpeg",
      "NORMAL-PatientB_000002_c.jpg",
    ]
  ) {
    await Deno.writeFile(`${dir}/images/${n}`, jpg);
  }
  for (const f of ["L1_trailing_space_label.csv", "L1b_same_without_bom.csv", "L2_capitalised_split.csv"]) {
    await Deno.copyFile(`${cases}${f}`, `${dir}/${f}`);
  }
  const notes: string[] = [];
  const a = await readLabelCsv(`${dir}/L1_trailing_space_label.csv`, { onNotice: (m) => notes.push(m) });
  const b = await readLabelCsv(`${dir}/L1b_same_without_bom.csv`, { onNotice: (m) => notes.push(m) });
  assertEquals(a.classes, b.classes);
  assert(!a.classes.some((c) => c !== c.trim()));
  assertEquals(a.items.map((i) => [i.path, i.label, i.split]), b.items.map((i) => [i.path, i.label, i.split]));
  assert(/labels with surrounding spaces were trimmed: "CNV " \(line 3\)/.test(notes[0]), notes[0]);
  // L2: Train/Val/Test.
  const l2 = await readProbeDataset(`${dir}/L2_capitalised_split.csv`, quiet);
  assertEquals(classCounts(l2), { train: [1, 1], val: [1, 1], test: [1, 1] });
  // Labels differing by case are an error naming them; unknown split values are listed.
  await Deno.writeTextFile(
    `${dir}/case.csv`,
    "path,label,split\nimages/CNV-1001-1.jpeg,CNV,train\nimages/DME-1002-1.jpeg,cnv,train\n",
  );
  await assertRejects(
    () => readLabelCsv(`${dir}/case.csv`, quiet),
    /classes "CNV", "cnv" differ only by case/,
    DatasetError,
  );
  await Deno.writeTextFile(
    `${dir}/split.csv`,
    "path,label,split\nimages/CNV-1001-1.jpeg,CNV,train\nimages/DME-1002-1.jpeg,CNV,holdout\n",
  );
  await assertRejects(
    () => readLabelCsv(`${dir}/split.csv`, quiet),
    /split\.csv:3: split "holdout" is not train.*values: "train", "holdout"/,
    DatasetError,
  );
  await Deno.writeTextFile(`${dir}/none.csv`, "path,label,split\nimages/CNV-1001-1.jpeg,CNV,TRAINING_SET\n");
  await assertRejects(
    () => readLabelCsv(`${dir}/none.csv`, quiet),
    /no train rows \(split values found: "TRAINING_SET"\)/,
    DatasetError,
  );
});
