import { assert, assertAllClose, assertEquals } from "../_assert.ts";
import { encodePth, toFloat32, writePth } from "../../src/io/mod.ts";
import { writerSample } from "./_sample.ts";

const dir = new URL("../fixtures/io/", import.meta.url).pathname;

function torchAvailable(): boolean {
  try {
    return new Deno.Command("/usr/bin/python3", { args: ["-c", "import torch"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

type Described = Record<string, { dtype: string; shape: number[]; values: number[] }>;

function checkAgainstSample(loaded: Described) {
  const sample = writerSample();
  assertEquals(Object.keys(loaded), [...sample.keys()]);
  for (const [k, t] of sample) {
    assertEquals(loaded[k].shape, t.shape, k);
    const want = t.dtype === "I64" ? [...t.data as BigInt64Array].map(Number) : [...toFloat32(t)];
    if (t.dtype === "F64") assertEquals(loaded[k].values, [...t.data as Float64Array], k);
    else assertAllClose(loaded[k].values, want, 0, k);
  }
}

Deno.test("the committed PyTorch-verified file is exactly what the writer produces today", () => {
  const committed = Deno.readFileSync(`${dir}written_by_retfiner.pth`);
  const now = encodePth(writerSample());
  assertEquals(now.length, committed.length);
  assert(now.every((b, i) => b === committed[i]), "writer output changed; regenerate fixtures with deno task fixtures");
  checkAgainstSample(JSON.parse(Deno.readTextFileSync(`${dir}written_by_retfiner.torch.json`)));
});

Deno.test({
  name: "PyTorch loads the writer's output with weights_only=True (live, when python3-torch is installed)",
  ignore: !torchAvailable(),
  fn: async () => {
    const path = await Deno.makeTempFile({ suffix: ".pth" });
    await writePth(path, writerSample());
    const script = `
import json, sys, torch
d = torch.load(sys.argv[1], weights_only=True)
def v(t):
    t = t.contiguous()
    if t.dtype in (torch.float16, torch.bfloat16): t = t.float()
    if t.dtype == torch.bool: return [int(x) for x in t.flatten().tolist()]
    return t.flatten().tolist()
print(json.dumps({k: {"dtype": str(t.dtype), "shape": list(t.shape), "values": v(t)} for k, t in d.items()}))`;
    const out = new Deno.Command("/usr/bin/python3", { args: ["-c", script, path] }).outputSync();
    assert(out.success, new TextDecoder().decode(out.stderr));
    checkAgainstSample(JSON.parse(new TextDecoder().decode(out.stdout)));
    await Deno.remove(path);
  },
});
