import type { Logger } from 'pino';
import { MailroomError } from '../errors.js';
import type { BucketSpec, RateLimiter } from '../flow/rate-limiter.js';

/** How often a failing shared limiter is reported in the log. */
const LIMITER_ERROR_LOG_MS = 10_000;

/**
 * MAILROOM_API_RATE_PER_MIN: a token bucket per API key (per key fingerprint; one bucket for every
 * caller when the server runs without keys), refilling at the per-minute rate, that may be spent
 * all at once. Shared by every API process through the limiter of the shape. Over it, 429 with
 * `Retry-After`. A shared limiter that fails falls back to a bucket per process rather than refuse
 * email or let it through unlimited.
 */
export class ApiRateLimit {
  private lastErrorLog = 0;

  constructor(
    private readonly perMinute: number,
    private readonly limiter: RateLimiter,
    private readonly fallback: RateLimiter,
    private readonly logger: Logger,
  ) {}

  /**
   * Takes `count` emails' worth from the key's bucket, or throws RATE_LIMITED and takes nothing.
   * The limiter takes one token per call, so a batch is admitted when the bucket holds `count`
   * tokens (or is full, for a batch larger than the burst), then debited token by token with
   * reservations allowed: the bucket may go below zero, and later requests wait until it refills.
   * Two batches racing between the look and the debit can both pass; the debt they leave keeps
   * the rate over time.
   */
  async check(scope: string, count = 1): Promise<void> {
    const bucket = {
      key: `api:${scope || 'anonymous'}`,
      ratePerSec: this.perMinute / 60,
      burst: this.perMinute,
    };
    let retryInMs: number | undefined;
    try {
      retryInMs = await this.take(this.limiter, bucket, count);
    } catch (error) {
      if (Date.now() - this.lastErrorLog >= LIMITER_ERROR_LOG_MS) {
        this.lastErrorLog = Date.now();
        this.logger.error(
          { err: error, limiter: this.limiter.name },
          'API rate limit: the shared limiter failed; limiting per process until it answers again',
        );
      }
      retryInMs = await this.take(this.fallback, bucket, count);
    }
    if (retryInMs === undefined) return;
    const seconds = Math.max(1, Math.ceil(retryInMs / 1000));
    throw new MailroomError(
      'RATE_LIMITED',
      `This API key may submit ${this.perMinute} emails a minute (MAILROOM_API_RATE_PER_MIN)${count > 1 ? `; this batch counts ${count}` : ''}; retry in ${seconds} s.`,
      [],
      { retryAfterSeconds: seconds },
    );
  }

  /** Undefined when granted; otherwise ms until the bucket could grant the take. */
  private async take(limiter: RateLimiter, bucket: BucketSpec, count: number): Promise<number | undefined> {
    if (count <= 1) {
      const result = await limiter.take([bucket], 0);
      return result.kind === 'granted' ? undefined : result.retryInMs;
    }
    const needed = Math.min(count, bucket.burst);
    const [level = 0] = await limiter.levels([bucket]);
    if (level < needed) return ((needed - level) / bucket.ratePerSec) * 1000;
    // Each take may reserve up to the time `count` tokens take to arrive, so none is refused.
    const maxWaitMs = Math.ceil((count / bucket.ratePerSec) * 1000) + 1000;
    await Promise.all(Array.from({ length: count }, () => limiter.take([bucket], maxWaitMs)));
    return undefined;
  }
}
