/**
 * Graceful shutdown of a scaled-out worker (docs/failure-modes.md#graceful-shutdown), on RabbitMQ
 * and on NATS JetStream: SIGTERM while sends are in flight lets them finish, exits 0, and leaves
 * every other job to the next worker; nothing is lost and nothing is sent twice.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { readPostgres, statusCounts } from './support/read-postgres.js';
import { postEmails, setUpScaledOut, waitAllSent } from './support/scaled-out-cluster.js';
import { AMQP_URL, NATS_URL, POSTGRES_URL, serviceAvailable } from './support/services.js';
import { checkSink, summarize } from './support/sink-checker.js';
import { waitFor } from './support/wait-for.js';

const postgres = await serviceAvailable('PostgreSQL', POSTGRES_URL);
const brokers = {
  rabbitmq: postgres && (await serviceAvailable('RabbitMQ', AMQP_URL)),
  nats: postgres && (await serviceAvailable('NATS', NATS_URL)),
} as const;

const EMAILS = 40;
/** Sends in flight when the signal comes: the sink holds each for SLOW_MS. */
const IN_FLIGHT = 4;
const SLOW_MS = 1500;

for (const broker of ['rabbitmq', 'nats'] as const) {
  describe(`scaled out on ${broker}: graceful shutdown of a worker`, { skip: !brokers[broker] }, () => {
    test('SIGTERM with sends in flight: they finish, exit 0; another worker sends the rest, each once', async (t) => {
      const { schema, sink, cluster } = await setUpScaledOut(
        t,
        // A long shutdown deadline: the slow sends finish inside it. Few sends at once, so that
        // most jobs are still waiting when the signal comes.
        {
          MAILROOM_SHUTDOWN_TIMEOUT_MS: '10000',
          MAILROOM_CONCURRENCY: String(IN_FLIGHT),
          MAILROOM_PREFETCH: '4',
        },
        broker,
      );
      sink.delayMs = SLOW_MS;
      await sink.setBehaviour('delay');
      const api = await cluster.api();
      const first = await cluster.worker();

      const results = await postEmails(api.apiUrl, {
        count: EMAILS,
        clients: 4,
        email: (i) => ({
          from: 'Acme <noreply@acme.test>',
          to: `shutdown-${i}@example.com`,
          subject: `Shutdown ${i}`,
          text: `Email ${i}.`,
        }),
      });
      assert.deepEqual(
        results.filter((result) => result.status !== 202),
        [],
        'every POST answered 202',
      );
      await sink.waitForAttempts('delay', IN_FLIGHT, 15_000);

      const signalled = Date.now();
      first.process.child.kill('SIGTERM');
      const exit = await first.process.exited;
      assert.deepEqual(exit, { code: 0, signal: null }, first.process.output());
      const drainedMs = Date.now() - signalled;
      // The sends in flight finished (the sink answered them) before the process exited.
      const sentByFirst = sink.messages().length;
      assert.ok(sentByFirst >= IN_FLIGHT, `${sentByFirst} sent before the exit, ${IN_FLIGHT} were in flight`);
      const counts = await statusCounts(schema);
      t.diagnostic(`exit 0 after ${drainedMs} ms; ${sentByFirst} sent; then: ${JSON.stringify(counts)}`);
      assert.equal(counts.processing ?? 0, 0, 'nothing left processing: finished or given back');

      await sink.setBehaviour('accept');
      await cluster.worker();
      await waitAllSent(schema, EMAILS, 30_000);
      const { jobs } = await readPostgres(schema);
      const report = checkSink(
        sink,
        jobs.map((job) => job.message_id),
      );
      t.diagnostic(summarize(report));
      assert.deepEqual(report.missing, [], 'lost');
      assert.deepEqual(report.duplicates, [], 'sent twice');
      await waitFor(
        'the API still answering',
        async () => (await api.request('GET', '/health')).status === 200,
      );
    });
  });
}
