/**
 * Finding NaN and ±Inf in arrays: the one scan behind every "no silent NaN" check (weights on load, AdamW's
 * all-or-nothing update, checkpoints, probing features and scores, ITM's sampling weights).
 * @module
 */

/**
 * The first index in `[from, to)` whose value is NaN or ±Inf.
 * @param x the values
 * @param from first index scanned (default 0)
 * @param to end of the scan, exclusive (default `x.length`)
 * @returns the index, or −1 when all are finite
 */
export function firstNonFinite(x: ArrayLike<number>, from = 0, to: number = x.length): number {
  for (let i = from; i < to; i++) if (!Number.isFinite(x[i])) return i;
  return -1;
}

/**
 * How many values in `[from, to)` are NaN or ±Inf (for messages: called once something was found).
 * @param x the values
 * @param from first index counted (default 0)
 * @param to end, exclusive (default `x.length`)
 * @returns the count
 */
export function countNonFinite(x: ArrayLike<number>, from = 0, to: number = x.length): number {
  let n = 0;
  for (let i = from; i < to; i++) if (!Number.isFinite(x[i])) n++;
  return n;
}
