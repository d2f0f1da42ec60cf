/** RETFINER_THREADS sizes OpenBLAS's pool too (where OpenBLAS is installed). */
import { assertEquals } from "../_assert.ts";
import { defaultBlasCandidates, setOpenBlasThreads } from "../../src/backend/gemm.ts";

const openblas = defaultBlasCandidates().find((c) => {
  try {
    Deno.dlopen(c, { openblas_get_num_threads: { parameters: [], result: "i32" } }).close();
    return true;
  } catch {
    return false;
  }
});

Deno.test("OpenBLAS's thread count follows the one asked for", { ignore: !openblas }, () => {
  assertEquals(setOpenBlasThreads(openblas!, 1), 1);
  assertEquals(setOpenBlasThreads(openblas!, 2), 2);
});

Deno.test("a BLAS without OpenBLAS's calls is left alone", () => {
  const libm = Deno.build.os === "linux" ? "libm.so.6" : undefined;
  if (!libm) return;
  assertEquals(setOpenBlasThreads(libm, 2), undefined);
});
