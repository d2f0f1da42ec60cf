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

/** Options of a {@link ProgressBar}. */
export interface ProgressBarOptions {
  /** Least time between printed lines within a phase (ms); default 100 on a terminal, 5000 otherwise. */
  intervalMs?: number;
  /** Bar width in characters; default 24. */
  width?: number;
  /** Suppresses all output. */
  quiet?: boolean;
  /**
   * Where the text goes; default stderr. A custom writer counts as not a terminal: one line per print, no
   * redrawing.
   */
  write?: (text: string) => void;
  /** The clock in ms; default `performance.now`. */
  now?: () => number;
}

/** The clock of one run of a phase. */
interface PhaseRun {
  /** When this run started (the `now` clock, ms). */
  start: number;
  /** `done` at the last update of this run. */
  lastDone: number;
  /** `done` at the first update of this run: units finished before the clock started do not count in the rate. */
  startDone: number;
  /** Whether this run reached `done >= total`. */
  finished: boolean;
}

/** What {@link PhaseClocks.tick} measured for one update. */
export interface PhaseTiming {
  /** Seconds since this run of the phase started. */
  elapsed: number;
  /** Seconds left at this run's rate (0 when finished, NaN before any unit is done). */
  eta: number;
  /** Whether this update started a new run of a phase seen before. */
  restarted: boolean;
  /** Whether this update finished the run. */
  finished: boolean;
}

/**
 * Elapsed time and ETA per run of each phase, shared by the terminal bar and the notebooks' display: a phase starts
 * anew when it finished before (`done >= total` was seen) or when `done` went down since its last update; phases
 * whose updates interleave keep their clocks.
 */
export class PhaseClocks {
  #runs = new Map<string, PhaseRun>();

  /**
   * Records one update.
   * @param p the update
   * @param now the clock in ms
   * @returns this run's elapsed time and ETA in seconds, and whether it restarted or finished
   */
  tick(p: Progress, now: number): PhaseTiming {
    let run = this.#runs.get(p.phase);
    const restarted = run !== undefined && (run.finished || p.done < run.lastDone);
    if (!run || restarted) {
      run = { start: now, lastDone: p.done, startDone: p.done, finished: false };
      this.#runs.set(p.phase, run);
    }
    run.lastDone = p.done;
    const finished = p.done >= p.total;
    if (finished) run.finished = true;
    const elapsed = (now - run.start) / 1000;
    // The clock starts at the run's first update, which often reports units already done (the first batch):
    // the rate counts only the units done since.
    const since = p.done - run.startDone;
    const eta = finished ? 0 : since > 0 && elapsed > 0 ? (p.total - p.done) / (since / elapsed) : NaN;
    return { elapsed, eta, restarted, finished };
  }
}

/**
 * A progress bar on stderr. On a terminal it redraws one line; otherwise it
 * prints a line at most every `intervalMs` so logs stay readable.
 *
 * Each run of a phase has its own clock: a phase starts anew when it finished
 * before (`done >= total` was seen) or when `done` went down since its last
 * update, so a phase label that recurs later in a run (an "embed images"
 * before and after refinement, a "features" pass per epoch) shows its own
 * elapsed time and ETA, not the time since the label was first seen. Phases
 * whose updates interleave keep their clocks.
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
  #clocks = new PhaseClocks();
  #lastPrint = 0;
  #lastPhase = "";
  #isTty: boolean;
  #intervalMs: number;
  #width: number;
  #quiet: boolean;
  #out: (text: string) => void;
  #now: () => number;

  /**
   * Creates a bar.
   * @param options See {@link ProgressBarOptions}.
   */
  constructor(options: ProgressBarOptions = {}) {
    this.#isTty = options.write ? false : Deno.stderr.isTerminal();
    this.#intervalMs = options.intervalMs ?? (this.#isTty ? 100 : 5000);
    this.#width = options.width ?? 24;
    this.#quiet = options.quiet ?? false;
    this.#out = options.write ?? ((text) => Deno.stderr.writeSync(new TextEncoder().encode(text)));
    this.#now = options.now ?? (() => performance.now());
  }

  /** The bar as a {@link ProgressCallback}. */
  get callback(): ProgressCallback {
    return (p) => this.update(p);
  }

  /** Renders one update (rate-limited; a new phase, a restarted phase and a finish print at once). */
  update(p: Progress): void {
    if (this.#quiet) return;
    const now = this.#now();
    const { elapsed, eta, restarted, finished } = this.#clocks.tick(p, now);
    const phaseChanged = p.phase !== this.#lastPhase;
    if (!phaseChanged && !restarted && !finished && now - this.#lastPrint < this.#intervalMs) return;
    if (phaseChanged && this.#isTty && this.#lastPhase) this.#write("\n");
    this.#lastPhase = p.phase;
    this.#lastPrint = now;
    const frac = p.total > 0 ? Math.min(1, p.done / p.total) : 0;
    const filled = Math.round(frac * this.#width);
    const bar = "#".repeat(filled) + ".".repeat(this.#width - filled);
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
    this.#out(text);
  }
}
