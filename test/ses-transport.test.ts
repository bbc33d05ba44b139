/**
 * The Amazon SES v2 transport against a local stand-in (test/support/fake-ses.ts): AWS is not
 * reachable from here, and a test must never send through it. The fake checks every request's
 * SigV4 signature against this file's key, so these tests also prove the requests are signed right.
 */
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { loadConfig } from '../src/config/load-config.js';
import { SesTransport } from '../src/transport/ses/ses-transport.js';
import type { OutgoingMessage } from '../src/transport/transport.js';
import { FakeSes } from './support/fake-ses.js';
import { FAST_ENV, SAMPLE_EMAIL, startTestApp, type TestApp } from './support/test-app.js';

const REGION = 'eu-west-1';
const ACCESS_KEY_ID = 'AKIAMAILROOMTEST0001';
const SECRET_ACCESS_KEY = 'mailroom/test+secret/key0000000000000000';

// Credentials through the SDK's default chain, from the environment: the chain stops at the first
// provider that has some, so it never reaches the instance metadata service (disabled as well).
// No profile or shared file of this machine may take part.
process.env.AWS_ACCESS_KEY_ID = ACCESS_KEY_ID;
process.env.AWS_SECRET_ACCESS_KEY = SECRET_ACCESS_KEY;
delete process.env.AWS_SESSION_TOKEN;
delete process.env.AWS_PROFILE;
process.env.AWS_EC2_METADATA_DISABLED = 'true';
process.env.AWS_CONFIG_FILE = join(tmpdir(), 'mailroom-test-no-aws-config');
process.env.AWS_SHARED_CREDENTIALS_FILE = join(tmpdir(), 'mailroom-test-no-aws-credentials');
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

/** A message with 8-bit UTF-8 text, a lone dot line and CRLF endings: nothing may change on the way. */
function outgoing(overrides: Partial<OutgoingMessage> = {}): OutgoingMessage {
  const raw = Buffer.from(
    [
      'From: Acme <noreply@acme.test>',
      'To: alice@example.com',
      'Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=',
      'Message-ID: <job-1@acme.test>',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: 8bit',
      '',
      'Grüße ☃',
      '.',
      'end',
      '',
    ].join('\r\n'),
  );
  return {
    jobId: 'job-1',
    messageId: '<job-1@acme.test>',
    envelope: { from: 'noreply@acme.test', to: ['alice@example.com', 'hidden@example.com'] },
    raw,
    ...overrides,
  };
}

describe('SesTransport against a local SES v2 endpoint', () => {
  const fake = new FakeSes({
    accessKeyId: ACCESS_KEY_ID,
    secretAccessKey: SECRET_ACCESS_KEY,
    region: REGION,
  });
  let transport: SesTransport;
  before(async () => {
    await fake.start();
    transport = new SesTransport({
      region: REGION,
      endpoint: fake.url,
      configurationSet: 'mailroom-events',
      timeoutMs: 1500,
    });
  });
  after(async () => {
    await transport.close();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  test('an accepted send records SES’s MessageId; the raw MIME and the envelope arrive as given', async () => {
    const message = outgoing();
    const result = await transport.send(message);
    assert.deepEqual(fake.refusals(), []);
    const [email] = fake.emails();
    assert.ok(email?.messageId);
    assert.deepEqual(result, {
      kind: 'accepted',
      response: `SES SendEmail HTTP 200: MessageId ${email.messageId}`,
      rejected: [],
      remoteId: email.messageId,
    });
    assert.ok(email.raw.equals(message.raw), 'Content.Raw.Data decodes to the very bytes sent');
    assert.equal(email.from, 'noreply@acme.test');
    assert.deepEqual(email.to, ['alice@example.com', 'hidden@example.com']);
    assert.equal(email.configurationSet, 'mailroom-events');
  });

  test('without a configuration set none is named', async () => {
    const plain = new SesTransport({ region: REGION, endpoint: fake.url, timeoutMs: 1500 });
    try {
      assert.equal((await plain.send(outgoing())).kind, 'accepted');
      assert.equal(fake.emails()[0]?.configurationSet, undefined);
    } finally {
      await plain.close();
    }
  });

  test('throttling is transient, after the SDK’s one quick retry', async () => {
    fake.setBehaviour('throttle');
    const result = await transport.send(outgoing());
    assert.equal(result.kind, 'transient');
    assert.equal(result.code, 'SES_TRANSIENT');
    assert.match(result.message, /^TooManyRequestsException \(HTTP 429\): Maximum sending rate exceeded/);
    assert.equal(result.responseCode, undefined);
    assert.deepEqual(
      fake.emails().map((email) => email.attempt),
      ['attempt=1; max=2', 'attempt=2; max=2'],
    );
  });

  test('a throttled request that goes through on the quick retry is accepted', async () => {
    fake.answerNext('throttle');
    const result = await transport.send(outgoing());
    assert.equal(result.kind, 'accepted');
    assert.deepEqual(
      fake.emails().map((email) => email.answer),
      ['throttle', 'accept'],
    );
  });

  test('MessageRejected is permanent, at once, without a retry', async () => {
    fake.setBehaviour('reject');
    const result = await transport.send(outgoing());
    assert.equal(result.kind, 'permanent');
    assert.equal(result.code, 'SES_PERMANENT');
    assert.match(result.message, /^MessageRejected \(HTTP 400\): Email address is not verified/);
    assert.equal(fake.emails().length, 1);
  });

  test('a 500 is transient, and so is a paused account', async () => {
    fake.setBehaviour('fail');
    const failed = await transport.send(outgoing());
    assert.equal(failed.kind, 'transient');
    assert.match(failed.message, /^InternalFailure \(HTTP 500\)/);
    fake.setBehaviour('pause');
    const paused = await transport.send(outgoing());
    assert.equal(paused.kind, 'transient');
    assert.match(paused.message, /^SendingPausedException \(HTTP 400\)/);
  });

  test('no answer within the timeout is transient, and the deadline covers the SDK’s retry', async () => {
    const quick = new SesTransport({ region: REGION, endpoint: fake.url, timeoutMs: 300 });
    fake.setBehaviour('hang');
    const started = Date.now();
    try {
      const result = await quick.send(outgoing());
      const took = Date.now() - started;
      assert.deepEqual(result, {
        kind: 'transient',
        code: 'SES_TRANSIENT',
        message: 'TimeoutError: no answer from SES within 300 ms',
      });
      assert.ok(took >= 280 && took < 1000, `took ${took} ms`);
    } finally {
      await quick.close();
    }
  });

  test('an unreachable endpoint is transient', async () => {
    const closed = new FakeSes({
      accessKeyId: ACCESS_KEY_ID,
      secretAccessKey: SECRET_ACCESS_KEY,
      region: REGION,
    });
    await closed.start();
    const url = closed.url;
    await closed.close();
    const nowhere = new SesTransport({ region: REGION, endpoint: url, timeoutMs: 1500 });
    try {
      const result = await nowhere.send(outgoing());
      assert.equal(result.kind, 'transient');
      assert.match(result.message, /^ECONNREFUSED/);
    } finally {
      await nowhere.close();
    }
  });

  test('the fake refuses a request signed with another secret key (the signature is recomputed)', async () => {
    const strict = new FakeSes({
      accessKeyId: ACCESS_KEY_ID,
      secretAccessKey: 'another-secret',
      region: REGION,
    });
    await strict.start();
    const client = new SesTransport({ region: REGION, endpoint: strict.url, timeoutMs: 1500 });
    try {
      const result = await client.send(outgoing());
      assert.equal(result.kind, 'transient');
      assert.match(result.message, /^InvalidSignatureException \(HTTP 403\)/);
      assert.equal(strict.emails().length, 0);
      assert.match(strict.refusals()[0] ?? '', /signature does not match/);
    } finally {
      await client.close();
      await strict.close();
    }
  });

  test('health() asks GetAccount, reports a paused account, caches for a few seconds, never throws', async () => {
    const fresh = () => new SesTransport({ region: REGION, endpoint: fake.url, timeoutMs: 1500 });
    const healthy = fresh();
    const paused = fresh();
    const failing = fresh();
    try {
      assert.deepEqual(await healthy.health(), { ok: true });
      assert.deepEqual(await healthy.health(), { ok: true });
      assert.equal(fake.accountCalls, 1, 'the second call is answered from the cache');
      fake.account = { sendingEnabled: false };
      const pausedHealth = await paused.health();
      assert.equal(pausedHealth.ok, false);
      assert.match(pausedHealth.detail ?? '', /paused/);
      fake.account = 'fail';
      const failed = await failing.health();
      assert.equal(failed.ok, false);
      assert.match(failed.detail ?? '', /^InternalFailure \(HTTP 500\)/);
      assert.deepEqual(fake.refusals(), []);
    } finally {
      await Promise.all([healthy.close(), paused.close(), failing.close()]);
    }
  });

  test('close() lets a send in progress finish first', async () => {
    const closing = new SesTransport({ region: REGION, endpoint: fake.url, timeoutMs: 300 });
    fake.setBehaviour('hang');
    const order: string[] = [];
    const sending = closing.send(outgoing()).then((result) => order.push(`send ${result.kind}`));
    await new Promise((resolve) => setTimeout(resolve, 50));
    await closing.close().then(() => order.push('closed'));
    await sending;
    assert.deepEqual(order, ['send transient', 'closed']);
  });
});

describe('configuration of the SES transport', () => {
  const base = { ...FAST_ENV, MAILROOM_SMTP_URL: 'smtp://127.0.0.1:2525' };

  test('SMTP stays the default; SES is chosen by MAILROOM_TRANSPORT=ses with a region', () => {
    assert.equal(loadConfig(base).transport, 'smtp');
    const config = loadConfig({
      ...base,
      MAILROOM_TRANSPORT: 'ses',
      AWS_REGION: REGION,
      MAILROOM_SES_ENDPOINT: 'https://vpce-1.email.eu-west-1.vpce.amazonaws.com',
      MAILROOM_SES_CONFIGURATION_SET: 'transactional_v2',
      MAILROOM_SES_TIMEOUT_MS: '1000',
    });
    assert.equal(config.transport, 'ses');
    assert.equal(config.awsRegion, REGION);
    assert.equal(config.sesEndpoint, 'https://vpce-1.email.eu-west-1.vpce.amazonaws.com');
    assert.equal(config.sesConfigurationSet, 'transactional_v2');
    assert.equal(config.sesTimeoutMs, 1000);
  });

  test('SES without a region, or with a lease no longer than its timeout, stops start-up', () => {
    assert.throws(
      () => loadConfig({ ...base, MAILROOM_TRANSPORT: 'ses', MAILROOM_SES_TIMEOUT_MS: '1000' }),
      (error: Error & { code?: string }) =>
        error.code === 'CONFIG_INVALID' && /MAILROOM_TRANSPORT=ses: expected AWS_REGION/.test(error.message),
    );
    assert.throws(
      () => loadConfig({ ...base, MAILROOM_TRANSPORT: 'ses', AWS_REGION: REGION }),
      /MAILROOM_LEASE_MS=4000: expected more than MAILROOM_SES_TIMEOUT_MS \(20000\)/,
    );
  });

  test('with SES the lease is checked against the SES timeout, not the unused SMTP one', () => {
    const config = loadConfig({
      ...base,
      MAILROOM_TRANSPORT: 'ses',
      AWS_REGION: REGION,
      MAILROOM_SES_TIMEOUT_MS: '1000',
      MAILROOM_SMTP_TIMEOUT_MS: '20000',
    });
    assert.equal(config.leaseMs, 4000);
  });

  test('wrong values name the variable', () => {
    assert.throws(
      () => loadConfig({ ...base, MAILROOM_TRANSPORT: 'sendgrid' }),
      /MAILROOM_TRANSPORT="sendgrid"/,
    );
    assert.throws(() => loadConfig({ ...base, AWS_REGION: 'EU West 1' }), /AWS_REGION="EU West 1"/);
    assert.throws(
      () => loadConfig({ ...base, MAILROOM_SES_ENDPOINT: 'ftp://example.com' }),
      /MAILROOM_SES_ENDPOINT="ftp:\/\/example.com"/,
    );
    assert.throws(
      () => loadConfig({ ...base, MAILROOM_SES_CONFIGURATION_SET: 'has spaces' }),
      /MAILROOM_SES_CONFIGURATION_SET="has spaces"/,
    );
    assert.throws(
      () => loadConfig({ ...base, MAILROOM_SES_CONFIGURATION_SET: 'x'.repeat(65) }),
      /MAILROOM_SES_CONFIGURATION_SET=/,
    );
  });
});

describe('delivery through SES in a whole Mailroom', () => {
  const fake = new FakeSes({
    accessKeyId: ACCESS_KEY_ID,
    secretAccessKey: SECRET_ACCESS_KEY,
    region: REGION,
  });
  let t: TestApp;
  before(async () => {
    await fake.start();
    t = await startTestApp({
      MAILROOM_TRANSPORT: 'ses',
      AWS_REGION: REGION,
      MAILROOM_SES_ENDPOINT: fake.url,
      MAILROOM_SES_CONFIGURATION_SET: 'mailroom-test',
      MAILROOM_SES_TIMEOUT_MS: '1500',
      MAILROOM_MAX_ATTEMPTS: '3',
    });
  });
  after(async () => {
    await t.stop();
    await fake.close();
  });
  beforeEach(() => fake.reset());

  test('an email is sent through SES, with SES’s message id on the job', async () => {
    const id = await t.send({ ...SAMPLE_EMAIL, bcc: 'hidden@example.com' });
    const view = await t.waitForStatus(id, 'sent');
    assert.deepEqual(fake.refusals(), []);
    assert.deepEqual(
      view.events.map((event) => event.type),
      ['queued', 'processing', 'sent'],
    );
    const [email] = fake.emails();
    assert.ok(email?.messageId);
    const sent = view.events.at(-1)!;
    assert.equal(sent.detail.remoteId, email.messageId);
    assert.match(String(sent.detail.response), new RegExp(email.messageId));
    // The message as Mailroom built it: its Message-ID, the Bcc in the envelope only.
    const raw = email.raw.toString('utf8');
    assert.match(raw, new RegExp(`^Message-ID: ${view.message_id}\\r$`, 'm'));
    assert.match(raw, /^Subject: Your receipt\r$/m);
    assert.doesNotMatch(raw, /hidden@example\.com/);
    assert.deepEqual(email.to, ['alice@example.com', 'hidden@example.com']);
    assert.equal(email.from, 'noreply@acme.test');
    assert.equal(email.configurationSet, 'mailroom-test');
    // SES, not SMTP: nothing reached the sink, and no dev inbox was started.
    assert.equal(t.sink.messages().length, 0);
    assert.equal(t.app.inbox, undefined);
  });

  test('throttling defers the job; it is sent once SES takes mail again', async () => {
    // Both tries of the first attempt (the SDK retries once) are throttled.
    fake.answerNext('throttle', 'throttle');
    const id = await t.send(SAMPLE_EMAIL);
    const view = await t.waitForStatus(id, 'sent');
    assert.equal(view.attempts, 2);
    assert.deepEqual(
      view.events.map((event) => event.type),
      ['queued', 'processing', 'deferred', 'processing', 'sent'],
    );
    const deferred = view.events[2]!;
    assert.equal(deferred.detail.code, 'SES_TRANSIENT');
    assert.match(String(deferred.detail.message), /^TooManyRequestsException \(HTTP 429\)/);
    assert.ok(typeof deferred.detail.retry_at === 'string');
    assert.equal(view.events[4]!.detail.remoteId, fake.emails().at(-1)!.messageId);
    assert.deepEqual(
      fake.emails().map((email) => email.answer),
      ['throttle', 'throttle', 'accept'],
    );
  });

  test('a rejection fails the job at once, without a dead letter', async () => {
    fake.setBehaviour('reject');
    const id = await t.send(SAMPLE_EMAIL);
    const view = await t.waitForStatus(id, 'failed');
    assert.equal(view.attempts, 1);
    assert.equal(view.dead_letter_reason, null);
    assert.match(view.last_error ?? '', /MessageRejected/);
    assert.equal(view.events.at(-1)!.detail.code, 'SES_PERMANENT');
    assert.equal(fake.emails().length, 1);
  });

  test('/ready reports the SES transport through GetAccount', async () => {
    const response = await t.request('GET', '/ready');
    const body = response.json() as { components: Record<string, { ok: boolean }> };
    assert.equal(response.statusCode, 200, response.body);
    assert.deepEqual(body.components.transport, { ok: true });
  });
});
