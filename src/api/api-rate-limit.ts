import type { Logger } from 'pino';
import { MailroomError } from '../errors.js';
import type { RateLimiter, TakeResult } from '../flow/rate-limiter.js';

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
   * Takes `count` emails' worth from the key's bucket in one atomic take, or throws RATE_LIMITED and
   * takes nothing. A batch larger than the whole per-minute allowance can never fit: it is refused
   * with a message that says how large a batch may be.
   */
  async check(scope: string, count = 1): Promise<void> {
    const bucket = {
      key: `api:${scope || 'anonymous'}`,
      ratePerSec: this.perMinute / 60,
      burst: this.perMinute,
    };
    if (count > this.perMinute) {
      throw new MailroomError(
        'RATE_LIMITED',
        `This API key may submit ${this.perMinute} emails a minute (MAILROOM_API_RATE_PER_MIN): a batch of ${count} can never fit; send at most ${this.perMinute} at once.`,
      );
    }
    let result: TakeResult;
    try {
      result = await this.limiter.take([bucket], 0, count);
    } catch (error) {
      if (Date.now() - this.lastErrorLog >= LIMITER_ERROR_LOG_MS) {
        this.lastErrorLog = Date.now();
        this.logger.error(
          { err: error, limiter: this.limiter.name },
          'API rate limit: the shared limiter failed; limiting per process until it answers again',
        );
      }
      result = await this.fallback.take([bucket], 0, count);
    }
    if (result.kind === 'granted') return;
    const seconds = Math.max(1, Math.ceil(result.retryInMs / 1000));
    throw new MailroomError(
      'RATE_LIMITED',
      `This API key may submit ${this.perMinute} emails a minute (MAILROOM_API_RATE_PER_MIN)${count > 1 ? `; this batch counts ${count}` : ''}; retry in ${seconds} s.`,
      [],
      { retryAfterSeconds: seconds },
    );
  }
}
