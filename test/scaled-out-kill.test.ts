/**
 * Fault tests of the scaled-out shape, part 1: kill -9 of one process among `mailroom api` and
 * `mailroom worker` processes sharing PostgreSQL and RabbitMQ (the real servers on this machine).
 * A checker counts what reached the SMTP sink by Message-ID (test/support/sink-checker.ts); the
 * property of every test: 0 lost, and no duplicate outside the documented window
 * (docs/failure-modes.md#the-duplicate-window).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  connectionsOf,
  leasedBy,
  leaseExpiries,
  outboxState,
  readPostgres,
  sessionsFrom,
  statusCounts,
} from './support/read-postgres.js';
import { countByStatus } from './support/read-store.js';
import { type PostResult, postEmails, setUpScaledOut, waitAllSent } from './support/scaled-out-cluster.js';
import { AMQP_URL, NATS_URL, POSTGRES_URL, serviceAvailable } from './support/services.js';
import { assertDeliveredOnce, checkSink, summarize } from './support/sink-checker.js';
import { waitFor } from './support/wait-for.js';

const available =
  (await serviceAvailable('PostgreSQL', POSTGRES_URL)) && (await serviceAvailable('RabbitMQ', AMQP_URL));

const email = (tag: string) => (i: number) => ({
  from: 'Acme <noreply@acme.test>',
  to: `${tag}-${i}@example.com`,
  subject: `${tag} ${i}`,
  text: `Email ${i}.`,
});

const brokers = {
  rabbitmq: available,
  nats: (await serviceAvailable('PostgreSQL', POSTGRES_URL)) && (await serviceAvailable('NATS', NATS_URL)),
} as const;

for (const broker of ['rabbitmq', 'nats'] as const) {
  describe(`scaled out on ${broker}: kill -9 of a worker`, { skip: !brokers[broker] }, () => {
    test(`${broker}: kill -9 one of two workers in the middle of 1,000 emails: all sent, duplicates only among the jobs it held`, async (t) => {
      const EMAILS = 1000;
      const KILL_AT = 300;
      // Every email is scheduled this far ahead, so the sends start in one burst with every job queued
      // (the workers then hold as many as they can). Only a worker is killed, so a kill landing while the
      // API still accepts would not matter: the API is another process.
      const SEND_DELAY_MS = 8000;
      const { schema, sink, cluster } = await setUpScaledOut(t, {}, broker);
      const api = await cluster.api();
      const [victim, survivor] = await Promise.all([cluster.worker(), cluster.worker()]);

      // kill -9 from inside the sink, as it accepts message KILL_AT (before its 250 is written), with
      // other sends in flight in both workers.
      let killed = false;
      let victimSessions = new Set<number>();
      sink.onMessage = () => {
        if (killed || sink.messages().length < KILL_AT) return;
        killed = true;
        victimSessions = connectionsOf(victim.process.child.pid!, Number(new URL(POSTGRES_URL).port));
        victim.process.child.kill('SIGKILL');
      };

      const acceptStarted = Date.now();
      const sendAt = new Date(acceptStarted + SEND_DELAY_MS).toISOString();
      const results = await postEmails(api.apiUrl, {
        count: EMAILS,
        clients: 16,
        email: (i) => ({ ...email('kill-worker')(i), send_at: sendAt }),
      });
      const notAccepted = results.filter((result) => result.status !== 202);
      assert.deepEqual(notAccepted, [], 'every POST answered 202');
      t.diagnostic(
        `accepted ${EMAILS} in ${Date.now() - acceptStarted} ms (sends start after ${SEND_DELAY_MS} ms)`,
      );

      await waitFor(`the sink to reach ${KILL_AT}`, () => killed, SEND_DELAY_MS + 30_000, 50);
      const sendStarted = Date.now();
      assert.deepEqual(await victim.process.exited, { code: null, signal: 'SIGKILL' });
      // What the dead worker held: jobs `processing` under its lease. Only these may arrive twice.
      // Read once the server has closed its sessions, so no commit of its is still landing.
      await waitFor(
        "the server to close the killed worker's sessions",
        async () => (await sessionsFrom(victimSessions)) === 0,
        10_000,
        20,
      );
      if (process.platform === 'linux') assert.ok(victimSessions.size > 0, 'found its PostgreSQL sessions');
      const held = await leasedBy(schema, victim.id);
      const window = new Set(held.map((job) => job.message_id));
      t.diagnostic(
        `killed ${victim.id} at sink=${KILL_AT} (sink now ${sink.messages().length}); it held ${held.length} jobs ` +
          `(${victimSessions.size} PostgreSQL sessions closed)`,
      );

      await waitAllSent(schema, EMAILS, 60_000);
      t.diagnostic(`all sent ${Date.now() - sendStarted} ms after the kill`);

      const { jobs, events } = await readPostgres(schema);
      assert.deepEqual(countByStatus(jobs), { sent: EMAILS });
      const ids = results.map((result) => result.id!);
      assert.deepEqual(jobs.map((job) => job.id).sort(), [...ids].sort(), 'exactly the accepted jobs');

      // The held jobs came back through their lease, and nothing else did: the survivor never lost one.
      const expired = leaseExpiries(events);
      const lostBy = new Set([...expired.values()].flat());
      assert.deepEqual(
        [...lostBy],
        expired.size === 0 ? [] : [victim.id],
        'only the killed worker lost leases',
      );
      assert.deepEqual(
        [...expired.keys()].sort(),
        held.map((job) => job.id).sort(),
        'claimed again after the lease: exactly the jobs the killed worker held',
      );
      assert.ok(held.length > 0, 'the kill landed while the worker held jobs');

      const report = checkSink(
        sink,
        jobs.map((job) => job.message_id),
        { window },
      );
      t.diagnostic(summarize(report));
      assertDeliveredOnce(report, `survivor ${survivor.id}`);
      t.diagnostic(
        `duplicates: ${report.duplicates.length} of ${held.length} jobs held by the killed worker`,
      );
    });
  });
}

describe('scaled out: kill -9 of one process', { skip: !available }, () => {
  test('kill -9 the API right after its 50th 202: every accepted email is delivered exactly once', async (t) => {
    const KILL_AFTER = 50;
    const { schema, sink, cluster } = await setUpScaledOut(t);
    const api = await cluster.api();
    const worker = await cluster.worker();

    let accepted = 0;
    let killedAt = 0;
    let apiSessions = new Set<number>();
    const results = await postEmails(api.apiUrl, {
      count: 400,
      clients: 16,
      // Requests spread out, so that some are always being committed when the kill lands.
      jitterMs: 10,
      email: email('kill-api'),
      // The clients keep posting through the kill: requests go on arriving until the API is gone
      // (then their connections are refused).
      onResult: (result: PostResult) => {
        if (result.status !== 202 || ++accepted !== KILL_AFTER) return;
        // More requests are in flight on the other clients: their jobs may or may not be committed.
        apiSessions = connectionsOf(api.child.pid!, Number(new URL(POSTGRES_URL).port));
        api.child.kill('SIGKILL');
        killedAt = Date.now();
      },
    });
    assert.deepEqual(await api.exited, { code: null, signal: 'SIGKILL' });
    const ok = results.filter((result) => result.status === 202);
    const other = results.filter((result) => result.status !== 202);
    assert.ok(ok.length >= KILL_AFTER, `at least ${KILL_AFTER} answered 202`);
    // Whatever was in flight at the kill, or came after it, got no answer: a dropped or refused
    // connection, never an error answer.
    assert.deepEqual(
      other.filter((result) => result.status !== 0),
      [],
      'requests in flight at the kill got no answer',
    );
    const dropped = other.filter((result) => result.error !== 'ECONNREFUSED').length;

    // The worker's dispatcher publishes what the API committed and never published (after the hold
    // of any entries the API's dispatcher had taken). Count the jobs once every commit of the dead
    // API has landed or rolled back.
    const sinkAtKill = sink.messages().length;
    await waitFor(
      "the server to close the killed API's sessions",
      async () => (await sessionsFrom(apiSessions)) === 0,
      10_000,
      20,
    );
    const outbox = await outboxState(schema, Date.now());
    const committed = await statusCounts(schema);
    const total = Object.values(committed).reduce((a, b) => a + b, 0);
    t.diagnostic(
      `${ok.length} answered 202, ${dropped} dropped at the kill, ${other.length - dropped} refused after it; ` +
        `the store holds ${total} jobs: ` +
        `${JSON.stringify(committed)}; outbox after the kill: ${outbox.due} due, ${outbox.held} held by the dead ` +
        `API's dispatcher; sink had ${sinkAtKill}`,
    );
    await waitAllSent(schema, total, 30_000);

    const { jobs } = await readPostgres(schema);
    const stored = new Map(jobs.map((job) => [job.id, job]));
    const missingFromStore = ok.filter((result) => !stored.has(result.id!));
    assert.deepEqual(missingFromStore, [], 'every id answered 202 is in the store');
    // Committed but unanswered jobs are sent too (docs/failure-modes.md: the client retries with an
    // Idempotency-Key); they are not duplicates of anything, so every job counts once.
    const report = checkSink(
      sink,
      jobs.map((job) => job.message_id),
    );
    t.diagnostic(summarize(report));
    assertDeliveredOnce(report);
    assert.deepEqual(report.duplicates, [], 'no email sent twice: no worker died');
    const lastEmail = Math.max(...sink.messages().map((message) => message.receivedAt));
    t.diagnostic(
      `${jobs.length - ok.length} jobs committed without a 202 seen; the last email arrived ` +
        `${lastEmail - killedAt} ms after the kill, all through worker ${worker.id}`,
    );
  });
});
