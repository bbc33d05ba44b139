import assert from 'node:assert/strict';
import { test } from 'node:test';
import { retryDelayMs } from './backoff.js';

test('delays double per attempt, stay within [half, full] of the exponential, and cap at the maximum', () => {
  const base = 1000;
  const max = 60_000;
  for (let attempt = 1; attempt <= 10; attempt++) {
    const full = Math.min(max, base * 2 ** (attempt - 1));
    assert.equal(
      retryDelayMs(attempt, base, max, () => 0),
      full / 2,
    );
    assert.equal(
      retryDelayMs(attempt, base, max, () => 1),
      full,
    );
    const sampled = retryDelayMs(attempt, base, max);
    assert.ok(sampled >= full / 2 && sampled <= full, `attempt ${attempt}: ${sampled}`);
  }
});

test('never zero, so a failing message is never retried in a hot loop', () => {
  assert.ok(retryDelayMs(1, 10, 10, () => 0) >= 5);
});
