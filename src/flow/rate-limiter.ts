/**
 * The rate limiter port: token buckets that callers (the worker per transport and per recipient
 * domain, the API per key) take from before they act.
 *
 * Glossary
 * - **bucket**: a named store of tokens with a refill rate and a capacity (`burst`).
 * - **level**: the tokens in a bucket now; below zero when tokens are reserved ahead of time.
 * - **take**: one token from each of several buckets, all or none.
 * - **reservation**: a take granted before its token has arrived; the caller waits `waitMs`.
 *
 * Adapters: `MemoryRateLimiter` (one process), `RedisRateLimiter` and `PostgresRateLimiter` (shared
 * by every process that uses the same server). The arithmetic they all follow is in bucket-math.ts.
 */

export interface BucketSpec {
  /** Names the bucket, e.g. `transport:smtp`, `domain:gmail.com`, `api:3fa2…`. */
  readonly key: string;
  /** Refill rate in tokens per second, > 0; may be fractional (100/min = 1.667). */
  readonly ratePerSec: number;
  /** Capacity in tokens, >= 1: how many takes may follow each other with no wait. */
  readonly burst: number;
}

export type TakeResult =
  /** One token was taken from every bucket; act after `waitMs` (0 = now). */
  | { readonly kind: 'granted'; readonly waitMs: number }
  /** Nothing was taken; `retryInMs` is the earliest a take could be granted with no wait. */
  | { readonly kind: 'denied'; readonly retryInMs: number };

export interface RateLimiter {
  readonly name: 'memory' | 'redis' | 'postgres';
  /**
   * Takes `tokens` (default 1, at most every bucket's burst) from every bucket in `buckets`, all or none, atomically (across processes for
   * the shared adapters). A bucket refills at `ratePerSec` up to `burst`; a bucket never seen (or
   * idle long enough to be forgotten) is full. When a token is not there yet, the take is still
   * granted if every bucket's token arrives within `maxWaitMs`: the token is reserved (the level
   * goes below zero) and `waitMs` says how long the caller must wait. Otherwise nothing changes.
   *
   * Waits are whole milliseconds, rounded up. Duplicate keys count once; an empty list is granted
   * with no wait. Rejects with `RangeError` for a bad spec or `maxWaitMs`, and with
   * `RateLimiterUnavailableError` when the shared state cannot be reached (the caller decides
   * whether to act without a limit, wait or give up).
   */
  take(buckets: readonly BucketSpec[], maxWaitMs: number, tokens?: number): Promise<TakeResult>;
  /**
   * The level of each bucket now, in the order given (tokens, may be negative), for a status
   * endpoint. Unknown keys are full. Changes nothing.
   */
  levels(buckets: readonly BucketSpec[]): Promise<number[]>;
  /** Releases connections and timers; idempotent. */
  close(): Promise<void>;
}

/** The shared state (Redis, PostgreSQL) could not be reached, or did not answer in time. */
export class RateLimiterUnavailableError extends Error {
  readonly code = 'RATE_LIMITER_UNAVAILABLE';
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'RateLimiterUnavailableError';
  }
}
