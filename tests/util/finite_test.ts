import { assertEquals } from "../_assert.ts";
import { countNonFinite, firstNonFinite } from "../../src/util/finite.ts";

Deno.test("firstNonFinite / countNonFinite find NaN and ±Inf within [from, to)", () => {
  const x = Float32Array.from([1, NaN, 2, Infinity, -Infinity, 3]);
  assertEquals(firstNonFinite(x), 1);
  assertEquals(firstNonFinite(x, 2), 3);
  assertEquals(firstNonFinite(x, 5), -1);
  assertEquals(firstNonFinite(x, 0, 1), -1);
  assertEquals(countNonFinite(x), 3);
  assertEquals(countNonFinite(x, 2, 4), 1);
  assertEquals(firstNonFinite([0, -0, 1e38]), -1);
});
