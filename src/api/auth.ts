import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { MailroomError } from '../errors.js';

/**
 * Checks `Authorization: Bearer <key>` against the configured keys. Keys are compared as SHA-256
 * digests with timingSafeEqual, and every key is compared, so timing says nothing about which
 * key or how much of one matched. The key itself never reaches a log.
 */
export class ApiKeyAuth {
  private readonly digests: Buffer[];

  constructor(keys: readonly string[]) {
    this.digests = keys.map(digest);
  }

  get enabled(): boolean {
    return this.digests.length > 0;
  }

  /** Returns the caller's scope (a key fingerprint) or throws UNAUTHORIZED. '' when auth is off. */
  authenticate(request: FastifyRequest): string {
    if (!this.enabled) return '';
    const header = request.headers.authorization ?? '';
    const match = /^Bearer ([\x21-\x7e]{1,1024})$/.exec(header);
    if (match) {
      const presented = digest(match[1]!);
      let found = false;
      for (const known of this.digests) found = timingSafeEqual(presented, known) || found;
      if (found) return presented.subarray(0, 12).toString('hex');
    }
    throw new MailroomError('UNAUTHORIZED', 'Send a valid API key as `Authorization: Bearer <key>`.');
  }
}

function digest(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}
