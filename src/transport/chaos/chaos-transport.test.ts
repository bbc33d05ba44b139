import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ComponentHealth, OutgoingMessage, SendResult, Transport } from '../transport.js';
import { ChaosTransport } from './chaos-transport.js';
import { mulberry32 } from './mulberry32.js';
import { parseChaos } from './parse-chaos.js';

/** Accepts everything and counts what reached it: a failed draw must never get here. */
class CountingTransport implements Transport {
  readonly name = 'smtp';
  readonly sent: OutgoingMessage[] = [];
  closed = 0;
  healthResult: ComponentHealth = { ok: true };

  async send(message: OutgoingMessage): Promise<SendResult> {
    this.sent.push(message);
    return { kind: 'accepted', response: '250 2.0.0 Ok', rejected: [] };
  }

  async health(): Promise<ComponentHealth> {
    return this.healthResult;
  }

  async close(): Promise<void> {
    this.closed++;
  }
}

function message(n: number): OutgoingMessage {
  return {
    jobId: `job-${n}`,
    messageId: `<job-${n}@mailroom.test>`,
    envelope: { from: 'noreply@mailroom.test', to: ['jane@example.com'] },
    raw: Buffer.from(`Message-ID: <job-${n}@mailroom.test>\r\n\r\nhello\r\n`),
  };
}

/** Lets pending microtasks and I/O callbacks run; setImmediate is left real by the fake timers below. */
const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function track(promise: Promise<SendResult>): { settled: boolean; result: Promise<SendResult> } {
  const tracked = { settled: false, result: promise };
  void promise.then(() => {
    tracked.settled = true;
  });
  return tracked;
}

type Outcome = 'accepted' | 454 | 421 | 550;

async function sendMany(chaos: ChaosTransport, n: number): Promise<Map<Outcome, number>> {
  const counts = new Map<Outcome, number>();
  for (let i = 0; i < n; i++) {
    const result = await chaos.send(message(i));
    const outcome = result.kind === 'accepted' ? 'accepted' : (result.responseCode as Outcome);
    counts.set(outcome, (counts.get(outcome) ?? 0) + 1);
  }
  return counts;
}

/**
 * Within 5 binomial standard deviations of n·p: a right implementation lands outside with odds of
 * about 1 in 1.7 million (and the seeded draws make each run the same anyway); a wrong interval,
 * a swapped rate or a double draw lands far outside at these sizes.
 */
function assertNearRate(observed: number, n: number, p: number, what: string): void {
  const expected = n * p;
  const tolerance = 5 * Math.sqrt(n * p * (1 - p));
  assert.ok(
    Math.abs(observed - expected) <= tolerance,
    `${what}: ${observed} of ${n}, expected ${expected} ± ${tolerance.toFixed(1)}`,
  );
}

describe('ChaosTransport: random failures', () => {
  const N = 20_000;
  for (const seed of [1, 42, 2024]) {
    test(`observed fractions match the configured rates (seed ${seed}, ${N} sends)`, async () => {
      const inner = new CountingTransport();
      const chaos = new ChaosTransport(
        inner,
        parseChaos(`error_rate=0.05,throttle_rate=0.1,reject_rate=0.02,seed=${seed}`),
      );
      const counts = await sendMany(chaos, N);
      assertNearRate(counts.get(454) ?? 0, N, 0.05, 'error_rate (454)');
      assertNearRate(counts.get(421) ?? 0, N, 0.1, 'throttle_rate (421)');
      assertNearRate(counts.get(550) ?? 0, N, 0.02, 'reject_rate (550)');
      assertNearRate(counts.get('accepted') ?? 0, N, 0.83, 'accepted');
      // Only the accepted ones reached the relay.
      assert.equal(inner.sent.length, counts.get('accepted'));
    });
  }

  test('injected failures are classified like the relay replies they imitate', async () => {
    // throttle: only throttle_rate is "try later" for flow control; the breaker counts error_rate.
    const cases = [
      [
        'error_rate=1',
        'transient',
        'SMTP_TRANSIENT',
        454,
        undefined,
        /^454 4\.3\.0 .*MAILROOM_CHAOS \(error_rate 1\)/,
      ],
      [
        'throttle_rate=1',
        'transient',
        'SMTP_TRANSIENT',
        421,
        'transport',
        /^421 4\.7\.0 Try again later.*CHAOS/,
      ],
      [
        'reject_rate=1',
        'permanent',
        'SMTP_PERMANENT',
        550,
        undefined,
        /^550 5\.7\.1 .*CHAOS \(reject_rate 1\)/,
      ],
    ] as const;
    for (const [text, kind, code, responseCode, throttle, wording] of cases) {
      const inner = new CountingTransport();
      const chaos = new ChaosTransport(inner, parseChaos(text));
      for (let i = 0; i < 100; i++) {
        const result = await chaos.send(message(i));
        assert.equal(result.kind, kind, text);
        assert.equal(result.code, code);
        assert.equal(result.responseCode, responseCode);
        assert.equal((result as { throttle?: string }).throttle, throttle, text);
        assert.match(result.message, wording);
      }
      assert.equal(inner.sent.length, 0, `${text}: a failed draw must not reach the inner transport`);
    }
  });

  test('rates of 0 inject nothing', async () => {
    const inner = new CountingTransport();
    const chaos = new ChaosTransport(inner, parseChaos('error_rate=0,throttle_rate=0,reject_rate=0,seed=3'));
    const counts = await sendMany(chaos, 2000);
    assert.deepEqual([...counts], [['accepted', 2000]]);
    assert.equal(inner.sent.length, 2000);
  });

  test('a seed makes the draws reproducible; without one, Math.random decides', async (t) => {
    const run = async (text: string): Promise<Outcome[]> => {
      const chaos = new ChaosTransport(new CountingTransport(), parseChaos(text));
      const outcomes: Outcome[] = [];
      for (let i = 0; i < 200; i++) {
        const result = await chaos.send(message(i));
        outcomes.push(result.kind === 'accepted' ? 'accepted' : (result.responseCode as Outcome));
      }
      return outcomes;
    };
    assert.deepEqual(await run('error_rate=0.3,seed=9'), await run('error_rate=0.3,seed=9'));
    assert.notDeepEqual(await run('error_rate=0.3,seed=9'), await run('error_rate=0.3,seed=10'));

    const random = t.mock.method(Math, 'random', () => 0.04);
    assert.deepEqual(new Set(await run('error_rate=0.05')), new Set([454]));
    random.mock.mockImplementation(() => 0.05);
    assert.deepEqual(new Set(await run('error_rate=0.05')), new Set(['accepted']));
  });

  test('an injected random source takes precedence over the seed', async () => {
    const chaos = new ChaosTransport(new CountingTransport(), parseChaos('error_rate=0.5,seed=1'), {
      random: () => 0.7,
    });
    assert.equal((await chaos.send(message(1))).kind, 'accepted');
  });
});

describe('ChaosTransport: downtime on a fake clock', () => {
  const PERIOD = 300_000;
  // A wall-clock time on a period boundary, since the schedule counts from the Unix epoch.
  const BOUNDARY = PERIOD * 6_000_000;

  test('refuses sends during the first 30 s of every 300 s, and only then', async () => {
    let clock = 0;
    const inner = new CountingTransport();
    const chaos = new ChaosTransport(inner, parseChaos('downtime=300s/30s'), { now: () => clock });
    for (let period = 0; period < 4; period++) {
      const start = BOUNDARY + period * PERIOD;
      const expectations: Array<[offset: number, down: boolean]> = [
        [-1, false],
        [0, true],
        [15_000, true],
        [29_999, true],
        [30_000, false],
        [299_999, false],
      ];
      for (const [offset, down] of expectations) {
        clock = start + offset;
        const before = inner.sent.length;
        const result = await chaos.send(message(offset));
        const at = `period ${period}, offset ${offset} ms`;
        if (down) {
          assert.equal(result.kind, 'transient', at);
          assert.ok(result.kind === 'transient');
          assert.equal(result.code, 'SMTP_TRANSIENT');
          assert.equal(result.responseCode, undefined);
          // A relay that is not there is a failure for the breaker, not throttling.
          assert.equal((result as { throttle?: string }).throttle, undefined);
          assert.match(result.message, /^ECONNREFUSED: connection refused: .*injected by MAILROOM_CHAOS/);
          assert.equal(inner.sent.length, before, `${at}: a refused send must not reach the inner transport`);
        } else {
          assert.equal(result.kind, 'accepted', at);
          assert.equal(inner.sent.length, before + 1, at);
        }
      }
    }
  });

  test('health() is down with a chaos detail inside the window, else the inner health plus a note', async () => {
    let clock = BOUNDARY + 10_000;
    const inner = new CountingTransport();
    const chaos = new ChaosTransport(inner, parseChaos('downtime=300s/30s,error_rate=0.05'), {
      now: () => clock,
    });
    assert.equal(chaos.downForMs(), 20_000);
    assert.deepEqual(await chaos.health(), {
      ok: false,
      detail: 'down: injected by MAILROOM_CHAOS (downtime 30s every 300s, error_rate 0.05), back in 20s',
    });

    clock = BOUNDARY + 30_000;
    assert.equal(chaos.downForMs(), 0);
    assert.deepEqual(await chaos.health(), {
      ok: true,
      detail: 'MAILROOM_CHAOS on: downtime 30s every 300s, error_rate 0.05',
    });
    inner.healthResult = { ok: false, detail: 'connect ECONNREFUSED 127.0.0.1:25' };
    assert.deepEqual(await chaos.health(), {
      ok: false,
      detail:
        'connect ECONNREFUSED 127.0.0.1:25; MAILROOM_CHAOS on: downtime 30s every 300s, error_rate 0.05',
    });
  });

  test('a refusal during downtime is immediate: no latency, no draw', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const inner = new CountingTransport();
    const random = t.mock.fn(() => 0.5);
    const chaos = new ChaosTransport(inner, parseChaos('downtime=1m/10s,latency=5s,error_rate=0.5'), {
      now: () => BOUNDARY,
      random,
    });
    const pending = track(chaos.send(message(1)));
    await flush();
    assert.equal(pending.settled, true);
    assert.equal((await pending.result).kind, 'transient');
    assert.equal(random.mock.callCount(), 0);
  });
});

describe('ChaosTransport: latency on fake timers', () => {
  test('a send does not resolve before the latency has passed', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const inner = new CountingTransport();
    const chaos = new ChaosTransport(inner, parseChaos('latency=200ms'));
    const pending = track(chaos.send(message(1)));
    await flush();
    assert.equal(pending.settled, false);
    t.mock.timers.tick(199);
    await flush();
    assert.equal(pending.settled, false);
    assert.equal(inner.sent.length, 0, 'the inner send waits for the latency too');
    t.mock.timers.tick(1);
    assert.equal((await pending.result).kind, 'accepted');
    assert.equal(inner.sent.length, 1);
  });

  test('a range draws uniformly from MIN..MAX, both ends included', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    // Each send draws the latency first, then the failure (0.99: none configured, so none).
    for (const [draw, expectedMs] of [
      [0, 100],
      [0.5, 300],
      [0.999_999, 500],
    ] as const) {
      const draws = [draw, 0.99];
      const chaos = new ChaosTransport(new CountingTransport(), parseChaos('latency=100ms..500ms'), {
        random: () => draws.shift() ?? assert.fail('drew more than twice'),
      });
      const pending = track(chaos.send(message(1)));
      await flush();
      t.mock.timers.tick(expectedMs - 1);
      await flush();
      assert.equal(pending.settled, false, `draw ${draw}: still waiting at ${expectedMs - 1} ms`);
      t.mock.timers.tick(1);
      await flush();
      assert.equal(pending.settled, true, `draw ${draw}: done at ${expectedMs} ms`);
    }
  });

  test('failed draws wait out the latency too, and still never reach the inner transport', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const inner = new CountingTransport();
    const chaos = new ChaosTransport(inner, parseChaos('latency=1s,reject_rate=1'));
    const pending = track(chaos.send(message(1)));
    await flush();
    t.mock.timers.tick(999);
    await flush();
    assert.equal(pending.settled, false);
    t.mock.timers.tick(1);
    assert.equal((await pending.result).kind, 'permanent');
    assert.equal(inner.sent.length, 0);
  });
});

describe('ChaosTransport: the wrapper', () => {
  test('keeps the inner name, exposes its settings and description, and closes the inner transport', async () => {
    const inner = new CountingTransport();
    const settings = parseChaos('error_rate=0.05,latency=200ms');
    const chaos = new ChaosTransport(inner, settings);
    assert.equal(chaos.name, 'smtp');
    assert.equal(chaos.settings, settings);
    assert.equal(chaos.describe(), 'error_rate 0.05, latency 200ms');
    await chaos.close();
    assert.equal(inner.closed, 1);
  });
});

describe('mulberry32', () => {
  test('is reproducible, in [0, 1), and spread evenly', () => {
    const a = mulberry32(42);
    const b = mulberry32(42);
    const bins = new Array<number>(10).fill(0);
    const n = 100_000;
    for (let i = 0; i < n; i++) {
      const x = a();
      assert.equal(x, b());
      assert.ok(x >= 0 && x < 1);
      bins[Math.floor(x * 10)]!++;
    }
    for (const count of bins) assertNearRate(count, n, 0.1, 'bin');
    assert.notEqual(mulberry32(1)(), mulberry32(2)());
  });
});
