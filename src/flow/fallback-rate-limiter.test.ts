import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { FallbackRateLimiter } from './fallback-rate-limiter.js';
import { MemoryRateLimiter } from './memory-rate-limiter.js';

function brokenShared(): MemoryRateLimiter {
  const broken = new MemoryRateLimiter();
  broken.take = () => Promise.reject(new Error('redis down'));
  broken.levels = () => Promise.reject(new Error('redis down'));
  return broken;
}

/** A pino logger whose error lines are collected. */
function collectingLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'error' }, { write: (line: string) => lines.push(JSON.parse(line)) });
  return { logger, lines };
}

test('while the shared limiter fails, takes come from the local buckets, at the same rates', async () => {
  const { logger } = collectingLogger();
  const limiter = new FallbackRateLimiter(brokenShared(), new MemoryRateLimiter(), logger);
  const bucket = { key: 'transport:smtp', ratePerSec: 0.01, burst: 2 };
  assert.equal((await limiter.take([bucket], 0)).kind, 'granted');
  assert.equal((await limiter.take([bucket], 0)).kind, 'granted');
  assert.equal((await limiter.take([bucket], 0)).kind, 'denied');
  assert.equal((await limiter.take([bucket], 0, 2)).kind, 'denied', 'several tokens pass through too');
});

test('the failure is logged at most every 10 s; levels are the shared ones, never the stand-in', async () => {
  const { logger, lines } = collectingLogger();
  const clock = { now: 0 };
  const limiter = new FallbackRateLimiter(brokenShared(), new MemoryRateLimiter(), logger, () => clock.now);
  const bucket = { key: 'k', ratePerSec: 100, burst: 100 };
  for (let i = 0; i < 5; i++) await limiter.take([bucket], 0);
  clock.now = 9_999;
  await limiter.take([bucket], 0);
  assert.equal(lines.length, 1);
  clock.now = 10_000;
  await limiter.take([bucket], 0);
  assert.equal(lines.length, 2);
  assert.match(String(lines[0]?.msg), /shared limiter failed; limiting per process/);
  await assert.rejects(limiter.levels([bucket]), /redis down/);
  assert.equal(limiter.name, 'memory');
});

test('with a working shared limiter, the local buckets are not touched', async () => {
  const { logger, lines } = collectingLogger();
  const local = new MemoryRateLimiter();
  const limiter = new FallbackRateLimiter(new MemoryRateLimiter(), local, logger);
  const bucket = { key: 'k', ratePerSec: 0.01, burst: 1 };
  assert.equal((await limiter.take([bucket], 0)).kind, 'granted');
  assert.deepEqual(await local.levels([bucket]), [1]);
  const [level] = await limiter.levels([bucket]);
  assert.ok(level !== undefined && level >= 0 && level < 0.01, `the shared bucket was taken from: ${level}`);
  assert.equal(lines.length, 0);
});
