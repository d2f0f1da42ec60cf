import { assert, assertEquals } from "../_assert.ts";
import { findOrtLibrary, openOrtCApi } from "../../src/backend/ort_capi.ts";
import { encodeSingleNodeModel } from "../../src/backend/onnx_proto.ts";
import { BackendError } from "../../src/util/errors.ts";

const matmulModel = encodeSingleNodeModel({
  opType: "MatMul",
  domain: "",
  inputs: [{ name: "A", rank: 2 }, { name: "B", rank: 2 }],
  outputs: [{ name: "Y", rank: 2 }],
});

Deno.test("ONNX Runtime C API: the library of the onnxruntime-node package opens and names its version", () => {
  const api = openOrtCApi();
  assertEquals(api.path, findOrtLibrary());
  assert(/^1\.\d+\.\d+/.test(api.version), api.version);
  assert(openOrtCApi() === api, "the API is opened once per process");
});

Deno.test("ONNX Runtime C API: a session reads the caller's inputs and writes into the caller's output buffer", () => {
  const session = openOrtCApi().session(matmulModel, ["A", "B"], ["Y"], 1);
  // [[1, 2, 3], [4, 5, 6]] · [[1, 0], [0, 1], [1, 1]] = [[4, 5], [10, 11]], worked by hand.
  const a = Float32Array.of(1, 2, 3, 4, 5, 6);
  const b = Float32Array.of(1, 0, 0, 1, 1, 1);
  const y = new Float32Array(4).fill(NaN);
  session.run([{ data: a, dims: [2, 3] }, { data: b, dims: [3, 2] }], [{ data: y, dims: [2, 2] }]);
  assertEquals([...y], [4, 5, 10, 11]);
  // A view into a larger buffer is read and written at its own offset.
  const big = new Float32Array(10).fill(-1);
  const view = big.subarray(3, 7);
  session.run([{ data: a, dims: [2, 3] }, { data: b, dims: [3, 2] }], [{ data: view, dims: [2, 2] }]);
  assertEquals([...big], [-1, -1, -1, 4, 5, 10, 11, -1, -1, -1]);
});

Deno.test("ONNX Runtime C API: a rejected shape is a BackendError with ONNX Runtime's message, and the session still works", () => {
  const session = openOrtCApi().session(matmulModel, ["A", "B"], ["Y"], 1);
  let caught: unknown;
  try {
    session.run([{ data: new Float32Array(6), dims: [2, 3] }, { data: new Float32Array(8), dims: [4, 2] }], [{
      data: new Float32Array(4),
      dims: [2, 2],
    }]);
  } catch (err) {
    caught = err;
  }
  assert(caught instanceof BackendError, String(caught));
  assert(/ONNX Runtime Run: .*MatMul/.test((caught as Error).message), (caught as Error).message);
  // A buffer shorter than its dimensions is refused by ONNX Runtime before it reads or writes.
  let short: unknown;
  try {
    session.run([{ data: new Float32Array(6), dims: [2, 3] }, { data: new Float32Array(6), dims: [3, 2] }], [{
      data: new Float32Array(3),
      dims: [2, 2],
    }]);
  } catch (err) {
    short = err;
  }
  assert(short instanceof BackendError, String(short));
  const y = new Float32Array(1);
  session.run([{ data: Float32Array.of(2), dims: [1, 1] }, { data: Float32Array.of(3), dims: [1, 1] }], [{
    data: y,
    dims: [1, 1],
  }]);
  assertEquals(y[0], 6);
});

Deno.test("ONNX Runtime C API: wrong input counts and empty tensors are refused before ONNX Runtime runs", () => {
  const session = openOrtCApi().session(matmulModel, ["A", "B"], ["Y"], 1);
  const msg = (f: () => void) => {
    try {
      f();
    } catch (err) {
      return (err as Error).message;
    }
    return "";
  };
  assert(
    /1 inputs and 1 outputs given, the model has 2 and 1/.test(
      msg(() =>
        session.run([{ data: Float32Array.of(1), dims: [1, 1] }], [{ data: new Float32Array(1), dims: [1, 1] }])
      ),
    ),
  );
  assert(
    /empty tensors/.test(
      msg(() =>
        session.run([{ data: new Float32Array(0), dims: [0, 3] }, { data: new Float32Array(6), dims: [3, 2] }], [{
          data: new Float32Array(0),
          dims: [0, 2],
        }])
      ),
    ),
  );
});

Deno.test("ONNX Runtime C API: a model it cannot load is a BackendError", () => {
  let caught: unknown;
  try {
    openOrtCApi().session(Uint8Array.of(1, 2, 3), ["A"], ["Y"], 1);
  } catch (err) {
    caught = err;
  }
  assert(caught instanceof BackendError && /CreateSessionFromArray/.test(caught.message), String(caught));
});
