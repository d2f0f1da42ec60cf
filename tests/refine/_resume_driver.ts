/** Child process for the kill-and-resume test: refines the tiny model in a run directory. */
import { setupBackend } from "../../src/backend/mod.ts";
import { refine } from "../../src/refine/mod.ts";
import { tinyModel, tinyPairs } from "./_tiny.ts";

await setupBackend({ log: null });
const [runDir, resume] = Deno.args;
const model = await tinyModel(0);
await refine({
  model,
  pairs: await tinyPairs(),
  runDir,
  batchSize: 8,
  epochs: 4,
  patience: 100,
  checkpointEvery: 1,
  seed: 5,
  resume: resume === "resume",
  optimizer: { lr: 1e-3 },
});
