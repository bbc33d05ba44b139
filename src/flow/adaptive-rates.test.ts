import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { AdaptiveRates, DEFAULT_ADAPTIVE_OPTIONS } from './adaptive-rates.js';

function ratesWithClock() {
  const clock = { now: 0 };
  const rates = new AdaptiveRates({ ...DEFAULT_ADAPTIVE_OPTIONS, now: () => clock.now });
  return { rates, clock };
}

describe('AdaptiveRates', () => {
  test('a key never throttled runs at its whole rate', () => {
    assert.equal(ratesWithClock().rates.factor('domain:example.com'), 1);
  });

  test('a throttling reply halves only the key it concerns', () => {
    const { rates } = ratesWithClock();
    assert.equal(rates.throttled('domain:slow.test', '421 try later'), 0.5);
    assert.equal(rates.factor('domain:slow.test'), 0.5);
    assert.equal(rates.factor('domain:fast.test'), 1);
  });

  test('replies within the cooldown count once; later ones cut again, down to the floor', () => {
    const { rates, clock } = ratesWithClock();
    rates.throttled('k', 'a');
    assert.equal(rates.throttled('k', 'b'), undefined);
    clock.now += 999;
    assert.equal(rates.throttled('k', 'c'), undefined);
    assert.equal(rates.factor('k'), 0.5);
    for (let i = 0; i < 10; i++) {
      clock.now += 1_000;
      rates.throttled('k', 'again');
    }
    assert.equal(rates.factor('k'), DEFAULT_ADAPTIVE_OPTIONS.minFactor);
  });

  test('holds the cut rate for holdMs, then climbs back step by step and forgets the key', () => {
    const { rates, clock } = ratesWithClock();
    rates.throttled('k', '451');
    clock.now = 9_999;
    assert.equal(rates.factor('k'), 0.5);
    clock.now = 10_000;
    assert.equal(rates.factor('k'), 0.6);
    clock.now = 15_000;
    assert.equal(Math.round(rates.factor('k') * 10) / 10, 0.7);
    clock.now = 40_000;
    assert.equal(rates.factor('k'), 1);
    assert.deepEqual(rates.entries(), []);
  });

  test('a cut while recovering starts from the recovered rate', () => {
    const { rates, clock } = ratesWithClock();
    rates.throttled('k', 'first');
    clock.now = 20_000; // 0.5 + 3 steps = 0.8
    assert.equal(Math.round((rates.throttled('k', 'second') ?? 0) * 100) / 100, 0.4);
    const [entry] = rates.entries();
    assert.equal(entry?.cuts, 2);
    assert.equal(entry?.reason, 'second');
  });
});
