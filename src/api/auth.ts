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
    const match = /^Bearer ([\x21-\x7e]{1,1024})$/.exec(request.headers.authorization ?? '');
    const scope = match ? this.scopeOf(match[1]!) : undefined;
    if (scope !== undefined) return scope;
    throw new MailroomError('UNAUTHORIZED', 'Send a valid API key as `Authorization: Bearer <key>`.');
  }

  /**
   * For pages a browser opens, which cannot send a Bearer header: also takes the key as the password
   * of HTTP Basic authentication (any user name), which the browser asks for once and then resends by
   * itself. Because a browser resends Basic credentials on cross-site requests too, only read-only
   * GET routes may use this; everything else stays Bearer-only.
   */
  authenticateBrowser(request: FastifyRequest): string {
    if (!this.enabled) return '';
    const header = request.headers.authorization ?? '';
    const basic = /^Basic ([A-Za-z0-9+/]{1,2048}={0,2})$/i.exec(header);
    if (!basic) {
      if (header.startsWith('Bearer ')) return this.authenticate(request);
    } else {
      const credentials = Buffer.from(basic[1]!, 'base64').toString('utf8');
      const password = credentials.slice(credentials.indexOf(':') + 1);
      const scope =
        credentials.includes(':') && /^[\x21-\x7e]{1,1024}$/.test(password)
          ? this.scopeOf(password)
          : undefined;
      if (scope !== undefined) return scope;
    }
    throw new MailroomError(
      'UNAUTHORIZED',
      'Give an API key as the password when the browser asks (any user name), or send `Authorization: Bearer <key>`.',
    );
  }

  /** The key's fingerprint when it is one of the configured keys. Compares against every key. */
  private scopeOf(key: string): string | undefined {
    const presented = digest(key);
    let found = false;
    for (const known of this.digests) found = timingSafeEqual(presented, known) || found;
    return found ? presented.subarray(0, 12).toString('hex') : undefined;
  }
}

function digest(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}
