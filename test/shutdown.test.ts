/**
 * Graceful shutdown of `mailroom start`, run as a real child process and stopped with real signals
 * (docs/failure-modes.md#graceful-shutdown). The relay is an SmtpSink on loopback whose answers the
 * test slows down or withholds.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { type MailroomProcess, startMailroomProcess } from './support/mailroom-process.js';
import { countByStatus, readStore } from './support/read-store.js';
import { SmtpSink, type SmtpSinkOptions } from './support/smtp-sink.js';
import { waitFor } from './support/wait-for.js';

const EMAIL = {
  from: 'Acme <noreply@acme.test>',
  to: 'alice@example.com',
  subject: 'Shutdown test',
  text: 'Hello.',
};

/**
 * The lease is long on purpose: a job wrongly left `processing` would not come back within the
 * test, so it would show up as missing instead of being quietly retried after its lease.
 */
const BASE_ENV = {
  MAILROOM_PORT: '0',
  MAILROOM_POLL_INTERVAL_MS: '20',
  MAILROOM_RETRY_BASE_MS: '50',
  MAILROOM_RETRY_MAX_MS: '200',
  MAILROOM_SMTP_TIMEOUT_MS: '20000',
  MAILROOM_LEASE_MS: '60000',
};

describe('graceful shutdown of a mailroom process', () => {
  const cleanups: (() => unknown)[] = [];

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function startSink(options: SmtpSinkOptions): Promise<SmtpSink> {
    const sink = new SmtpSink(options);
    await sink.start();
    cleanups.push(() => sink.close());
    return sink;
  }

  function tempDataDir(): string {
    const dataDir = mkdtempSync(join(tmpdir(), 'mailroom-shutdown-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    return dataDir;
  }

  async function startMailroom(
    dataDir: string,
    sink: SmtpSink,
    env: Record<string, string>,
  ): Promise<MailroomProcess> {
    const mailroom = await startMailroomProcess({
      ...BASE_ENV,
      MAILROOM_DATA_DIR: dataDir,
      MAILROOM_SMTP_URL: `smtp://127.0.0.1:${sink.port}`,
      ...env,
    });
    // A failed assertion must not leave the process behind.
    cleanups.push(() => mailroom.stop('SIGKILL'));
    return mailroom;
  }

  async function sendEmails(mailroom: MailroomProcess, count: number): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < count; i++) {
      const answer = await mailroom.request('POST', '/v1/emails', {
        ...EMAIL,
        subject: `Shutdown test ${i}`,
      });
      assert.equal(answer.status, 202, JSON.stringify(answer.body));
      ids.push(answer.body.id);
    }
    return ids;
  }

  async function waitUntilSent(mailroom: MailroomProcess, ids: readonly string[]): Promise<void> {
    for (const id of ids) {
      await waitFor(`email ${id} to be sent`, async () => {
        const answer = await mailroom.request('GET', `/v1/emails/${id}`);
        return answer.body.status === 'sent';
      });
    }
  }

  test('SIGTERM with sends in flight: they finish, the rest stays queued, exit 0; a restart sends each once', async () => {
    const sink = await startSink({ behaviour: 'delay', delayMs: 1000 });
    const dataDir = tempDataDir();
    // Four deliveries at a time, so that of ten emails four are being sent and six wait in the queue.
    const env = { MAILROOM_CONCURRENCY: '4', MAILROOM_SMTP_POOL: '4', MAILROOM_SHUTDOWN_TIMEOUT_MS: '10000' };
    const mailroom = await startMailroom(dataDir, sink, env);
    const ids = await sendEmails(mailroom, 10);
    await sink.waitForAttempts('delay', 4, 5_000);

    const exit = await mailroom.stop('SIGTERM');

    assert.deepEqual(exit, { code: 0, signal: null }, mailroom.output());
    assert.deepEqual(
      mailroom.logs('worker stopped').map((line) => line.timedOut),
      [false],
    );
    const { jobs } = readStore(dataDir);
    assert.deepEqual(
      countByStatus(jobs),
      { sent: 4, queued: 6 },
      'sent or back in the queue, none processing',
    );
    const sent = jobs.filter((job) => job.status === 'sent').map((job) => job.message_id);
    assert.deepEqual(
      [...sink.countByMessageId()].sort(),
      sent.map((messageId) => [messageId, 1]).sort(),
      'each finished send reached the relay once, nothing else did',
    );

    await sink.setBehaviour('accept');
    const restarted = await startMailroom(dataDir, sink, env);
    await waitUntilSent(restarted, ids);
    assert.deepEqual((await restarted.stop('SIGTERM')).code, 0, restarted.output());

    const counts = sink.countByMessageId();
    assert.equal(counts.size, 10);
    assert.deepEqual(sink.duplicates(), []);
    assert.deepEqual(
      [...counts.keys()].sort(),
      readStore(dataDir)
        .jobs.map((job) => job.message_id)
        .sort(),
    );
  });

  test('during the drain, work-creating requests get 503 SHUTTING_DOWN while /health and /ready answer', async () => {
    // The one send takes two seconds at the relay: the drain lasts at least that long.
    const sink = await startSink({ behaviour: 'delay', delayMs: 2000 });
    const dataDir = tempDataDir();
    const mailroom = await startMailroom(dataDir, sink, { MAILROOM_SHUTDOWN_TIMEOUT_MS: '10000' });
    const [id] = await sendEmails(mailroom, 1);
    await sink.waitForAttempts('delay', 1, 5_000);

    mailroom.child.kill('SIGTERM');

    const ready = await waitFor(
      '/ready to report the drain',
      async () => {
        const answer = await mailroom.request('GET', '/ready');
        return answer.body.components.server ? answer : undefined;
      },
      5_000,
    );
    assert.equal(ready.status, 503);
    assert.equal(ready.body.status, 'not_ready');
    assert.deepEqual(ready.body.components.server, { ok: false, detail: 'shutting down' });
    assert.deepEqual(ready.body.components.worker, { ok: false, detail: '1 in flight' });

    const refused = [
      await mailroom.request('POST', '/v1/emails', EMAIL),
      await mailroom.request('POST', '/api/emails', EMAIL),
      await mailroom.request('POST', '/v1/dead-letters/replay', {}),
    ];
    for (const answer of refused) {
      assert.equal(answer.status, 503);
      assert.equal(answer.body.error.code, 'SHUTTING_DOWN');
      assert.equal(answer.headers.get('connection'), 'close');
    }

    const health = await mailroom.request('GET', '/health');
    assert.equal(health.status, 200);
    assert.deepEqual(health.body, { status: 'ok' });
    // All of the above happened during the drain: the send was still waiting for the relay.
    assert.equal(sink.messages().length, 0);
    assert.equal(mailroom.child.exitCode, null);

    const exit = await mailroom.exited;
    assert.deepEqual(exit, { code: 0, signal: null }, mailroom.output());
    const { jobs } = readStore(dataDir);
    assert.deepEqual(
      jobs.map((job) => [job.id, job.status]),
      [[id, 'sent']],
      'the in-flight send finished; the refused requests stored nothing',
    );
    assert.equal(sink.messages().length, 1);
  });

  test('a stalled relay: exit 0 soon after MAILROOM_SHUTDOWN_TIMEOUT_MS, the jobs released and sent after a restart', async () => {
    const sink = await startSink({ behaviour: 'stall' });
    const dataDir = tempDataDir();
    const shutdownTimeoutMs = 1000;
    const env = { MAILROOM_SHUTDOWN_TIMEOUT_MS: String(shutdownTimeoutMs) };
    const mailroom = await startMailroom(dataDir, sink, env);
    const ids = await sendEmails(mailroom, 3);
    await sink.waitForAttempts('stall', 3, 5_000);

    const signalledAt = Date.now();
    const exit = await mailroom.stop('SIGTERM');
    const took = Date.now() - signalledAt;

    assert.deepEqual(exit, { code: 0, signal: null }, mailroom.output());
    assert.ok(took >= shutdownTimeoutMs, `exited after ${took} ms, before the deadline`);
    assert.ok(took < shutdownTimeoutMs + 3000, `exited after ${took} ms`);
    assert.deepEqual(
      mailroom.logs('worker stopped').map((line) => line.timedOut),
      [true],
    );
    const { jobs, events } = readStore(dataDir);
    // The sends had reached the relay, so their attempt counts: deferred, due at once.
    assert.deepEqual(
      jobs.map((job) => [job.id, job.status, job.attempts]),
      ids.map((id) => [id, 'deferred', 1]).sort(),
    );
    assert.deepEqual(
      events
        .filter((event) => event.type === 'released')
        .map((event) => [event.job_id, event.detail.reason])
        .sort(),
      ids.map((id) => [id, 'shutdown_timeout']).sort(),
    );

    // Drops the stalled transactions (their client is gone) and answers 250 from now on.
    await sink.reset();
    const restarted = await startMailroom(dataDir, sink, env);
    await waitUntilSent(restarted, ids);
    assert.equal((await restarted.stop('SIGTERM')).code, 0, restarted.output());
    assert.equal(sink.countByMessageId().size, 3);
    assert.deepEqual(sink.duplicates(), []);
  });
});
