/**
 * The rate limiter of the embedded shape: buckets in a Map, for one process. Every call runs to
 * completion on the event loop, so a take is atomic with no lock.
 */
import {
  checkBucket,
  checkMaxWait,
  checkTokens,
  distinctBuckets,
  msUntilFull,
  refill,
  roundWaitMs,
  tokenWaitMs,
} from './bucket-math.js';
import type { BucketSpec, RateLimiter, TakeResult } from './rate-limiter.js';

export interface MemoryRateLimiterOptions {
  /** The clock, in epoch ms. Default `Date.now`; tests pass a fake one. */
  readonly now?: () => number;
}

interface BucketState {
  level: number;
  at: number;
  /** From then on the bucket is full, the same as a bucket never seen: it may be forgotten. */
  fullAt: number;
}

/** Takes between two sweeps of forgotten buckets: keys (recipient domains, API keys) come and go. */
const SWEEP_EVERY = 1024;

export class MemoryRateLimiter implements RateLimiter {
  readonly name = 'memory';
  private readonly now: () => number;
  private readonly buckets = new Map<string, BucketState>();
  private takesSinceSweep = 0;

  constructor(options: MemoryRateLimiterOptions = {}) {
    this.now = options.now ?? Date.now;
  }

  async take(buckets: readonly BucketSpec[], maxWaitMs: number, tokens = 1): Promise<TakeResult> {
    checkMaxWait(maxWaitMs);
    const specs = distinctBuckets(buckets);
    checkTokens(tokens, specs);
    const now = this.now();
    const levels = specs.map((spec) => this.levelAt(spec, now));
    const waitMs = roundWaitMs(Math.max(0, ...specs.map((spec, i) => tokenWaitMs(levels[i]!, spec, tokens))));
    if (waitMs > maxWaitMs) return { kind: 'denied', retryInMs: waitMs };
    specs.forEach((spec, i) => {
      const level = levels[i]! - tokens;
      this.buckets.set(spec.key, { level, at: now, fullAt: now + msUntilFull(level, spec) });
    });
    if (++this.takesSinceSweep >= SWEEP_EVERY) this.sweep(now);
    return { kind: 'granted', waitMs };
  }

  async levels(buckets: readonly BucketSpec[]): Promise<number[]> {
    buckets.forEach(checkBucket);
    const now = this.now();
    return buckets.map((spec) => this.levelAt(spec, now));
  }

  async close(): Promise<void> {
    this.buckets.clear();
  }

  private levelAt(spec: BucketSpec, now: number): number {
    const state = this.buckets.get(spec.key);
    return state ? refill(state.level, now - state.at, spec) : spec.burst;
  }

  private sweep(now: number): void {
    this.takesSinceSweep = 0;
    for (const [key, state] of this.buckets) if (state.fullAt <= now) this.buckets.delete(key);
  }
}
