import { assert, assertAllClose, assertEquals, assertThrows } from "../_assert.ts";
import { CheckpointError } from "../../src/util/errors.ts";
import {
  isTensorData,
  type PyObject,
  readPth,
  type TensorData,
  toFloat32,
  unpickle,
  UnsafePickleError,
} from "../../src/io/mod.ts";

const dir = new URL("../fixtures/io/", import.meta.url).pathname;
const expected = JSON.parse(Deno.readTextFileSync(`${dir}all_dtypes.json`)) as Record<
  string,
  { dtype: string; shape: number[]; values: number[] }
>;
const DT: Record<string, string> = {
  float32: "F32",
  float16: "F16",
  bfloat16: "BF16",
  float64: "F64",
  int64: "I64",
  int32: "I32",
  int16: "I16",
  int8: "I8",
  uint8: "U8",
  bool: "BOOL",
};

function checkTensor(name: string, t: TensorData) {
  const e = expected[name];
  assert(e, `no expectation for ${name}`);
  assertEquals(t.dtype, DT[e.dtype], `${name} dtype`);
  assertEquals(t.shape, e.shape, `${name} shape`);
  if (t.dtype === "I64") {
    assertEquals([...t.data as BigInt64Array].map(Number), e.values, `${name} values`);
  } else {
    assertAllClose(toFloat32(t), e.values, t.dtype === "F64" ? 1e-7 : 1e-6, name);
  }
}

for (const file of ["all_dtypes.pth", "all_dtypes_legacy.pth"]) {
  Deno.test(`readPth ${file}: every dtype, offsets, strides, shared storage, nesting`, () => {
    const { value, format } = readPth(`${dir}${file}`);
    assertEquals(format, file.includes("legacy") ? "legacy" : "zip");
    const top = value as Map<string, unknown>;
    const state = top.get("state") as Map<string, TensorData>;
    assertEquals([...state.keys()], Object.keys(expected).filter((k) => !k.startsWith("nested")));
    for (const [name, t] of state) checkTensor(name, t);
    const nested = top.get("nested") as Map<string, unknown>;
    const list = nested.get("list") as unknown[];
    checkTensor("nested.list.0", list[0] as TensorData);
    checkTensor("nested.list.1.deep", (list[1] as Map<string, TensorData>).get("deep")!);
    assertEquals(nested.get("tuple"), [1, "two", 3.5]);
    const args = top.get("args") as PyObject;
    assertEquals(args.__class__, "argparse.Namespace");
    assertEquals(args.lr, 1e-4);
    assertEquals(args.model, "vit_large_patch16");
    assertEquals(args.input_size, 224);
    assertEquals(args.flags, [true, null]);
    assertEquals(top.get("epoch"), 42);
    assertEquals(top.get("np_float"), 0.875);
    assertEquals(top.get("np_int"), -3);
    assertEquals(top.get("text"), "résumé ✓");
  });
}

const MARKER = "/tmp/retfiner_pickle_pwned";

for (
  const [file, global] of [
    ["evil_os_system.pth", "posix.system"],
    ["evil_eval.pth", "__builtin__.eval"],
    ["evil_subprocess.pth", "subprocess.call"],
    ["evil_legacy.pth", "posix.system"],
  ] as const
) {
  Deno.test(`readPth refuses ${file}, naming ${global} and the file, running nothing`, () => {
    try {
      Deno.removeSync(MARKER);
    } catch { /* absent */ }
    const err = assertThrows(() => readPth(`${dir}${file}`), undefined, UnsafePickleError);
    assert(err.message.includes(`"${global}"`), err.message);
    assert(err.message.includes(file), err.message);
    assert(err.message.includes("Nothing from the file was executed"), err.message);
    let exists = true;
    try {
      Deno.statSync(MARKER);
    } catch {
      exists = false;
    }
    assert(!exists, "the payload ran");
  });
}

Deno.test("readPth names the file for missing, empty and non-checkpoint files", () => {
  assertThrows(() => readPth("/nonexistent/x.pth"), /\/nonexistent\/x\.pth: file not found/, CheckpointError);
  const tmp = Deno.makeTempFileSync({ suffix: ".pth" });
  Deno.writeTextFileSync(tmp, "hello, this is text");
  assertThrows(() => readPth(tmp), new RegExp(`${tmp}: not a PyTorch checkpoint`), CheckpointError);
  Deno.writeFileSync(tmp, new Uint8Array(0));
  assertThrows(() => readPth(tmp), new RegExp(tmp), CheckpointError);
  Deno.removeSync(tmp);
});

Deno.test("readPth: a whole pickled model is refused with a message saying so", () => {
  for (
    const [file, cls] of [
      ["whole_model_linear.pth", "torch.nn.modules.linear.Linear"],
      ["whole_model_custom.pth", "__main__.TinyNet"],
    ]
  ) {
    const err = assertThrows(() => readPth(`${dir}${file}`), undefined, UnsafePickleError);
    assert(err.message.includes(`this file is a whole pickled model (class ${cls})`), err.message);
    assert(err.message.includes("torch.save(model.state_dict(), path)"), err.message);
    assert(err.message.includes(file), err.message);
  }
});

Deno.test("readPth: numpy arrays inside a checkpoint load as numpy arrays (not tensors), as PyTorch saved them", () => {
  const want = JSON.parse(Deno.readTextFileSync(`${dir}numpy_in_checkpoint.json`)) as Record<
    string,
    { descr: string; shape: number[]; values: (number | boolean)[] }
  >;
  const top = readPth(`${dir}numpy_in_checkpoint.pth`).value as Map<string, unknown>;
  for (const [k, e] of Object.entries(want)) {
    const a = top.get(k) as PyObject;
    assertEquals(a.__class__, "numpy.ndarray", k);
    assert(!isTensorData(a), `${k} passes as a tensor`);
    assertEquals(a.shape, e.shape, k);
    const values = Array.from(a.data as ArrayLike<number | bigint>, Number);
    assertEquals(values, e.values.map(Number), k);
    // The byte order is normalised: '>i8' in the file reads as native little-endian values.
    assertEquals((a.descr as string).slice(1), e.descr.slice(1), k);
  }
  assertEquals(top.get("np_scalar"), 1.5);
  assert(isTensorData(top.get("w")));
  const err = assertThrows(() => readPth(`${dir}numpy_object_array.pth`), /Python objects/, CheckpointError);
  assert(err.message.includes("numpy_object_array.pth: a numpy array inside the checkpoint"), err.message);
});

Deno.test("readPth: numpy >= 2 spellings (numpy._core.multiarray.scalar) load like their numpy 1 twins", () => {
  const one = readPth(`${dir}numpy1_scalar.pth`).value as Map<string, unknown>;
  const two = readPth(`${dir}numpy2_scalar.pth`).value as Map<string, unknown>;
  const args = two.get("args") as PyObject;
  assertEquals(args.lr, 0.25);
  assertEquals(args.epochs, 7);
  assertEquals(args, one.get("args"));
  const w = (two.get("model") as Map<string, TensorData>).get("w")!;
  assertEquals([...w.data as Float32Array], [1, 1]);
});

Deno.test("unpickle refuses APPEND(S) on a tuple and SETITEM(S) on a non-dict as Python does, naming the file and byte", () => {
  const run = (ops: string) =>
    unpickle(Uint8Array.from(ops, (c) => c.charCodeAt(0)), { globals: new Map(), fileName: "x.pkl" }).value;
  // Protocol-0/1 opcodes as text: ")" EMPTY_TUPLE, "]" EMPTY_LIST, "}" EMPTY_DICT, "N" None, "(" MARK,
  // "a" APPEND, "e" APPENDS, "s" SETITEM, "u" SETITEMS, "." STOP. Python: AttributeError / TypeError for each refusal.
  assertThrows(() => run(")Na."), /x\.pkl: APPEND target is a tuple, not a list \(pickle byte 3\)/, CheckpointError);
  assertThrows(() => run(")(Ne."), /x\.pkl: APPENDS target is a tuple, not a list/, CheckpointError);
  assertThrows(() => run("NN\x86Na."), /APPEND target is a tuple/, CheckpointError); // TUPLE2
  assertThrows(() => run("}Na."), /APPEND target is a dict, not a list/, CheckpointError);
  assertThrows(
    () => run("]NNs."),
    /x\.pkl: SETITEM\(S\) target is a list, not a dict \(pickle byte 4\)/,
    CheckpointError,
  );
  assertThrows(() => run(")(NNu."), /SETITEM\(S\) target is a tuple, not a dict/, CheckpointError);
  // What Python accepts still loads: [None], [None, None], {None: None}.
  assertEquals(run("]Na."), [null]);
  assertEquals(run("](NNe."), [null, null]);
  assertEquals(run("}NNs."), new Map([[null, null]]));
});
