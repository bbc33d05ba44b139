/**
 * Flow control end to end on the embedded shape, against a real SMTP sink on loopback: the circuit
 * breaker through a relay outage, per-domain limits without head-of-line blocking, adaptive rates
 * after "try later" replies, and the API's per-key limit.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SmtpSink } from './support/smtp-sink.js';
import { type EmailView, SAMPLE_EMAIL, startTestApp, type TestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';

const domainOf = (address: string) => address.slice(address.lastIndexOf('@') + 1);

async function views(t: TestApp, ids: readonly string[]): Promise<EmailView[]> {
  return Promise.all(ids.map(async (id) => (await t.request('GET', `/v1/emails/${id}`)).json() as EmailView));
}

async function sendMany(t: TestApp, count: number, to: (i: number) => string): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) ids.push(await t.send({ ...SAMPLE_EMAIL, to: to(i), subject: `#${i}` }));
  return ids;
}

describe('circuit breaker: the relay goes down for 10 s in the middle of 300 emails', () => {
  const OUTAGE_MS = 10_000;
  let t: TestApp;
  let ids: string[];
  let outageStarted = 0;

  before(async () => {
    t = await startTestApp(
      {
        MAILROOM_BREAKER_FAILURES: '5',
        MAILROOM_BREAKER_OPEN_MS: '3000',
        MAILROOM_CONCURRENCY: '16',
        // Backoff short enough that, without the breaker, every email in the outage would use up
        // its 5 attempts within the 10 s.
        MAILROOM_RETRY_BASE_MS: '50',
        MAILROOM_RETRY_MAX_MS: '400',
      },
      new SmtpSink(),
      'embedded',
    );
    // Slow the sink a little so the outage lands in the middle of the batch, not after it.
    await t.sink.setBehaviour('delay');
    ids = await sendMany(t, 300, (i) => `user${i}@example.com`);
    await t.sink.setBehaviour('accept');
    await waitFor('100 emails delivered', () => t.sink.messages().length >= 100, 30_000);
    await t.sink.setBehaviour('refuse');
    outageStarted = Date.now();
    // The outage is the scenario itself: the relay stays away for 10 s, whatever Mailroom does.
    await new Promise((resolve) => setTimeout(resolve, OUTAGE_MS));
    await t.sink.setBehaviour('accept');
    await waitFor(
      'all 300 emails sent',
      async () => (await views(t, ids)).every((view) => view.status === 'sent'),
      60_000,
      250,
    ).catch(async (error) => {
      const counts: Record<string, number> = {};
      for (const view of await views(t, ids)) counts[view.status] = (counts[view.status] ?? 0) + 1;
      const breakers = (await t.request('GET', '/v1/system/breakers')).json();
      throw new Error(
        `${(error as Error).message}: ${JSON.stringify(counts)}, breaker ${JSON.stringify(breakers)}`,
      );
    });
  });
  after(() => t?.stop());

  test('every email is sent exactly once, none failed', async () => {
    const all = await views(t, ids);
    assert.deepEqual(
      all.filter((view) => view.status !== 'sent').map((view) => [view.id, view.status]),
      [],
    );
    assert.equal(t.sink.messages().length, 300);
    assert.deepEqual(t.sink.duplicates(), []);
  });

  test('the breaker opened on the fifth consecutive failure and closed after the probes', async () => {
    const all = await views(t, ids);
    const transitions = all
      .flatMap((view) => view.events)
      .flatMap((event) => {
        const circuit = event.detail.circuit as { transition?: string; reason?: string } | undefined;
        return circuit?.transition ? [{ at: event.at, ...circuit }] : [];
      })
      .sort((a, b) => a.at.localeCompare(b.at));
    assert.deepEqual(transitions[0], {
      at: transitions[0]?.at,
      transition: 'closed → open',
      reason: '5 consecutive failures',
    });
    assert.equal(transitions.at(-1)?.transition, 'half_open → closed');
    const breakers = (await t.request('GET', '/v1/system/breakers')).json() as {
      breakers: { transport: string; state: string; transitions: number; last_transition: { to: string } }[];
    };
    assert.equal(breakers.breakers[0]?.transport, 'smtp');
    assert.equal(breakers.breakers[0]?.state, 'closed');
    assert.ok(breakers.breakers[0]!.transitions >= 3, JSON.stringify(breakers));
  });

  test('while open, emails waited untried (no attempt spent), with the reason in their history', async () => {
    const all = await views(t, ids);
    const heldBack = all.filter((view) =>
      view.events.some((event) => event.type === 'released' && event.detail.code === 'CIRCUIT_OPEN'),
    );
    assert.ok(heldBack.length > 0, 'some emails were held back while the breaker was open');
    const held = heldBack[0]!.events.find((event) => event.detail.code === 'CIRCUIT_OPEN')!;
    assert.equal(held.detail.transport, 'smtp');
    assert.ok(Date.parse(String(held.detail.retry_at)) > Date.parse(held.at), 'held until the next probe');
  });

  test('attempts were spent only by sends in flight when it opened and by the probes', async () => {
    const all = await views(t, ids);
    const failedAttempts = all.flatMap((view) => view.events).filter((event) => event.type === 'deferred');
    const opens = Math.ceil(OUTAGE_MS / 3000) + 1;
    // In flight when it opened: at most MAILROOM_CONCURRENCY; then up to 3 probes per opening.
    const bound = 16 + 3 * opens;
    assert.ok(
      failedAttempts.length <= bound,
      `${failedAttempts.length} failed attempts, expected ≤ ${bound}`,
    );
    assert.ok(failedAttempts.length >= 5, 'the outage was seen');
    assert.ok(
      all.every((view) => view.attempts <= 4),
      'no email came near its 5 attempts',
    );
    assert.ok(outageStarted > 0);
  });
});

describe('rate limits per recipient domain', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp({ MAILROOM_DOMAIN_RATES: 'slow.test=2/s' }, new SmtpSink(), 'embedded');
  });
  after(() => t?.stop());

  test('a throttled domain does not hold back another (no head-of-line blocking)', async () => {
    const slow = await sendMany(t, 40, (i) => `s${i}@slow.test`);
    const fast = await sendMany(t, 100, (i) => `f${i}@fast.test`);
    await waitFor(
      'the fast domain delivered',
      async () => (await views(t, fast)).every((v) => v.status === 'sent'),
      30_000,
      100,
    );
    const slowSent = t.sink.messages().filter((m) => domainOf(m.envelope.to[0]!) === 'slow.test').length;
    // At 2/s with a burst of 2, the 40 slow emails need 19 s; the fast ones did not wait for them.
    assert.ok(slowSent < 30, `${slowSent} slow-domain emails sent before the fast domain finished`);
    const held = (await views(t, slow)).flatMap((view) =>
      view.events.filter((event) => event.type === 'released' && event.detail.code === 'RATE_LIMITED'),
    );
    assert.ok(held.length > 0, 'slow-domain emails were handed back with RATE_LIMITED');
    assert.equal(held[0]?.detail.limit, 'domain:slow.test');
  });

  test('the slow domain is held to its rate, with no attempt spent by waiting', async () => {
    const slow = t.sink.messages().filter((m) => domainOf(m.envelope.to[0]!) === 'slow.test');
    await waitFor(
      'the slow domain delivered',
      () => t.sink.messages().filter((m) => domainOf(m.envelope.to[0]!) === 'slow.test').length === 40,
      60_000,
      100,
    );
    const times = t.sink
      .messages()
      .filter((m) => domainOf(m.envelope.to[0]!) === 'slow.test')
      .map((m) => m.receivedAt)
      .sort((a, b) => a - b);
    // Burst of 2, then 2 per second: the last of 40 cannot come before 19 s after the first.
    const spanMs = times.at(-1)! - times[0]!;
    assert.ok(spanMs >= 19_000 - 250, `40 emails at 2/s took only ${spanMs} ms`);
    assert.ok(slow.length <= 40);
    const limits = (await t.request('GET', '/v1/system/limits')).json() as {
      domains: { key: string; configured_per_sec: number }[];
    };
    assert.deepEqual(
      limits.domains.map((d) => [d.key, d.configured_per_sec]),
      [['domain:slow.test', 2]],
    );
  });
});

describe('adaptive rates: a relay answering 421 to one domain', () => {
  let t: TestApp;
  before(async () => {
    const sink = new SmtpSink({
      behaviour: ({ rcpt }) => (domainOf(rcpt) === 'busy.test' ? 'throttle-rcpt' : 'accept'),
    });
    // The breaker at its default, to show that "try later" replies do not count for it.
    t = await startTestApp(
      { MAILROOM_DOMAIN_RATES: '*=40/s', MAILROOM_BREAKER_FAILURES: '5' },
      sink,
      'embedded',
    );
  });
  after(() => t?.stop());

  test('lowers only that domain’s rate, and the breaker stays closed', async () => {
    const busy = await sendMany(t, 10, (i) => `b${i}@busy.test`);
    const calm = await sendMany(t, 20, (i) => `c${i}@calm.test`);
    await waitFor(
      'the calm domain delivered',
      async () => (await views(t, calm)).every((v) => v.status === 'sent'),
      20_000,
      100,
    );
    await waitFor('busy.test refused at least once', async () =>
      (await views(t, busy)).some((v) => v.attempts > 0),
    );
    const limits = (await t.request('GET', '/v1/system/limits')).json() as {
      domains: { key: string; configured_per_sec: number; effective_per_sec: number; factor: number }[];
      lowered: { key: string; factor: number; reason: string }[];
    };
    assert.deepEqual(
      limits.lowered.map((entry) => entry.key),
      ['domain:busy.test'],
    );
    assert.match(limits.lowered[0]!.reason, /^421/);
    const busyLimit = limits.domains.find((d) => d.key === 'domain:busy.test')!;
    assert.equal(busyLimit.configured_per_sec, 40);
    assert.ok(busyLimit.effective_per_sec <= 20, JSON.stringify(busyLimit));
    const breakers = (await t.request('GET', '/v1/system/breakers')).json() as {
      breakers: { state: string }[];
    };
    assert.equal(breakers.breakers[0]?.state, 'closed');
    await t.sink.setBehaviour('accept');
    await waitFor(
      'busy.test delivered once the relay accepts',
      async () => (await views(t, busy)).every((v) => v.status === 'sent'),
      30_000,
      100,
    );
  });
});

describe('API rate limit per key', () => {
  const KEY_A = 'key-a-0123456789abcdef';
  const KEY_B = 'key-b-0123456789abcdef';
  let t: TestApp;
  before(async () => {
    t = await startTestApp(
      { MAILROOM_API_KEYS: `${KEY_A},${KEY_B}`, MAILROOM_API_RATE_PER_MIN: '3' },
      new SmtpSink(),
      'embedded',
    );
  });
  after(() => t?.stop());

  test('over the limit: 429 with Retry-After, nothing accepted; another key is unaffected', async () => {
    const post = (key: string) =>
      t.request('POST', '/v1/emails', SAMPLE_EMAIL, { authorization: `Bearer ${key}` });
    for (let i = 0; i < 3; i++) assert.equal((await post(KEY_A)).statusCode, 202);
    const refused = await post(KEY_A);
    assert.equal(refused.statusCode, 429);
    // 3 a minute: the next token comes in 20 s.
    assert.equal(refused.headers['retry-after'], '20');
    assert.equal((refused.json() as { error: { code: string } }).error.code, 'RATE_LIMITED');
    assert.match(
      (refused.json() as { error: { message: string } }).error.message,
      /MAILROOM_API_RATE_PER_MIN/,
    );
    assert.equal((await post(KEY_B)).statusCode, 202);
    const listed = (
      await t.request('GET', '/v1/emails?limit=100', undefined, { authorization: `Bearer ${KEY_A}` })
    ).json() as {
      data: unknown[];
    };
    // Three from key A and one from key B: the refused request left nothing behind.
    assert.equal(listed.data.length, 4);
  });

  test('/v1/system/limits reports the per-key limit', async () => {
    const limits = (
      await t.request('GET', '/v1/system/limits', undefined, { authorization: `Bearer ${KEY_A}` })
    ).json() as {
      api: { per_key_per_min: number };
      limiter: string;
    };
    assert.deepEqual(limits.api, { per_key_per_min: 3 });
    assert.equal(limits.limiter, 'memory');
  });
});

describe('fault injection (MAILROOM_CHAOS) in a running Mailroom', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp(
      {
        MAILROOM_CHAOS: 'error_rate=0.2,latency=5ms,seed=3',
        MAILROOM_MAX_ATTEMPTS: '10',
        // Injected failures come back before the real sends in flight with them, so runs of five are
        // common at this concurrency: this test is about retries, not the breaker.
        MAILROOM_BREAKER_FAILURES: '1000',
      },
      new SmtpSink(),
      'embedded',
    );
  });
  after(() => t?.stop());

  test('is announced in /ready, and its failures are retried like real ones', async () => {
    const ready = (await t.request('GET', '/ready')).json() as {
      components: Record<string, { detail?: string }>;
    };
    assert.match(
      String(ready.components.chaos?.detail),
      /fault injection is ON \(MAILROOM_CHAOS\): .*error_rate 0\.2/,
    );
    const ids = await sendMany(t, 40, (i) => `chaos${i}@example.com`);
    await waitFor(
      'all sent despite the injected failures',
      async () => (await views(t, ids)).every((v) => v.status === 'sent'),
      30_000,
      100,
    );
    const injected = (await views(t, ids))
      .flatMap((view) => view.events)
      .filter((event) => event.type === 'deferred' && /MAILROOM_CHAOS/.test(String(event.detail.message)));
    assert.ok(injected.length > 0, 'some attempts failed on purpose');
    assert.equal(injected[0]?.detail.smtpCode, 454);
    assert.equal(t.sink.messages().length, 40);
  });
});
