import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { median, percentile, summarize } from '../bench/stats.js';

describe('percentile', () => {
  test('interpolates between the closest ranks', () => {
    assert.equal(percentile([1, 2, 3, 4], 50), 2.5);
    assert.equal(percentile([10, 20], 25), 12.5);
    assert.equal(percentile([1, 2, 3, 4, 5], 90), 4.6);
  });

  test('p0 and p100 are the minimum and the maximum', () => {
    assert.equal(percentile([5, 1, 9], 0), 1);
    assert.equal(percentile([5, 1, 9], 100), 9);
  });

  test('accepts unsorted input without reordering it', () => {
    const values = [9, 1, 5, 3, 7];
    assert.equal(percentile(values, 50), 5);
    assert.deepEqual(values, [9, 1, 5, 3, 7]);
  });

  test('sorts numerically, not as strings', () => {
    assert.equal(percentile([100, 20, 3], 50), 20);
  });

  test('a single value is every percentile', () => {
    assert.equal(percentile([42], 0), 42);
    assert.equal(percentile([42], 99), 42);
  });

  test('no values gives NaN', () => {
    assert.ok(Number.isNaN(percentile([], 50)));
  });

  test('rejects p outside 0–100', () => {
    assert.throws(() => percentile([1], -1), RangeError);
    assert.throws(() => percentile([1], 101), RangeError);
    assert.throws(() => percentile([1], Number.NaN), RangeError);
  });
});

describe('median', () => {
  test('odd and even counts', () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
  });
});

describe('summarize', () => {
  test('1..100', () => {
    const values = Array.from({ length: 100 }, (_, i) => 100 - i);
    const summary = summarize(values);
    assert.equal(summary.count, 100);
    assert.equal(summary.p50, 50.5);
    assert.ok(Math.abs(summary.p90 - 90.1) < 1e-9);
    assert.ok(Math.abs(summary.p99 - 99.01) < 1e-9);
    assert.equal(summary.max, 100);
    assert.equal(summary.mean, 50.5);
  });

  test('no values', () => {
    const summary = summarize([]);
    assert.equal(summary.count, 0);
    for (const key of ['p50', 'p90', 'p99', 'max', 'mean'] as const)
      assert.ok(Number.isNaN(summary[key]), key);
  });
});
