import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import pino from 'pino';
import type { SendResult } from '../transport/transport.js';
import { AdaptiveRates, DEFAULT_ADAPTIVE_OPTIONS } from './adaptive-rates.js';
import { CircuitBreaker } from './circuit-breaker.js';
import { FallbackRateLimiter } from './fallback-rate-limiter.js';
import { FlowControl, type FlowControlOptions, type Gate, type RateLimitWait } from './flow-control.js';
import { MemoryRateLimiter } from './memory-rate-limiter.js';

const ACCEPTED: SendResult = { kind: 'accepted', response: '250 ok', rejected: [] };
const REFUSED: SendResult = { kind: 'transient', code: 'SMTP_TRANSIENT', message: 'ECONNREFUSED' };
const THROTTLED: SendResult = {
  kind: 'transient',
  code: 'SMTP_TRANSIENT',
  message: '421 4.7.0 try later',
  responseCode: 421,
  throttle: 'recipients',
};

/** Flow control on one fake clock: breaker, buckets and adaptive rates all read it. */
function flowWithClock(options: Partial<FlowControlOptions> = {}) {
  const clock = { now: 1_000_000 };
  const now = () => clock.now;
  const flow = new FlowControl({
    breaker: new CircuitBreaker('smtp', { failures: 2, openMs: 10_000, halfOpenMax: 1, successes: 1, now }),
    limiter: new MemoryRateLimiter({ now }),
    adaptive: new AdaptiveRates({ ...DEFAULT_ADAPTIVE_OPTIONS, now }),
    domainRates: { byDomain: new Map() },
    logger: pino({ level: 'silent' }),
    now,
    ...options,
  });
  return { flow, clock };
}

function go(gate: Gate) {
  assert.equal(gate.kind, 'go', JSON.stringify(gate));
  return gate as Extract<Gate, { kind: 'go' }>;
}

describe('FlowControl', () => {
  test('with no limits configured every send goes at once', async () => {
    const { flow } = flowWithClock();
    for (let i = 0; i < 100; i++) go(await flow.admit([`r${i}@example.com`])).done(ACCEPTED);
  });

  test('a domain over its rate is handed back, paced one token apart; other domains go', async () => {
    const { flow, clock } = flowWithClock({ domainRates: { byDomain: new Map([['slow.test', 2]]) } });
    go(await flow.admit(['a@slow.test'])).done(ACCEPTED);
    go(await flow.admit(['b@SLOW.test'])).done(ACCEPTED);
    // The burst (2) is spent and the next token is 500 ms away, more than the 250 ms waited in place.
    const held = [await flow.admit(['c@slow.test']), await flow.admit(['d@slow.test'])];
    assert.deepEqual(
      held.map((gate) => gate.kind === 'rate_limited' && [gate.retryAt - clock.now, gate.detail.limit]),
      [
        [500, 'domain:slow.test'],
        [1000, 'domain:slow.test'],
      ],
    );
    go(await flow.admit(['e@fast.test'])).done(ACCEPTED);
    assert.deepEqual(
      held.map((gate) => gate.kind === 'rate_limited' && gate.detail.limit_group),
      ['domain:slow.test', 'domain:slow.test'],
    );
  });

  test('a held-back job names its exact bucket, and a bounded group for metrics', async () => {
    const { flow } = flowWithClock({ domainRates: { byDomain: new Map(), fallback: 1 } });
    go(await flow.admit(['a@unlisted.test'])).done(ACCEPTED);
    const held = await flow.admit(['b@unlisted.test']);
    assert.equal(held.kind, 'rate_limited');
    assert.equal(held.kind === 'rate_limited' && held.detail.limit, 'domain:unlisted.test');
    assert.equal(held.kind === 'rate_limited' && held.detail.limit_group, 'domain:*');
  });

  test('an open breaker hands jobs back until the probe, and the probe and its verdict are reported', async () => {
    const { flow, clock } = flowWithClock();
    go(await flow.admit(['a@example.com'])).done(REFUSED);
    const second = go(await flow.admit(['b@example.com'])).done(REFUSED);
    assert.deepEqual(second, { circuit: { transition: 'closed → open', reason: '2 consecutive failures' } });
    const held = await flow.admit(['c@example.com']);
    assert.equal(held.kind, 'circuit_open');
    assert.equal(held.kind === 'circuit_open' && held.retryAt, clock.now + 10_000);
    clock.now += 10_000;
    const probe = go(await flow.admit(['c@example.com']));
    assert.deepEqual(probe.done(ACCEPTED), {
      circuit: { probe: true, transition: 'half_open → closed', reason: '1 probe succeeded' },
    });
  });

  test('a cancelled probe frees its slot without a verdict', async () => {
    const { flow, clock } = flowWithClock();
    go(await flow.admit(['a@example.com'])).done(REFUSED);
    go(await flow.admit(['b@example.com'])).done(REFUSED);
    clock.now += 10_000;
    go(await flow.admit(['c@example.com'])).cancel();
    assert.equal(flow.breakerSnapshot().state, 'half_open');
    go(await flow.admit(['d@example.com'])).done(ACCEPTED);
    assert.equal(flow.breakerSnapshot().state, 'closed');
  });

  test('"try later" lowers a configured domain rate only, and never counts for the breaker', async () => {
    const { flow } = flowWithClock({ domainRates: { byDomain: new Map([['busy.test', 40]]) } });
    for (let i = 0; i < 3; i++) go(await flow.admit(['x@busy.test', 'y@free.test'])).done(THROTTLED);
    const limits = await flow.limitsSnapshot();
    assert.deepEqual(
      limits.lowered.map((entry) => [entry.key, entry.factor]),
      [['domain:busy.test', 0.5]],
    );
    assert.deepEqual(
      limits.domains.map((domain) => [domain.key, domain.configured_per_sec, domain.effective_per_sec]),
      [['domain:busy.test', 40, 20]],
    );
    assert.equal(flow.breakerSnapshot().state, 'closed');
    assert.equal(flow.breakerSnapshot().consecutiveFailures, 0);
  });

  test('a failing shared limiter falls back to per-process buckets', async () => {
    const broken = new MemoryRateLimiter();
    broken.take = () => Promise.reject(new Error('redis down'));
    const { flow } = flowWithClock({
      limiter: new FallbackRateLimiter(broken, new MemoryRateLimiter(), pino({ level: 'silent' })),
      transportRate: { ratePerSec: 1, burst: 1 },
    });
    go(await flow.admit(['a@example.com'])).done(ACCEPTED);
    const second = await flow.admit(['b@example.com']);
    assert.equal(second.kind, 'rate_limited', 'the fallback bucket still limits');
  });

  test('waits in place are reported with bounded labels; takes granted at once are not', async (t) => {
    // FlowControl's sleeps do not hold the process open; this does, for the test's few ms of waits.
    const keepAlive = setInterval(() => {}, 1000);
    t.after(() => clearInterval(keepAlive));
    const waits: RateLimitWait[] = [];
    const { flow } = flowWithClock({
      // A domain's burst is its rate (5): the sixth take waits 200 ms (the fake clock stands still).
      domainRates: { byDomain: new Map([['listed.test', 5]]), fallback: 5 },
      // Burst 1: every take after the first waits a millisecond more.
      transportRate: { ratePerSec: 1000, burst: 1 },
      onWait: (wait) => waits.push(wait),
    });
    go(await flow.admit(['a@listed.test'])).done(ACCEPTED);
    assert.equal(waits.length, 0, 'the first take of every bucket is granted at once');
    for (let i = 0; i < 5; i++) go(await flow.admit([`r${i}@listed.test`])).done(ACCEPTED);
    for (let i = 0; i < 6; i++) go(await flow.admit([`r${i}@Unlisted.test`])).done(ACCEPTED);
    // A recipient's domain never becomes a label value unless MAILROOM_DOMAIN_RATES lists it.
    assert.deepEqual(
      waits.filter((wait) => wait.limit === 'domain').map((wait) => wait.bucket),
      ['domain:listed.test', 'domain:*'],
    );
    const transportWaits = waits.filter((wait) => wait.limit === 'transport');
    assert.equal(transportWaits.length, 11);
    assert.ok(transportWaits.every((wait) => wait.bucket === 'transport:smtp'));
    assert.ok(waits.every((wait) => wait.waitMs > 0));
  });
});
