/**
 * Fault tests of the scaled-out shape, part 2: the network to RabbitMQ or to PostgreSQL is cut
 * during a burst. Every `mailroom api` and `mailroom worker` process reaches the server through a
 * TcpProxy (test/support/tcp-proxy.ts); the test drops every connection and refuses new ones for
 * about two seconds, then lets them through again. The servers themselves are never touched.
 * The checker counts what reached the SMTP sink by Message-ID (test/support/sink-checker.ts).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  leaseExpiries,
  outboxState,
  readPostgres,
  sessionsFrom,
  statusCounts,
} from './support/read-postgres.js';
import { countByStatus } from './support/read-store.js';
import {
  type PostResult,
  postEmails,
  postOne,
  setUpScaledOut,
  waitAllSent,
} from './support/scaled-out-cluster.js';
import { AMQP_URL, POSTGRES_URL, serviceAvailable } from './support/services.js';
import { assertDeliveredOnce, checkSink, summarize } from './support/sink-checker.js';
import { TcpProxy } from './support/tcp-proxy.js';
import { waitFor } from './support/wait-for.js';

const available =
  (await serviceAvailable('PostgreSQL', POSTGRES_URL)) && (await serviceAvailable('RabbitMQ', AMQP_URL));

/** How long the proxy refuses connections after cutting them all. */
const OUTAGE_MS = 2000;

const email = (tag: string) => (i: number) => ({
  from: 'Acme <noreply@acme.test>',
  to: `${tag}-${i}@example.com`,
  subject: `${tag} ${i}`,
  text: `Email ${i}.`,
});

/** Cuts every connection through `proxy` and refuses new ones for OUTAGE_MS; resolves once resumed. */
async function outage(proxy: TcpProxy): Promise<void> {
  proxy.cutAll();
  proxy.pause();
  // The fault's duration, not a wait for a condition.
  await new Promise((resolve) => setTimeout(resolve, OUTAGE_MS));
  proxy.resume();
}

describe('scaled out: the network to a server is cut during a burst', { skip: !available }, () => {
  test('RabbitMQ connections cut for 2 s during a burst: every process reconnects, 0 lost, 0 duplicates', async (t) => {
    const EMAILS = 500;
    const CUT_AT = 100;
    const proxy = await TcpProxy.start(AMQP_URL);
    const { schema, sink, cluster } = await setUpScaledOut(t, {
      MAILROOM_BROKER_URL: proxy.urlFor(AMQP_URL),
    });
    t.after(() => proxy.close()); // after the processes are killed
    const api = await cluster.api();
    await Promise.all([cluster.worker(), cluster.worker()]);
    assert.equal(proxy.openConnections, 3, 'each process holds one RabbitMQ connection, through the proxy');

    let accepted = 0;
    let cut: Promise<void> | undefined;
    let acceptedAtCut = 0;
    sink.onMessage = () => {
      if (cut || sink.messages().length < CUT_AT) return;
      acceptedAtCut = accepted;
      cut = outage(proxy);
    };
    const results = await postEmails(api.apiUrl, {
      count: EMAILS,
      clients: 8,
      email: email('cut-amqp'),
      onResult: (result) => {
        if (result.status === 202) accepted++;
      },
    });
    // The store is unaffected: the API answers 202 throughout (the outbox holds what cannot be published).
    assert.deepEqual(
      results.filter((result) => result.status !== 202),
      [],
      'every POST answered 202',
    );
    // The sends lag the POSTs: the cut may come after the last 202, while the workers still send.
    await waitFor(`the sink to reach ${CUT_AT}`, () => cut !== undefined, 30_000, 50);
    await cut;
    const resumed = Date.now();
    // Entries a dispatcher took for a publish that failed stay hidden until their hold ends.
    const outbox = await outboxState(schema, resumed);
    t.diagnostic(
      `cut at sink=${CUT_AT} with ${acceptedAtCut} of ${EMAILS} accepted; ${proxy.refused} connections ` +
        `refused during the outage; outbox at the end of it: ${outbox.due} due, ${outbox.held} held`,
    );
    assert.ok(proxy.refused > 0, 'the processes tried to reconnect during the outage');

    await waitFor(
      'every process to reconnect to RabbitMQ',
      () => cluster.processes.every((mailroom) => mailroom.logs('rabbitmq: reconnected').length > 0),
      20_000,
      100,
    );
    t.diagnostic(`all reconnected ${Date.now() - resumed} ms after the outage`);
    await waitAllSent(schema, EMAILS, 40_000);
    t.diagnostic(`all sent ${Date.now() - resumed} ms after the outage`);
    const lastReconnect = Math.max(...cluster.logs('rabbitmq: reconnected').map((line) => Number(line.time)));
    const lastEmail = Math.max(...sink.messages().map((message) => message.receivedAt));
    t.diagnostic(`the last email arrived ${lastEmail - lastReconnect} ms after the last process reconnected`);

    const { jobs, events } = await readPostgres(schema);
    assert.deepEqual(countByStatus(jobs), { sent: EMAILS });
    assert.deepEqual(
      jobs.map((job) => job.id).sort(),
      results.map((result) => result.id!).sort(),
      'exactly the accepted jobs',
    );
    // No lease expired: the cut costs redeliveries (each a no-op claim), never a second attempt.
    assert.deepEqual([...leaseExpiries(events).keys()], [], 'no job was claimed again after a lease');
    const report = checkSink(
      sink,
      jobs.map((job) => job.message_id),
    );
    t.diagnostic(summarize(report));
    assertDeliveredOnce(report);
    // The store held every claim and outcome throughout: no attempt was lost, so nothing may repeat.
    assert.deepEqual(report.duplicates, [], 'no duplicate: the store was never cut');
  });

  test('PostgreSQL connections cut for 2 s during a burst: 503 meanwhile, every 202 sent, duplicates only in the window', async (t) => {
    const BEFORE_CUT = 150;
    const AFTER_RESUME = 150;
    const MAX_EMAILS = 2000;
    const proxy = await TcpProxy.start(POSTGRES_URL);
    const { schema, sink, cluster } = await setUpScaledOut(t, {
      MAILROOM_DATABASE_URL: proxy.urlFor(POSTGRES_URL),
    });
    t.after(() => proxy.close()); // after the processes are killed
    const api = await cluster.api();
    await Promise.all([cluster.worker(), cluster.worker()]);

    let accepted = 0;
    let stopping = false;
    const during: PostResult[] = [];
    let outageOn = false;
    const posting = postEmails(api.apiUrl, {
      count: MAX_EMAILS,
      clients: 8,
      // Clients back off a little after a 503 rather than hammering the API through the outage.
      pauseAfterErrorMs: 50,
      email: email('cut-pg'),
      stop: () => stopping,
      onResult: (result) => {
        if (result.status === 202) accepted++;
        if (outageOn) during.push(result);
      },
    });
    try {
      await waitFor(`${BEFORE_CUT} emails accepted`, () => accepted >= BEFORE_CUT, 20_000);
      const sinkAtCut = sink.messages().length;
      const acceptedAtCut = accepted;
      outageOn = true;
      // The clients' own requests may all be waiting on commits the cut left undecided (the store
      // keeps asking the database for a few seconds), so one more request arrives during the outage:
      // a newcomer must be answered 503 at once, whatever the requests before it are waiting for.
      const newcomer = (async () => {
        await new Promise((resolve) => setTimeout(resolve, 250));
        const started = Date.now();
        const result = await postOne(new URL('/v1/emails', api.apiUrl), -1, email('cut-pg')(-1));
        t.diagnostic(
          `a request sent during the outage: ${result.status} ${result.error ?? ''} in ${Date.now() - started} ms`,
        );
        if (outageOn) during.push(result);
      })();
      await outage(proxy);
      outageOn = false;
      await newcomer;
      t.diagnostic(
        `cut with ${acceptedAtCut} accepted and ${sinkAtCut} at the sink; during the outage: ` +
          `${during.filter((r) => r.status === 202).length} answered 202, ` +
          `${during.filter((r) => r.status === 503).length} answered 503`,
      );
      const acceptedAtResume = accepted;
      await waitFor(
        `${AFTER_RESUME} more emails accepted after the outage`,
        () => accepted >= acceptedAtResume + AFTER_RESUME,
        20_000,
      );
    } finally {
      stopping = true;
    }
    const results = await posting;
    const resumed = Date.now();

    // While the store is unreachable the API says so: 503 STORE_UNAVAILABLE, nothing else.
    const ok = results.filter((result) => result.status === 202);
    const refused = results.filter((result) => result.status === 503 && result.error === 'STORE_UNAVAILABLE');
    assert.deepEqual(
      results.filter((result) => result.status !== 202 && !refused.includes(result)),
      [],
      'every answer is 202 or 503 STORE_UNAVAILABLE',
    );
    assert.ok(
      during.some((result) => result.status === 503),
      'requests during the outage were answered 503',
    );

    // Every request has its answer: nothing of the API's is still being committed.
    const total = Object.values(await statusCounts(schema)).reduce((a, b) => a + b, 0);
    await waitAllSent(schema, total, 40_000);
    t.diagnostic(`all ${total} sent ${Date.now() - resumed} ms after the posting stopped`);

    const { jobs, events } = await readPostgres(schema);
    const stored = new Set(jobs.map((job) => job.id));
    // 202 means committed: never an answer for a job the store does not have.
    assert.deepEqual(
      ok.filter((result) => !stored.has(result.id!)),
      [],
      'every id answered 202 is in the store',
    );
    assert.deepEqual(countByStatus(jobs), { sent: jobs.length });
    const committedWithout202 = jobs.length - ok.length;

    // The window: an attempt whose outcome could not be committed, taken over after its lease.
    const expired = leaseExpiries(events);
    const window = new Set(jobs.filter((job) => expired.has(job.id)).map((job) => job.message_id));
    const report = checkSink(
      sink,
      jobs.map((job) => job.message_id),
      { window },
    );
    t.diagnostic(summarize(report));
    t.diagnostic(
      `${ok.length} answered 202, ${refused.length} answered 503; ${committedWithout202} jobs committed though ` +
        `answered 503; ${expired.size} jobs claimed again after their lease, ${report.duplicates.length} of them ` +
        `sent twice; ${cluster.logs('worker: store error').length} store errors logged by the workers`,
    );
    assertDeliveredOnce(report);
    // Every lease that ran out is explained by the cut: its worker hit a store error on that job
    // (the outcome, or an ambiguous claim, could not be committed), not a slow send.
    const storeErrors = new Set(cluster.logs('worker: store error').map((line) => String(line.job_id)));
    assert.deepEqual(
      [...expired.keys()].filter((id) => !storeErrors.has(id)),
      [],
      'a lease ran out on a job without a store error',
    );
  });

  test('PostgreSQL connection lost while the API commits: a client that retries after the 503, as told, gets one email', async (t) => {
    const RECIPIENT = 'lost-commit@example.com';
    // A simple-protocol Query message: 'Q', its length (4 + 7), "COMMIT\0". The intake's transaction ends so.
    const COMMIT = Buffer.from('Q\0\0\0\x0bCOMMIT\0', 'latin1');
    const proxy = await TcpProxy.start(POSTGRES_URL);
    const { schema, sink, cluster } = await setUpScaledOut(t);
    t.after(() => proxy.close()); // after the processes are killed
    // Only the API goes through the proxy: its next COMMIT is the one of the email below.
    const api = await cluster.api({ MAILROOM_DATABASE_URL: proxy.urlFor(POSTGRES_URL) });
    await cluster.worker();
    const post = async (to: string) =>
      (
        await postEmails(api.apiUrl, {
          count: 1,
          clients: 1,
          email: () => ({ ...email('lost-commit')(0), to }),
        })
      )[0]!;
    assert.equal((await post('warm-up@example.com')).status, 202);

    // The COMMIT reaches PostgreSQL, which commits; the API sees its connection lost instead of the reply.
    let serverPort: number | undefined;
    void proxy.cutAfterClientSends(COMMIT).then((port) => {
      serverPort = port;
    });
    const answers: PostResult[] = [await post(RECIPIENT)];
    await waitFor('the COMMIT to be cut', () => serverPort !== undefined, 5000);
    await waitFor(
      'the server to finish with the cut session',
      async () => (await sessionsFrom(new Set([serverPort!]))) === 0,
      5000,
      20,
    );
    const committed = (await readPostgres(schema)).jobs.length - 1;
    t.diagnostic(
      `the API answered ${answers[0]!.status} ${answers[0]!.error ?? answers[0]!.id}; jobs committed for it: ${committed}`,
    );

    // The client does what the answer says: a 503 STORE_UNAVAILABLE "nothing was accepted. Retry."
    // (docs/failure-modes.md: "a retry is safe with or without an Idempotency-Key").
    while (answers.at(-1)!.status !== 202) {
      assert.ok(answers.length < 5, `no 202 after ${answers.length} tries: ${JSON.stringify(answers)}`);
      answers.push(await post(RECIPIENT));
    }
    const total = Object.values(await statusCounts(schema)).reduce((a, b) => a + b, 0);
    await waitAllSent(schema, total, 20_000);
    const received = sink.messages().filter((message) => message.envelope.to.includes(RECIPIENT));
    assert.equal(
      received.length,
      1,
      `one email asked for, ${received.length} delivered (Message-IDs ${received.map((m) => m.messageId).join(', ')}): ` +
        `the API answered ${answers.map((a) => `${a.status} ${a.error ?? ''}`.trim()).join(', then ')}, ` +
        `though the first request's job was committed (${committed} job${committed === 1 ? '' : 's'})`,
    );
  });
});
