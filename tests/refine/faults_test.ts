/**
 * Training faults: a non-finite loss, gradient or update stops the step before anything is applied or saved, every
 * checkpoint on disk stays finite, the error names the step, and resuming afterwards works.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { readSafetensors, writeSafetensors } from "../../src/io/mod.ts";
import type { TensorData } from "../../src/io/tensor.ts";
import { tf } from "../../src/backend/tf.ts";
import {
  createAdamWState,
  LAST_CHECKPOINT,
  loadCheckpoint,
  type LoopState,
  refine,
  type RefineOptions,
  saveCheckpoint,
} from "../../src/refine/mod.ts";
import { modelParams } from "../../src/model/mod.ts";
import { RefineError } from "../../src/util/errors.ts";
import { tinyModel, tinyPairs } from "./_tiny.ts";

await setupBackend({ log: null });

const quiet = () => {};

async function run(runDir: string, extra: Partial<RefineOptions>) {
  return refine({
    model: await tinyModel(0),
    pairs: await tinyPairs(),
    runDir,
    batchSize: 8,
    epochs: 2,
    patience: 100,
    checkpointEvery: 1,
    seed: 3,
    optimizer: { lr: 1e-3 },
    onNotice: quiet,
    ...extra,
  });
}

/** Every training checkpoint in `dir`: name → its float tensors. */
async function checkpoints(dir: string): Promise<Map<string, Map<string, Float32Array>>> {
  const out = new Map<string, Map<string, Float32Array>>();
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.endsWith(".ckpt.safetensors")) continue;
    const t = readSafetensors(`${dir}/${e.name}`).tensors;
    out.set(e.name, new Map([...t].map(([k, x]) => [k, x.data as Float32Array])));
  }
  return out;
}

async function assertAllFinite(dir: string): Promise<number> {
  let n = 0;
  for (const [file, tensors] of await checkpoints(dir)) {
    for (const [k, x] of tensors) {
      const i = x.findIndex((v) => !Number.isFinite(v));
      assert(i < 0, `${file}: ${k}[${i}] = ${x[i]}`);
      n += x.length;
    }
  }
  return n;
}

function readLoop(metadata: Record<string, string>): LoopState {
  return JSON.parse(metadata["retfiner.checkpoint"]) as LoopState;
}

async function loggedSteps(dir: string): Promise<number[]> {
  const text = await Deno.readTextFile(`${dir}/log.jsonl`).catch(() => "");
  return text.split("\n").filter(Boolean).map((l) => JSON.parse(l)).filter((e) => e.kind === "step").map((e) => e.step);
}

Deno.test("--lr 1e39 on a fresh run: a RefineError naming step 1 and the parameter, and no checkpoint is written", async () => {
  for (const losses of [undefined, { itc: 0, itm: 0, mlm: 1, gm: 1 }]) {
    const dir = await Deno.makeTempDir();
    await assertRejects(
      () => run(dir, { optimizer: { lr: 1e39 }, losses }),
      /^refinement stopped at step 1 \(epoch 1, batch 1 of 3, learning rate 1e\+39\): the AdamW update would make \S+ non-finite .* No update was applied and nothing was saved\. No checkpoint has been written yet/,
      RefineError,
    );
    assertEquals((await checkpoints(dir)).size, 0);
    assertEquals(await loggedSteps(dir), []);
  }
});

Deno.test("--lr 1e6: the NaN that the huge (finite) first update causes is caught, typed, at the next step; every checkpoint left is finite", async () => {
  // Which check fires first depends on the backend's arithmetic (on cpu-onnx: ITM sampling with all four objectives,
  // the MLM loss with mlm,gm); each is a RefineError naming the step and the last checkpoint.
  const fault =
    /ITM negative sampling: image-text similarity \[\d+, \d+\] is NaN|non-finite (ITC|ITM|MLM|GM) loss \(NaN\)|non-finite gradient of /;
  for (const losses of [undefined, { itc: 0, itm: 0, mlm: 1, gm: 1 }]) {
    const dir = await Deno.makeTempDir();
    const err = await assertRejects(() => run(dir, { optimizer: { lr: 1e6 }, losses }), fault, RefineError);
    const step = Number(
      /^refinement stopped at step (\d+) \(epoch \d+, batch \d+ of 3, learning rate 1000000\): /.exec(err.message)?.[1],
    );
    assert(step >= 2, err.message);
    assert(
      err.message.includes(`The last checkpoint, ${dir}/${LAST_CHECKPOINT} (after step ${step - 1})`),
      err.message,
    );
    assert((await assertAllFinite(dir)) > 0);
    const done = Array.from({ length: step - 1 }, (_, i) => i + 1);
    assertEquals(await loggedSteps(dir), done);
    // Resuming with the same settings meets the same fault again, typed (it used to crash on the NaN weights).
    const again = await assertRejects(
      () => run(dir, { optimizer: { lr: 1e6 }, losses, resume: true }),
      fault,
      RefineError,
    );
    assert(again.message.startsWith(`refinement stopped at step ${step} `), again.message);
    assertEquals(await loggedSteps(dir), done);
  }
});

Deno.test("a fault leaves no trace: resumed with a sane rate, the run ends bit for bit like one that never faulted", async () => {
  const clean = await Deno.makeTempDir();
  await run(clean, { maxSteps: 5 });
  const dir = await Deno.makeTempDir();
  await run(dir, { maxSteps: 3 });
  const before = await Deno.readFile(`${dir}/${LAST_CHECKPOINT}`);
  await assertRejects(
    () => run(dir, { resume: true, optimizer: { lr: 1e39 } }),
    /^refinement stopped at step 4 \(epoch 2, batch 1 of 3, learning rate 1e\+39\): .*The last checkpoint, \S+ \(after step 3\), is finite/,
    RefineError,
  );
  assertEquals(await Deno.readFile(`${dir}/${LAST_CHECKPOINT}`), before);
  await run(dir, { resume: true, maxSteps: 5 });
  assertEquals(await loggedSteps(dir), [1, 2, 3, 4, 5]);
  const a = (await checkpoints(clean)).get(LAST_CHECKPOINT)!;
  const b = (await checkpoints(dir)).get(LAST_CHECKPOINT)!;
  assertEquals([...b.keys()], [...a.keys()]);
  for (const [k, x] of a) assert(x.every((v, i) => Object.is(v, b.get(k)![i])), `${k} differs`);
  await assertAllFinite(dir);
});

Deno.test("checkpoints are only written and read finite, and a refused load leaves the model unchanged", async () => {
  const dir = await Deno.makeTempDir();
  await run(dir, { maxSteps: 1 });
  const path = `${dir}/${LAST_CHECKPOINT}`;
  const { tensors, metadata } = readSafetensors(path);
  const poisoned = new Map<string, TensorData>(tensors);
  const key = [...tensors.keys()].filter((k) => k.startsWith("param/") && tensors.get(k)!.data.length > 2).at(-1)!;
  const data = (tensors.get(key)!.data as Float32Array).slice();
  data[2] = NaN;
  poisoned.set(key, { ...tensors.get(key)!, data });
  await writeSafetensors(`${dir}/old.ckpt.safetensors`, poisoned, metadata);
  const model = await tinyModel(1);
  const params = modelParams(model);
  const first = [...params.values()][0];
  const w0 = Array.from(first.dataSync());
  const name = key.slice("param/".length);
  assertThrows(
    () => loadCheckpoint(`${dir}/old.ckpt.safetensors`, params),
    new RegExp(`the weights of "${name.replace(/\./g, "\\.")}" hold NaN at index 2`),
    RefineError,
  );
  assertEquals(Array.from(first.dataSync()), w0, "nothing was assigned");
  // Writing one with a NaN weight is refused, and no file appears.
  const bad = [...params.values()][3];
  bad.assign(tf.fill(bad.shape, NaN));
  await assertRejects(
    () => saveCheckpoint(`${dir}/nan.ckpt.safetensors`, params, createAdamWState(), { ...readLoop(metadata) }),
    new RegExp(`refusing to write the checkpoint .*nan\\.ckpt\\.safetensors: the weights of \\S+ hold NaN at index 0`),
    RefineError,
  );
  assertEquals([...Deno.readDirSync(dir)].filter((e) => e.name.startsWith("nan.")).length, 0);
  // A fresh run may not overwrite another run's checkpoints.
  await assertRejects(() => run(dir, {}), /last\.ckpt\.safetensors already exists: .* holds another run/, RefineError);
});

Deno.test("a validation split of one pair is an error before training, not `val NaN` with early stopping off", async () => {
  const pairs = await tinyPairs();
  const firstVal = pairs.findIndex((p) => p.split === "val");
  const onlyOne = pairs.filter((p, i) => p.split === "train" || i === firstVal);
  const dir = await Deno.makeTempDir();
  await assertRejects(
    () => run(dir, { pairs: onlyOne }),
    /the validation split has 1 pair; a validation loss needs batches of at least 2 pairs/,
    RefineError,
  );
  assertEquals((await checkpoints(dir)).size, 0);
  // Without validation pairs it trains, and says that early stopping is off.
  const notices: string[] = [];
  const r = await run(await Deno.makeTempDir(), {
    pairs: pairs.filter((p) => p.split === "train"),
    epochs: 1,
    onNotice: (m) => notices.push(m),
  });
  assertEquals(r.loop.history.length, 1);
  assert(notices.some((m) => m.includes("no validation pairs; early stopping is off")), notices.join("\n"));
  assert(Number.isNaN(r.loop.history[0].valLoss));
});

Deno.test("--resume with other losses or token length is refused (early stopping would compare different losses); another lr gets a notice", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await run(dir, { maxSteps: 2 });
    await assertRejects(
      () => run(dir, { resume: true, losses: { itc: 1, itm: 0, mlm: 0, gm: 0 } }),
      /was made with losses .* not be comparable for early stopping/,
      RefineError,
    );
    const notices: string[] = [];
    await run(dir, { resume: true, maxSteps: 3, optimizer: { lr: 5e-4 }, onNotice: (m) => notices.push(m) });
    assert(notices.some((m) => m.includes("resuming with other optimizer settings")), notices.join("\n"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a stop by maxSteps keeps a checkpoint where it stopped (resume continues), and says the export is unvalidated", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const notices: string[] = [];
    await run(dir, { maxSteps: 1, checkpointEvery: 100, onNotice: (m) => notices.push(m) });
    const ckpt = JSON.parse(readSafetensors(`${dir}/${LAST_CHECKPOINT}`).metadata["retfiner.checkpoint"]);
    assertEquals([ckpt.step, ckpt.batchInEpoch], [1, 1]);
    assert(notices.some((m) => m.includes("before the first validation")), notices.join("\n"));
    const r = await run(dir, { resume: true, maxSteps: 2, checkpointEvery: 100, onNotice: quiet });
    assertEquals(r.loop.step, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
