import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import pino from 'pino';
import { buildApp } from '../src/app.js';
import { loadConfig } from '../src/config/load-config.js';
import { MailroomError } from '../src/errors.js';
import { type InboxServer, startInboxServer } from '../src/inbox/inbox-server.js';
import { SmtpSink } from './support/smtp-sink.js';
import { FAST_ENV, SAMPLE_EMAIL, startTestApp, type TestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';

const KEY_A = 'key-aaaaaaaaaaaaaaaa';
const KEY_B = 'key-bbbbbbbbbbbbbbbb';
const API_KEYS = `${KEY_A},${KEY_B}`;
const bearer = (key: string) => ({ authorization: `Bearer ${key}` });
const basic = (user: string, password: string) => ({
  authorization: `Basic ${Buffer.from(`${user}:${password}`, 'utf8').toString('base64')}`,
});
const COMPAT_EMAIL = { to: 'alice@example.com', subject: 'Hi', body: 'Hello' };

function errorCode(response: LightMyRequestResponse): string {
  return (response.json() as { error: { code: string } }).error.code;
}

function assertUnauthorized(response: LightMyRequestResponse, what: string): void {
  assert.equal(response.statusCode, 401, `${what}: ${response.body}`);
  const error = (response.json() as { error: { code: string; message: string } }).error;
  assert.equal(error.code, 'UNAUTHORIZED', what);
  assert.match(error.message, /Bearer/);
}

describe('API keys', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp({ MAILROOM_API_KEYS: API_KEYS });
  });
  after(() => t.stop());

  test('/v1/emails needs a configured key', async () => {
    const wrong = [
      {},
      bearer('key-cccccccccccccccc'),
      bearer(`${KEY_A}x`),
      bearer(KEY_A.slice(0, -1)),
      { authorization: KEY_A },
      { authorization: `Basic ${Buffer.from(`user:${KEY_A}`).toString('base64')}` },
      { authorization: `Bearer ${KEY_A} ` },
      { authorization: 'Bearer ' },
    ];
    for (const headers of wrong) {
      const what = JSON.stringify(headers);
      assertUnauthorized(await t.request('POST', '/v1/emails', SAMPLE_EMAIL, headers), `POST ${what}`);
      assertUnauthorized(await t.request('GET', '/v1/emails', undefined, headers), `GET ${what}`);
    }
    // Nothing got through: the list, read with a good key, is empty.
    const list = await t.request('GET', '/v1/emails', undefined, bearer(KEY_A));
    assert.equal(list.statusCode, 200);
    assert.deepEqual((list.json() as { data: unknown[] }).data, []);

    const accepted = await t.request('POST', '/v1/emails', SAMPLE_EMAIL, bearer(KEY_B));
    assert.equal(accepted.statusCode, 202, accepted.body);
    const { id } = accepted.json() as { id: string };
    const read = await t.request('GET', `/v1/emails/${id}`, undefined, bearer(KEY_A));
    assert.equal(read.statusCode, 200);
    assert.equal((read.json() as { id: string }).id, id);
    assertUnauthorized(await t.request('GET', `/v1/emails/${id}`), 'GET one without a key');
  });

  test('a bad request without a key is 401, not 400: authentication comes first', async () => {
    const response = await t.request('POST', '/v1/emails', '{"to":');
    assertUnauthorized(response, 'malformed JSON without a key');
  });

  test('dead-letter routes are protected too', async () => {
    assertUnauthorized(await t.request('GET', '/v1/dead-letters'), 'list dead letters');
    assertUnauthorized(await t.request('POST', '/v1/dead-letters/replay', {}), 'replay all');
    const allowed = await t.request('GET', '/v1/dead-letters', undefined, bearer(KEY_A));
    assert.equal(allowed.statusCode, 200);
  });

  test('/api/emails and /api/jobs/history are protected the same way', async () => {
    assertUnauthorized(await t.request('POST', '/api/emails', COMPAT_EMAIL), 'compat POST without a key');
    assertUnauthorized(
      await t.request('POST', '/api/emails', COMPAT_EMAIL, bearer('wrong-key-0123456789')),
      'compat POST with a wrong key',
    );
    assertUnauthorized(await t.request('GET', '/api/jobs/history'), 'compat history without a key');
    const accepted = await t.request('POST', '/api/emails', COMPAT_EMAIL, bearer(KEY_A));
    assert.equal(accepted.statusCode, 202, accepted.body);
    const history = await t.request('GET', '/api/jobs/history', undefined, bearer(KEY_B));
    assert.equal(history.statusCode, 200);
    const jobId = (accepted.json() as { job_id: string }).job_id;
    assert.ok((history.json() as { jobs: { job_id: string }[] }).jobs.some((job) => job.job_id === jobId));
  });

  test('/health, /ready and /docs stay open', async () => {
    const health = await t.request('GET', '/health');
    assert.equal(health.statusCode, 200);
    assert.deepEqual(health.json(), { status: 'ok' });
    const ready = await t.request('GET', '/ready');
    assert.equal(ready.statusCode, 200, ready.body);
    assert.equal((ready.json() as { status: string }).status, 'ready');
    const docs = await t.request('GET', '/docs/json');
    assert.equal(docs.statusCode, 200);
    const doc = docs.json() as {
      security: unknown[];
      components: { securitySchemes: Record<string, unknown> };
    };
    assert.deepEqual(doc.security, [{ bearer: [] }]);
    assert.ok(doc.components.securitySchemes['bearer']);
  });

  test('Idempotency-Keys are scoped per API key', async () => {
    const email = { ...SAMPLE_EMAIL, subject: 'scoped' };
    const key = { 'idempotency-key': 'shared-key-1' };
    const underA = await t.request('POST', '/v1/emails', email, { ...bearer(KEY_A), ...key });
    const underB = await t.request('POST', '/v1/emails', email, { ...bearer(KEY_B), ...key });
    assert.equal(underA.statusCode, 202, underA.body);
    assert.equal(underB.statusCode, 202, underB.body);
    const idA = (underA.json() as { id: string }).id;
    const idB = (underB.json() as { id: string }).id;
    assert.notEqual(idA, idB, 'two callers with the same key get two jobs');
    assert.equal(underB.headers['idempotent-replayed'], undefined);

    const againA = await t.request('POST', '/v1/emails', email, { ...bearer(KEY_A), ...key });
    assert.equal(againA.statusCode, 202);
    assert.equal((againA.json() as { id: string }).id, idA);
    assert.equal(againA.headers['idempotent-replayed'], 'true');

    // A different body under B's own key conflicts only with B's request.
    const conflict = await t.request(
      'POST',
      '/v1/emails',
      { ...email, subject: 'changed' },
      { ...bearer(KEY_B), ...key },
    );
    assert.equal(conflict.statusCode, 409);
    assert.equal(errorCode(conflict), 'IDEMPOTENCY_CONFLICT');
    assert.match(conflict.body, new RegExp(idB));
    assert.doesNotMatch(conflict.body, new RegExp(idA));

    for (const id of [idA, idB]) {
      const view = await t.request('GET', `/v1/emails/${id}`, undefined, bearer(KEY_A));
      assert.equal(view.statusCode, 200);
    }
  });
});

describe('configuration', () => {
  function configError(env: Record<string, string>): MailroomError {
    try {
      loadConfig(env);
    } catch (error) {
      assert.ok(error instanceof MailroomError, `a MailroomError, not ${String(error)}`);
      assert.equal(error.code, 'CONFIG_INVALID');
      return error;
    }
    assert.fail(`loadConfig(${JSON.stringify(env)}) did not throw`);
  }

  test('a non-loopback host without API keys is refused, naming both variables', () => {
    const error = configError({ MAILROOM_HOST: '0.0.0.0' });
    assert.match(error.message, /MAILROOM_HOST/);
    assert.match(error.message, /MAILROOM_API_KEYS/);
    for (const host of ['::', '192.168.1.10', 'mailroom.internal']) {
      assert.match(configError({ MAILROOM_HOST: host }).message, /MAILROOM_HOST/);
    }
  });

  test('a non-loopback host with API keys loads; loopback needs none', () => {
    const config = loadConfig({ MAILROOM_HOST: '0.0.0.0', MAILROOM_API_KEYS: API_KEYS });
    assert.equal(config.host, '0.0.0.0');
    assert.deepEqual(config.apiKeys, [KEY_A, KEY_B]);
    assert.ok(Object.isFrozen(config));
    for (const host of ['127.0.0.1', 'localhost', '::1', '127.1.2.3']) {
      assert.equal(loadConfig({ MAILROOM_HOST: host }).apiKeys, undefined);
    }
    assert.deepEqual(loadConfig({ MAILROOM_API_KEYS: ` ${KEY_A} , ${KEY_B} ,` }).apiKeys, [KEY_A, KEY_B]);
  });

  test('a wrong value names the variable and the rule', () => {
    const error = configError({ MAILROOM_PORT: 'abc' });
    assert.match(error.message, /MAILROOM_PORT="abc"/);
    assert.match(error.message, /an integer from 0 to 65535/);
    assert.match(configError({ MAILROOM_PORT: '65536' }).message, /MAILROOM_PORT/);
    assert.match(configError({ MAILROOM_PORT: '80.5' }).message, /MAILROOM_PORT/);
  });

  test('several wrong values are all reported in one error', () => {
    const error = configError({
      MAILROOM_PORT: 'abc',
      LOG_LEVEL: 'loud',
      MAILROOM_MAX_ATTEMPTS: '0',
      MAILROOM_BROKER_URL: 'kafka://localhost',
    });
    for (const name of ['MAILROOM_PORT', 'LOG_LEVEL', 'MAILROOM_MAX_ATTEMPTS', 'MAILROOM_BROKER_URL']) {
      assert.match(error.message, new RegExp(`${name}=`), `${name} reported in: ${error.message}`);
    }
    assert.match(error.message, /one of fatal, error, warn, info, debug, trace, silent/);
    assert.match(error.message, /an integer from 1 to 100/);
  });

  test('a secret value is never echoed', () => {
    const error = configError({ MAILROOM_API_KEYS: 'shortsecret9' });
    assert.match(error.message, /MAILROOM_API_KEYS/);
    assert.match(error.message, /at least 16/);
    assert.ok(!error.message.includes('shortsecret9'), error.message);

    const both = configError({
      MAILROOM_API_KEYS: `${KEY_A},tiny-secret`,
      MAILROOM_SMTP_URL: 'http://user:hunter2-password@relay.example.com',
      MAILROOM_API_KEY: 'x'.repeat(2000),
    });
    for (const secret of ['tiny-secret', KEY_A, 'hunter2-password', 'x'.repeat(50)]) {
      assert.ok(!both.message.includes(secret), `${secret.slice(0, 20)} leaked into: ${both.message}`);
    }
    for (const name of ['MAILROOM_API_KEYS', 'MAILROOM_SMTP_URL', 'MAILROOM_API_KEY']) {
      assert.match(both.message, new RegExp(`${name}=`));
    }
  });
});

describe('logs never contain an API key', () => {
  const chunks: string[] = [];
  const sink = new SmtpSink();
  let dataDir = '';

  after(async () => {
    await sink.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  test('an authorized request, refused ones and a failing send log without the key', async () => {
    await sink.start();
    dataDir = mkdtempSync(join(tmpdir(), 'mailroom-auth-log-'));
    const config = loadConfig({
      ...FAST_ENV,
      LOG_LEVEL: 'trace',
      MAILROOM_DATA_DIR: dataDir,
      MAILROOM_SMTP_URL: `smtp://127.0.0.1:${sink.port}`,
      MAILROOM_API_KEYS: API_KEYS,
    });
    const destination = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        chunks.push(chunk.toString('utf8'));
        callback();
      },
    });
    const app = await buildApp(config, pino({ level: 'trace' }, destination));
    await app.start();
    const server = app.server!;
    const post = (body: unknown, headers: Record<string, string>) =>
      server.inject({
        method: 'POST',
        url: '/v1/emails',
        headers: { 'content-type': 'application/json', ...headers },
        payload: typeof body === 'string' ? body : JSON.stringify(body),
      });
    let id = '';
    try {
      const accepted = await post(SAMPLE_EMAIL, { ...bearer(KEY_A), 'idempotency-key': 'log-test-1' });
      assert.equal(accepted.statusCode, 202, accepted.body);
      id = (accepted.json() as { id: string }).id;
      assert.equal((await post(SAMPLE_EMAIL, bearer('key-zzzzzzzzzzzzzzzz'))).statusCode, 401);
      assert.equal((await post('{"to":', bearer(KEY_A))).statusCode, 400);
      assert.equal((await post({ ...SAMPLE_EMAIL, to: 'a@b@c' }, bearer(KEY_A))).statusCode, 400);
      await waitFor('the first send to be recorded', async () => {
        const view = await server.inject({ method: 'GET', url: `/v1/emails/${id}`, headers: bearer(KEY_A) });
        return (view.json() as { status: string }).status === 'sent';
      });
      await sink.setBehaviour('permfail');
      const failing = await post({ ...SAMPLE_EMAIL, subject: 'fails' }, bearer(KEY_B));
      assert.equal(failing.statusCode, 202);
      const failingId = (failing.json() as { id: string }).id;
      await waitFor('the failing send to be recorded', async () => {
        const view = await server.inject({
          method: 'GET',
          url: `/v1/emails/${failingId}`,
          headers: bearer(KEY_A),
        });
        return (view.json() as { status: string }).status === 'failed';
      });
    } finally {
      await app.stop();
    }
    const log = chunks.join('');
    // The log is really written at trace level, so the check below has something to look at.
    assert.ok(log.includes(id), 'the accepted job was logged');
    for (const secret of [KEY_A, KEY_B, 'key-zzzzzzzzzzzzzzzz']) {
      assert.ok(!log.includes(secret), `${secret} appears in the log`);
    }
  });
});

/** Wrong credentials for the dev inbox: none, unknown keys, malformed headers. */
const WRONG_INBOX_CREDENTIALS: Record<string, string>[] = [
  {},
  bearer('key-cccccccccccccccc'),
  { authorization: KEY_A },
  basic('anyone', 'key-cccccccccccccccc'),
  basic(KEY_A, ''),
  { authorization: `Basic ${Buffer.from(KEY_A).toString('base64')}` },
  { authorization: 'Basic !!!' },
];

/** A refused dev inbox page: 401, and a Basic challenge so that a browser asks for the key. */
function assertPageChallenge(
  response: { statusCode: number; headers: Record<string, unknown>; body: string },
  what: string,
) {
  assert.equal(response.statusCode, 401, `${what}: ${response.body}`);
  assert.match(String(response.headers['www-authenticate']), /^Basic realm="Mailroom dev inbox"/, what);
  assert.doesNotMatch(response.body, /Thanks for your order/, `${what}: no message content in a refusal`);
}

describe('the dev inbox of `mailroom start` with API keys', () => {
  let t: TestApp;
  let messageId = '';
  before(async () => {
    // No relay: mail goes to the built-in dev inbox, whose routes are served on the API's port.
    t = await startTestApp({
      MAILROOM_API_KEYS: API_KEYS,
      MAILROOM_SMTP_URL: '',
      MAILROOM_INBOX_SMTP_PORT: '0',
    });
    assert.ok(t.app.inbox, 'the dev inbox runs');
    const accepted = await t.request('POST', '/v1/emails', SAMPLE_EMAIL, bearer(KEY_A));
    assert.equal(accepted.statusCode, 202, accepted.body);
    const { id } = accepted.json() as { id: string };
    await waitFor('the email to reach the dev inbox', async () => {
      const view = await t.request('GET', `/v1/emails/${id}`, undefined, bearer(KEY_A));
      return (view.json() as { status: string }).status === 'sent';
    });
    messageId = t.app.inbox!.list(1)[0]!.id;
  });
  after(() => t.stop());

  test('/v1/inbox/* needs a Bearer key, like every /v1 route; Basic is not accepted there', async () => {
    const routes: [string, string][] = [
      ['GET', '/v1/inbox/messages'],
      ['GET', `/v1/inbox/messages/${messageId}`],
      ['GET', `/v1/inbox/messages/${messageId}/raw`],
      ['DELETE', '/v1/inbox/messages'],
    ];
    for (const [method, url] of routes) {
      for (const headers of [...WRONG_INBOX_CREDENTIALS, basic('anyone', KEY_A)]) {
        assertUnauthorized(
          await t.request(method, url, undefined, headers),
          `${method} ${url} ${JSON.stringify(headers)}`,
        );
      }
    }
    assert.equal(t.app.inbox!.count(), 1, 'the refused DELETE cleared nothing');
    const list = await t.request('GET', '/v1/inbox/messages', undefined, bearer(KEY_B));
    assert.equal(list.statusCode, 200, list.body);
    assert.equal((list.json() as { data: { subject: string }[] }).data[0]?.subject, SAMPLE_EMAIL.subject);
    const raw = await t.request('GET', `/v1/inbox/messages/${messageId}/raw`, undefined, bearer(KEY_A));
    assert.equal(raw.statusCode, 200);
    assert.match(raw.body, /Your receipt/);
  });

  test('the HTML pages challenge a browser for the key (HTTP Basic, any user name) and take Bearer too', async () => {
    const pages = ['/inbox', `/inbox/${messageId}`, `/inbox/${messageId}/raw`];
    for (const url of pages) {
      for (const headers of WRONG_INBOX_CREDENTIALS) {
        assertPageChallenge(
          await t.request('GET', url, undefined, headers),
          `${url} ${JSON.stringify(headers)}`,
        );
      }
      for (const headers of [basic('', KEY_A), basic('developer', KEY_B), bearer(KEY_A)]) {
        const response = await t.request('GET', url, undefined, headers);
        assert.equal(response.statusCode, 200, `${url} ${JSON.stringify(headers)}: ${response.body}`);
        assert.equal(response.headers['www-authenticate'], undefined);
        assert.equal(response.headers['cache-control'], 'no-store');
      }
    }
    const page = await t.request('GET', `/inbox/${messageId}`, undefined, basic('developer', KEY_A));
    assert.match(page.body, /Your receipt/);
    // A browser cannot follow a link into the Bearer-only API: the page links its own raw route only.
    assert.ok(page.body.includes(`href="/inbox/${messageId}/raw"`), 'raw link to the page route');
    assert.ok(!page.body.includes('href="/v1/'), 'no link a browser could not open');
  });

  test('the dev inbox pages are refused before anything else is checked', async () => {
    assertPageChallenge(await t.request('GET', '/inbox/not-a-message'), 'unknown message, no key');
    assertPageChallenge(await t.request('GET', `/inbox/${'x'.repeat(100)}`), 'invalid id, no key');
  });
});

describe('`mailroom inbox` (the dev inbox alone) with API keys', () => {
  let server: InboxServer;
  const quiet = pino({ level: 'silent' });
  before(async () => {
    server = await startInboxServer({
      host: '127.0.0.1',
      httpPort: 0,
      smtpPort: 0,
      maxMessages: 10,
      maxMessageBytes: 1024 * 1024,
      apiKeys: [KEY_A, KEY_B],
      logger: quiet,
    });
  });
  after(() => server.close());

  const get = (path: string, headers: Record<string, string> = {}, method = 'GET') =>
    fetch(`${server.httpUrl}${path}`, { method, headers, redirect: 'manual' });

  test('the API needs a Bearer key; the pages ask for it; /health stays open', async () => {
    for (const headers of [...WRONG_INBOX_CREDENTIALS, basic('anyone', KEY_A)]) {
      for (const method of ['GET', 'DELETE']) {
        const response = await get('/v1/inbox/messages', headers, method);
        assert.equal(response.status, 401, `${method} ${JSON.stringify(headers)}`);
        const body = (await response.json()) as { error: { code: string; message: string } };
        assert.equal(body.error.code, 'UNAUTHORIZED');
        assert.match(body.error.message, /Bearer/);
      }
    }
    for (const headers of WRONG_INBOX_CREDENTIALS) {
      const page = await get('/inbox', headers);
      assert.equal(page.status, 401, JSON.stringify(headers));
      assert.match(page.headers.get('www-authenticate') ?? '', /^Basic /);
      assert.equal(((await page.json()) as { error: { code: string } }).error.code, 'UNAUTHORIZED');
    }
    assert.equal((await get('/v1/inbox/messages', bearer(KEY_A))).status, 200);
    assert.equal((await get('/inbox', basic('me', KEY_B))).status, 200);
    assert.equal((await get('/health')).status, 200);
  });

  test('a non-loopback address without keys is refused before anything listens', async () => {
    for (const host of ['0.0.0.0', '::', '192.0.2.10']) {
      await assert.rejects(
        startInboxServer({
          host,
          httpPort: 0,
          smtpPort: 0,
          maxMessages: 10,
          maxMessageBytes: 1024,
          logger: quiet,
        }),
        (error: unknown) =>
          error instanceof MailroomError &&
          error.code === 'CONFIG_INVALID' &&
          /MAILROOM_HOST/.test(error.message) &&
          /MAILROOM_API_KEYS/.test(error.message),
      );
    }
  });
});
