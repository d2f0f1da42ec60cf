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
