import { MailroomError } from '../errors.js';
import type { RateLimiter } from '../flow/rate-limiter.js';

/**
 * MAILROOM_API_RATE_PER_MIN: a token bucket per API key (per key fingerprint; one bucket for every
 * caller when the server runs without keys), refilling at the per-minute rate, that may be spent
 * all at once. Shared by every API process through the limiter of the shape. Over it, 429 with
 * `Retry-After`. (The limiter falls back to buckets per process while the shared one cannot be
 * reached: FallbackRateLimiter.)
 */
export class ApiRateLimit {
  constructor(
    private readonly perMinute: number,
    private readonly limiter: RateLimiter,
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
    const result = await this.limiter.take([bucket], 0, count);
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
