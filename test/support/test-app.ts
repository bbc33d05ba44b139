import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LightMyRequestResponse } from 'fastify';
import pino from 'pino';
import { type App, buildApp } from '../../src/app.js';
import { loadConfig } from '../../src/config/load-config.js';
import { outboxCount } from './read-postgres.js';
import { SmtpSink } from './smtp-sink.js';
import { provisionShape, TEST_SHAPE, type TestShape } from './test-shape.js';
import { waitFor } from './wait-for.js';

export interface TestApp {
  readonly app: App;
  readonly sink: SmtpSink;
  readonly dataDir: string;
  request(
    method: string,
    url: string,
    body?: unknown,
    headers?: Record<string, string>,
  ): Promise<LightMyRequestResponse>;
  /** POSTs an email and returns its id; fails the test unless the answer is 202. */
  send(email: Record<string, unknown>, headers?: Record<string, string>): Promise<string>;
  /**
   * Waits until every committed job has been handed to the broker: on a network broker's shape, the
   * outbox is empty (the dispatcher published and the broker confirmed); on the embedded one the
   * commit is the publish, so at once.
   */
  waitForPublished(): Promise<void>;
  /** Polls GET /v1/emails/:id until its status is one of `statuses`. */
  waitForStatus(id: string, statuses: string | string[], timeoutMs?: number): Promise<EmailView>;
  stop(): Promise<void>;
}

export interface EmailView {
  id: string;
  status: string;
  attempts: number;
  last_error: string | null;
  message_id: string;
  dead_letter_reason: string | null;
  events: { type: string; at: string; attempt: number; detail: Record<string, unknown> }[];
  [key: string]: unknown;
}

/** Environment for fast tests: short retries and leases, quick polling, quiet logs. */
export const FAST_ENV: Record<string, string> = {
  MAILROOM_PORT: '0',
  LOG_LEVEL: 'silent',
  MAILROOM_RETRY_BASE_MS: '50',
  MAILROOM_RETRY_MAX_MS: '200',
  MAILROOM_SMTP_TIMEOUT_MS: '1500',
  MAILROOM_LEASE_MS: '4000',
  MAILROOM_POLL_INTERVAL_MS: '20',
  MAILROOM_SHUTDOWN_TIMEOUT_MS: '2000',
  // These suites test retries, ordering and timeouts one failure at a time; a circuit breaker opening
  // on a run of injected failures would hold everything for 30 s. flow-control.test.ts tests it.
  MAILROOM_BREAKER_FAILURES: '1000',
};

/**
 * A whole Mailroom (API and worker) in this process, delivering to an SMTP sink on loopback, on the
 * shape MAILROOM_TEST_SHAPE names unless `shape` is given.
 */
export async function startTestApp(
  env: Record<string, string> = {},
  sink = new SmtpSink(),
  shape: TestShape = TEST_SHAPE,
): Promise<TestApp> {
  await sink.start();
  const dataDir = mkdtempSync(join(tmpdir(), 'mailroom-test-'));
  const resources = provisionShape(shape);
  const config = loadConfig({
    ...FAST_ENV,
    ...resources.env,
    MAILROOM_DATA_DIR: dataDir,
    MAILROOM_SMTP_URL: `smtp://127.0.0.1:${sink.port}`,
    ...env,
  });
  const app = await buildApp(config, pino({ level: 'silent' }));
  await app.start();
  const server = app.server!;

  const request: TestApp['request'] = (method, url, body, headers = {}) =>
    server.inject({
      method: method as 'GET',
      url,
      headers: { ...(body !== undefined && { 'content-type': 'application/json' }), ...headers },
      ...(body !== undefined && { payload: typeof body === 'string' ? body : JSON.stringify(body) }),
    });

  return {
    app,
    sink,
    dataDir,
    request,
    async send(email, headers) {
      const response = await request('POST', '/v1/emails', email, headers);
      if (response.statusCode !== 202)
        throw new Error(`expected 202, got ${response.statusCode}: ${response.body}`);
      return (response.json() as { id: string }).id;
    },
    async waitForPublished() {
      const schema = resources.env.MAILROOM_DATABASE_SCHEMA;
      if (schema === undefined || resources.env.MAILROOM_BROKER_URL === undefined) return;
      await waitFor('the outbox to be published', async () => (await outboxCount(schema)) === 0);
    },
    async waitForStatus(id, statuses, timeoutMs = 10_000) {
      const wanted = Array.isArray(statuses) ? statuses : [statuses];
      let last = '';
      return waitFor(
        `email ${id} to reach ${wanted.join('|')} (last seen: ${last})`,
        async () => {
          const view = (await request('GET', `/v1/emails/${id}`)).json() as EmailView;
          last = view.status;
          return wanted.includes(view.status) ? view : undefined;
        },
        timeoutMs,
      );
    },
    async stop() {
      await app.stop();
      await sink.close();
      await resources.cleanup();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export const SAMPLE_EMAIL = {
  from: 'Acme <noreply@acme.test>',
  to: 'alice@example.com',
  subject: 'Your receipt',
  text: 'Thanks for your order.',
  html: '<p>Thanks for your <b>order</b>.</p>',
};
