/** Export file names lead the authors' substring rule (and ours, as a last guess) to the export's own family. */
import { assertEquals } from "../_assert.ts";
import { backboneFileNames } from "../../src/model/mod.ts";
import { familyFromPath } from "../../src/encoders/mod.ts";

Deno.test("export names: the path-substring rule picks the export's family, whatever the run is called", () => {
  const runs = ["20261201-0101", "retfound_vs_vfm", "URFound-ablation", "visionfm_lr4e-5", "vfm_oct", "my-urfound"];
  for (const family of ["retfound", "visionfm", "urfound"] as const) {
    for (const run of runs) {
      const { pth, safetensors } = backboneFileNames(run, family);
      assertEquals(familyFromPath(pth), family, `${family} export of run "${run}" named ${pth}`);
      assertEquals(familyFromPath(safetensors), family, `${family} export of run "${run}" named ${safetensors}`);
      assertEquals(pth.startsWith("best-model_") && pth.endsWith("_bscan.pth"), true, pth);
    }
  }
  // A run name that already says the family is kept as it is.
  assertEquals(backboneFileNames("visionfm_lr4e-5", "visionfm").pth, "best-model_visionfm_lr4e-5_bscan.pth");
  assertEquals(backboneFileNames("run1", "urfound").pth, "best-model_run1_urfound_bscan.pth");
});
