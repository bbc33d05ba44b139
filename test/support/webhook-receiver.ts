import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ReceivedWebhook {
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  readonly status: number;
}

/** How a path answers: a fixed status, or one chosen per request. */
export type Answer =
  | number
  | ((request: { path: string; headers: IncomingHttpHeaders; body: string }) => number);

/**
 * An HTTP server on loopback that records every webhook it gets and answers each path as told
 * (200 by default).
 */
export class WebhookReceiver {
  readonly received: ReceivedWebhook[] = [];
  private readonly answers = new Map<string, Answer>();
  private readonly server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const path = request.url ?? '/';
      const body = Buffer.concat(chunks).toString('utf8');
      const answer = this.answers.get(path) ?? 200;
      const status = typeof answer === 'number' ? answer : answer({ path, headers: request.headers, body });
      this.received.push({ path, headers: request.headers, body, status });
      response
        .writeHead(status, { 'content-type': 'text/plain' })
        .end(status === 200 ? 'ok' : `nope ${status}`);
    });
  });

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
  }

  url(path: string): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}${path}`;
  }

  answer(path: string, answer: Answer): void {
    this.answers.set(path, answer);
  }

  /** What reached `path`, parsed, with the status it was answered. */
  at(path: string): (ReceivedWebhook & { json: WebhookPayload })[] {
    return this.received
      .filter((hook) => hook.path === path)
      .map((hook) => ({ ...hook, json: JSON.parse(hook.body) as WebhookPayload }));
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

export interface WebhookPayload {
  type: string;
  timestamp: string;
  data: {
    email_id: string;
    event_id: string;
    status?: string;
    attempt: number;
    to?: string[];
    subject?: string;
    tags: string[];
    metadata: Record<string, string>;
    message_id: string;
    detail: Record<string, unknown>;
  };
}

/**
 * Verifies a Standard Webhooks signature, written from the spec (standardwebhooks.com), not from
 * Mailroom's code: the key is the base64 after `whsec_`; the signed content is
 * `${webhook-id}.${webhook-timestamp}.${body}`; the header holds space-separated `v1,<base64>`.
 */
export function verifyStandardWebhook(secret: string, headers: IncomingHttpHeaders, body: string): boolean {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (typeof id !== 'string' || typeof timestamp !== 'string' || typeof signatures !== 'string') return false;
  if (!/^\d+$/.test(timestamp) || Math.abs(Date.now() / 1000 - Number(timestamp)) > 5 * 60) return false;
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const expected = createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest();
  return signatures.split(' ').some((entry) => {
    const [version, value] = entry.split(',');
    if (version !== 'v1' || value === undefined) return false;
    const given = Buffer.from(value, 'base64');
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
}
