/**
 * Shared rate limits in the scaled-out shape: two `mailroom worker` processes under one
 * MAILROOM_RATE_PER_SEC send at that rate together, not each, with the buckets in Redis
 * (MAILROOM_REDIS_URL) or, without Redis, in PostgreSQL. Real processes, real servers, a real SMTP
 * sink whose receive times are the measurement.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { postEmails, setUpScaledOut, waitAllSent } from './support/scaled-out-cluster.js';
import { AMQP_URL, POSTGRES_URL, REDIS_URL, serviceAvailable } from './support/services.js';

const RATE = 50;
const EMAILS = 400;
/** Every email is due at once, this long after the first is accepted: the workers then compete. */
const SEND_DELAY_MS = 6000;

const base =
  (await serviceAvailable('PostgreSQL', POSTGRES_URL)) && (await serviceAvailable('RabbitMQ', AMQP_URL));
const limiters = {
  redis: base && (await serviceAvailable('Redis', REDIS_URL)),
  postgres: base,
} as const;

for (const limiter of ['redis', 'postgres'] as const) {
  describe(`scaled out: a ${RATE}/s limit shared by two workers (buckets in ${limiter})`, {
    skip: !limiters[limiter],
  }, () => {
    test(`${EMAILS} emails go out at ${RATE}/s in all, within 10% over a 5 s window`, async (t) => {
      const { schema, sink, cluster } = await setUpScaledOut(t, {
        MAILROOM_RATE_PER_SEC: String(RATE),
        MAILROOM_RATE_BURST: '5',
        // Room in the lease for a claimed job to wait its turn for a token (what it leaves after the
        // longest send is the wait allowed in place).
        MAILROOM_LEASE_MS: '15000',
        ...(limiter === 'redis' && { MAILROOM_REDIS_URL: REDIS_URL }),
      });
      const api = await cluster.api();
      const workers = await Promise.all([cluster.worker(), cluster.worker()]);
      const sendAt = new Date(Date.now() + SEND_DELAY_MS).toISOString();
      const results = await postEmails(api.apiUrl, {
        clients: 8,
        count: EMAILS,
        email: (i) => ({
          from: 'noreply@acme.test',
          to: `r${i}@example.com`,
          subject: `#${i}`,
          text: 'hi',
          send_at: sendAt,
        }),
      });
      assert.equal(results.filter((result) => result.status === 202).length, EMAILS);
      await waitAllSent(schema, EMAILS, 60_000);

      const times = sink
        .messages()
        .map((message) => message.receivedAt)
        .sort((a, b) => a - b);
      assert.equal(times.length, EMAILS);
      // Skip the first second (the burst, and both workers starting), then count five seconds.
      const from = times[0]! + 1000;
      const inWindow = times.filter((at) => at >= from && at < from + 5000).length;
      const expected = RATE * 5;
      t.diagnostic(
        `${limiter}: ${inWindow} sent in the 5 s window (expected ${expected}); all ${EMAILS} in ${times.at(-1)! - times[0]!} ms`,
      );
      assert.ok(
        Math.abs(inWindow - expected) <= expected * 0.1,
        `${inWindow} sent in 5 s, expected ${expected} ± 10% (each worker alone at ${RATE}/s would send twice that)`,
      );
      // Both workers took part: the limit held because it was shared, not because one did it all.
      for (const worker of workers) {
        const sent = worker.process
          .logs('throughput')
          .reduce((sum, line) => sum + Number(line.sent_per_sec ?? 0), 0);
        assert.ok(sent > EMAILS * 0.1, `worker ${worker.id} sent only ${sent}`);
      }
      const limits = await api.request('GET', '/v1/system/limits');
      assert.equal(limits.status, 200);
      assert.equal(limits.body.api.per_key_per_min, null);
    });
  });
}
