/**
 * Delay before retry number `attempt` (1 = the first retry): exponential, capped, with "equal jitter":
 * half the delay is fixed and half random. The fixed half means a retry never comes back at once (no hot
 * loop); the random half spreads a burst of failures so they do not all return together.
 * Written by hand: three lines, and retry state lives in the Store, not in an in-process policy.
 */
export function retryDelayMs(
  attempt: number,
  baseMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const exponential = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(exponential / 2 + random() * (exponential / 2));
}
