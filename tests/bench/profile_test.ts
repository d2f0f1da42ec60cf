/** The bench's per-kernel profiler: kernels are grouped by name, op scopes are not double-counted. */
import { assert, assertEquals } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { formatProfile, profileKernels } from "../../bench/profile.ts";
import { linear } from "../../src/encoders/layers.ts";

Deno.test("profileKernels groups kernel calls by name and skips custom-gradient op scopes", async () => {
  await setupBackend({ backend: "cpu", log: null });
  const a = tf.ones([16, 16]);
  const p = await profileKernels(() => {
    tf.tidy(() => {
      let h = a;
      for (let i = 0; i < 3; i++) h = tf.add(tf.matMul(h, a), 1);
      // A linear layer is a custom gradient outside an op (`unnamed scope`), logSoftmax one inside (`__op`): neither
      // scope may be counted on top of its kernels.
      h = linear(h, a);
      return tf.logSoftmax(h);
    });
  });
  const byName = new Map(p.rows.map((r) => [r.kernel, r]));
  assertEquals(byName.get("BatchMatMul")?.calls, 3);
  assertEquals(byName.get("_FusedMatMul")?.calls, 1);
  assert(!byName.has("unnamed scope"), `custom-gradient scope listed: ${[...byName.keys()]}`);
  assertEquals(byName.get("Add")?.calls, 3);
  assert(![...byName.keys()].some((k) => k.endsWith("__op")), `op scopes listed: ${[...byName.keys()]}`);
  assert(p.rows.every((r, i) => i === 0 || p.rows[i - 1].ms >= r.ms), "rows sorted by time");
  // tfjs counted at least the input and one 16×16 float32 product at once.
  assert(p.peakBytes >= 2 * 16 * 16 * 4, `peak ${p.peakBytes}`);
  const table = formatProfile("demo", p, 2);
  assert(table.includes("BatchMatMul") || table.includes("more kernels"), table);
  assert(table.includes("outside kernels"), table);
  a.dispose();
});
