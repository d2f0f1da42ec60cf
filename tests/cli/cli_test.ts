/** The CLI tasks: --help lists every flag; refinement on user pairs; clear usage errors. */
import { assert, assertEquals, assertThrows } from "../_assert.ts";
import { numberFlag, parseCli } from "../../src/util/cli.ts";
import { UsageError } from "../../src/util/errors.ts";
import { readSafetensors } from "../../src/io/safetensors.ts";
import { SYNTH_TINY } from "../refine/_tiny.ts";
import { tinyFiles } from "../experiment/_tiny_files.ts";

const root = new URL("../../", import.meta.url).pathname;

async function cli(script: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}src/cli/${script}.ts`, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout), stderr: new TextDecoder().decode(out.stderr) };
}

for (
  const [script, flags] of [
    ["refine", [
      "--model",
      "--weights",
      "--text-weights",
      "--pairs",
      "--authors-layout",
      "--losses",
      "--resume",
      "--ablation",
      "--config",
      "--backend",
      "--batch",
      "--epochs",
      "--lr",
      "--heads",
      "--no-strict",
    ]],
    ["probe", [
      "--weights",
      "--compare",
      "--tasks",
      "--mode",
      "--seeds",
      "--arch",
      "--benchmark",
      "--heads",
      "--no-strict",
    ]],
    ["encode", ["--weights", "--arch", "--input", "--tokens", "--out", "--batch", "--heads", "--no-strict"]],
    ["synth", ["--out", "--seed", "--size", "--force"]],
    ["pretrain", [
      "--only",
      "--out",
      "--images",
      "--epochs",
      "--objective",
      "--findings",
      "--targets",
      "--augment",
      "--batch",
      "--lr",
    ]],
    ["zeroshot", [
      "--run",
      "--tasks",
      "--benchmark",
      "--prompts",
      "--pairs",
      "--itm-rerank",
      "--attention",
      "--report",
      "--heads",
      "--no-strict",
      "--max-pixels",
      "--slice",
      "--intensity-range",
      "--arch",
    ]],
    ["notebooks", ["--timeout", "--no-html"]],
  ] as const
) {
  Deno.test(`deno task ${script} --help lists its flags`, async () => {
    const r = await cli(script, ["--help"]);
    assertEquals(r.code, 0, r.stderr);
    for (const f of [...flags, "--help"]) assert(r.stdout.includes(f), `${script} --help lacks ${f}`);
  });
}

Deno.test("pretrain --objective findings writes a stand-in taught the named findings; flags without effect are refused", async () => {
  const out = await Deno.makeTempDir();
  // Refused before anything runs: an unknown finding, flags that would have no effect, the shipped files overwritten.
  for (
    const [args, message] of [
      [
        ["--only", "urfound", "--objective", "findings", "--findings", "drusen,cyst", "--out", out],
        '--findings: "cyst"',
      ],
      [["--only", "urfound", "--augment", "0.3"], "--augment applies to --objective findings only"],
      [["--only", "urfound", "--targets", "presence"], "--targets applies to --objective findings only"],
      [["--only", "text", "--lr", "1e-3"], "--lr applies to the vision stand-ins"],
      [["--only", "urfound", "--objective", "findings"], "give --out <dir>"],
      [["--only", "urfound", "--images", "64", "--batch", "65"], "--batch 65 is larger than the 64"],
    ] as [string[], string][]
  ) {
    const bad = await cli("pretrain", args);
    assert(bad.code !== 0 && bad.stderr.includes(message), `${args.join(" ")}: ${bad.stderr}`);
  }
  const r = await cli("pretrain", [
    "--only",
    "urfound",
    "--objective",
    "findings",
    "--findings",
    "drusen,srf",
    "--images",
    "64",
    "--epochs",
    "1",
    "--batch",
    "32",
    "--lr",
    "5e-4",
    "--out",
    out,
  ]);
  assertEquals(r.code, 0, r.stderr);
  assert(r.stdout.includes("findings loss per epoch"), r.stdout);
  const provenance = JSON.parse(readSafetensors(`${out}/urfound-standin.safetensors`).metadata["retfiner.provenance"]);
  assert(provenance.objective.includes("severities of drusen, srf"), provenance.objective);
  assertEquals([provenance.batch, provenance.epochs, provenance.lr], [32, 1, 5e-4]);
  await Deno.remove(out, { recursive: true });
});

Deno.test("refine on user pairs (manifest) with a config file, resumable, exporting the backbone", async () => {
  const f = await tinyFiles("visionfm");
  const out = await Deno.makeTempDir();
  const config = `${out}/config.json`;
  await Deno.writeTextFile(config, JSON.stringify({ batch: "12", epochs: "1", lr: "5e-4", seeds: "0" }));
  const r = await cli("refine", [
    "--pairs",
    `${SYNTH_TINY}pairs/pairs.csv`,
    "--model",
    "visionfm",
    "--weights",
    f.vision,
    "--text-weights",
    f.text.weights,
    "--text-config",
    f.text.config,
    "--tokenizer",
    f.text.tokenizer,
    "--config",
    config,
    "--epochs",
    "2", // the command line wins over the file
    "--out",
    out,
  ]);
  assertEquals(r.code, 0, r.stderr);
  assert(/pairs: 24 train, 8 val/.test(r.stderr), r.stderr);
  assert(/epoch 2:/.test(r.stderr) && !/epoch 3:/.test(r.stderr), r.stderr);
  const log = (await Deno.readTextFile(`${out}/log.jsonl`)).trim().split("\n").map((l) => JSON.parse(l));
  assertEquals(log.filter((e) => e.kind === "step")[0].lr, 5e-4);
  await Deno.stat(`${out}/best-model_${out.split("/").pop()}_visionfm_bscan.pth`); // the family is in the name
});

Deno.test("usage errors are one clear line and exit 1", async () => {
  const bad = await cli("refine", ["--losses", "itc,foo", "--pairs", "x.csv"]);
  assertEquals(bad.code, 1);
  assert(/--losses: unknown objective "foo"/.test(bad.stderr), bad.stderr);
  const unknown = await cli("refine", ["--bogus"]);
  assertEquals(unknown.code, 1);
  assert(/Unknown option '--bogus'.*--help/s.test(unknown.stderr), unknown.stderr);
  const missing = await cli("refine", ["--pairs", "/nonexistent.csv", "--weights", "/nonexistent.pth"]);
  assertEquals(missing.code, 1);
  assert(/\/nonexistent\.csv: cannot read manifest/.test(missing.stderr), missing.stderr);
  // A tokenizer without the weights it belongs to would be silently ignored: an error instead.
  const tok = await cli("refine", ["--pairs", "x.csv", "--tokenizer", "vocab.txt"]);
  assertEquals(tok.code, 1);
  assert(/--tokenizer is only used with --text-weights/.test(tok.stderr), tok.stderr);
  const probe = await cli("probe", ["--weights", "x.pth"]);
  assertEquals(probe.code, 1);
  assert(/--tasks/.test(probe.stderr));
});

Deno.test("a negative number after a flag is its value, then validated (parseArgs alone calls it an ambiguous option)", async () => {
  const spec = {
    usage: "t",
    summary: "t",
    flags: {
      lr: { type: "string" as const, description: "lr" },
      seed: { type: "string" as const, description: "seed" },
      "no-probe": { type: "boolean" as const, description: "b" },
    },
  };
  const { values } = parseCli(["--lr", "-1e-3", "--seed", "-1", "--no-probe"], spec);
  assertEquals(values.lr, "-1e-3");
  assertEquals(values.seed, "-1");
  assertThrows(() => parseCli(["--no-probe", "-5"], spec), /Unknown option '-5'/, UsageError); // takes no value
  assertThrows(() => numberFlag(values, "lr", { min: 0 }), /--lr: expected a number >= 0, got "-1e-3"/, UsageError);
  assertThrows(() => numberFlag({ lr: "0" }, "lr", { above: 0 }), /--lr: expected a number > 0, got "0"/, UsageError);
  assertThrows(() => numberFlag({ p: "1.5" }, "p", { min: 0, max: 1 }), /expected a number >= 0 and <= 1/, UsageError);
  assertEquals(numberFlag({ p: "1" }, "p", { min: 0, max: 1 }), 1); // bounds are inclusive, `above` is not
  assertEquals(numberFlag({ lr: "1e-9" }, "lr", { above: 0 }), 1e-9);
  assertThrows(
    () => numberFlag(values, "seed", { integer: true, min: 0 }),
    /--seed: expected an integer >= 0, got "-1"/,
    UsageError,
  );
  assertThrows(() => parseCli(["--lr", "-x"], spec), /--lr/, UsageError); // not a number: still refused
  const bad = await cli("refine", ["--lr", "-1", "--pairs", "x.csv"]);
  assertEquals(bad.code, 1);
  assert(bad.stderr.includes('--lr: expected a number >= 0, got "-1"'), bad.stderr);
});

Deno.test("refine without --model takes the family from the weights and says how; --model overrides", async () => {
  const f = await tinyFiles("urfound");
  // The .pth export under a name that says nothing: the family must come from the file itself.
  const pth = f.vision.replace(/\.safetensors$/, ".pth");
  const plain = `${f.dir}/weights.pth`;
  await Deno.rename(pth, plain);
  const text = ["--text-weights", f.text.weights, "--text-config", f.text.config, "--tokenizer", f.text.tokenizer];
  const common = ["--pairs", `${SYNTH_TINY}pairs/pairs.csv`, "--max-steps", "1", "--epochs", "1", "--batch", "4"];
  const out = await Deno.makeTempDir();
  const r = await cli("refine", [...common, "--weights", plain, ...text, "--out", out]);
  assertEquals(r.code, 0, r.stderr);
  assert(r.stderr.includes(`${plain}: family urfound — stored in the file`), r.stderr);
  await Deno.stat(`${out}/best-model_${out.split("/").pop()}_urfound_bscan.pth`);
  // (a fresh --out: the first run's --max-steps stop left its checkpoint in `out`)
  const forced = await cli("refine", [
    ...common,
    "--weights",
    plain,
    ...text,
    "--model",
    "visionfm",
    "--out",
    await Deno.makeTempDir(),
  ]);
  assert(forced.stderr.includes(`${plain}: family visionfm — set by --model`), forced.stderr);
});

Deno.test("probe --compare: refined VisionFM and UrFound exports get their baseline's recipe, from their own metadata", async () => {
  for (const family of ["visionfm", "urfound"] as const) {
    const base = await tinyFiles(family);
    const refined = await tinyFiles(family);
    // Names that say nothing: only the files' metadata can tell the family.
    const a = `${base.dir}/baseline.pth`;
    const b = `${refined.dir}/refined.pth`;
    await Deno.rename(base.vision.replace(/\.safetensors$/, ".pth"), a);
    await Deno.rename(refined.vision.replace(/\.safetensors$/, ".pth"), b);
    const out = await Deno.makeTempDir();
    const r = await cli("probe", [
      "--weights",
      a,
      "--compare",
      b,
      "--tasks",
      `${SYNTH_TINY}tasks/${[...Deno.readDirSync(`${SYNTH_TINY}tasks`)].map((e) => e.name).sort()[0]}`,
      "--seeds",
      "0",
      "--max-epochs",
      "2",
      "--out",
      out,
    ]);
    assertEquals(r.code, 0, r.stderr);
    for (const p of [a, b]) assert(r.stderr.includes(`${p}: family ${family} — stored in the file`), r.stderr);
    assert(!r.stderr.includes("two model families"), r.stderr); // one family: no notice
  }
});

Deno.test("probe --compare of two model families says so (terminal and report), naming both", async () => {
  const out = await Deno.makeTempDir();
  const a = `${root}data/models/retfound-standin.safetensors`;
  const b = `${root}data/models/visionfm-standin.safetensors`;
  const task = `${SYNTH_TINY}tasks/${[...Deno.readDirSync(`${SYNTH_TINY}tasks`)].map((e) => e.name).sort()[0]}`;
  const r = await cli("probe", [
    "--weights",
    a,
    "--compare",
    b,
    "--tasks",
    task,
    "--seeds",
    "0",
    "--max-epochs",
    "1",
    "--out",
    out,
  ]);
  assertEquals(r.code, 0, r.stderr);
  const notice = new RegExp(
    `notice: --weights ${a} is retfound \\(stored in the file[^\n]*\\) but --compare ${b} is visionfm ` +
      `\\(stored in the file[^\n]*two model families`,
  );
  assert(notice.test(r.stderr), r.stderr);
  // Said before the first model is probed, not after.
  assert(r.stderr.indexOf("two model families") < r.stderr.indexOf(`${a}: family retfound`), r.stderr);
  const md = [...Deno.readDirSync(out)].find((e) => e.name.endsWith(".md"))!;
  assert((await Deno.readTextFile(`${out}/${md.name}`)).includes("two model families"));
  await Deno.remove(out, { recursive: true });
});

Deno.test("refine --pairs --ablation is a usage error, not a silent single refinement", async () => {
  const out = await Deno.makeTempDir();
  try {
    const r = await cli("refine", [
      "--pairs",
      `${SYNTH_TINY}pairs/pairs.csv`,
      "--ablation",
      "--max-steps",
      "1",
      "--out",
      out,
    ]);
    assertEquals(r.code, 1, r.stderr);
    assert(r.stderr.includes("--ablation runs the end-to-end experiment"), r.stderr);
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("zeroshot: nothing asked is a usage error; a missing run directory is a typed error naming it", async () => {
  const none = await cli("zeroshot", ["--run", "/nonexistent/run"]);
  assertEquals(none.code, 1, none.stderr);
  assert(none.stderr.includes("nothing to do"), none.stderr);
  const missing = await cli("zeroshot", ["--run", "/nonexistent/run", "--tasks", `${SYNTH_TINY}tasks/amd_vs_normal`]);
  assertEquals(missing.code, 1, missing.stderr);
  assert(missing.stderr.includes("/nonexistent/run: cannot read the run directory"), missing.stderr);
  assert(!missing.stderr.includes("    at "), `a stack trace: ${missing.stderr}`);
});
