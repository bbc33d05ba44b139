/**
 * The RateLimiter contract: one suite, run over every adapter (memory on a fake clock; Redis and
 * PostgreSQL for real, each in a namespace of this run's own). Then what only the shared adapters
 * promise: two limiters with their own connections never grant more than the buckets allow between
 * them, idle state goes away, and a server that is down or silent makes a take reject, not hang.
 *
 * On real servers time passes while a test runs, so every expected level or wait is a range: from
 * the value at the instant of the last write to the value after all the time measured around the
 * calls (measured time can only exceed the time the server saw). On the fake clock no time passes
 * unless a test says so, and every range is a single value.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, afterEach, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import pg from 'pg';
import { MemoryRateLimiter } from '../src/flow/memory-rate-limiter.js';
import { PostgresRateLimiter } from '../src/flow/postgres-rate-limiter.js';
import type { BucketSpec, RateLimiter } from '../src/flow/rate-limiter.js';
import { RateLimiterUnavailableError } from '../src/flow/rate-limiter.js';
import { RedisRateLimiter } from '../src/flow/redis-rate-limiter.js';
import { PostgresStore } from '../src/store/postgres/postgres-store.js';
import { closedPort, silentServer } from './support/dead-servers.js';
import { POSTGRES_URL, REDIS_URL, serviceAvailable } from './support/services.js';

const RUN = randomBytes(4).toString('hex');
const REDIS_PREFIX = `mailroom:test:${RUN}:`;
const SCHEMA = `mailroom_test_rate_${RUN}`;
/** Float slack on a level compared with its bounds. */
const EPS = 1e-9;

interface Fixture {
  readonly limiter: RateLimiter;
  /** Ms on the limiter's clock: the fake one, or the local monotonic clock for real servers. */
  now(): number;
  /** Lets at least `ms` pass on the limiter's clock. */
  pass(ms: number): Promise<void>;
  /** Another limiter on the same shared state, with connections of its own (shared adapters). */
  another?(): RateLimiter;
  dispose(): Promise<void>;
}

interface Adapter {
  readonly name: string;
  readonly skip: boolean;
  open(): Fixture;
}

/** A real clock, and a sleep that never ends early (timers may fire a millisecond ahead). */
function realTime(limiter: RateLimiter, another?: () => RateLimiter): Fixture {
  const others: RateLimiter[] = [];
  return {
    limiter,
    now: () => performance.now(),
    async pass(ms) {
      const until = performance.now() + ms + 2;
      while (performance.now() < until) await sleep(until - performance.now());
    },
    ...(another && {
      another: () => {
        const other = another();
        others.push(other);
        return other;
      },
    }),
    dispose: async () => {
      await Promise.all([limiter, ...others].map((l) => l.close()));
    },
  };
}

let keys = 0;
/** A bucket no other test (nor an earlier run) has used. */
function bucket(ratePerSec: number, burst: number): BucketSpec {
  return { key: `bucket-${++keys}`, ratePerSec, burst };
}

function assertBetween(actual: number | undefined, low: number, high: number, what: string): void {
  assert.ok(
    actual !== undefined && actual >= low - EPS && actual <= high + EPS,
    `${what}: ${actual} is not within [${low}, ${high}]`,
  );
}

function rateLimiterContract(adapter: Adapter): void {
  describe(`RateLimiter contract: ${adapter.name}`, { skip: adapter.skip }, () => {
    let fixture: Fixture;
    let limiter: RateLimiter;
    beforeEach(() => {
      fixture = adapter.open();
      limiter = fixture.limiter;
    });
    afterEach(() => fixture.dispose());

    /** Ms on the limiter's clock since `start`. */
    const since = (start: number) => fixture.now() - start;

    test('a bucket starts full: burst takes with no wait, then a denial until the next token', async () => {
      const slow = bucket(0.01, 3); // one token per 100 s: the test's own duration hardly counts
      assert.deepEqual(await limiter.levels([slow]), [3]);
      const start = fixture.now();
      for (let i = 0; i < 3; i++)
        assert.deepEqual(await limiter.take([slow], 0), { kind: 'granted', waitMs: 0 });
      const denied = await limiter.take([slow], 0);
      const elapsed = since(start);
      assert.equal(denied.kind, 'denied');
      // (1 - level) / rate, where the level refilled from 0 for at most `elapsed`.
      assertBetween(
        denied.kind === 'denied' ? denied.retryInMs : undefined,
        100_000 - elapsed - 1,
        100_000,
        'retryInMs',
      );
      const [level] = await limiter.levels([slow]);
      assertBetween(level, 0, (since(start) * 0.01) / 1000, 'level after three takes');
    });

    test('refills at its rate, and never past burst', async () => {
      const spec = bucket(4, 10);
      const start = fixture.now();
      for (let i = 0; i < 3; i++) assert.equal((await limiter.take([spec], 0)).kind, 'granted');
      await fixture.pass(500); // two tokens at 4/s
      const [level] = await limiter.levels([spec]);
      assertBetween(level, 9, Math.min(10, 7 + (since(start) * 4) / 1000), 'level after 500 ms');
      await fixture.pass(1000); // four more: full, and no further
      assert.deepEqual(await limiter.levels([spec]), [10]);
    });

    test('a denied take is granted with no wait once retryInMs has passed', async () => {
      const spec = bucket(1, 1);
      const start = fixture.now(); // the refill starts during the first take
      assert.deepEqual(await limiter.take([spec], 0), { kind: 'granted', waitMs: 0 });
      const denied = await limiter.take([spec], 0);
      assert.equal(denied.kind, 'denied');
      const retryInMs = denied.kind === 'denied' ? denied.retryInMs : 0;
      assertBetween(retryInMs, 1000 - since(start) - 1, 1000, 'retryInMs');
      await fixture.pass(retryInMs);
      assert.deepEqual(await limiter.take([spec], 0), { kind: 'granted', waitMs: 0 });
    });

    test('all or nothing: one empty bucket denies the take and leaves the others untouched', async () => {
      const scarce = bucket(0.01, 1);
      const plenty = bucket(0.01, 3);
      const start = fixture.now();
      assert.equal((await limiter.take([scarce], 0)).kind, 'granted');
      for (const order of [
        [scarce, plenty],
        [plenty, scarce],
      ]) {
        const result = await limiter.take(order, 0);
        assert.equal(result.kind, 'denied', `take of ${order.map((b) => b.key)}`);
      }
      const [scarceLevel, plentyLevel] = await limiter.levels([scarce, plenty]);
      assertBetween(scarceLevel, 0, (since(start) * 0.01) / 1000, 'the empty bucket');
      assert.equal(plentyLevel, 3, 'the full bucket lost nothing');
      assert.equal((await limiter.take([plenty], 0)).kind, 'granted');
      assertBetween(
        (await limiter.levels([plenty]))[0],
        2,
        2 + (since(start) * 0.01) / 1000,
        'after its own take',
      );
    });

    test('reservations within maxWaitMs: waits grow by one token time each, then a denial', async () => {
      const spec = bucket(0.1, 1); // a token every 10 s
      const start = fixture.now();
      const waits: number[] = [];
      for (let i = 0; i < 4; i++) {
        const result = await limiter.take([spec], 35_000);
        assert.equal(result.kind, 'granted', `reservation ${i}`);
        waits.push(result.kind === 'granted' ? result.waitMs : -1);
      }
      const elapsed = since(start);
      for (const [i, wait] of waits.entries())
        assertBetween(wait, i * 10_000 - elapsed - 1, i * 10_000, `wait of take ${i}`);
      for (let i = 1; i < waits.length; i++) assert.ok(waits[i]! > waits[i - 1]!, `waits increase: ${waits}`);
      const denied = await limiter.take([spec], 35_000);
      assert.equal(denied.kind, 'denied');
      assertBetween(
        denied.kind === 'denied' ? denied.retryInMs : undefined,
        40_000 - since(start) - 1,
        40_000,
        'retryInMs',
      );
      assertBetween(
        (await limiter.levels([spec]))[0],
        -3,
        -3 + (since(start) * 0.1) / 1000,
        'level with three reserved',
      );
      const granted = await limiter.take([spec], 40_000);
      assert.equal(granted.kind, 'granted', 'granted once maxWaitMs covers the wait');
    });

    test('over several buckets the wait is the longest, and every bucket pays a token', async () => {
      const fast = bucket(1, 1);
      const slow = bucket(0.5, 1);
      const start = fixture.now();
      assert.deepEqual(await limiter.take([fast, slow], 0), { kind: 'granted', waitMs: 0 });
      const reserved = await limiter.take([fast, slow], 5000);
      const elapsed = since(start);
      assert.equal(reserved.kind, 'granted');
      assertBetween(
        reserved.kind === 'granted' ? reserved.waitMs : undefined,
        2000 - elapsed - 1,
        2000,
        'waitMs',
      );
      const [fastLevel, slowLevel] = await limiter.levels([fast, slow]);
      assertBetween(fastLevel, -1, -1 + since(start) / 1000, 'fast bucket');
      assertBetween(slowLevel, -1, -1 + (since(start) * 0.5) / 1000, 'slow bucket');
    });

    test('a key given twice in one call counts once; levels answer in the order asked', async () => {
      const spec = bucket(0.01, 3);
      const other = bucket(0.01, 5);
      const start = fixture.now();
      assert.equal((await limiter.take([spec, spec, { ...spec }], 0)).kind, 'granted');
      const levels = await limiter.levels([spec, other, spec]);
      assert.equal(levels.length, 3);
      assertBetween(levels[0], 2, 2 + (since(start) * 0.01) / 1000, 'the bucket taken from once');
      assert.equal(levels[1], 5, 'an unknown key is full');
      assert.equal(levels[2], levels[0]);
    });

    test('several tokens at once: all from every bucket, or none; waits count the missing tokens', async () => {
      const spec = bucket(0.01, 5); // one token per 100 s
      const wide = bucket(0.01, 10);
      const start = fixture.now();
      assert.deepEqual(await limiter.take([spec, wide], 0, 3), { kind: 'granted', waitMs: 0 });
      const denied = await limiter.take([spec, wide], 0, 3);
      const elapsed = since(start);
      assert.equal(denied.kind, 'denied');
      // 2 left of 5, 3 wanted: one token short, 100 s at this rate.
      assertBetween(
        denied.kind === 'denied' ? denied.retryInMs : undefined,
        100_000 - elapsed - 1,
        100_000,
        'retryInMs',
      );
      const [level, wideLevel] = await limiter.levels([spec, wide]);
      assertBetween(level, 2, 2 + (since(start) * 0.01) / 1000, 'the bucket after one take of 3');
      assertBetween(
        wideLevel,
        7,
        7 + (since(start) * 0.01) / 1000,
        'the other bucket, untouched by the denial',
      );
      // A reservation of several tokens waits for the last of them.
      const reserved = await limiter.take([spec], 300_000, 4);
      assertBetween(
        reserved.kind === 'granted' ? reserved.waitMs : undefined,
        200_000 - since(start) - 1,
        200_000,
        'waitMs',
      );
      await assert.rejects(
        limiter.take([spec], 0, 6),
        RangeError,
        'more than the burst can never be granted',
      );
      await assert.rejects(limiter.take([spec], 0, 1.5), RangeError);
      await assert.rejects(limiter.take([spec], 0, 0), RangeError);
    });

    test('an empty take is granted at once; bad specs and waits are refused', async () => {
      assert.deepEqual(await limiter.take([], 0), { kind: 'granted', waitMs: 0 });
      assert.deepEqual(await limiter.levels([]), []);
      const ok = bucket(1, 1);
      for (const bad of [
        { ...ok, ratePerSec: 0 },
        { ...ok, ratePerSec: -1 },
        { ...ok, ratePerSec: Number.NaN },
        { ...ok, burst: 0.5 },
        { ...ok, burst: Number.POSITIVE_INFINITY },
        { ...ok, key: '' },
      ])
        await assert.rejects(limiter.take([ok, bad], 0), RangeError, JSON.stringify(bad));
      await assert.rejects(limiter.take([ok], -1), RangeError);
      await assert.rejects(limiter.take([ok], Number.NaN), RangeError);
      assert.deepEqual(await limiter.levels([ok]), [1], 'a refused take took nothing');
    });
  });
}

// ---- The adapters -------------------------------------------------------------------------------

const redisUp = await serviceAvailable('Redis', REDIS_URL);
const postgresUp = await serviceAvailable('PostgreSQL', POSTGRES_URL);

const openRedis = (options: { keyPrefix?: string } = {}) =>
  new RedisRateLimiter({ url: REDIS_URL, keyPrefix: REDIS_PREFIX, ...options });
const openPostgres = (options: { pruneEveryMs?: number } = {}) =>
  new PostgresRateLimiter({ url: POSTGRES_URL, schema: SCHEMA, ...options });

const admin = postgresUp ? new pg.Pool({ connectionString: POSTGRES_URL, max: 2 }) : undefined;
if (postgresUp) {
  // The store's migrations make the table and the function, in a schema of this run's own.
  const store = new PostgresStore({ url: POSTGRES_URL, schema: SCHEMA, poolSize: 2 });
  await store.migrate();
  await store.close();
}
const redisAdmin = redisUp ? new Redis(REDIS_URL, { maxRetriesPerRequest: 1 }) : undefined;

after(async () => {
  if (admin) {
    await admin.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`);
    await admin.end();
  }
  if (redisAdmin) {
    // Buckets expire by themselves; this run's are deleted now all the same.
    const found = await redisAdmin.keys(`${REDIS_PREFIX}*`);
    if (found.length) await redisAdmin.del(...found);
    await redisAdmin.quit();
  }
});

let fakeClock = 1_900_000_000_000;
rateLimiterContract({
  name: 'memory (fake clock)',
  skip: false,
  open: () => {
    const limiter = new MemoryRateLimiter({ now: () => fakeClock });
    return {
      limiter,
      now: () => fakeClock,
      pass: async (ms) => {
        fakeClock += ms;
      },
      dispose: () => limiter.close(),
    };
  },
});
rateLimiterContract({ name: 'Redis', skip: !redisUp, open: () => realTime(openRedis(), openRedis) });
rateLimiterContract({
  name: 'PostgreSQL',
  skip: !postgresUp,
  open: () => realTime(openPostgres(), openPostgres),
});

// ---- What only the shared adapters promise ------------------------------------------------------

function sharedContract(name: string, skip: boolean, open: () => RateLimiter): void {
  describe(`RateLimiter shared state: ${name}`, { skip }, () => {
    test('two limiters hammering one key never grant more than burst + rate × elapsed', async () => {
      const spec = bucket(20, 5);
      const limiters = [open(), open()];
      let granted = 0;
      let denied = 0;
      const start = performance.now();
      try {
        // Four loops per limiter, so that takes are in flight on several connections at once.
        await Promise.all(
          limiters.flatMap((limiter) =>
            [1, 2, 3, 4].map(async () => {
              while (performance.now() - start < 1500) {
                const result = await limiter.take([spec], 0);
                if (result.kind === 'granted') granted++;
                else denied++;
              }
            }),
          ),
        );
      } finally {
        await Promise.all(limiters.map((limiter) => limiter.close()));
      }
      const elapsedSec = (performance.now() - start) / 1000;
      // Everything the bucket can have given in that time: full at the start, refilled all along.
      // One token of slack for the server's wall clock against the local monotonic one.
      const most = 5 + 20 * elapsedSec + 1;
      assert.ok(
        granted <= most,
        `${granted} grants in ${elapsedSec.toFixed(3)} s: more than ${most.toFixed(1)}`,
      );
      assert.ok(granted >= 5, `the burst at least was granted: ${granted}`);
      assert.ok(denied > 0, 'the loops outran the bucket, so the bound was tested');
    });

    test('a server that refuses connections makes a take reject with a clear error', {
      timeout: 15_000,
    }, async () => {
      const port = await closedPort();
      const limiter =
        name === 'Redis'
          ? new RedisRateLimiter({ url: `redis://127.0.0.1:${port}` })
          : new PostgresRateLimiter({ url: `postgres://postgres@127.0.0.1:${port}/test`, schema: SCHEMA });
      try {
        await assert.rejects(limiter.take([bucket(1, 1)], 0), (error: Error) => {
          assert.ok(error instanceof RateLimiterUnavailableError, String(error));
          assert.match(
            error.message,
            new RegExp(`${name}.*(127\\.0\\.0\\.1:${port}|${SCHEMA}).*ECONNREFUSED`),
          );
          return true;
        });
      } finally {
        await limiter.close();
      }
    });

    test('a server that accepts and never answers makes a take reject, not hang', {
      timeout: 15_000,
    }, async () => {
      const silent = await silentServer();
      const limiter =
        name === 'Redis'
          ? new RedisRateLimiter({ url: silent.url('redis'), connectTimeoutMs: 500, commandTimeoutMs: 500 })
          : new PostgresRateLimiter({
              url: `${silent.url('postgres')}/test`,
              schema: SCHEMA,
              connectTimeoutMs: 500,
            });
      try {
        await assert.rejects(limiter.take([bucket(1, 1)], 0), RateLimiterUnavailableError);
      } finally {
        await limiter.close();
        await silent.stop();
      }
    });
  });
}

sharedContract('Redis', !redisUp, openRedis);
sharedContract('PostgreSQL', !postgresUp, openPostgres);

describe('RateLimiter state that goes idle', () => {
  test('Redis: a bucket key carries the prefix and expires a second after it would be full', {
    skip: !redisUp,
  }, async () => {
    const limiter = openRedis();
    const spec = bucket(1, 2);
    try {
      await limiter.take([spec], 0); // level 1: full again in 1 s
      const ttl = await redisAdmin!.pttl(REDIS_PREFIX + spec.key);
      assertBetween(ttl, 1, 2000, 'PTTL');
      assert.equal(await redisAdmin!.exists(spec.key), 0, 'nothing without the prefix');
    } finally {
      await limiter.close();
    }
  });

  test('PostgreSQL: buckets full again are pruned, the others kept', { skip: !postgresUp }, async () => {
    const quick = bucket(1000, 1); // full again 1 ms after a take
    const slow = bucket(0.01, 1);
    const rows = async (spec: BucketSpec) =>
      (await admin!.query(`SELECT 1 FROM ${SCHEMA}.rate_buckets WHERE key = $1`, [spec.key])).rowCount;
    const taker = openPostgres(); // its first prune is a minute away
    try {
      await taker.take([quick, slow], 0);
    } finally {
      await taker.close();
    }
    assert.equal(await rows(quick), 1);
    await sleep(20);
    const pruner = openPostgres({ pruneEveryMs: 0 });
    await pruner.take([bucket(1, 1)], 0); // a take starts the prune
    await pruner.close(); // and close waits for it
    assert.equal(await rows(quick), 0, 'the full bucket is gone');
    assert.equal(await rows(slow), 1, 'the bucket still refilling is kept');
  });

  test('PostgreSQL: a schema without the migration is named in the error', {
    skip: !postgresUp,
  }, async () => {
    const limiter = new PostgresRateLimiter({ url: POSTGRES_URL, schema: `${SCHEMA}_never_migrated` });
    try {
      await assert.rejects(limiter.take([bucket(1, 1)], 0), {
        name: 'RateLimiterUnavailableError',
        message: /lacks migrations 2 and 3: run `mailroom migrate`/,
      });
    } finally {
      await limiter.close();
    }
  });
});
