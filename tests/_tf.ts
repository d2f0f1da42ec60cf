/** Backend-neutral tensor helpers for tests that also run on WebGPU (where `dataSync` is unavailable under Deno). */
import { tf } from "../src/backend/tf.ts";

/** Runs `f` in a tfjs scope (what `tf.tidy` is for synchronous code): its tensors are disposed afterwards. */
export async function scoped<T>(f: () => Promise<T>): Promise<T> {
  tf.engine().startScope();
  try {
    return await f();
  } finally {
    tf.engine().endScope();
  }
}
