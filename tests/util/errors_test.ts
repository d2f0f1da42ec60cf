/**
 * Each module throws its own error class (src/util/errors.ts): the model module's loader an EncoderError, the
 * optimiser an OptimizerError, which stays a RefineError for the trainer's fault handling, the backend's kernels a
 * BackendError.
 */
import { assert, assertEquals, assertThrows } from "../_assert.ts";
import {
  BackendError,
  EncoderError,
  OptimizerError,
  ProbeError,
  RefineError,
  RetfinerError,
} from "../../src/util/errors.ts";
import { loadRun } from "../../src/model/mod.ts";
import { adamwStep, createAdamWState } from "../../src/optim/adamw.ts";
import { ADAMW_DEFAULTS } from "../../src/refine/mod.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";

Deno.test("loadRun on a folder without a backbone export throws the model module's EncoderError, naming the folder", () => {
  const dir = Deno.makeTempDirSync({ prefix: "retfiner-errors-" });
  try {
    const err = assertThrows(() => loadRun(dir), /no best-model_\*_bscan\.safetensors/, EncoderError);
    assert(!(err instanceof ProbeError), "not the probe module's class");
    assert((err as Error).message.startsWith(dir), (err as Error).message);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("the optimiser throws OptimizerError, a RefineError and a RetfinerError, with its own name", async () => {
  await setupBackend({ backend: "cpu", log: null });
  const w = tf.variable(tf.tensor([1, 2], [2]), true, "errors_test_w");
  try {
    const err = assertThrows(
      () =>
        adamwStep(new Map([["w", w]]), new Map([["w", tf.tensor([NaN, 0], [2])]]), createAdamWState(), ADAMW_DEFAULTS),
      /non-finite gradient of w/,
      OptimizerError,
    );
    assert(err instanceof RefineError && err instanceof RetfinerError);
    assertEquals((err as Error).name, "OptimizerError");
  } finally {
    w.dispose();
  }
});

Deno.test("the backend's own kernels throw BackendError (same message as before): a gather index out of range", async () => {
  await setupBackend({ backend: "cpu-onnx", log: null });
  const x = tf.tensor([1, 2, 3]);
  const i = tf.tensor([5], [1], "int32");
  try {
    assertThrows(() => tf.gather(x, i).dataSync(), /GatherV2: index 5 is not in \[0, 3\)/, BackendError);
  } finally {
    x.dispose();
    i.dispose();
  }
});
