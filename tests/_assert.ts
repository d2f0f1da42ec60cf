/** Small assertion helpers over node:assert/strict (JSR's @std/assert is unreachable here). */
import nodeAssert from "node:assert/strict";

export function assert(condition: unknown, message?: string): asserts condition {
  if (message === undefined) nodeAssert.ok(condition);
  else nodeAssert.ok(condition, message);
}

export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  if (message === undefined) nodeAssert.deepStrictEqual(actual, expected);
  else nodeAssert.deepStrictEqual(actual, expected, message);
}

export function assertAlmostEquals(actual: number, expected: number, tolerance = 1e-7, message?: string): void {
  const ok = Math.abs(actual - expected) <= tolerance || (Number.isNaN(actual) && Number.isNaN(expected));
  nodeAssert.ok(ok, `${message ? message + ": " : ""}expected ${expected}, got ${actual} (tolerance ${tolerance})`);
}

/** Max |a-b| over two arrays of equal length; fails on length mismatch. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  nodeAssert.equal(a.length, b.length, `length ${a.length} != ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}

export function assertAllClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tolerance: number,
  message = "",
): void {
  const d = maxAbsDiff(actual, expected);
  nodeAssert.ok(d <= tolerance, `${message ? message + ": " : ""}max |diff| ${d} > ${tolerance}`);
}

export function assertThrows(
  fn: () => unknown,
  pattern?: RegExp,
  ErrorClass?: abstract new (...args: any[]) => Error,
): Error {
  try {
    fn();
  } catch (err) {
    checkError(err, pattern, ErrorClass);
    return err as Error;
  }
  throw new nodeAssert.AssertionError({ message: `expected a throw matching ${pattern}` });
}

export async function assertRejects(
  fn: () => Promise<unknown>,
  pattern?: RegExp,
  ErrorClass?: abstract new (...args: any[]) => Error,
): Promise<Error> {
  try {
    await fn();
  } catch (err) {
    checkError(err, pattern, ErrorClass);
    return err as Error;
  }
  throw new nodeAssert.AssertionError({ message: `expected a rejection matching ${pattern}` });
}

function checkError(err: unknown, pattern?: RegExp, ErrorClass?: abstract new (...args: any[]) => Error): void {
  if (ErrorClass && !(err instanceof ErrorClass)) {
    throw new nodeAssert.AssertionError({
      message: `expected ${ErrorClass.name}, got ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`,
    });
  }
  if (pattern && !pattern.test((err as Error).message)) {
    throw new nodeAssert.AssertionError({
      message: `error message "${(err as Error).message}" does not match ${pattern}`,
    });
  }
}
