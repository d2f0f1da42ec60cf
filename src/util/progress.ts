/**
 * Progress reporting: a callback type that long-running functions accept, and
 * a terminal progress bar with rate and ETA that the CLI draws from it.
 * @module
 */

/** One progress update from a long-running function. */
export interface Progress {
  /** What is being done, e.g. "probe octid seed 0" or "refine epoch 2". */
  phase: string;
  /** Units of work done so far in this phase. */
  done: number;
  /** Units of work in this phase. */
  total: number;
  /** Named numbers to show beside the bar (losses, metrics). */
  info?: Record<string, number | string>;
}

/** A callback that receives {@link Progress} updates. */
export type ProgressCallback = (progress: Progress) => void;

/** Formats seconds as h:mm:ss or m:ss. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const mm = h > 0 ? String(m).padStart(2, "0") : String(m);
  return `${h > 0 ? `${h}:` : ""}${mm}:${String(sec).padStart(2, "0")}`;
}

function formatInfo(info: Record<string, number | string> | undefined): string {
  if (!info) return "";
  return Object.entries(info)
    .map(([k, v]) => `${k}=${typeof v === "number" ? (Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4)) : v}`)
    .join(" ");
}

/**
 * A progress bar on stderr. On a terminal it redraws one line; otherwise it
 * prints a line at most every `intervalMs` so logs stay readable.
 *
 * @example
 * ```ts
 * import { ProgressBar } from "./progress.ts";
 * const bar = new ProgressBar();
 * for (let i = 1; i <= 10; i++) bar.update({ phase: "work", done: i, total: 10 });
 * bar.finish();
 * ```
 */
export class ProgressBar {
  #start = new Map<string, number>();
  #lastPrint = 0;
  #lastPhase = "";
  #isTty: boolean;
  #intervalMs: number;
  #width: number;
  #quiet: boolean;

  /** Creates a bar; `quiet` suppresses all output. */
  constructor(options: { intervalMs?: number; width?: number; quiet?: boolean } = {}) {
    this.#isTty = Deno.stderr.isTerminal();
    this.#intervalMs = options.intervalMs ?? (this.#isTty ? 100 : 5000);
    this.#width = options.width ?? 24;
    this.#quiet = options.quiet ?? false;
  }

  /** The bar as a {@link ProgressCallback}. */
  get callback(): ProgressCallback {
    return (p) => this.update(p);
  }

  /** Renders one update (rate-limited). */
  update(p: Progress): void {
    if (this.#quiet) return;
    const now = performance.now();
    if (!this.#start.has(p.phase)) this.#start.set(p.phase, now);
    const phaseChanged = p.phase !== this.#lastPhase;
    const finished = p.done >= p.total;
    if (!phaseChanged && !finished && now - this.#lastPrint < this.#intervalMs) return;
    if (phaseChanged && this.#isTty && this.#lastPhase) this.#write("\n");
    this.#lastPhase = p.phase;
    this.#lastPrint = now;
    const elapsed = (now - this.#start.get(p.phase)!) / 1000;
    const frac = p.total > 0 ? Math.min(1, p.done / p.total) : 0;
    const filled = Math.round(frac * this.#width);
    const bar = "#".repeat(filled) + ".".repeat(this.#width - filled);
    const rate = elapsed > 0 ? p.done / elapsed : 0;
    const eta = rate > 0 ? (p.total - p.done) / rate : NaN;
    const line = `${p.phase} [${bar}] ${p.done}/${p.total} ${formatDuration(elapsed)}<${formatDuration(eta)}` +
      (p.info ? ` ${formatInfo(p.info)}` : "");
    if (this.#isTty) this.#write(`\r\x1b[2K${line}${finished ? "\n" : ""}`);
    else this.#write(`${line}\n`);
    if (finished) this.#lastPhase = "";
  }

  /** Ends the current line, if any. */
  finish(): void {
    if (this.#isTty && this.#lastPhase && !this.#quiet) this.#write("\n");
    this.#lastPhase = "";
  }

  #write(text: string): void {
    Deno.stderr.writeSync(new TextEncoder().encode(text));
  }
}
