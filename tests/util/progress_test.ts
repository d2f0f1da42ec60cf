/**
 * ProgressBar and formatDuration (src/util/progress.ts): each run of a phase has its own clock (a phase restarts
 * after it finished or when `done` goes down), interleaved phases keep theirs, and the ETA comes from this run's
 * rate. The clock and the output are injected, so nothing here depends on a terminal or on real time.
 */
import { assert, assertEquals } from "../_assert.ts";
import { formatDuration, ProgressBar } from "../../src/util/progress.ts";

/** A bar with a settable clock (seconds) that records its lines. */
function harness(): { bar: ProgressBar; lines: string[]; at: (seconds: number) => void } {
  let t = 0;
  const lines: string[] = [];
  const bar = new ProgressBar({
    intervalMs: 0,
    width: 10,
    write: (text) => lines.push(...text.split("\n").filter((l) => l !== "")),
    now: () => t * 1000,
  });
  return { bar, lines, at: (seconds) => (t = seconds) };
}

/** The "elapsed<eta" field of a printed line. */
function times(line: string): string {
  const m = line.match(/ \d+\/\d+ (\S+<\S+)/);
  assert(m, `no times in ${JSON.stringify(line)}`);
  return m[1];
}

Deno.test("formatDuration: m:ss, h:mm:ss, and ? for what is not a duration", () => {
  assertEquals(formatDuration(0), "0:00");
  assertEquals(formatDuration(18), "0:18");
  assertEquals(formatDuration(65.4), "1:05");
  assertEquals(formatDuration(1002), "16:42");
  assertEquals(formatDuration(3 * 3600 + 5 * 60 + 7), "3:05:07");
  assertEquals(formatDuration(NaN), "?");
  assertEquals(formatDuration(Infinity), "?");
  assertEquals(formatDuration(-1), "?");
});

Deno.test("ProgressBar: output format, and ? before any unit is done", () => {
  const { bar, lines, at } = harness();
  at(0);
  bar.update({ phase: "work", done: 0, total: 4 });
  at(3);
  bar.update({ phase: "work", done: 1, total: 4, info: { loss: 0.5 } });
  at(12);
  bar.update({ phase: "work", done: 4, total: 4 });
  assertEquals(lines, [
    "work [..........] 0/4 0:00<?",
    "work [###.......] 1/4 0:03<0:09 loss=0.5000",
    "work [##########] 4/4 0:12<0:00",
  ]);
});

Deno.test("ProgressBar: a finished phase that recurs later starts its own clock", () => {
  const { bar, lines, at } = harness();
  at(0);
  bar.update({ phase: "embed images", done: 0, total: 10 });
  at(30);
  bar.update({ phase: "embed images", done: 10, total: 10 });
  at(40);
  bar.update({ phase: "refine epoch 0", done: 5, total: 5 });
  at(1000);
  bar.update({ phase: "embed images", done: 0, total: 10 });
  at(1002);
  bar.update({ phase: "embed images", done: 1, total: 10 });
  assertEquals(times(lines[3]), "0:00<?");
  assertEquals(times(lines[4]), "0:02<0:18");
  assertEquals(lines.length, 5);
});

Deno.test("ProgressBar: a finished phase that recurs with its first update past 0 restarts too", () => {
  const { bar, lines, at } = harness();
  at(0);
  bar.update({ phase: "features", done: 0, total: 2 });
  at(4);
  bar.update({ phase: "features", done: 2, total: 2 });
  at(500);
  bar.update({ phase: "features", done: 1, total: 2 });
  at(502);
  bar.update({ phase: "features", done: 2, total: 2 });
  assertEquals(times(lines[2]), "0:00<?");
  assertEquals(times(lines[3]), "0:02<0:00");
});

Deno.test("ProgressBar: a phase whose done goes down restarts", () => {
  const { bar, lines, at } = harness();
  at(0);
  bar.update({ phase: "features", done: 0, total: 10 });
  at(100);
  bar.update({ phase: "features", done: 5, total: 10 });
  at(600);
  bar.update({ phase: "features", done: 1, total: 10 });
  at(604);
  bar.update({ phase: "features", done: 3, total: 10 });
  assertEquals(times(lines[1]), "1:40<1:40");
  assertEquals(times(lines[2]), "0:00<?");
  // The run restarted at 1 done: 2 units in its 4 s, so the 7 left take 14 s.
  assertEquals(times(lines[3]), "0:04<0:14");
});

Deno.test("ProgressBar: units done before a run's first update do not count in its rate", () => {
  const { bar, lines, at } = harness();
  at(0);
  bar.update({ phase: "encode", done: 40, total: 240 }); // the first batch reported as it ends
  at(10);
  bar.update({ phase: "encode", done: 80, total: 240 });
  assertEquals(times(lines[0]), "0:00<?");
  // 40 units in 10 s: 160 left take 40 s (counting the first 40 would say 20 s).
  assertEquals(times(lines[1]), "0:10<0:40");
});

Deno.test("ProgressBar: interleaved phases keep their own clocks", () => {
  const { bar, lines, at } = harness();
  at(0);
  bar.update({ phase: "a", done: 0, total: 10 });
  at(10);
  bar.update({ phase: "b", done: 0, total: 4 });
  at(20);
  bar.update({ phase: "a", done: 2, total: 10 });
  at(30);
  bar.update({ phase: "b", done: 1, total: 4 });
  at(40);
  bar.update({ phase: "a", done: 4, total: 10 });
  at(50);
  bar.update({ phase: "b", done: 4, total: 4 });
  at(60);
  bar.update({ phase: "a", done: 6, total: 10 });
  assertEquals(lines.map(times), [
    "0:00<?",
    "0:00<?",
    "0:20<1:20", // a: 2 in 20 s, 8 left
    "0:20<1:00", // b: 1 in 20 s, 3 left
    "0:40<1:00", // a: 4 in 40 s, 6 left
    "0:40<0:00", // b finished
    "1:00<0:40", // a: 6 in 60 s, 4 left; b finishing did not touch a's clock
  ]);
});

Deno.test("ProgressBar: rate limit within a phase; finishes, new phases and restarts print at once", () => {
  let t = 0;
  const lines: string[] = [];
  const bar = new ProgressBar({ intervalMs: 5000, width: 4, write: (s) => lines.push(s), now: () => t });
  bar.update({ phase: "p", done: 0, total: 10 }); // new phase: printed
  t = 1000;
  bar.update({ phase: "p", done: 1, total: 10 }); // within 5 s: skipped
  t = 6000;
  bar.update({ phase: "p", done: 2, total: 10 }); // printed
  t = 7000;
  bar.update({ phase: "p", done: 0, total: 10 }); // restart: printed
  t = 8000;
  bar.update({ phase: "p", done: 10, total: 10 }); // finished: printed
  assertEquals(lines.map((l) => l.split(" ")[2]), ["0/10", "2/10", "0/10", "10/10"]);
  assert(lines.every((l) => l.endsWith("\n") && !l.includes("\r")), "a custom writer gets plain lines");
});

Deno.test("ProgressBar: quiet writes nothing", () => {
  const lines: string[] = [];
  const bar = new ProgressBar({ quiet: true, write: (s) => lines.push(s), now: () => 0 });
  bar.update({ phase: "p", done: 1, total: 1 });
  bar.finish();
  assertEquals(lines, []);
});
