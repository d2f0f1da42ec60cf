import { assert, assertEquals, assertRejects } from "../_assert.ts";
import {
  createBlasGemm,
  createOrtGemm,
  type Gemm,
  type GemmSpec,
  hybridGemm,
  installMatMulKernels,
  restoreMatMulKernels,
  setupBackend,
} from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { Rng } from "../../src/util/rng.ts";

await setupBackend({ backend: "cpu", log: null });

const gemms: { name: string; make: () => Promise<Gemm> | Gemm }[] = [
  { name: "onnx", make: () => createOrtGemm({ api: "c" }) },
  { name: "onnx-binding", make: () => createOrtGemm({ api: "binding" }) },
];
let blasError = "";
try {
  createBlasGemm();
  gemms.push({ name: "blas", make: () => createBlasGemm() });
  // A threshold low enough that the cases below exercise both halves of the hybrid.
  gemms.push({ name: "hybrid", make: async () => hybridGemm(await createOrtGemm(), createBlasGemm(), 100) });
} catch (err) {
  blasError = (err as Error).message;
}

function randomTensor(rng: Rng, shape: number[]): tf.Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  return tf.tensor(Float32Array.from({ length: size }, () => rng.normal()), shape);
}

/** [aShape, bShape, transA, transB] as tfjs would be called. */
const cases: [number[], number[], boolean, boolean][] = [
  [[1, 1], [1, 1], false, false],
  [[3, 5], [5, 7], false, false],
  [[5, 3], [5, 7], true, false],
  [[3, 5], [7, 5], false, true],
  [[5, 3], [7, 5], true, true],
  [[17, 33], [33, 9], false, false],
  [[4, 17, 33], [4, 33, 9], false, false],
  [[4, 33, 17], [4, 9, 33], true, true],
  [[4, 17, 33], [33, 9], false, false], // B broadcast (rank 2)
  [[4, 17, 33], [1, 9, 33], false, true], // B broadcast batch 1, transposed
  [[1, 17, 33], [4, 33, 9], false, false], // A broadcast
  [[1, 33, 17], [4, 33, 9], true, false], // A broadcast, transposed
  [[2, 1, 6, 5], [1, 3, 5, 4], false, false], // general broadcast on both sides
  [[2, 3, 6, 5], [3, 5, 4], false, false], // rank mismatch broadcast
  [[2, 3, 5, 6], [2, 3, 4, 5], true, true],
  [[0, 3], [3, 4], false, false], // zero rows
  [[3, 0], [0, 4], false, false], // zero inner dim
  [[2, 3, 0], [2, 0, 4], false, false],
  [[0, 3, 4], [0, 4, 2], false, false], // zero batch
  [[3, 4], [4, 0], false, false], // zero columns
];

/** Float64 reference product with numpy broadcasting of the batch dimensions. */
function naiveMatMul(a: tf.Tensor, b: tf.Tensor, ta: boolean, tb: boolean): { values: Float64Array; shape: number[] } {
  const av = a.dataSync();
  const bv = b.dataSync();
  const ar = a.shape.length;
  const br = b.shape.length;
  const m = ta ? a.shape[ar - 1] : a.shape[ar - 2];
  const k = ta ? a.shape[ar - 2] : a.shape[ar - 1];
  const n = tb ? b.shape[br - 2] : b.shape[br - 1];
  const rank = Math.max(ar, br) - 2;
  const pad = (s: number[]) => [...new Array(rank - (s.length - 2)).fill(1), ...s.slice(0, -2)];
  const da = pad(a.shape);
  const db = pad(b.shape);
  const out = da.map((d, i) => Math.max(d, db[i]));
  const batch = out.reduce((x, y) => x * y, 1);
  const values = new Float64Array(batch * m * n);
  const idx = new Array(rank).fill(0);
  for (let bi = 0; bi < batch; bi++) {
    let oa = 0;
    let ob = 0;
    for (let d = 0; d < rank; d++) {
      oa = oa * da[d] + (da[d] === 1 ? 0 : idx[d]);
      ob = ob * db[d] + (db[d] === 1 ? 0 : idx[d]);
    }
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let sum = 0;
        for (let p = 0; p < k; p++) {
          const x = av[oa * m * k + (ta ? p * m + i : i * k + p)];
          const y = bv[ob * k * n + (tb ? j * k + p : p * n + j)];
          sum += x * y;
        }
        values[bi * m * n + i * n + j] = sum;
      }
    }
    for (let d = rank - 1; d >= 0; d--) {
      if (++idx[d] < out[d]) break;
      idx[d] = 0;
    }
  }
  return { values, shape: [...out, m, n] };
}

function maxRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assertEquals(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / (1 + Math.abs(b[i])));
  return worst;
}

for (const g of gemms) {
  Deno.test(`${g.name} BatchMatMul matches a float64 reference over shapes, transposes and broadcasting`, async () => {
    // tfjs's own cpu kernel mis-handles general batch broadcasting (e.g. [2,1,..] x [1,3,..]),
    // so the reference here is a plain float64 product.
    const gemm = await g.make();
    const rng = new Rng(1);
    for (const [as, bs, ta, tb] of cases) {
      const a = randomTensor(rng, as);
      const b = randomTensor(rng, bs);
      const ref = naiveMatMul(a, b, ta, tb);
      installMatMulKernels(gemm);
      const got = tf.matMul(a, b, ta, tb);
      restoreMatMulKernels();
      assertEquals(got.shape, ref.shape, `shape for ${as} x ${bs} ta=${ta} tb=${tb}`);
      const err = maxRelErr(got.dataSync(), ref.values);
      assert(err < 1e-5, `${as} x ${bs} ta=${ta} tb=${tb}: max rel err ${err}`);
      tf.dispose([a, b, got]);
    }
  });

  Deno.test(`${g.name} BatchMatMul agrees with tfjs's own kernel where tfjs is right`, async () => {
    const gemm = await g.make();
    const rng = new Rng(11);
    for (const [as, bs, ta, tb] of cases.filter(([as, bs]) => !(as.length === 4 && bs.length >= 3))) {
      const a = randomTensor(rng, as);
      const b = randomTensor(rng, bs);
      restoreMatMulKernels();
      const ref = tf.matMul(a, b, ta, tb);
      installMatMulKernels(gemm);
      const got = tf.matMul(a, b, ta, tb);
      restoreMatMulKernels();
      assertEquals(got.shape, ref.shape);
      const err = maxRelErr(got.dataSync(), ref.dataSync());
      assert(err < 1e-5, `${as} x ${bs}: max rel err ${err}`);
      tf.dispose([a, b, ref, got]);
    }
  });

  Deno.test(`${g.name} _FusedMatMul with bias and activations matches tfjs`, async () => {
    const gemm = await g.make();
    const rng = new Rng(2);
    const activations = ["linear", "relu", "relu6", "elu", "sigmoid", "leakyrelu", "prelu"] as const;
    for (const activation of activations) {
      // Row biases ([4], [1, 4], [1, 1, 4]) are folded into a BLAS product; full ones ([6, 4], [5, 4]) are added.
      const cases = [
        [[6, 5], [4, 5], false, true, [4]],
        [[6, 5], [4, 5], false, true, [1, 4]],
        [[6, 5], [4, 5], false, true, [6, 4]],
        [[3, 6, 5], [6, 4], true, false, [4]],
        [[3, 6, 5], [6, 4], true, false, [1, 1, 4]],
        [[3, 6, 5], [6, 4], true, false, [5, 4]],
      ] as const;
      for (const [as, bs, ta, tb, biasShape] of cases) {
        const a = randomTensor(rng, [...as]);
        const b = randomTensor(rng, [...bs]);
        const bias = randomTensor(rng, [...biasShape]);
        const alpha = activation === "prelu" ? randomTensor(rng, [4]) : undefined;
        const run = () =>
          tf.fused.matMul({
            a,
            b,
            transposeA: ta,
            transposeB: tb,
            bias,
            activation,
            preluActivationWeights: alpha,
            leakyreluAlpha: 0.3,
          });
        restoreMatMulKernels();
        const ref = run();
        installMatMulKernels(gemm);
        const got = run();
        restoreMatMulKernels();
        assertEquals(got.shape, ref.shape);
        const err = maxRelErr(got.dataSync() as Float32Array, ref.dataSync() as Float32Array);
        assert(err < 1e-5, `${activation}: max rel err ${err}`);
        tf.dispose([a, b, bias, ref, got, ...(alpha ? [alpha] : [])]);
      }
    }
  });

  if (g.name.startsWith("onnx")) {
    Deno.test(`${g.name} folds a row bias into the product call, bit for bit the product plus a float32 Add`, async () => {
      const gemm = await g.make();
      // Counts the products that reach the GEMM with a bias, so the test fails if the kernels stop folding.
      let biased = 0;
      const spy: Gemm = {
        ...gemm,
        name: gemm.name,
        matmul: (a, b, spec, out, bias) => (bias && biased++, gemm.matmul(a, b, spec, out, bias)),
      };
      const rng = new Rng(4);
      const cases = [
        [[37, 128], [512, 128], false, true],
        [[300, 64], [64, 96], false, false],
        [[3, 40, 20], [40, 24], true, false], // batched, A transposed
      ] as const;
      for (const [as, bs, ta, tb] of cases) {
        const n = bs[tb ? 0 : 1];
        const [a, b, bias] = [randomTensor(rng, [...as]), randomTensor(rng, [...bs]), randomTensor(rng, [n])];
        installMatMulKernels(spy);
        const before = biased;
        const folded = tf.fused.matMul({ a, b, transposeA: ta, transposeB: tb, bias });
        assertEquals(biased, before + 1, `${as} x ${bs}: the bias went to the GEMM`);
        const product = tf.matMul(a, b, ta, tb);
        restoreMatMulKernels();
        const added = tf.add(product, bias); // tfjs's own Add: one float32 rounding per element
        assertEquals(Array.from(folded.dataSync()), Array.from(added.dataSync()), `${as} x ${bs}`);
        tf.dispose([a, b, bias, folded, product, added]);
      }
    });
  }

  Deno.test(`${g.name} gradients through tf.variableGrads match tfjs`, async () => {
    const gemm = await g.make();
    const rng = new Rng(3);
    // tfjs's BatchMatMul gradient does not reduce broadcast batch dimensions,
    // so linear layers (here and in the encoders) multiply 2-D matrices.
    const x = tf.variable(randomTensor(rng, [14, 12]), true, `kt_x_${g.name}`);
    const w = tf.variable(randomTensor(rng, [5, 12]), true, `kt_w_${g.name}`);
    const bias = tf.variable(randomTensor(rng, [5]), true, `kt_b_${g.name}`);
    const loss = (): tf.Scalar => {
      const h2 = tf.fused.matMul({ a: x, b: w, transposeB: true, bias, activation: "relu" });
      const h = tf.reshape(h2, [2, 7, 5]);
      const att = tf.matMul(h, h, false, true); // [2, 7, 7]
      return tf.sum(tf.square(tf.matMul(att, h))) as tf.Scalar;
    };
    restoreMatMulKernels();
    const ref = tf.variableGrads(loss);
    installMatMulKernels(gemm);
    const got = tf.variableGrads(loss);
    restoreMatMulKernels();
    assert(maxRelErr(got.value.dataSync() as Float32Array, ref.value.dataSync() as Float32Array) < 1e-5);
    for (const name of Object.keys(ref.grads)) {
      const err = maxRelErr(got.grads[name].dataSync() as Float32Array, ref.grads[name].dataSync() as Float32Array);
      assert(err < 1e-4, `gradient of ${name}: max rel err ${err}`);
    }
    tf.dispose([x, w, bias, ref.value, got.value, ...Object.values(ref.grads), ...Object.values(got.grads)]);
  });
}

Deno.test({
  name: "blas is available where CI installs it",
  ignore: Deno.env.get("CI") !== "true",
  fn: () => assertEquals(blasError, ""),
});

Deno.test("forcing an unavailable backend is an error, auto degrades with a reason", async () => {
  const lines: string[] = [];
  await assertRejects(
    () => setupBackend({ backend: "tfjs-node-gpu", log: null }),
    /tfjs-node-gpu.*unavailable.*not installed/,
  );
  const info = await setupBackend({ backend: "auto", log: (l) => lines.push(l) });
  assertEquals(info.name, "cpu-onnx");
  assertEquals(lines.length, 1);
  // Each skipped candidate with its reason; WebGPU is skipped here as a software adapter (CI: Mesa's llvmpipe) or as
  // no adapter at all.
  assert(
    /skipped tfjs-node-gpu \(not installed\), webgpu \((software adapter; force with --backend webgpu|no GPU adapter)\), tfjs-node \(not installed\)$/
      .test(lines[0]),
    lines[0],
  );
  assertEquals(info.skipped.length, 3);
  await setupBackend({ backend: "cpu", log: null });
});

Deno.test({
  name: "hybrid GEMM: large products go to BLAS (into the caller's buffer), small ones to ONNX Runtime",
  ignore: blasError !== "",
  fn: async () => {
    const calls: string[] = [];
    const spy = (name: string, g: Gemm): Gemm => ({
      ...g,
      matmul: (a, b, spec, out) => (calls.push(name), g.matmul(a, b, spec, out)),
    });
    const hybrid = hybridGemm(spy("ort", await createOrtGemm({ api: "binding" })), spy("blas", createBlasGemm()), 1000);
    const spec = (m: number, n: number, k: number): GemmSpec => ({
      batch: 1,
      batchA: 1,
      batchB: 1,
      m,
      n,
      k,
      transA: false,
      transB: false,
    });
    const small = spec(4, 5, 6); // 120 multiply-adds
    const large = { ...spec(5, 10, 10), batch: 2, batchA: 2, batchB: 2 }; // 2 × 500
    assertEquals([hybrid.writesOut!(small), hybrid.writesOut!(large)], [false, true]);
    hybrid.matmul(new Float32Array(24).fill(1), new Float32Array(30).fill(1), small);
    const out = new Float32Array(100);
    const c = hybrid.matmul(new Float32Array(100).fill(1), new Float32Array(200).fill(2), large, out);
    assertEquals(calls, ["ort", "blas"]);
    assert(c === out && out.every((v) => v === 20), "the large product was not written into the given buffer");
    // Through ONNX Runtime's C API the small products, too, are written into the caller's buffer.
    const viaC = hybridGemm(await createOrtGemm({ api: "c" }), createBlasGemm(), 1000);
    assertEquals(viaC.writesOut!(small), true);
    const smallOut = new Float32Array(20);
    const d = viaC.matmul(new Float32Array(24).fill(1), new Float32Array(30).fill(0.5), small, smallOut);
    assert(d === smallOut && smallOut.every((v) => v === 3), `small product via the C API: ${smallOut}`);
  },
});

Deno.test("RETFINER_BLAS pointing at a missing library is a clear error", () => {
  let message = "";
  try {
    createBlasGemm("/nonexistent/libfoo.so");
  } catch (err) {
    message = (err as Error).message;
  }
  assert(/no BLAS library.*\/nonexistent\/libfoo\.so/.test(message), message);
});
