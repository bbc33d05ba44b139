/**
 * GET /metrics after a known workload: the counters, histograms and gauges say what happened, with
 * the unified service tags on every series. Then a `mailroom worker` process serves its own
 * /metrics and /ready on MAILROOM_METRICS_PORT.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setUpScaledOut } from './support/scaled-out-cluster.js';
import { AMQP_URL, NATS_URL, POSTGRES_URL, serviceAvailable } from './support/services.js';
import { mixedOutcomeSink } from './support/smtp-sink.js';
import { SAMPLE_EMAIL, startTestApp, type TestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';

/** The value of the one series named `name` whose labels include every pair in `labels`. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const matches = text.split('\n').filter((line) => {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) return false;
    return Object.entries(labels).every(([key, value]) => line.includes(`${key}="${value}"`));
  });
  if (matches.length > 1)
    throw new Error(`${matches.length} series of ${name} match ${JSON.stringify(labels)}`);
  const value = matches[0]?.slice(matches[0].lastIndexOf(' ') + 1);
  return value === undefined ? undefined : Number(value);
}

describe('GET /metrics after a known workload', () => {
  let t: TestApp;
  let text: string;
  before(async () => {
    const sink = mixedOutcomeSink();
    t = await startTestApp({ MAILROOM_ENV: 'test-env', DD_VERSION: '9.9.9' }, sink, 'embedded');
    const ids = [];
    for (let i = 0; i < 5; i++) ids.push(await t.send({ ...SAMPLE_EMAIL, to: `good${i}@example.com` }));
    ids.push(await t.send({ ...SAMPLE_EMAIL, to: 'bad@example.com' }));
    ids.push(await t.send({ ...SAMPLE_EMAIL, to: 'later@example.com' }));
    for (const id of ids) await t.waitForStatus(id, ['sent', 'failed']);
    // The job gauges are read from the store at most every 5 s: wait for a fresh count.
    await waitFor(
      'the job gauges to count every job',
      async () => {
        const response = await t.request('GET', '/metrics');
        text = response.body;
        return sample(text, 'mailroom_jobs', { status: 'sent' }) === 6;
      },
      10_000,
      250,
    );
  });
  after(() => t?.stop());

  test('is Prometheus text, with the service tags on every series', async () => {
    const response = await t.request('GET', '/metrics');
    assert.equal(response.statusCode, 200);
    assert.match(String(response.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    const series = text.split('\n').filter((line) => line && !line.startsWith('#'));
    assert.ok(series.length > 50);
    for (const line of series) {
      assert.match(line, /service="mailroom"/, line);
      assert.match(line, /env="test-env"/, line);
      // nodejs_version_info's own `version` label (Node's version) takes the place of ours.
      if (!line.startsWith('nodejs_version_info')) assert.match(line, /version="9\.9\.9"/, line);
    }
  });

  test('counts what happened to the emails', () => {
    assert.equal(sample(text, 'mailroom_emails_accepted_total'), 7);
    assert.equal(sample(text, 'mailroom_emails_sent_total', { transport: 'smtp' }), 6);
    assert.equal(sample(text, 'mailroom_emails_failed_total', { transport: 'smtp', reason: 'permanent' }), 1);
    assert.equal(
      sample(text, 'mailroom_emails_deferred_total', { transport: 'smtp', code: 'SMTP_TRANSIENT' }),
      1,
    );
    assert.equal(sample(text, 'mailroom_delivery_seconds_count', { transport: 'smtp' }), 6);
    const attempts = ['sent', 'failed', 'deferred'].map(
      (outcome) => sample(text, 'mailroom_send_duration_seconds_count', { transport: 'smtp', outcome }) ?? 0,
    );
    assert.deepEqual(attempts, [6, 1, 1]);
  });

  test('reports the queue by status, the dead letters and the breaker', () => {
    assert.equal(sample(text, 'mailroom_jobs', { status: 'sent' }), 6);
    assert.equal(sample(text, 'mailroom_jobs', { status: 'failed' }), 1);
    assert.equal(sample(text, 'mailroom_jobs', { status: 'queued' }), 0);
    assert.equal(sample(text, 'mailroom_dead_letters'), 0);
    assert.equal(sample(text, 'mailroom_breaker_state', { transport: 'smtp' }), 0);
    assert.ok((sample(text, 'process_cpu_user_seconds_total') ?? 0) > 0, 'process metrics');
  });

  test('counts HTTP requests by route template, method and status', () => {
    assert.equal(
      sample(text, 'mailroom_http_requests_total', { route: '/v1/emails', method: 'POST', status: '202' }),
      7,
    );
    // Ids never become labels: every GET of an email counts under the template.
    assert.ok(
      (sample(text, 'mailroom_http_requests_total', {
        route: '/v1/emails/:id',
        method: 'GET',
        status: '200',
      }) ?? 0) >= 7,
    );
    assert.equal(text.includes('route="/v1/emails/0'), false);
  });
});

const scaledOut =
  (await serviceAvailable('PostgreSQL', POSTGRES_URL)) && (await serviceAvailable('RabbitMQ', AMQP_URL));

describe('mailroom worker serves /metrics, /health and /ready on MAILROOM_METRICS_PORT', {
  skip: !scaledOut,
}, () => {
  test('on the port its start-up line names', async (t) => {
    const { cluster } = await setUpScaledOut(t);
    const worker = await cluster.worker();
    const running = worker.process.logs('Mailroom is running')[0];
    const ops = String(running?.ops ?? '');
    assert.match(ops, /^http:\/\/127\.0\.0\.1:\d+$/, worker.process.output());
    const metrics = await fetch(`${ops}/metrics`);
    assert.equal(metrics.status, 200);
    const text = await metrics.text();
    assert.equal(sample(text, 'mailroom_breaker_state', { transport: 'smtp' }), 0);
    assert.notEqual(sample(text, 'mailroom_jobs', { status: 'queued' }), undefined);
    // The scaled-out shape publishes through the outbox: nothing waiting here.
    assert.equal(sample(text, 'mailroom_outbox_due'), 0);
    assert.equal(sample(text, 'mailroom_outbox_lag_seconds'), 0);
    const ready = await fetch(`${ops}/ready`);
    assert.equal(ready.status, 200);
    const body = (await ready.json()) as { components: Record<string, unknown> };
    assert.deepEqual(Object.keys(body.components).sort(), [
      'broker',
      'circuit_breaker',
      'store',
      'transport',
      'worker',
    ]);
    assert.equal((await fetch(`${ops}/v1/emails`)).status, 404, 'no API on the ops port');
    // The worker's own circuit breaker, which an API process cannot see.
    const breakers = (await (await fetch(`${ops}/v1/system/breakers`)).json()) as {
      breakers: { state: string }[];
    };
    assert.deepEqual(
      breakers.breakers.map((breaker) => breaker.state),
      ['closed'],
    );
  });
});

describe('rate-limit waits', () => {
  test('a send that waited in place for a transport token is observed, labelled by limit and bucket', async () => {
    // 1 token a second, burst 1: of two emails posted together, the second waits in place (up to
    // 10 s is allowed for the transport) rather than being handed back.
    const t = await startTestApp(
      { MAILROOM_RATE_PER_SEC: '1', MAILROOM_RATE_BURST: '1' },
      undefined,
      'embedded',
    );
    try {
      const ids = [
        await t.send({ ...SAMPLE_EMAIL, to: 'one@example.com' }),
        await t.send({ ...SAMPLE_EMAIL, to: 'two@example.com' }),
      ];
      for (const id of ids) await t.waitForStatus(id, 'sent');
      const text = (await t.request('GET', '/metrics')).body;
      const waits = sample(text, 'mailroom_rate_limit_wait_seconds_count', { limit: 'transport' });
      assert.ok(waits !== undefined && waits >= 1, `waits observed: ${waits}`);
      assert.ok((sample(text, 'mailroom_rate_limit_wait_seconds_sum', { limit: 'transport' }) ?? 0) > 0);
      assert.equal(
        sample(text, 'mailroom_rate_limit_waits_total', { limit: 'transport', bucket: 'transport:smtp' }),
        waits,
      );
      assert.equal(sample(text, 'mailroom_rate_limit_wait_seconds_count', { limit: 'domain' }), undefined);
    } finally {
      await t.stop();
    }
  });
});

const natsAvailable = scaledOut && (await serviceAvailable('NATS', NATS_URL));

for (const broker of ['rabbitmq', 'nats'] as const) {
  describe(`mailroom_broker_messages over ${broker}`, {
    skip: broker === 'nats' ? !natsAvailable : !scaledOut,
  }, () => {
    test('counts what waits in the work queue while no worker runs, and nothing once one has taken it', async (t) => {
      const { cluster } = await setUpScaledOut(t, {}, broker);
      const api = await cluster.api();
      for (let i = 0; i < 3; i++) {
        const answer = await api.request('POST', '/v1/emails', {
          ...SAMPLE_EMAIL,
          to: `lag${i}@example.com`,
        });
        assert.equal(answer.status, 202);
      }
      const env = cluster.env;
      const queue = broker === 'rabbitmq' ? env.MAILROOM_AMQP_QUEUE! : env.MAILROOM_NATS_CONSUMER!;
      const backlog = async () => {
        const text = await (await fetch(new URL('/metrics', api.apiUrl))).text();
        return sample(text, 'mailroom_broker_messages', { queue });
      };
      // Read at most every 5 s: wait for a fresh figure.
      await waitFor(
        `mailroom_broker_messages{queue="${queue}"} to be 3`,
        async () => (await backlog()) === 3,
        15_000,
        250,
      );
      // Only this shape's work queues, one series each (high, normal, low).
      const text = await (await fetch(new URL('/metrics', api.apiUrl))).text();
      const series = text.split('\n').filter((line) => line.startsWith('mailroom_broker_messages{'));
      assert.equal(series.length, 3, series.join('\n'));
      await cluster.worker();
      await waitFor(
        `mailroom_broker_messages{queue="${queue}"} to be 0`,
        async () => (await backlog()) === 0,
        20_000,
        250,
      );
    });
  });
}
