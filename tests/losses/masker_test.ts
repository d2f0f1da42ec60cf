import { assert, assertEquals, assertThrows } from "../_assert.ts";
import { GM_PROB, IGNORE_INDEX, maskTokens, MLM_PROB } from "../../src/losses/mod.ts";
import { RefineError } from "../../src/util/errors.ts";
import { Rng } from "../../src/util/rng.ts";

const L = 30;
function batch(rows: number, rng: Rng): Int32Array {
  const ids = new Int32Array(rows * L);
  for (let i = 0; i < rows; i++) {
    const len = 3 + rng.int(L - 3);
    ids[i * L] = 101;
    for (let j = 1; j < len - 1; j++) ids[i * L + j] = 1000 + rng.int(20000);
    ids[i * L + len - 1] = 102;
  }
  return ids;
}

Deno.test("masker: never position 0 or padding, ≥ 1 per row, labels only where masked, 80/10/10 split", () => {
  const rng = new Rng(3);
  const ids = batch(400, rng);
  for (const prob of [MLM_PROB, GM_PROB]) {
    const { inputIds, labels } = maskTokens(ids, 400, L, { prob, maskId: 103, randomRange: [106, 30521], rng });
    let selected = 0, masked = 0, random = 0, kept = 0, candidates = 0;
    for (let i = 0; i < 400; i++) {
      let rowSel = 0;
      for (let j = 0; j < L; j++) {
        const k = i * L + j;
        if (j > 0 && ids[k] !== 0) candidates++;
        if (labels[k] === IGNORE_INDEX) {
          assertEquals(inputIds[k], ids[k]);
          continue;
        }
        assert(j > 0 && ids[k] !== 0, `position ${j} (id ${ids[k]}) was masked`);
        assertEquals(labels[k], ids[k]);
        rowSel++;
        selected++;
        if (inputIds[k] === 103) masked++;
        else if (inputIds[k] === ids[k]) kept++;
        else {
          random++;
          assert(inputIds[k] >= 106 && inputIds[k] <= 30521);
        }
      }
      assert(rowSel >= 1, `row ${i} has nothing masked`);
    }
    assert(Math.abs(selected / candidates - prob) < 0.03, `selection rate ${selected / candidates} for p=${prob}`);
    assert(
      Math.abs(masked / selected - 0.8) < 0.03 && Math.abs(random / selected - 0.1) < 0.03 &&
        Math.abs(kept / selected - 0.1) < 0.03,
    );
  }
});

Deno.test("masker re-draws a row until something is masked, is seeded, and refuses rows with nothing to mask", () => {
  const ids = Int32Array.from([101, 2000, 102, 0, 0, 0]);
  for (let s = 0; s < 50; s++) {
    const { labels } = maskTokens(ids, 1, 6, { prob: 0.01, maskId: 103, randomRange: [106, 200], rng: new Rng(s) });
    assert(labels.some((l) => l !== IGNORE_INDEX));
  }
  const a = maskTokens(ids, 1, 6, { prob: 0.5, maskId: 103, randomRange: [106, 200], rng: new Rng(9) });
  const b = maskTokens(ids, 1, 6, { prob: 0.5, maskId: 103, randomRange: [106, 200], rng: new Rng(9) });
  assertEquals(a, b);
  assertThrows(
    () =>
      maskTokens(Int32Array.from([101, 0, 0]), 1, 3, {
        prob: 0.5,
        maskId: 103,
        randomRange: [106, 200],
        rng: new Rng(0),
      }),
    /row 0 has no maskable token/,
    RefineError,
  );
});
