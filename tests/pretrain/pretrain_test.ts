import { assert, assertEquals } from "../_assert.ts";
import { setupBackend } from "../../src/backend/mod.ts";
import { tf } from "../../src/backend/tf.ts";
import { loadVit, vitPreset } from "../../src/encoders/mod.ts";
import { readSafetensors } from "../../src/io/mod.ts";
import { createMae, maeLoss, patchify, randomMasking } from "../../src/pretrain/mae.ts";
import { infoNce } from "../../src/pretrain/contrastive.ts";
import { pretrainStandin } from "../../src/pretrain/standins.ts";
import { findingTargets } from "../../src/pretrain/findings.ts";
import { healthy } from "../../src/dataset/synth/render.ts";
import { writeReport } from "../../src/dataset/synth/reports.ts";
import { pretrainingReports, pretrainTextEncoder } from "../../src/pretrain/text.ts";
import { bertPreset } from "../../src/encoders/mod.ts";
import { Rng } from "../../src/util/rng.ts";

await setupBackend({ log: null });

Deno.test("random masking keeps 25 % per sample and the restore permutation inverts the shuffle", () => {
  const { keep, restore, mask, nKeep } = randomMasking(3, 16, 0.75, new Rng(0));
  assertEquals(nKeep, 4);
  for (let b = 0; b < 3; b++) {
    assertEquals(mask.subarray(b * 16, (b + 1) * 16).reduce((a, v) => a + v, 0), 12);
    for (let r = 0; r < 4; r++) {
      const patch = keep[b * 4 + r];
      assertEquals(mask[b * 16 + patch], 0);
      assertEquals(restore[b * 16 + patch], r);
    }
  }
});

Deno.test("patchify follows MAE's (p, q, c) order", () => {
  const x = tf.tensor(Float32Array.from({ length: 2 * 3 * 4 * 4 }, (_, i) => i), [2, 3, 4, 4]);
  const p = patchify(x, 2);
  assertEquals(p.shape, [2, 4, 12]);
  // Patch 0 of image 0: pixels (0,0),(0,1),(1,0),(1,1), channels interleaved last.
  assertEquals(Array.from(p.dataSync().slice(0, 6)), [0, 16, 32, 1, 17, 33]);
});

Deno.test("InfoNCE is ln(2B−1) for identical embeddings and small for separated twins", () => {
  const same = infoNce(tf.ones([8, 4]), 0.2).dataSync()[0];
  assert(Math.abs(same - Math.log(7)) < 1e-4, String(same));
  const eye = tf.concat([tf.eye(4), tf.eye(4)], 0);
  assert(infoNce(eye, 0.2).dataSync()[0] < 0.05);
});

for (const objective of ["findings", "mae", "contrastive"] as const) {
  Deno.test(`stand-in pretraining (${objective}) learns and writes a float16 encoder with its config`, async () => {
    const out = `${await Deno.makeTempDir()}/s.safetensors`;
    const r = await pretrainStandin("urfound", {
      out,
      spec: {
        vit: vitPreset("urfound", { imgSize: 32, patchSize: 8, embedDim: 32, depth: 2, numHeads: 2 }),
        decoder: { embedDim: 32, depth: 1, numHeads: 2 },
        images: 64,
        epochs: 10,
        // Contrastive views of 64 tiny scans need the steps of batch 8 to move off chance in 10 epochs (with the
        // antialiased resize the 32 px scans are smoother, and at batch 16 the loss was flat: 3.404 → 3.407).
        batchSize: objective === "contrastive" ? 8 : 16,
        objective,
        findings: ["drusen", "rnflThinning"],
        augment: 0.5,
        lr: 2e-3,
      },
    });
    const late = r.losses.slice(-3).reduce((a, b) => a + b, 0) / 3;
    assert(late < r.losses[0], `${objective} loss ${r.losses.map((l) => l.toFixed(3))}`);
    const st = readSafetensors(out);
    assertEquals(st.tensors.get("cls_token")!.dtype, "F16");
    assert(JSON.parse(st.metadata["retfiner.provenance"]).objective.length > 0);
    const vit = loadVit(out).model;
    assertEquals([vit.config.family, vit.config.embedDim, vit.config.numHeads, vit.config.imgSize], [
      "urfound",
      32,
      2,
      32,
    ]);
  });
}

Deno.test("text pretraining (MLM on synthetic reports) lowers its loss and is seeded", async () => {
  const reports = pretrainingReports(256, 1);
  assertEquals(pretrainingReports(256, 1), reports);
  const cfg = bertPreset("small", {
    hiddenSize: 32,
    numHiddenLayers: 1,
    numAttentionHeads: 2,
    intermediateSize: 64,
    maxPositionEmbeddings: 32,
  });
  const r = await pretrainTextEncoder(reports, cfg, { epochs: 4, batchSize: 32, lr: 2e-3, vocabSize: 300 });
  assert(r.losses[3] < r.losses[0], String(r.losses));
  assertEquals(r.bert.config.vocabSize, r.tokenizer.vocabSize);
  void createMae;
  void maeLoss;
});

Deno.test("findings targets are the severities of the taught findings, row-major [B, K]", () => {
  const a = { ...healthy(), drusen: 0.5, rnflThinning: 0.25 };
  const b = { ...healthy(), irf: 0.75 };
  assertEquals([...findingTargets([a, b], ["drusen", "irf", "rnflThinning"])], [0.5, 0, 0.25, 0, 0.75, 0]);
});

Deno.test("pretraining with presence targets trains on them and says so in the provenance", async () => {
  const dir = await Deno.makeTempDir();
  const run = (targets: "severity" | "presence") =>
    pretrainStandin("urfound", {
      out: `${dir}/${targets}.safetensors`,
      spec: {
        vit: vitPreset("urfound", { imgSize: 32, patchSize: 8, embedDim: 32, depth: 2, numHeads: 2 }),
        images: 64,
        epochs: 1,
        batchSize: 32,
        objective: "findings",
        findings: ["drusen", "rnflThinning"],
        targets,
        augment: 0,
        lr: 2e-3,
      },
    });
  const [severity, presence] = [await run("severity"), await run("presence")];
  // The same scans, initialisation and batches: only the targets differ, so the losses must too.
  assert(severity.losses[0] !== presence.losses[0], `${severity.losses} vs ${presence.losses}`);
  const provenance = (t: string) =>
    JSON.parse(readSafetensors(`${dir}/${t}.safetensors`).metadata["retfiner.provenance"]);
  assert(provenance("presence").objective.includes("presence (severity > 0.12) of drusen, rnflThinning"));
  assert(provenance("presence").data.endsWith("with the presence of the taught findings"));
  assert(provenance("severity").objective.includes("severities of drusen, rnflThinning"));
  assert(provenance("severity").data.endsWith("with the severities of the taught findings"));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("presence targets are 1 exactly where a report names the finding", () => {
  const taught = ["drusen", "irf", "rnflThinning"] as const;
  const a = { ...healthy(), drusen: 0.5, irf: 0.12, rnflThinning: 0.13 };
  const b = { ...healthy(), irf: 0.75, rnflThinning: 0.05 };
  assertEquals([...findingTargets([a, b], taught, "presence")], [1, 0, 1, 0, 1, 0]);
  // The same threshold as the report writer: a finding at 0.12 is not named, one at 0.13 is.
  const namesIrf = (irf: number) =>
    /(mild|small|subtle|minimal) (intraretinal|cystoid)|cystoid spaces/.test(
      writeReport({ ...healthy(), irf }, "normal", "OD", new Rng(3)),
    );
  assert(!namesIrf(0.12));
  assert(namesIrf(0.13));
});
