/**
 * A thin layer over `node:util` `parseArgs` that adds `--help` text generated
 * from the flag descriptions, choice validation and clear usage errors.
 * @module
 */
import { parseArgs } from "node:util";
import { RetfinerError, UsageError } from "./errors.ts";

/** Description of one command-line flag. */
export interface FlagSpec {
  /** `string` flags take a value; `boolean` flags do not. */
  type: "string" | "boolean";
  /** What the flag does, shown by `--help`. */
  description: string;
  /** Default value, shown by `--help`. */
  default?: string | boolean;
  /** Allowed values for a string flag. */
  choices?: readonly string[];
  /** Whether the flag may be repeated (values are collected into an array). */
  multiple?: boolean;
  /** Placeholder for the value in `--help`, e.g. `<file>`. */
  valueName?: string;
}

/** A command's name, summary, flags and examples. */
export interface CommandSpec {
  /** How the command is invoked, e.g. `deno task probe`. */
  usage: string;
  /** One paragraph describing the command. */
  summary: string;
  /** The flags, keyed by long name (without `--`). */
  flags: Record<string, FlagSpec>;
  /** Example invocations. */
  examples?: string[];
}

/** Parsed flag values. */
export type FlagValues = Record<string, string | boolean | string[] | undefined>;

/** Renders the `--help` text of a command. */
export function helpText(spec: CommandSpec): string {
  const lines = [`Usage: ${spec.usage} [flags]`, "", spec.summary, "", "Flags:"];
  const entries = Object.entries(spec.flags).sort(([a], [b]) => a.localeCompare(b));
  const left = entries.map(([name, f]) =>
    `  --${name}${f.type === "string" ? ` ${f.valueName ?? "<value>"}` : ""}${f.multiple ? " ..." : ""}`
  );
  const width = Math.max(...left.map((l) => l.length), 12) + 2;
  entries.forEach(([_, f], i) => {
    let desc = f.description;
    if (f.choices) desc += ` One of: ${f.choices.join(", ")}.`;
    if (f.default !== undefined && f.default !== false) desc += ` (default: ${f.default})`;
    lines.push(left[i].padEnd(width) + desc);
  });
  lines.push("  --help".padEnd(width) + "Show this help and exit.");
  if (spec.examples?.length) lines.push("", "Examples:", ...spec.examples.map((e) => `  ${e}`));
  return lines.join("\n");
}

/**
 * Parses `args` against `spec`. Prints help and exits on `--help`; throws
 * {@link UsageError} naming the flag on unknown flags or bad choices.
 */
export function parseCli(
  args: string[],
  spec: CommandSpec,
): { values: FlagValues; positionals: string[]; given: Set<string> } {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(helpText(spec));
    Deno.exit(0);
  }
  const options: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {};
  for (const [name, f] of Object.entries(spec.flags)) options[name] = { type: f.type, multiple: !!f.multiple };
  // parseArgs reads "--lr -1" as an option "-1": a negative number after a
  // value-taking flag is joined to it ("--lr=-1") so it parses and is then
  // validated like any other value (numberFlag names the allowed range).
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const name = a.startsWith("--") && !a.includes("=") ? a.slice(2) : undefined;
    const next = args[i + 1];
    if (
      name !== undefined && spec.flags[name]?.type === "string" && next !== undefined &&
      /^-(\d|\.\d|Infinity\b)/.test(next)
    ) {
      joined.push(`${a}=${next}`);
      i++;
    } else joined.push(a);
  }
  let parsed;
  try {
    parsed = parseArgs({ args: joined, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\nRun with --help to see every flag.`);
  }
  const values: FlagValues = {};
  const given = new Set(Object.keys(parsed.values));
  for (const [name, f] of Object.entries(spec.flags)) {
    const v = (parsed.values as FlagValues)[name] ?? f.default;
    if (f.choices && v !== undefined) {
      for (const item of Array.isArray(v) ? v : [v]) {
        if (!f.choices.includes(String(item))) {
          throw new UsageError(`--${name}: "${item}" is not one of ${f.choices.join(", ")}`);
        }
      }
    }
    values[name] = v;
  }
  return { values, positionals: parsed.positionals, given };
}

/**
 * Merges a JSON config file under the command line: flags given on the
 * command line win, then the file's keys (flag names), then the defaults.
 * Unknown keys in the file are an error naming them.
 */
export async function withConfigFile(
  values: FlagValues,
  given: Set<string>,
  spec: CommandSpec,
  path: string | undefined,
): Promise<FlagValues> {
  if (!path) return values;
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (err) {
    throw new UsageError(`--config ${path}: ${(err as Error).message}`);
  }
  const out = { ...values };
  for (const [k, v] of Object.entries(json)) {
    const f = spec.flags[k];
    if (!f) {
      throw new UsageError(
        `--config ${path}: unknown key "${k}" (keys are flag names: ${Object.keys(spec.flags).join(", ")})`,
      );
    }
    if (given.has(k)) continue;
    if (f.type === "boolean" && typeof v !== "boolean") {
      throw new UsageError(`--config ${path}: "${k}" must be true or false`);
    }
    out[k] = f.type === "boolean" ? v as boolean : Array.isArray(v) ? v.map(String) : String(v);
    if (f.choices) {
      for (const item of Array.isArray(out[k]) ? out[k] as string[] : [out[k] as string]) {
        if (!f.choices.includes(item)) {
          throw new UsageError(`--config ${path}: "${k}": "${item}" is not one of ${f.choices.join(", ")}`);
        }
      }
    }
  }
  return out;
}

/**
 * Parses a numeric flag, throwing a {@link UsageError} that names it.
 * @param values the parsed flags
 * @param name the flag's name, without `--`
 * @param options `integer`; bounds `min` and `max` (inclusive) and `above` (exclusive)
 * @returns the number, or `undefined` when the flag is absent
 */
export function numberFlag(
  values: FlagValues,
  name: string,
  options: { integer?: boolean; min?: number; max?: number; above?: number } = {},
): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  const { integer, min, max, above } = options;
  if (
    !Number.isFinite(n) || (integer && !Number.isInteger(n)) || (min !== undefined && n < min) ||
    (max !== undefined && n > max) || (above !== undefined && n <= above)
  ) {
    const bounds = [
      min !== undefined ? `>= ${min}` : "",
      above !== undefined ? `> ${above}` : "",
      max !== undefined ? `<= ${max}` : "",
    ].filter(Boolean);
    throw new UsageError(
      `--${name}: expected ${integer ? "an integer" : "a number"}${
        bounds.length ? ` ${bounds.join(" and ")}` : ""
      }, got "${raw}"`,
    );
  }
  return n;
}

/**
 * Runs a CLI entry point: known errors print one clear line and exit 1;
 * anything else prints its stack and exits 2.
 */
export async function runMain(main: () => Promise<void>): Promise<void> {
  try {
    await main();
  } catch (err) {
    if (err instanceof RetfinerError) {
      console.error(`error: ${err.message}`);
      Deno.exit(1);
    }
    console.error(err);
    Deno.exit(2);
  }
}
