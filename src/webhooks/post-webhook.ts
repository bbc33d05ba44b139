import http from 'node:http';
import https from 'node:https';
import { isIP } from 'node:net';
import { VERSION } from '../version.js';
import { bareHost, forbiddenAddress, guardedLookup } from './address-guard.js';

export interface PostOptions {
  readonly timeoutMs: number;
  /** MAILROOM_WEBHOOKS_ALLOW_PRIVATE: no address check. */
  readonly allowPrivate: boolean;
}

export interface PostResult {
  /** The receiver's status; absent when there was no answer. */
  readonly statusCode?: number;
  /** What went wrong: no answer, or a non-2xx answer with the start of its body. */
  readonly error?: string;
  readonly durationMs: number;
}

/** How much of a receiver's answer goes into the delivery log. */
const BODY_SAMPLE_BYTES = 512;

// Connections to a receiver are reused across deliveries.
const agents = {
  'http:': new http.Agent({ keepAlive: true, maxSockets: 16 }),
  'https:': new https.Agent({ keepAlive: true, maxSockets: 16 }),
};

/**
 * POSTs one webhook. Never throws: every failure is a result. Redirects are not followed (a 3xx
 * is a failure), so a receiver cannot send the request on to an address the guard would refuse.
 */
export function postWebhook(
  url: string,
  headers: Readonly<Record<string, string>>,
  body: string,
  options: PostOptions,
): Promise<PostResult> {
  const started = performance.now();
  const elapsed = () => performance.now() - started;
  return new Promise((resolve) => {
    let target: URL;
    try {
      target = new URL(url);
    } catch {
      return resolve({ error: 'invalid URL', durationMs: 0 });
    }
    const host = bareHost(target.hostname);
    if (!options.allowPrivate && isIP(host)) {
      // An address literal is never looked up, so the connect-time guard must see it here.
      const reason = forbiddenAddress(host);
      if (reason) return resolve({ error: `webhook target refused: ${reason}`, durationMs: 0 });
    }
    const client = target.protocol === 'https:' ? https : http;
    const request = client.request(
      target,
      {
        method: 'POST',
        agent: agents[target.protocol as 'http:' | 'https:'],
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          'user-agent': `Mailroom-Webhooks/${VERSION}`,
          ...headers,
        },
        signal: AbortSignal.timeout(options.timeoutMs),
        ...(!options.allowPrivate && { lookup: guardedLookup as unknown as http.RequestOptions['lookup'] }),
      },
      (response) => {
        const statusCode = response.statusCode ?? 0;
        const chunks: Buffer[] = [];
        let sampled = 0;
        response.on('data', (chunk: Buffer) => {
          if (sampled < BODY_SAMPLE_BYTES) chunks.push(chunk);
          sampled += chunk.length;
        });
        response.on('error', () => {});
        response.on('end', () => {
          if (statusCode >= 200 && statusCode < 300) return resolve({ statusCode, durationMs: elapsed() });
          const sample = Buffer.concat(chunks).subarray(0, BODY_SAMPLE_BYTES).toString('utf8').trim();
          resolve({
            statusCode,
            error: `HTTP ${statusCode}${sample ? `: ${sample}` : ''}`,
            durationMs: elapsed(),
          });
        });
      },
    );
    request.on('error', (error: NodeJS.ErrnoException) => {
      const message =
        error.name === 'AbortError' || error.name === 'TimeoutError'
          ? `no answer within ${options.timeoutMs} ms`
          : error.message;
      resolve({ error: message, durationMs: elapsed() });
    });
    request.end(body);
  });
}
