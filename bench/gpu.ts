/**
 * The GPU check (`deno task bench --gpu`): what a machine with a GPU should run once.
 *
 * 1. prints the WebGPU adapter and its limits;
 * 2. runs the WebGPU parity tests (`deno task test:webgpu`: ViT, BERT with cross-attention and the four losses
 *    against the PyTorch fixtures; a full refinement step against the CPU backend);
 * 3. times encoding (ViT-B/16, ViT-L/16 at 224 px) and the refinement step (ViT-B/16 + BERT-base with
 *    cross-attention, batch 8 and 32) on WebGPU and on the best CPU backend of the same machine, and prints
 *    images/s, pairs/s, GPU memory and the WebGPU/CPU ratio.
 *
 * `--quick` uses the stand-in sizes (for a software adapter, where full sizes take many minutes).
 * @module
 */
import { setupBackend } from "../src/backend/mod.ts";
import { probeWebGpu } from "../src/backend/webgpu.ts";
import { tf } from "../src/backend/tf.ts";
import { createVit, disposeParams, vitFeatures, vitPreset } from "../src/encoders/mod.ts";
import { Rng } from "../src/util/rng.ts";
import { timeIt } from "./measure.ts";
import { REFINE_STANDIN_B32, REFINE_VITB_BERTBASE_B8, type RefineBenchConfig, refineStepWork } from "./refine_step.ts";

/** One line of the GPU check. */
interface GpuResult {
  name: string;
  backend: string;
  seconds: number;
  throughput: string;
  gpuMiB?: number;
}

function mib(bytes: number | undefined): number | undefined {
  return bytes === undefined ? undefined : Math.round(bytes / 2 ** 20);
}

function encodeWork(preset: "visionfm" | "retfound", batch: number, img: number) {
  const c = vitPreset(preset, img === 224 ? {} : { imgSize: img, embedDim: 192, depth: 6, numHeads: 3 });
  const vit = createVit(c, { rng: new Rng(1) });
  const images = tf.randomNormal([batch, 3, c.imgSize, c.imgSize]);
  const run = async () => {
    const y = tf.tidy(() => vitFeatures(vit, images, "concat"));
    await y.data();
    y.dispose();
  };
  return { run, dispose: () => (disposeParams(vit.params), images.dispose()) };
}

/**
 * Runs the GPU check and prints it.
 * @param options `quick`: stand-in sizes; `json`: one JSON object per line; `skipTests`: no parity tests
 * @returns the timing lines
 */
export async function gpuCheck(options: { quick?: boolean; json?: boolean; skipTests?: boolean } = {}) {
  const say = (s: string) => options.json || console.log(s);
  const adapter = await probeWebGpu();
  say(
    `WebGPU adapter: ${adapter.description} (vendor ${adapter.vendor || "?"}${
      adapter.architecture ? `, ${adapter.architecture}` : ""
    }; ${adapter.software ? "SOFTWARE" : "hardware"}); maxBufferSize ${mib(adapter.maxBufferSize)} MiB, ` +
      `maxStorageBufferBindingSize ${mib(adapter.maxStorageBufferBindingSize)} MiB`,
  );
  if (adapter.software && !options.quick) {
    say("notice: a software adapter at full sizes (ViT-L, BERT-base) takes many minutes; --quick uses the stand-ins");
  }
  if (!options.skipTests) {
    say("parity tests (deno task test:webgpu) ...");
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["task", "test:webgpu"],
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    const summary = text.split("\n").filter((l) => /passed|failed|FAILED/.test(l)).slice(-1)[0] ?? "(no summary)";
    say(`parity tests: ${out.success ? "PASS" : "FAIL"} ${summary}`);
    if (!out.success) say(text.slice(-4000));
  }
  const results: GpuResult[] = [];
  const encodes: [string, "visionfm" | "retfound", number, number][] = options.quick
    ? [["encode_standin_b32", "retfound", 32, 112]]
    : [["encode_vitb16_b32", "visionfm", 32, 224], ["encode_vitl16_b32", "retfound", 32, 224]];
  const steps: RefineBenchConfig[] = options.quick
    ? [REFINE_STANDIN_B32]
    : [REFINE_VITB_BERTBASE_B8, { ...REFINE_VITB_BERTBASE_B8, name: "refine_step_vitb_bertbase_b32", batch: 32 }];
  for (const backend of ["webgpu", "cpu-onnx"] as const) {
    await setupBackend({ backend, log: null });
    for (const [name, preset, batch, img] of encodes) {
      const w = encodeWork(preset, batch, img);
      const s = await timeIt(w.run, 2);
      results.push({
        name,
        backend,
        seconds: s,
        throughput: `${(batch / s).toFixed(1)} images/s`,
        gpuMiB: backend === "webgpu"
          ? mib((tf.memory() as { numBytesAllocatedInGPU?: number }).numBytesAllocatedInGPU)
          : undefined,
      });
      w.dispose();
    }
    for (const cfg of steps) {
      // The CPU reference at batch 8 only: at 32 one CPU step of ViT-B + BERT-base takes minutes.
      if (backend !== "webgpu" && cfg.batch > 8 && !options.quick) continue;
      const w = refineStepWork(cfg);
      const s = await timeIt(w.step, 2);
      results.push({
        name: cfg.name,
        backend,
        seconds: s,
        throughput: `${(cfg.batch / s).toFixed(2)} pairs/s`,
        gpuMiB: backend === "webgpu"
          ? mib((tf.memory() as { numBytesAllocatedInGPU?: number }).numBytesAllocatedInGPU)
          : undefined,
      });
      w.dispose();
    }
  }
  for (const r of results) {
    const cpu = results.find((x) => x.name === r.name && x.backend === "cpu-onnx");
    const ratio = r.backend === "webgpu" && cpu ? `${(cpu.seconds / r.seconds).toFixed(2)}x the CPU backend` : "";
    if (options.json) console.log(JSON.stringify({ ...r, vs_cpu: cpu ? cpu.seconds / r.seconds : null }));
    else {
      console.log(
        `${r.name.padEnd(32)} ${r.backend.padEnd(9)} ${r.seconds.toFixed(3).padStart(8)} s  ${
          r.throughput.padEnd(16)
        } ${r.gpuMiB !== undefined ? `GPU ${r.gpuMiB} MiB allocated  ` : ""}${ratio}`,
      );
    }
  }
  return results;
}
