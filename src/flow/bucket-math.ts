/**
 * The token-bucket arithmetic every rate limiter adapter follows. The memory adapter calls these;
 * the Redis script and the PostgreSQL function repeat them in their own language (keep all three
 * in step).
 */
import type { BucketSpec } from './rate-limiter.js';

/**
 * Float slack, in ms, forgiven before a wait is rounded up: a refill that lands at 0.9999999999
 * tokens must not cost a whole extra millisecond.
 */
export const WAIT_SLACK_MS = 1e-6;

/**
 * The buckets of one call, checked, each key once (the first spec given for it wins), sorted by
 * key: the shared adapters lock in that order, so two takes over the same keys cannot deadlock.
 */
export function distinctBuckets(buckets: readonly BucketSpec[]): BucketSpec[] {
  const byKey = new Map<string, BucketSpec>();
  for (const bucket of buckets) {
    checkBucket(bucket);
    if (!byKey.has(bucket.key)) byKey.set(bucket.key, bucket);
  }
  return [...byKey.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

export function checkBucket({ key, ratePerSec, burst }: BucketSpec): void {
  if (typeof key !== 'string' || key === '') throw new RangeError('a bucket key must be a non-empty string');
  if (!(Number.isFinite(ratePerSec) && ratePerSec > 0))
    throw new RangeError(`bucket ${key}: ratePerSec must be a finite number > 0, got ${ratePerSec}`);
  if (!(Number.isFinite(burst) && burst >= 1))
    throw new RangeError(`bucket ${key}: burst must be a finite number >= 1, got ${burst}`);
}

export function checkMaxWait(maxWaitMs: number): void {
  if (!(Number.isFinite(maxWaitMs) && maxWaitMs >= 0))
    throw new RangeError(`maxWaitMs must be a finite number >= 0, got ${maxWaitMs}`);
}

/** The level after `elapsedMs` of refill from `level`; time running backwards refills nothing. */
export function refill(level: number, elapsedMs: number, { ratePerSec, burst }: BucketSpec): number {
  return Math.min(burst, level + (Math.max(0, elapsedMs) * ratePerSec) / 1000);
}

/** Exact ms until the bucket holds `tokens` whole tokens (0 when it does). */
export function tokenWaitMs(level: number, { ratePerSec }: BucketSpec, tokens = 1): number {
  return level >= tokens ? 0 : ((tokens - level) / ratePerSec) * 1000;
}

/** `tokens` must be a whole number from 1 to every bucket's burst, or no take could ever be granted. */
export function checkTokens(tokens: number, buckets: readonly BucketSpec[]): void {
  if (!(Number.isInteger(tokens) && tokens >= 1))
    throw new RangeError(`tokens must be a whole number >= 1, got ${tokens}`);
  const small = buckets.find((bucket) => bucket.burst < tokens);
  if (small)
    throw new RangeError(`bucket ${small.key}: ${tokens} tokens is more than its burst (${small.burst})`);
}

/** A wait rounded up to whole ms, so that a caller who waits it never acts early. */
export function roundWaitMs(exactMs: number): number {
  return Math.max(0, Math.ceil(exactMs - WAIT_SLACK_MS));
}

/** Ms from `level` until the bucket is full again: how long its state must be kept. */
export function msUntilFull(level: number, { ratePerSec, burst }: BucketSpec): number {
  return Math.max(0, ((burst - level) / ratePerSec) * 1000);
}
