import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type Admission, type BreakerTransition, CircuitBreaker } from './circuit-breaker.js';

const OPTIONS = { failures: 5, openMs: 30_000, halfOpenMax: 3, successes: 2 };

function breakerWithClock(options = OPTIONS) {
  const clock = { now: 1_000_000 };
  const breaker = new CircuitBreaker('smtp', { ...options, now: () => clock.now });
  const transitions: BreakerTransition[] = [];
  breaker.onTransition((transition) => transitions.push(transition));
  return { breaker, clock, transitions };
}

function admitted(admission: Admission) {
  assert.equal(admission.kind, 'admitted', `expected admission, got ${JSON.stringify(admission)}`);
  return admission as Extract<Admission, { kind: 'admitted' }>;
}

function fail(breaker: CircuitBreaker, times: number): void {
  for (let i = 0; i < times; i++) admitted(breaker.admit()).done('failure');
}

describe('CircuitBreaker', () => {
  test('stays closed below the failure threshold, and a success resets the count', () => {
    const { breaker, transitions } = breakerWithClock();
    fail(breaker, 4);
    admitted(breaker.admit()).done('success');
    fail(breaker, 4);
    assert.equal(breaker.snapshot().state, 'closed');
    assert.equal(breaker.snapshot().consecutiveFailures, 4);
    assert.deepEqual(transitions, []);
  });

  test('opens on the fifth consecutive failure and admits nothing until openMs has passed', () => {
    const { breaker, clock, transitions } = breakerWithClock();
    fail(breaker, 5);
    assert.deepEqual(transitions, [
      {
        transport: 'smtp',
        from: 'closed',
        to: 'open',
        at: 1_000_000,
        reason: '5 consecutive failures',
        probeAt: 1_030_000,
      },
    ]);
    clock.now += 29_999;
    assert.deepEqual(breaker.admit(), { kind: 'open', until: 1_030_000 });
    clock.now += 1;
    assert.equal(admitted(breaker.admit()).probe, true);
    assert.equal(breaker.snapshot().state, 'half_open');
  });

  test('neutral results neither count nor reset', () => {
    const { breaker } = breakerWithClock();
    fail(breaker, 4);
    admitted(breaker.admit()).done('neutral');
    assert.equal(breaker.snapshot().consecutiveFailures, 4);
    fail(breaker, 1);
    assert.equal(breaker.snapshot().state, 'open');
  });

  test('half-open lets through at most halfOpenMax probes, and closes after `successes` of them', () => {
    const { breaker, clock, transitions } = breakerWithClock();
    fail(breaker, 5);
    clock.now += 30_000;
    const probes = [admitted(breaker.admit()), admitted(breaker.admit()), admitted(breaker.admit())];
    assert.deepEqual(breaker.admit(), { kind: 'probes_busy' });
    probes[0]!.done('success');
    assert.equal(breaker.snapshot().state, 'half_open');
    // A freed slot may be taken by a new probe.
    const fourth = admitted(breaker.admit());
    assert.equal(fourth.probe, true);
    probes[1]!.done('success');
    assert.equal(breaker.snapshot().state, 'closed');
    assert.deepEqual(
      transitions.map((t) => [t.from, t.to, t.reason]),
      [
        ['closed', 'open', '5 consecutive failures'],
        ['open', 'half_open', '30000 ms passed'],
        ['half_open', 'closed', '2 probes succeeded'],
      ],
    );
    // Probes that end after the breaker closed do not count against the new closed state.
    probes[2]!.done('failure');
    fourth.done('failure');
    assert.equal(breaker.snapshot().consecutiveFailures, 0);
  });

  test('a failed probe opens it again for another openMs', () => {
    const { breaker, clock, transitions } = breakerWithClock();
    fail(breaker, 5);
    clock.now += 30_000;
    const first = admitted(breaker.admit());
    const second = admitted(breaker.admit());
    first.done('success');
    second.done('failure');
    assert.deepEqual(transitions.at(-1), {
      transport: 'smtp',
      from: 'half_open',
      to: 'open',
      at: 1_030_000,
      reason: 'a probe failed',
      probeAt: 1_060_000,
    });
    assert.deepEqual(breaker.admit(), { kind: 'open', until: 1_060_000 });
  });

  test('a send admitted while closed that fails after the breaker opened changes nothing', () => {
    const { breaker, clock } = breakerWithClock();
    const late = admitted(breaker.admit());
    fail(breaker, 5);
    clock.now += 30_000;
    admitted(breaker.admit());
    late.done('failure');
    assert.equal(breaker.snapshot().state, 'half_open');
  });

  test('done() returns the transition the result caused', () => {
    const { breaker, clock } = breakerWithClock();
    fail(breaker, 4);
    assert.equal(admitted(breaker.admit()).done('success'), undefined);
    fail(breaker, 4);
    const fifth = admitted(breaker.admit()).done('failure');
    assert.equal(fifth?.to, 'open');
    clock.now += 30_000;
    const [a, b] = [admitted(breaker.admit()), admitted(breaker.admit())];
    assert.equal(a.done('success'), undefined);
    assert.deepEqual(
      [b.done('success')].map((t) => t && [t.from, t.to]),
      [['half_open', 'closed']],
    );
  });

  test('done() counts once however often it is called', () => {
    const { breaker } = breakerWithClock();
    const send = admitted(breaker.admit());
    for (let i = 0; i < 5; i++) send.done('failure');
    assert.equal(breaker.snapshot().consecutiveFailures, 1);
  });

  test('changed() resolves on a transition and when a probe slot frees up', async () => {
    const { breaker, clock } = breakerWithClock({ ...OPTIONS, halfOpenMax: 1 });
    fail(breaker, 4);
    let woke = false;
    const waiting = breaker.changed().then(() => {
      woke = true;
    });
    await Promise.resolve();
    assert.equal(woke, false);
    fail(breaker, 1);
    await waiting;
    clock.now += 30_000;
    const probe = admitted(breaker.admit());
    assert.equal(breaker.admit().kind, 'probes_busy');
    const slot = breaker.changed();
    probe.done('success');
    await slot;
    assert.equal(admitted(breaker.admit()).probe, true);
  });

  test('snapshot reports counts, times and options', () => {
    const { breaker, clock } = breakerWithClock();
    fail(breaker, 5);
    clock.now += 30_000;
    admitted(breaker.admit());
    const snapshot = breaker.snapshot();
    assert.equal(snapshot.state, 'half_open');
    assert.equal(snapshot.probesInFlight, 1);
    assert.equal(snapshot.openedAt, 1_000_000);
    assert.equal(snapshot.probeAt, 1_030_000);
    assert.equal(snapshot.transitions, 2);
    assert.deepEqual(snapshot.options, OPTIONS);
  });

  test('refuses nonsense options', () => {
    assert.throws(() => new CircuitBreaker('smtp', { ...OPTIONS, failures: 0 }), /failures must be ≥ 1/);
    assert.throws(() => new CircuitBreaker('smtp', { ...OPTIONS, halfOpenMax: 1.5 }), /halfOpenMax/);
  });
});
