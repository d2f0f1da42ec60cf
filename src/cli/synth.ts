/** `deno task synth`: generate the synthetic OCT benchmark. */
import { generateBenchmark, SYNTH_PRESETS } from "../dataset/synth/mod.ts";
import { numberFlag, parseCli, runMain } from "../util/cli.ts";
import { ProgressBar } from "../util/progress.ts";
import { UsageError } from "../util/errors.ts";
import { CPU_DEMO } from "../params.ts";

await runMain(async () => {
  const { values } = parseCli(Deno.args, {
    usage: "deno task synth",
    summary:
      "Generates the synthetic OCT benchmark deterministically: an image-report pair corpus (pairs/pairs.csv) for " +
      "refinement and seven probing tasks (tasks/<task>/{train,val,test}/<class>/). Same seed, same bytes. An existing " +
      "benchmark with the same settings is reused unless --force is given.",
    flags: {
      out: {
        type: "string",
        valueName: "<dir>",
        description: "Output directory.",
        default: `runs/synth-${CPU_DEMO.synth.size}-${CPU_DEMO.synth.seed}`,
      },
      seed: { type: "string", valueName: "<n>", description: "Random seed.", default: String(CPU_DEMO.synth.seed) },
      size: {
        type: "string",
        valueName: "<preset>",
        description: "Size preset.",
        choices: ["tiny", "small", "medium"],
        default: CPU_DEMO.synth.size,
      },
      "image-size": { type: "string", valueName: "<px>", description: "Override the rendered B-scan size." },
      force: { type: "boolean", description: "Regenerate even if the benchmark exists." },
    },
    examples: ["deno task synth", "deno task synth --size tiny --out data/synth-tiny"],
  });
  const preset = SYNTH_PRESETS[values.size as keyof typeof SYNTH_PRESETS];
  const imageSize = numberFlag(values, "image-size", { integer: true, min: 16 });
  const seed = numberFlag(values, "seed", { integer: true, min: 0 });
  if (seed === undefined) throw new UsageError("--seed is required");
  const bar = new ProgressBar();
  const t0 = performance.now();
  const info = await generateBenchmark({
    root: String(values.out),
    seed,
    sizes: { ...preset, ...(imageSize ? { imageSize } : {}) },
    force: !!values.force,
    onProgress: bar.callback,
  });
  bar.finish();
  console.log(`synthetic benchmark in ${values.out} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  console.log(`  pairs: ${info.sizes.pairs.train} train + ${info.sizes.pairs.val} val -> ${info.pairsManifest}`);
  for (const t of info.tasks) {
    console.log(`  ${t.id.padEnd(20)} ${t.classes.length} classes (${t.mirrors}-like): ${t.classes.join(", ")}`);
  }
});
