import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { describeChaos, parseChaos } from './parse-chaos.js';

describe('parseChaos', () => {
  test('reads every entry, with units and spaces', () => {
    const settings = parseChaos(
      ' downtime = 5m/30s , error_rate=0.05,throttle_rate=.1, reject_rate=0.01,latency=100ms..1.5s,seed=42',
    );
    assert.deepEqual(settings, {
      downtime: { periodMs: 300_000, durationMs: 30_000 },
      errorRate: 0.05,
      throttleRate: 0.1,
      rejectRate: 0.01,
      latency: { minMs: 100, maxMs: 1500 },
      seed: 42,
    });
    assert.ok(Object.isFrozen(settings));
  });

  test('leaves out what is not given: rates 0, no downtime, latency or seed', () => {
    assert.deepEqual(parseChaos('latency=200ms'), {
      errorRate: 0,
      throttleRate: 0,
      rejectRate: 0,
      latency: { minMs: 200, maxMs: 200 },
    });
    assert.deepEqual(parseChaos('error_rate=1').errorRate, 1);
    assert.deepEqual(parseChaos('error_rate=0').errorRate, 0);
  });

  test('accepts rates that add up to exactly 1 despite binary fractions', () => {
    const settings = parseChaos('error_rate=0.1,throttle_rate=0.2,reject_rate=0.7');
    assert.equal(settings.rejectRate, 0.7);
  });

  const broken: Array<[input: string, message: string]> = [
    ['', 'MAILROOM_CHAOS: "": must list at least one name=value entry'],
    ['   ', 'MAILROOM_CHAOS: "   ": must list at least one name=value entry'],
    ['error_rate=2', 'MAILROOM_CHAOS: "error_rate=2": error_rate must be a number from 0 to 1'],
    ['error_rate=-0.1', '"error_rate=-0.1": error_rate must be a number from 0 to 1'],
    ['error_rate=1e-2', '"error_rate=1e-2": error_rate must be a number from 0 to 1'],
    ['error_rate=', '"error_rate=": error_rate must be a number from 0 to 1'],
    ['throttle_rate=half', '"throttle_rate=half": throttle_rate must be a number from 0 to 1'],
    ['reject_rate=Infinity', '"reject_rate=Infinity": reject_rate must be a number from 0 to 1'],
    ['eror_rate=0.1', '"eror_rate=0.1": unknown entry "eror_rate"; expected one of downtime, error_rate'],
    ['toString=1', '"toString=1": unknown entry "toString"'],
    ['error_rate=0.1,error_rate=0.2', '"error_rate=0.2": error_rate is given twice'],
    ['latency', '"latency": entries are name=value'],
    ['latency=200ms,', 'has an empty entry (a stray comma?)'],
    ['latency=200', '"latency=200": latency must be a duration in ms, s or m, or a range MIN..MAX'],
    ['latency=500ms..100ms', '"latency=500ms..100ms": latency must be'],
    ['latency=1ms..2ms..3ms', '"latency=1ms..2ms..3ms": latency must be'],
    ['latency=1h', '"latency=1h": latency must be'],
    ['downtime=30s', '"downtime=30s": downtime must be PERIOD/DURATION'],
    [
      'downtime=30s/30s',
      '"downtime=30s/30s": downtime must be PERIOD/DURATION in ms, s or m with DURATION shorter',
    ],
    ['downtime=30s/60s', '"downtime=30s/60s": downtime must be'],
    ['downtime=30s/0s', '"downtime=30s/0s": downtime must be'],
    ['downtime=300/30', '"downtime=300/30": downtime must be'],
    ['downtime=1m/1s/1s', '"downtime=1m/1s/1s": downtime must be'],
    ['seed=-1', '"seed=-1": seed must be an integer from 0 to 4294967295'],
    ['seed=4294967296', '"seed=4294967296": seed must be an integer'],
    ['seed=1.5', '"seed=1.5": seed must be an integer'],
    [
      'error_rate=0.6,reject_rate=0.5',
      'MAILROOM_CHAOS: "error_rate=0.6,reject_rate=0.5": error_rate + throttle_rate + reject_rate must add up to at most 1, got 1.1',
    ],
  ];
  for (const [input, message] of broken) {
    test(`refuses ${JSON.stringify(input)}`, () => {
      assert.throws(
        () => parseChaos(input),
        (error: Error) => {
          assert.ok(error.message.includes(message), `${error.message} should include ${message}`);
          assert.ok(error.message.startsWith('MAILROOM_CHAOS: '));
          return true;
        },
      );
    });
  }
});

describe('describeChaos', () => {
  test('says what is injected, in the units given', () => {
    assert.equal(
      describeChaos(parseChaos('downtime=300s/30s,error_rate=0.05,latency=200ms')),
      'downtime 30s every 300s, error_rate 0.05, latency 200ms',
    );
    assert.equal(
      describeChaos(parseChaos('seed=7,reject_rate=0.01,throttle_rate=0.2,latency=100ms..2s')),
      'throttle_rate 0.2, reject_rate 0.01, latency 100ms..2s, seed 7',
    );
  });

  test('leaves out rates of 0 and says when nothing is injected', () => {
    assert.equal(describeChaos(parseChaos('error_rate=0')), 'no faults');
    assert.equal(describeChaos(parseChaos('latency=0ms')), 'latency 0ms');
  });
});
