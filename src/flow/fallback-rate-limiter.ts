import type { Logger } from 'pino';
import type { BucketSpec, RateLimiter, TakeResult } from './rate-limiter.js';

/** How often a failing shared limiter is reported in the log. */
const ERROR_LOG_MS = 10_000;

/**
 * The shared limiter (Redis, PostgreSQL), with buckets of this process to fall back on while it
 * cannot be reached: email keeps flowing within the same rates per process, rather than stopping or
 * going out unlimited. The failure is logged at most every 10 s. Levels (for status pages) are the
 * shared ones only: a reading from the local stand-in would mislead.
 */
export class FallbackRateLimiter implements RateLimiter {
  private lastErrorLog = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly shared: RateLimiter,
    private readonly local: RateLimiter,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  get name(): RateLimiter['name'] {
    return this.shared.name;
  }

  async take(buckets: readonly BucketSpec[], maxWaitMs: number, tokens?: number): Promise<TakeResult> {
    try {
      return await this.shared.take(buckets, maxWaitMs, tokens);
    } catch (error) {
      if (this.now() - this.lastErrorLog >= ERROR_LOG_MS) {
        this.lastErrorLog = this.now();
        this.logger.error(
          { err: error, limiter: this.shared.name },
          'rate limits: the shared limiter failed; limiting per process until it answers again',
        );
      }
      return this.local.take(buckets, maxWaitMs, tokens);
    }
  }

  levels(buckets: readonly BucketSpec[]): Promise<number[]> {
    return this.shared.levels(buckets);
  }

  async close(): Promise<void> {
    await Promise.all([this.shared.close(), this.local.close()]);
  }
}
