/**
 * Child process for the kill-and-resume tests: refines the tiny model in a run directory.
 * Arguments: `<runDir> [resume] [checkpointEvery] [maxSteps]`.
 */
import { setupBackend } from "../../src/backend/mod.ts";
import { refine } from "../../src/refine/mod.ts";
import { tinyModel, tinyPairs } from "./_tiny.ts";

await setupBackend({ log: null });
const [runDir, resume, every, maxSteps] = Deno.args;
const model = await tinyModel(0);
await refine({
  model,
  pairs: await tinyPairs(),
  runDir,
  batchSize: 8,
  epochs: 4,
  patience: 100,
  checkpointEvery: every ? Number(every) : 1,
  maxSteps: maxSteps ? Number(maxSteps) : undefined,
  seed: 5,
  resume: resume === "resume",
  optimizer: { lr: 1e-3 },
  onNotice: (m) => console.error(m),
});
