/**
 * `deno task notebooks`: executes every notebook in notebooks/ headlessly with
 * the Deno kernel (Debian's jupyter-nbconvert / nbclient), saves the executed
 * copies and their HTML exports under notebooks/.out/, and fails if any cell
 * errors or a cell tagged `expect-output` produced nothing.
 */
import { fileURLToPath } from "node:url";
import { basename, join } from "node:path";
import { parseCli, runMain } from "../util/cli.ts";
import { RetfinerError, UsageError } from "../util/errors.ts";

const root = fileURLToPath(new URL("../../", import.meta.url));

function run(cmd: string, args: string[], env: Record<string, string> = {}): { code: number; stderr: string } {
  try {
    const out = new Deno.Command(cmd, { args, cwd: root, env, stdout: "inherit", stderr: "piped" }).outputSync();
    return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
  } catch (err) {
    return { code: 127, stderr: (err as Error).message };
  }
}

await runMain(async () => {
  const { values, positionals } = parseCli(Deno.args, {
    usage: "deno task notebooks [notebook.ipynb ...]",
    summary: "Executes the notebooks headlessly with the Deno kernel and exports them to HTML under notebooks/.out/. " +
      "Needs Debian's jupyter-nbconvert (apt-get install jupyter-nbconvert) and the Deno kernel (deno jupyter --install, " +
      "done here if missing). Fails if a cell raises or an expected output is missing. Set RETFINER_NOTEBOOK_QUICK=1 " +
      "(the default here) for the few-minute settings; 0 for the full ones.",
    flags: {
      timeout: { type: "string", valueName: "<s>", description: "Per-cell timeout in seconds.", default: "1800" },
      "no-html": { type: "boolean", description: "Skip the HTML export." },
    },
  });
  if (run("/usr/bin/python3", ["-c", "import nbclient, nbformat"]).code !== 0) {
    throw new UsageError("nbclient/nbformat are missing: apt-get install -y --no-install-recommends jupyter-nbconvert");
  }
  const kernelDir = join(Deno.env.get("HOME") ?? "/root", ".local/share/jupyter/kernels/deno");
  try {
    Deno.statSync(join(kernelDir, "kernel.json"));
  } catch {
    const r = run(Deno.execPath(), ["jupyter", "--install"]);
    if (r.code !== 0) throw new RetfinerError(`deno jupyter --install failed: ${r.stderr}`);
  }
  const dir = join(root, "notebooks");
  const notebooks = positionals.length
    ? positionals
    : [...Deno.readDirSync(dir)].filter((e) => e.name.endsWith(".ipynb")).map((e) => join(dir, e.name)).sort();
  const outDir = join(dir, ".out");
  await Deno.mkdir(outDir, { recursive: true });
  const failures: string[] = [];
  for (const nb of notebooks) {
    const name = basename(nb, ".ipynb");
    const executed = join(outDir, `${name}.ipynb`);
    const t0 = performance.now();
    console.error(`::: ${name}`);
    const env = { RETFINER_NOTEBOOK_QUICK: Deno.env.get("RETFINER_NOTEBOOK_QUICK") ?? "1", NO_COLOR: "1" };
    const r = run("/usr/bin/python3", [join(dir, "_runner.py"), nb, executed, String(values.timeout)], env);
    if (r.code !== 0) {
      failures.push(`${name}: ${r.code === 3 ? "missing outputs" : "a cell failed"}\n${r.stderr.slice(-3000)}`);
      continue;
    }
    if (!values["no-html"]) {
      const h = run("/usr/bin/jupyter", ["nbconvert", "--to", "html", "--output-dir", outDir, executed]);
      if (h.code !== 0) failures.push(`${name}: HTML export failed\n${h.stderr.slice(-2000)}`);
    }
    console.error(`::: ${name} ok (${((performance.now() - t0) / 1000).toFixed(0)} s) -> ${executed}`);
  }
  if (failures.length) throw new RetfinerError(`notebook run failed:\n${failures.join("\n\n")}`);
});
