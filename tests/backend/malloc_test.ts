/** glibc's mmap threshold is fixed by the accelerated CPU backends, unless the user set their own. */
import { assertEquals } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { returnLargeBuffersToSystem } from "../../src/backend/malloc.ts";

const glibc = Deno.build.os === "linux" && (() => {
  try {
    Deno.dlopen("libc.so.6", { mallopt: { parameters: ["i32", "i32"], result: "i32" } }).close();
    return true;
  } catch {
    return false;
  }
})();

Deno.test("the CPU backend fixes glibc's mmap threshold (Linux, glibc, FFI granted)", { ignore: !glibc }, async () => {
  await setupBackend({ backend: "cpu-onnx", log: null });
  assertEquals(returnLargeBuffersToSystem(), Deno.env.get("MALLOC_MMAP_THRESHOLD_") === undefined);
});

Deno.test("a threshold the user set is left alone", { ignore: !glibc }, async () => {
  const code = `import { returnLargeBuffersToSystem } from "${
    new URL("../../src/backend/malloc.ts", import.meta.url).href
  }"; console.log(returnLargeBuffersToSystem());`;
  const run = (env: Record<string, string>) =>
    new Deno.Command(Deno.execPath(), { args: ["eval", code], env, stdout: "piped" }).output();
  const mine = await run({ MALLOC_MMAP_THRESHOLD_: "65536" });
  assertEquals(new TextDecoder().decode(mine.stdout).trim(), "false");
  const none = await run({});
  assertEquals(new TextDecoder().decode(none.stdout).trim(), "true");
});

const thpOnRequest = (() => {
  try {
    return /\[(always|madvise)\]/.test(Deno.readTextFileSync("/sys/kernel/mm/transparent_hugepage/enabled"));
  } catch {
    return false;
  }
})();

/** The VmFlags of the mapping that holds `address`, from /proc/self/smaps. */
function vmFlagsAt(address: bigint): string[] {
  let inside = false;
  for (const line of Deno.readTextFileSync("/proc/self/smaps").split("\n")) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (range) inside = BigInt(`0x${range[1]}`) <= address && address < BigInt(`0x${range[2]}`);
    else if (inside && line.startsWith("VmFlags:")) return line.slice(8).trim().split(/\s+/);
  }
  throw new Error(`no mapping holds 0x${address.toString(16)}`);
}

Deno.test("new large pool buffers are marked for huge pages before their first write", { ignore: !glibc }, async () => {
  const { allocFloat32 } = await import("../../src/backend/pool.ts");
  const { enableHugePages } = await import("../../src/backend/malloc.ts");
  await setupBackend({ backend: "cpu-onnx", log: null });
  assertEquals(enableHugePages(), thpOnRequest);
  const addressOf = (a: Float32Array) => BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(a)));
  const large = allocFloat32(3 * 2 ** 20 + 17); // 12 MiB and a bit: never a pooled size elsewhere
  const middle = addressOf(large) + BigInt(large.byteLength / 2);
  assertEquals(vmFlagsAt(middle).includes("hg"), thpOnRequest, `VmFlags ${vmFlagsAt(middle).join(" ")}`);
  large.fill(1); // still an ordinary, writable, zero-initialised array
  assertEquals(large[large.length - 1], 1);
  const fresh = allocFloat32(3 * 2 ** 20 + 19);
  assertEquals(fresh.every((x) => x === 0), true);
});

Deno.test("a buffer the pool drops goes back to the system at once (reads as zeros), one it keeps does not", {
  ignore: !glibc || !thpOnRequest,
}, async () => {
  const { installBufferPool } = await import("../../src/backend/pool.ts");
  const { tf } = await import("../../src/backend/tf.ts");
  await setupBackend({ backend: "cpu-onnx", log: null });
  const n = 1 << 18; // 1 MiB: a pooled size
  const valuesOf = (t: { dataId: object }) =>
    (tf.backend() as unknown as { data: { get(id: object): { values: Float32Array } } }).data.get(t.dataId).values;
  try {
    installBufferPool(tf.backend(), 1 / 1024); // a 1 KiB cap: every returned buffer is dropped
    const dropped = tf.add(tf.fill([n], 3), tf.fill([n], 4));
    const droppedValues = valuesOf(dropped);
    assertEquals(droppedValues[n / 2], 7);
    dropped.dispose();
    assertEquals(droppedValues[n / 2], 0, "the dropped buffer's pages were not released");
    installBufferPool(tf.backend(), 64); // room for it: pooled, kept as it was
    const kept = tf.add(tf.fill([n], 3), tf.fill([n], 4));
    const keptValues = valuesOf(kept);
    kept.dispose();
    assertEquals(keptValues[n / 2], 7);
  } finally {
    installBufferPool(tf.backend());
  }
});
