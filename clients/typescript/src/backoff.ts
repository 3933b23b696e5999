/**
 * Reconnect delays: exponential backoff with FULL jitter (a uniformly random delay between
 * zero and the exponential cap). After a gateway restart thousands of clients reconnect at
 * once; full jitter spreads them over the whole window instead of in synchronized waves,
 * which is what lets the cluster absorb a reconnect storm.
 */

/** The cap for attempt `attempt` (0-based): `min(max, min·2^attempt)`. */
export function backoffCap(attempt: number, min: number, max: number): number {
  const exp = Math.min(Math.max(0, Math.floor(attempt)), 30);
  return Math.min(max, min * 2 ** exp);
}

/** A delay in `[0, backoffCap(attempt)]`, in whole milliseconds. */
export function backoffDelay(attempt: number, min: number, max: number, random: () => number = Math.random): number {
  const cap = backoffCap(attempt, min, max);
  return Math.min(cap, Math.floor(random() * (cap + 1)));
}

/**
 * The delay a `reconnect` frame asks for, plus a little jitter (up to 10 % + 100 ms) so that
 * the clients of a draining node do not all land on the next one in the same millisecond.
 */
export function retryDelay(retryMs: number, random: () => number = Math.random): number {
  const base = Math.max(0, retryMs);
  return base + Math.floor(random() * (100 + base * 0.1));
}
