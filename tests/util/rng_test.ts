/**
 * Rng (src/util/rng.ts): the raw generator against the reference xoshiro128** (fixture from
 * tests/fixtures/make_rng.py), determinism per seed and stream, independence of streams, and the distributions'
 * ranges and moments. Every seed is fixed, so the statistical bounds (about 5 standard errors) cannot flake; they
 * are still tight enough to catch a wrong constant, an off-by-one range or a biased transform.
 */
import { assert, assertAlmostEquals, assertEquals, assertThrows } from "../_assert.ts";
import { Rng, type RngState } from "../../src/util/rng.ts";

interface RefCase {
  state: RngState;
  u32: number[];
  res53: number[];
}
const REF: { cases: RefCase[] } = JSON.parse(
  Deno.readTextFileSync(new URL("../fixtures/rng/xoshiro128ss.json", import.meta.url)),
);

const N = 200_000;

function draws(n: number, f: () => number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = f();
  return out;
}

function moments(x: ArrayLike<number>): { mean: number; variance: number; skew: number; exKurt: number } {
  let mean = 0;
  for (let i = 0; i < x.length; i++) mean += x[i];
  mean /= x.length;
  let m2 = 0, m3 = 0, m4 = 0;
  for (let i = 0; i < x.length; i++) {
    const d = x[i] - mean;
    m2 += d * d;
    m3 += d * d * d;
    m4 += d * d * d * d;
  }
  m2 /= x.length;
  m3 /= x.length;
  m4 /= x.length;
  return { mean, variance: m2, skew: m3 / m2 ** 1.5, exKurt: m4 / (m2 * m2) - 3 };
}

function correlation(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const ma = moments(a).mean, mb = moments(b).mean;
  let sab = 0, saa = 0, sbb = 0;
  for (let i = 0; i < a.length; i++) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) ** 2;
    sbb += (b[i] - mb) ** 2;
  }
  return sab / Math.sqrt(saa * sbb);
}

/** Asserts |value − expected| ≤ 5 standard errors. */
function within5se(value: number, expected: number, se: number, what: string): void {
  assert(Math.abs(value - expected) <= 5 * se, `${what}: ${value}, expected ${expected} ± ${5 * se}`);
}

Deno.test("nextU32 is xoshiro128** 1.1: the reference C's outputs from three states", () => {
  assertEquals(REF.cases.length, 3);
  for (const c of REF.cases) {
    const rng = Rng.fromState(c.state);
    assertEquals(Array.from({ length: c.u32.length }, () => rng.nextU32()), c.u32, `state ${c.state}`);
  }
});

Deno.test("uniform builds 53-bit doubles from two outputs as genrand_res53 does (reference values)", () => {
  for (const c of REF.cases) {
    const rng = Rng.fromState(c.state);
    assertEquals(Array.from({ length: c.res53.length }, () => rng.uniform()), c.res53, `state ${c.state}`);
  }
});

Deno.test("determinism: the same seed and stream give the same sequence; another seed or stream another one", () => {
  const seq = (seed: number, stream?: string) => {
    const rng = new Rng(seed, stream);
    return Array.from({ length: 32 }, () => rng.nextU32());
  };
  assertEquals(seq(42, "shuffle"), seq(42, "shuffle"));
  assertEquals(seq(42), seq(42, ""));
  const variants = [seq(42, "shuffle"), seq(43, "shuffle"), seq(42, "masking"), seq(42), seq(0), seq(-1)];
  for (let i = 0; i < variants.length; i++) {
    for (let j = i + 1; j < variants.length; j++) {
      // Two unrelated 32-bit sequences agree on a position with probability 2^-32.
      const same = variants[i].filter((v, k) => v === variants[j][k]).length;
      assertEquals(same, 0, `variants ${i} and ${j} share ${same} of 32 outputs`);
    }
  }
  // Seeds are taken as 32-bit words: 2^32 + 5 is seed 5, and -1 is 0xffffffff.
  assertEquals(seq(2 ** 32 + 5, "x"), seq(5, "x"));
  assertEquals(seq(-1, "x"), seq(0xffffffff, "x"));
});

Deno.test("state() and fromState(): a restored generator continues exactly; fork is deterministic", () => {
  const rng = new Rng(7, "checkpoint");
  for (let i = 0; i < 10; i++) rng.nextU32();
  const saved = rng.state();
  assertEquals(saved.length, 4);
  assert(saved.every((w) => Number.isInteger(w) && w >= 0 && w < 2 ** 32), `state words: ${saved}`);
  const restored = Rng.fromState(JSON.parse(JSON.stringify(saved)));
  for (let i = 0; i < 100; i++) assertEquals(restored.uniform(), rng.uniform());
  // The state is a copy, not a view: drawing does not change it.
  const s2 = rng.state();
  rng.nextU32();
  assert(rng.state().some((w, i) => w !== s2[i]));

  const a = new Rng(3), b = new Rng(3);
  const fa = a.fork("drop-path"), fb = b.fork("drop-path");
  assertEquals(draws(16, () => fa.uniform()), draws(16, () => fb.uniform()));
  // Forking advances the parent by one output, and the child is another sequence than the parent's.
  const c = new Rng(3);
  c.nextU32();
  assertEquals(a.state(), c.state());
  const other = new Rng(3).fork("augment"), same = new Rng(3).fork("drop-path");
  const parent = new Rng(3);
  const xs = draws(16, () => other.uniform()),
    ys = draws(16, () => same.uniform()),
    ps = draws(16, () => parent.uniform());
  assert(xs.every((v, i) => v !== ys[i]), "forks with other labels draw other sequences");
  assert(ys.every((v, i) => v !== ps[i]), "a fork draws another sequence than its parent");
});

Deno.test("independence: streams, neighbouring seeds and forks are uncorrelated, and no lag-1 correlation", () => {
  const n = 50_000;
  const se = 1 / Math.sqrt(n);
  const u = (rng: Rng) => draws(n, () => rng.uniform());
  const base = u(new Rng(1, "a"));
  const pairs: [string, Float64Array][] = [
    ["stream b", u(new Rng(1, "b"))],
    ["seed 2", u(new Rng(2, "a"))],
    ["fork", u(new Rng(1, "a").fork("child"))],
  ];
  for (const [what, other] of pairs) within5se(correlation(base, other), 0, se, `correlation with ${what}`);
  within5se(correlation(base.subarray(0, n - 1), base.subarray(1)), 0, se, "lag-1 autocorrelation");
  // Sequences of sequential seeds do not start alike: their first draws spread over [0, 1).
  const firsts = draws(
    1000,
    (() => {
      let s = 0;
      return () => new Rng(s++).uniform();
    })(),
  );
  within5se(moments(firsts).mean, 0.5, Math.sqrt(1 / 12 / 1000), "mean of first draws over seeds 0..999");
});

Deno.test("uniform, uniform32 and uniformRange: ranges, mean 1/2, variance 1/12, flat histogram", () => {
  const rng = new Rng(11, "uniform");
  const u = draws(N, () => rng.uniform());
  assert(u.every((v) => v >= 0 && v < 1));
  const m = moments(u);
  within5se(m.mean, 0.5, Math.sqrt(1 / 12 / N), "uniform mean");
  within5se(m.variance, 1 / 12, Math.sqrt(1 / 180 / N), "uniform variance");
  // Ten equal bins: Pearson's chi-square with 9 degrees of freedom (P(χ² > 33.7) = 1e-4).
  const bins = new Array(10).fill(0);
  for (const v of u) bins[Math.floor(v * 10)]++;
  const chi2 = bins.reduce((s, o) => s + (o - N / 10) ** 2 / (N / 10), 0);
  assert(chi2 < 33.7, `uniform histogram chi-square ${chi2}: ${bins}`);
  // 53 random bits: values below 2^-26 are representable and the low bits vary.
  assert(u.some((v) => v * 2 ** 26 !== Math.floor(v * 2 ** 26)), "uniform has no bits below 2^-26");

  const u32 = draws(N, () => rng.uniform32());
  assert(u32.every((v) => v > 0 && v < 1), "uniform32 must be in the open interval (0, 1)");
  within5se(moments(u32).mean, 0.5, Math.sqrt(1 / 12 / N), "uniform32 mean");

  const r = draws(N, () => rng.uniformRange(-3, 5));
  assert(r.every((v) => v >= -3 && v < 5));
  within5se(moments(r).mean, 1, Math.sqrt(64 / 12 / N), "uniformRange(-3, 5) mean");
  within5se(moments(r).variance, 64 / 12, (64 / 12) * Math.sqrt(0.8 / N), "uniformRange(-3, 5) variance");
});

Deno.test("normal and fillNormal: standard normal moments and tail shares", () => {
  const rng = new Rng(5, "normal");
  const checks: [string, ArrayLike<number>][] = [
    ["normal", draws(N, () => rng.normal())],
    ["fillNormal", rng.fillNormal(new Float32Array(N + 1))], // odd length: the last pair is half used
  ];
  for (const [what, x] of checks) {
    assert(Array.from(x).every(Number.isFinite), `${what} drew a non-finite value`);
    const m = moments(x);
    within5se(m.mean, 0, 1 / Math.sqrt(N), `${what} mean`);
    within5se(m.variance, 1, Math.sqrt(2 / N), `${what} variance`);
    within5se(m.skew, 0, Math.sqrt(6 / N), `${what} skewness`);
    within5se(m.exKurt, 0, Math.sqrt(24 / N), `${what} excess kurtosis`);
    // Shares beyond ±1.959964 (2.5% each side) and below 0 (50%).
    const p = (pred: (v: number) => boolean) => Array.from(x).filter(pred).length / x.length;
    within5se(p((v) => v > 1.959964), 0.025, Math.sqrt(0.025 * 0.975 / N), `${what} upper tail`);
    within5se(p((v) => v < -1.959964), 0.025, Math.sqrt(0.025 * 0.975 / N), `${what} lower tail`);
    within5se(p((v) => v < 0), 0.5, Math.sqrt(0.25 / N), `${what} share below 0`);
  }
  // fillNormal fills in place and returns its argument; its last (odd) element is drawn too.
  const buf = new Float32Array(3);
  assert(rng.fillNormal(buf) === buf);
  assert(buf.every((v) => v !== 0));
});

Deno.test("int: every value in [0, n) equally often; large n; invalid n refused", () => {
  const rng = new Rng(9, "int");
  for (const n of [1, 2, 7, 1000]) {
    const x = draws(n === 1000 ? N : 70_000, () => rng.int(n));
    assert(x.every((v) => Number.isInteger(v) && v >= 0 && v < n), `int(${n}) out of range`);
    if (n === 1) continue;
    const counts = new Array(n).fill(0);
    for (const v of x) counts[v]++;
    const e = x.length / n;
    const chi2 = counts.reduce((s, o) => s + (o - e) ** 2 / e, 0);
    // Mean n−1, sd √(2(n−1)): 5 sd above the mean.
    assert(chi2 < n - 1 + 5 * Math.sqrt(2 * (n - 1)), `int(${n}) chi-square ${chi2}`);
  }
  // Above 2^32 the draw comes from uniform(): still an integer in range, spread over the whole range.
  const big = 2 ** 40 + 3;
  const xb = draws(20_000, () => rng.int(big));
  assert(xb.every((v) => Number.isInteger(v) && v >= 0 && v < big));
  within5se(moments(xb).mean / big, 0.5, Math.sqrt(1 / 12 / 20_000), "int(2^40 + 3) mean / n");
  for (const bad of [0, -1, 1.5, NaN, Infinity]) {
    assertThrows(() => rng.int(bad), /n must be a positive integer/, RangeError);
  }
});

Deno.test("bernoulli and categorical: frequencies match the probabilities and weights", () => {
  const rng = new Rng(13, "draws");
  const heads = draws(N, () => (rng.bernoulli(0.3) ? 1 : 0));
  within5se(moments(heads).mean, 0.3, Math.sqrt(0.21 / N), "bernoulli(0.3)");
  assert(draws(1000, () => (rng.bernoulli(0) ? 1 : 0)).every((v) => v === 0));
  assert(draws(1000, () => (rng.bernoulli(1) ? 1 : 0)).every((v) => v === 1));

  const weights = [1, 0, 3, 6];
  const counts = [0, 0, 0, 0];
  for (let i = 0; i < N; i++) counts[rng.categorical(weights)]++;
  assertEquals(counts[1], 0, "a zero weight is never drawn");
  for (const k of [0, 2, 3]) {
    const p = weights[k] / 10;
    within5se(counts[k] / N, p, Math.sqrt(p * (1 - p) / N), `categorical share of ${k}`);
  }
  assertEquals(rng.categorical(new Float32Array([0, 0, 2])), 2);
  assertThrows(() => rng.categorical([1, -1]), /weight 1 is -1/, RangeError);
  assertThrows(() => rng.categorical([1, NaN]), /weight 1 is NaN/, RangeError);
  assertThrows(() => rng.categorical([1, Infinity]), /weight 1 is Infinity/, RangeError);
  assertThrows(() => rng.categorical([0, 0]), /weights sum to zero/, RangeError);
  assertThrows(() => rng.categorical([]), /weights sum to zero/, RangeError);
});

Deno.test("shuffle and permutation: a permutation, in place, every position uniform", () => {
  const rng = new Rng(17, "shuffle");
  const items = ["a", "b", "c", "d", "e"];
  const same = rng.shuffle(items);
  assert(same === items, "shuffle works in place and returns its argument");
  assertEquals([...items].sort(), ["a", "b", "c", "d", "e"]);
  assertEquals(rng.permutation(0), []);
  assertEquals(rng.permutation(1), [0]);
  // Where element 0 lands in permutations of 6, over 60 000 draws: each position 1/6.
  const n = 6, trials = 60_000;
  const at = new Array(n).fill(0);
  const orders = new Set<string>();
  for (let t = 0; t < trials; t++) {
    const p = rng.permutation(n);
    assertEquals([...p].sort((x, y) => x - y), [0, 1, 2, 3, 4, 5]);
    at[p.indexOf(0)]++;
    if (orders.size < 720) orders.add(p.join(","));
  }
  for (let k = 0; k < n; k++) within5se(at[k] / trials, 1 / n, Math.sqrt((1 / n) * (5 / 6) / trials), `position ${k}`);
  assertEquals(orders.size, 720, "every one of the 6! orders occurs");
  assertAlmostEquals(at.reduce((s, v) => s + v, 0), trials, 0);
});

Deno.test("fillBelow draws what uniform() would, entry by entry, and leaves the same state", () => {
  for (const [seed, p, n] of [[0, 0.9, 1000], [7, 0.5, 333], [123456, 1, 10], [99, 1e-3, 2000], [5, 0.9, 0]] as const) {
    const a = new Rng(seed, "mask");
    const b = Rng.fromState(a.state());
    const got = new Uint8Array(n + 4).fill(7);
    a.fillBelow(got, 2, n + 2, p);
    const want = new Uint8Array(n + 4).fill(7);
    for (let i = 2; i < n + 2; i++) want[i] = b.uniform() < p ? 1 : 0;
    assertEquals(got, want, `seed ${seed}, p ${p}`);
    assertEquals(a.state(), b.state());
  }
  // A state with high bits set in every word (negative as int32) takes the same path.
  const high = Rng.fromState([0xffffffff, 0x80000001, 0xdeadbeef, 0x90000000]);
  const ref = Rng.fromState(high.state());
  const m = new Uint8Array(64);
  high.fillBelow(m, 0, 64, 0.5);
  assertEquals([...m], Array.from({ length: 64 }, () => (ref.uniform() < 0.5 ? 1 : 0)));
  assertEquals(high.state(), ref.state());
});
