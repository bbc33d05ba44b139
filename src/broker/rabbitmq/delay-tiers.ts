/**
 * Delay tiers: how `retryLater(delay)` waits on RabbitMQ without plugins. Each tier is a queue whose
 * `x-message-ttl` is the tier's delay; an expired message is dead-lettered back to the work queue it
 * was published for. One TTL per queue keeps expiry in FIFO order (a message only expires at the
 * head of its queue, so mixed per-message TTLs would wait behind each other).
 */

const SECOND = 1000;
const MINUTE = 60 * SECOND;

/** The default tiers, shortest first. */
export const DEFAULT_DELAY_TIERS_MS: readonly number[] = [
  1 * SECOND,
  5 * SECOND,
  30 * SECOND,
  2 * MINUTE,
  10 * MINUTE,
  60 * MINUTE,
];

/**
 * The tier to wait in for `delayMs`: the largest one not longer than the delay, so a message comes
 * back early rather than late (the worker then asks again for the rest, which walks down the
 * tiers). A delay shorter than the shortest tier waits in the shortest one, late by less than that
 * tier: sending it straight back would spin it through the work queue and the worker's claim until
 * it is due. `undefined` only for no delay (zero or less): straight back to the work queue.
 * `tiersMs` must be sorted ascending.
 */
export function pickDelayTier(delayMs: number, tiersMs: readonly number[]): number | undefined {
  if (delayMs <= 0) return undefined;
  let picked = tiersMs[0];
  for (const tier of tiersMs) {
    if (tier > delayMs) break;
    picked = tier;
  }
  return picked;
}
