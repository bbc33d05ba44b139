/**
 * Redaction, checked on a real run: `mailroom start` (LOG_LEVEL=debug) with every kind of secret
 * Mailroom is given in use — an SMTP URL with a user and password (the sink requires AUTH), API keys
 * and Bearer requests (and one with a wrong key), a status callback URL with a token in it and its
 * signing secret, a webhook registered over the API (whose secret the answer shows once), and a
 * PostgreSQL URL with a password (the server trusts loopback, so the password is carried, not
 * checked). Sends succeed, fail and are retried; webhooks fail and are retried. Then everything the
 * process wrote is searched for each secret: none may appear.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import pg from 'pg';
import { startMailroomProcess } from './support/mailroom-process.js';
import { POSTGRES_URL, serviceAvailable } from './support/services.js';
import { SmtpSink } from './support/smtp-sink.js';
import { waitFor } from './support/wait-for.js';
import { WebhookReceiver } from './support/webhook-receiver.js';

const available = await serviceAvailable('PostgreSQL', POSTGRES_URL);

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

describe('no secret reaches the logs of a run that used them all', { skip: !available }, () => {
  test('mailroom start at LOG_LEVEL=debug', async (t) => {
    const smtp = { user: `mailer-${hex(4)}`, pass: `smtp-pass-${hex(12)}` };
    const apiKeys = [`key-a-${hex(16)}`, `key-b-${hex(16)}`];
    const wrongKey = `wrong-key-${hex(16)}`;
    const callbackToken = `cb-token-${hex(12)}`;
    const callbackSecret = `whsec_${randomBytes(32).toString('base64')}`;
    const dbPassword = `db-pass-${hex(12)}`;
    const schema = `mailroom_test_redact_${hex(5)}`;
    const databaseUrl = new URL(POSTGRES_URL);
    databaseUrl.password = dbPassword;

    const sink = new SmtpSink({
      auth: smtp,
      behaviour: ({ rcpt, sequence }) => {
        if (rcpt.startsWith('bad')) return 'permfail';
        // The first try of `later` fails 4xx; the retry is accepted.
        if (rcpt.startsWith('later') && sequence < 3) return 'tempfail';
        return 'accept';
      },
    });
    await sink.start();
    const receiver = new WebhookReceiver();
    await receiver.start();
    let callbackTries = 0;
    // The status callback fails twice before it is accepted: retries are logged.
    receiver.answer(`/callback?token=${callbackToken}`, () => (++callbackTries <= 2 ? 500 : 200));
    t.after(async () => {
      await receiver.close();
      await sink.close();
      const client = new pg.Client({ connectionString: POSTGRES_URL });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await client.end();
    });

    const mailroom = await startMailroomProcess({
      LOG_LEVEL: 'debug',
      MAILROOM_PORT: '0',
      MAILROOM_SMTP_URL: `smtp://${smtp.user}:${smtp.pass}@127.0.0.1:${sink.port}`,
      MAILROOM_API_KEYS: apiKeys.join(','),
      MAILROOM_DATABASE_URL: databaseUrl.toString(),
      MAILROOM_DATABASE_SCHEMA: schema,
      MAILROOM_DATABASE_POOL: '4',
      MAILROOM_STATUS_CALLBACK_URL: receiver.url(`/callback?token=${callbackToken}`),
      MAILROOM_STATUS_CALLBACK_SECRET: callbackSecret,
      MAILROOM_WEBHOOKS_ALLOW_PRIVATE: '1',
      MAILROOM_WEBHOOK_RETRY_BASE_MS: '100',
      MAILROOM_RETRY_BASE_MS: '50',
      MAILROOM_RETRY_MAX_MS: '200',
    });
    t.after(() => mailroom.stop('SIGKILL'));

    const call = async (method: string, path: string, key: string, body?: unknown) => {
      const response = await fetch(new URL(path, mailroom.apiUrl), {
        method,
        headers: {
          authorization: `Bearer ${key}`,
          ...(body !== undefined && { 'content-type': 'application/json' }),
        },
        ...(body !== undefined && { body: JSON.stringify(body) }),
      });
      const text = await response.text();
      return { status: response.status, body: text ? JSON.parse(text) : null };
    };

    const hook = await call('POST', '/v1/webhooks', apiKeys[0]!, { url: receiver.url('/hook') });
    assert.equal(hook.status, 201, JSON.stringify(hook.body));
    const webhookSecret = String(hook.body.secret);
    assert.match(webhookSecret, /^whsec_/);

    assert.equal((await call('GET', '/v1/webhooks', wrongKey)).status, 401, 'a wrong key is refused');
    const ids: string[] = [];
    for (const [i, to] of ['good@example.com', 'bad@example.com', 'later@example.com'].entries()) {
      const sent = await call('POST', '/v1/emails', apiKeys[i % 2]!, {
        from: 'Acme <noreply@acme.test>',
        to,
        subject: `Redaction ${i}`,
        text: 'Hello.',
      });
      assert.equal(sent.status, 202, JSON.stringify(sent.body));
      ids.push(String(sent.body.id));
    }
    for (const id of ids) {
      await waitFor(`email ${id} to end`, async () => {
        const view = await call('GET', `/v1/emails/${id}`, apiKeys[1]!);
        return ['sent', 'failed'].includes(view.body.status);
      });
    }
    assert.equal(sink.messages().length, 2, 'the relay took the good and the retried email, after AUTH');
    assert.ok((sink.attempts.tempfail ?? 0) >= 1, 'a send failed transiently and was retried');
    await waitFor('both webhook endpoints to get events, the callback after failures', () => {
      const callbackOk = receiver.received.some(
        (got) => got.path.startsWith('/callback') && got.status === 200,
      );
      return callbackOk && receiver.at('/hook').length > 0;
    });
    await mailroom.stop('SIGTERM');

    const output = mailroom.output();
    assert.ok(
      output.split('\n').some((line) => line.includes('"level":20')),
      'debug lines were written',
    );
    const secrets: Record<string, string> = {
      'SMTP password': smtp.pass,
      'SMTP AUTH PLAIN': Buffer.from(`\0${smtp.user}\0${smtp.pass}`).toString('base64'),
      'SMTP password (AUTH LOGIN)': Buffer.from(smtp.pass).toString('base64'),
      'API key a': apiKeys[0]!,
      'API key b': apiKeys[1]!,
      'wrong API key': wrongKey,
      'status callback token': callbackToken,
      'status callback secret': callbackSecret,
      'status callback secret (key)': callbackSecret.slice('whsec_'.length),
      'webhook secret': webhookSecret,
      'webhook secret (key)': webhookSecret.slice('whsec_'.length),
      'database password': dbPassword,
    };
    const leaked = Object.entries(secrets).flatMap(([what, value]) => {
      const lines = output.split('\n').filter((line) => line.includes(value));
      return lines.length > 0 ? [`${what} in ${lines.length} line(s), e.g.: ${lines[0]!.slice(0, 400)}`] : [];
    });
    assert.deepEqual(leaked, [], 'secrets in the logs');
  });
});
