/**
 * kill -9 in the middle of sending (docs/failure-modes.md#a-crash-kill--9-at-each-stage): no
 * accepted email is lost, and the only emails sent twice are jobs that were in flight (`processing`)
 * when the process died: the duplicate window.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { type MailroomProcess, startMailroomProcess } from './support/mailroom-process.js';
import { countByStatus, readStore } from './support/read-store.js';
import { SmtpSink } from './support/smtp-sink.js';
import { waitFor } from './support/wait-for.js';

const EMAILS = 500;
/** The sink count at which the process is killed: well into the sending, far from its end. */
const KILL_AT = 150;
/** Parallel POSTs while accepting. */
const CLIENTS = 25;
/**
 * Every email is scheduled this far after the first POST, so all 500 are accepted before the first
 * send and the kill never lands on a request. Accepting 500 takes under a second here.
 */
const SEND_DELAY_MS = 3000;

const ENV = {
  MAILROOM_PORT: '0',
  MAILROOM_POLL_INTERVAL_MS: '20',
  // Short, so that the jobs the kill left `processing` come back quickly after the restart.
  MAILROOM_LEASE_MS: '3000',
  MAILROOM_SMTP_TIMEOUT_MS: '2000',
  MAILROOM_RETRY_BASE_MS: '50',
  MAILROOM_RETRY_MAX_MS: '200',
  MAILROOM_SHUTDOWN_TIMEOUT_MS: '2000',
};

interface EmailSummary {
  readonly id: string;
  readonly status: string;
  readonly message_id: string;
}

/** Every email the API lists, page by page. */
async function listEmails(mailroom: MailroomProcess): Promise<EmailSummary[]> {
  const emails: EmailSummary[] = [];
  let cursor: string | null = null;
  do {
    const query: string = cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`;
    const answer = await mailroom.request('GET', `/v1/emails?limit=100${query}`);
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    emails.push(...(answer.body.data as EmailSummary[]));
    cursor = answer.body.next_cursor;
  } while (cursor !== null);
  return emails;
}

const sink = new SmtpSink();
const dataDir = mkdtempSync(join(tmpdir(), 'mailroom-crash-'));
const running: MailroomProcess[] = [];

after(async () => {
  for (const mailroom of running) await mailroom.stop('SIGKILL');
  await sink.close();
  rmSync(dataDir, { recursive: true, force: true });
});

async function startMailroom(): Promise<MailroomProcess> {
  const mailroom = await startMailroomProcess({
    ...ENV,
    MAILROOM_DATA_DIR: dataDir,
    MAILROOM_SMTP_URL: `smtp://127.0.0.1:${sink.port}`,
  });
  running.push(mailroom);
  return mailroom;
}

test('kill -9 while sending 500 emails: after a restart every one is sent, duplicates only from jobs in flight', async (t) => {
  await sink.start();
  const first = await startMailroom();

  // Accept 500 emails through the API.
  const acceptStarted = Date.now();
  const sendAt = new Date(acceptStarted + SEND_DELAY_MS).toISOString();
  const ids: string[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      while (next < EMAILS) {
        const i = next++;
        const answer = await first.request('POST', '/v1/emails', {
          from: 'Acme <noreply@acme.test>',
          to: `user${i}@example.com`,
          subject: `Crash test ${i}`,
          text: `Email ${i} of ${EMAILS}.`,
          send_at: sendAt,
        });
        assert.equal(answer.status, 202, JSON.stringify(answer.body));
        ids.push(answer.body.id);
      }
    }),
  );
  assert.equal(ids.length, EMAILS);
  t.diagnostic(`accepted ${EMAILS} in ${Date.now() - acceptStarted} ms`);
  assert.ok(Date.now() < Date.parse(sendAt), 'accepting took longer than SEND_DELAY_MS');
  assert.equal(sink.messages().length, 0);

  // kill -9 from inside the sink, at the moment it accepts message KILL_AT: before its 250 is even
  // written, with other sends in flight on the pool's other connections.
  const killed = new Promise<void>((resolve) => {
    sink.onMessage = () => {
      if (sink.messages().length !== KILL_AT) return;
      first.child.kill('SIGKILL');
      resolve();
    };
  });
  await killed;
  const exit = await first.exited;
  assert.deepEqual(exit, { code: null, signal: 'SIGKILL' });
  const receivedBeforeRestart = sink.messages().length;

  // What the dead process left in the store, read before anything else opens it.
  const atKill = readStore(dataDir).jobs;
  assert.equal(atKill.length, EMAILS, 'every accepted job is in the store');
  const inFlight = new Set(atKill.filter((job) => job.status === 'processing').map((job) => job.message_id));
  t.diagnostic(`at the kill: ${JSON.stringify(countByStatus(atKill))}, sink had ${receivedBeforeRestart}`);

  const second = await startMailroom();
  const emails = await waitFor(
    `all ${EMAILS} emails to be sent`,
    async () => {
      const all = await listEmails(second);
      return all.every((email) => email.status === 'sent') ? all : undefined;
    },
    30_000,
    250,
  );
  assert.deepEqual((await second.stop('SIGTERM')).code, 0, second.output());

  // The jobs in flight came back through their lease, not through anything else.
  const { jobs, events } = readStore(dataDir);
  const expired = new Set(
    events
      .filter((event) => event.type === 'processing' && event.detail.code === 'LEASE_EXPIRED')
      .map((event) => event.job_id),
  );
  assert.deepEqual(
    jobs
      .filter((job) => expired.has(job.id))
      .map((job) => job.message_id)
      .sort(),
    [...inFlight].sort(),
    'claimed again after the lease: exactly the jobs in flight at the kill',
  );

  assert.deepEqual(emails.map((email) => email.id).sort(), [...ids].sort(), 'exactly the accepted emails');
  const counts = sink.countByMessageId();
  const messageIds = new Set(emails.map((email) => email.message_id));
  const missing = [...messageIds].filter((messageId) => !counts.has(messageId));
  assert.deepEqual(missing, [], 'every email reached the relay');
  assert.deepEqual(
    [...counts.keys()].filter((messageId) => !messageIds.has(messageId)),
    [],
    'the relay got nothing else',
  );
  const duplicates = sink.duplicates();
  assert.deepEqual(
    duplicates.filter((messageId) => !inFlight.has(messageId)),
    [],
    'a duplicate that was not in flight at the kill',
  );
  assert.ok(
    duplicates.every((messageId) => counts.get(messageId) === 2),
    'sent more than twice',
  );
  t.diagnostic(`duplicates: ${duplicates.length} of ${inFlight.size} jobs in flight at the kill`);
});
