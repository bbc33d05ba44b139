import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MailroomError } from '../errors.js';
import { loadConfig } from './load-config.js';

function problemsOf(env: Record<string, string>): string {
  try {
    loadConfig(env);
  } catch (error) {
    assert.ok(error instanceof MailroomError);
    assert.equal(error.code, 'CONFIG_INVALID');
    return error.message;
  }
  assert.fail('expected CONFIG_INVALID');
}

describe('loadConfig: flow control variables', () => {
  test('defaults: breaker 5 / 30000 ms / 3 probes / 2 successes; no rate limits, no chaos', () => {
    const config = loadConfig({});
    assert.deepEqual(
      [config.breakerFailures, config.breakerOpenMs, config.breakerHalfOpenMax, config.breakerSuccesses],
      [5, 30_000, 3, 2],
    );
    assert.equal(config.ratePerSec, undefined);
    assert.equal(config.domainRates, undefined);
    assert.equal(config.apiRatePerMin, undefined);
    assert.equal(config.chaos, undefined);
  });

  test('rates, domain rates and chaos are parsed', () => {
    const config = loadConfig({
      MAILROOM_RATE_PER_SEC: '12.5',
      MAILROOM_RATE_BURST: '20',
      MAILROOM_DOMAIN_RATES: 'Gmail.com=20/s, yahoo.com=600/m ,*=100/s',
      MAILROOM_API_RATE_PER_MIN: '600',
      MAILROOM_CHAOS: 'error_rate=0.05,latency=200ms',
    });
    assert.equal(config.ratePerSec, 12.5);
    assert.equal(config.rateBurst, 20);
    assert.deepEqual(
      [...config.domainRates!.byDomain],
      [
        ['gmail.com', 20],
        ['yahoo.com', 10],
      ],
    );
    assert.equal(config.domainRates!.fallback, 100);
    assert.equal(config.apiRatePerMin, 600);
    assert.equal(config.chaos?.errorRate, 0.05);
  });

  test('blank values mean unset', () => {
    const config = loadConfig({ MAILROOM_DOMAIN_RATES: '  ', MAILROOM_CHAOS: '' });
    assert.equal(config.domainRates, undefined);
    assert.equal(config.chaos, undefined);
  });

  test('a wrong entry is named with its rule, and every problem is reported at once', () => {
    const message = problemsOf({
      MAILROOM_DOMAIN_RATES: 'gmail.com=fast',
      MAILROOM_CHAOS: 'error_rate=2',
      MAILROOM_RATE_PER_SEC: '0',
      MAILROOM_BREAKER_FAILURES: '0',
      MAILROOM_REDIS_URL: 'http://cache:6379',
    });
    assert.match(message, /MAILROOM_DOMAIN_RATES="gmail\.com=fast": "gmail\.com=fast": .*20\/s/);
    assert.match(message, /MAILROOM_CHAOS="error_rate=2": .*error_rate must be a number from 0 to 1/);
    assert.match(message, /MAILROOM_RATE_PER_SEC="0": expected a number from 0\.001 to 1000000/);
    assert.match(message, /MAILROOM_BREAKER_FAILURES="0": expected an integer from 1 to 1000/);
    // A secret's value is never echoed.
    assert.match(message, /MAILROOM_REDIS_URL=\(hidden\): expected a redis:\/\/ or rediss:\/\/ URL/);
    assert.doesNotMatch(message, /cache:6379/);
  });
});
