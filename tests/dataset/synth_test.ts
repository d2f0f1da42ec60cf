import { assert, assertEquals } from "../_assert.ts";
import {
  generateBenchmark,
  loadGreyImage,
  readPairManifest,
  SYNTH_PRESETS,
  SYNTH_TASKS,
} from "../../src/dataset/mod.ts";
import { healthy, renderBscan } from "../../src/dataset/synth/render.ts";
import { Rng } from "../../src/util/rng.ts";

const committed = new URL("../../data/synth-tiny/", import.meta.url).pathname;

async function listFiles(root: string, rel = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(`${root}/${rel}`)) {
    const p = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await listFiles(root, p));
    else out.push(p);
  }
  return out.sort();
}

Deno.test("the generator is deterministic: regenerating the committed tiny benchmark gives the same bytes", async () => {
  const dir = await Deno.makeTempDir();
  await generateBenchmark({ root: dir, seed: 0, sizes: SYNTH_PRESETS.tiny });
  const a = await listFiles(committed);
  const b = await listFiles(dir);
  assertEquals(b, a);
  for (const f of a) {
    const x = await Deno.readFile(`${committed}/${f}`);
    const y = await Deno.readFile(`${dir}/${f}`);
    assert(x.length === y.length && x.every((v, i) => v === y[i]), `${f} differs`);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a different seed gives different images; pairs and tasks never share an image", async () => {
  const dir = await Deno.makeTempDir();
  await generateBenchmark({ root: dir, seed: 1, sizes: SYNTH_PRESETS.tiny, tasks: SYNTH_TASKS.slice(0, 1) });
  const x = await Deno.readFile(`${committed}/pairs/images/000000.png`);
  const y = await Deno.readFile(`${dir}/pairs/images/000000.png`);
  assert(x.length !== y.length || x.some((v, i) => v !== y[i]));
  const hashes = new Set<string>();
  for (const f of await listFiles(committed)) {
    if (!f.endsWith(".png")) continue;
    const h = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(`${committed}/${f}`))),
    ).join(",");
    assert(!hashes.has(h), `${f} duplicates another image`);
    hashes.add(h);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("reports describe the findings, with severity and laterality", async () => {
  const { records } = await readPairManifest(`${committed}pairs/pairs.csv`);
  assert(records.every((r) => /^(od|os|right eye|left eye)/.test(r.report)));
  const csv = await Deno.readTextFile(`${committed}pairs/pairs.csv`);
  assert(/drusen|fluid|rnfl|nerve fiber|membrane|hole|atrophy|exudates|traction|ped/.test(csv));
  assert(
    /\bno (intraretinal fluid|drusen|subretinal fluid|erm|ped|exudates|cysts|macular hole)/.test(csv),
    "negations appear",
  );
});

Deno.test("rendered scans have retinal structure: bright RPE band below a darker vitreous", async () => {
  const img = renderBscan({ eye: "OD", pathology: healthy(), seed: 0 }, new Rng(0), 128, 128);
  const rowMeans = Array.from(
    { length: 128 },
    (_, y) => img.data.slice(y * 128, (y + 1) * 128).reduce((a, b) => a + b) / 128,
  );
  const top = rowMeans.slice(0, 8).reduce((a, b) => a + b) / 8;
  const brightest = Math.max(...rowMeans);
  assert(brightest > 3 * top, `brightest row ${brightest} vs vitreous ${top}`);
  const png = await loadGreyImage(`${committed}tasks/amd_vs_normal/train/AMD/train_AMD_00000.png`);
  assertEquals([png.width, png.height], [64, 64]);
});
