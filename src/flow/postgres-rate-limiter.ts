/**
 * The rate limiter shared through PostgreSQL: buckets are rows of `rate_buckets` in the store's
 * schema, and a take is one call of the `rate_take` function (from the store's migrations 2 and 3),
 * one round trip. The function locks the rows in key order and reads the server's clock, so
 * processes on several machines agree.
 */
import pg from 'pg';
import { checkSchemaName } from '../store/postgres/database.js';
import { checkMaxWait, checkTokens, distinctBuckets } from './bucket-math.js';
import {
  type BucketSpec,
  type RateLimiter,
  RateLimiterUnavailableError,
  type TakeResult,
} from './rate-limiter.js';

export interface PostgresRateLimiterOptions {
  /** `postgres://user[:password]@host[:port]/database`, without an `options` parameter. */
  readonly url: string;
  /** The store's schema, already migrated. Default `mailroom`. */
  readonly schema?: string;
  /** How long getting a connection may take. Default 2 s. */
  readonly connectTimeoutMs?: number;
  /** The server cancels a take running longer, waits for row locks included. Default 2 s. */
  readonly statementTimeoutMs?: number;
  /** How often this process deletes buckets that are full again (no row means full). Default 60 s. */
  readonly pruneEveryMs?: number;
}

/** Named: each connection parses and plans it once. Keys sorted and distinct (`distinctBuckets`). */
const TAKE = {
  name: 'mailroom_rate_take',
  text: 'SELECT granted, wait_ms FROM rate_take($1::text[], $2::float8[], $3::float8[], $4::float8, $5::float8)',
};

const LEVELS = {
  name: 'mailroom_rate_levels',
  text: `SELECT CASE WHEN b.key IS NULL THEN v.burst ELSE least(v.burst,
            b.level + greatest(0, extract(epoch FROM clock_timestamp() - b.updated_at)::float8) * v.rate) END AS level
           FROM unnest($1::text[], $2::float8[], $3::float8[]) WITH ORDINALITY AS v(key, rate, burst, n)
           LEFT JOIN rate_buckets b ON b.key = v.key
          ORDER BY v.n`,
};

/**
 * Deletes buckets that are full again (the same as no row). SKIP LOCKED: a take holding some of
 * those rows is never waited for, so the prune, which locks rows in no particular order, cannot
 * deadlock with one.
 */
const PRUNE = `DELETE FROM rate_buckets WHERE key IN (
  SELECT key FROM rate_buckets WHERE full_at <= clock_timestamp() FOR UPDATE SKIP LOCKED)`;

/** SQLSTATEs of a schema that lacks migrations 2 and 3: undefined function, undefined table. */
const NOT_MIGRATED = new Set(['42883', '42P01']);

export class PostgresRateLimiter implements RateLimiter {
  readonly name = 'postgres';
  private readonly pool: pg.Pool;
  private readonly schema: string;
  private readonly pruneEveryMs: number;
  private lastPrune = Date.now();
  private pruning: Promise<void> | undefined;
  private closed = false;

  constructor(options: PostgresRateLimiterOptions) {
    this.schema = checkSchemaName(options.schema ?? 'mailroom');
    this.pruneEveryMs = options.pruneEveryMs ?? 60_000;
    if (new URL(options.url).searchParams.has('options'))
      throw new Error('the PostgreSQL URL must not carry an `options` parameter: it would drop search_path');
    this.pool = new pg.Pool({
      connectionString: options.url,
      // Takes are one short statement each: a few connections serve a process's whole send rate.
      max: 4,
      connectionTimeoutMillis: options.connectTimeoutMs ?? 2000,
      statement_timeout: options.statementTimeoutMs ?? 2000,
      keepAlive: true,
      // Bucket levels are not precious (a lost one is a full bucket): commits need not wait for disk.
      options: `-c search_path=${this.schema} -c synchronous_commit=off`,
      application_name: `mailroom:${this.schema}:rate`,
    });
    // A connection that dies emits 'error' (on the pool while idle, on the client while in use);
    // unhandled, either would crash the process. The statement in flight rejects anyway.
    this.pool.on('error', () => {});
    this.pool.on('connect', (client) => client.on('error', () => {}));
  }

  async take(buckets: readonly BucketSpec[], maxWaitMs: number, tokens = 1): Promise<TakeResult> {
    checkMaxWait(maxWaitMs);
    const specs = distinctBuckets(buckets);
    checkTokens(tokens, specs);
    if (specs.length === 0) return { kind: 'granted', waitMs: 0 };
    const { rows } = await this.run<{ granted: boolean; wait_ms: number }>(TAKE, [
      ...columns(specs),
      maxWaitMs,
      tokens,
    ]);
    this.maybePrune();
    const { granted, wait_ms: waitMs } = rows[0]!;
    return granted ? { kind: 'granted', waitMs } : { kind: 'denied', retryInMs: waitMs };
  }

  async levels(buckets: readonly BucketSpec[]): Promise<number[]> {
    const specs = distinctBuckets(buckets);
    if (specs.length === 0) return [];
    const { rows } = await this.run<{ level: number }>(LEVELS, columns(specs));
    const byKey = new Map(specs.map((spec, i) => [spec.key, rows[i]!.level]));
    return buckets.map((spec) => byKey.get(spec.key)!);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pruning;
    await this.pool.end();
  }

  /** At most once per `pruneEveryMs` in this process, never awaited by a take; a failure waits for the next. */
  private maybePrune(): void {
    if (this.pruning || Date.now() - this.lastPrune < this.pruneEveryMs) return;
    this.lastPrune = Date.now();
    this.pruning = this.pool
      .query(PRUNE)
      .then(
        () => {},
        () => {},
      )
      .finally(() => {
        this.pruning = undefined;
      });
  }

  private async run<R extends pg.QueryResultRow>(
    statement: { name: string; text: string },
    values: unknown[],
  ): Promise<pg.QueryResult<R>> {
    if (this.closed) throw new RateLimiterUnavailableError('the PostgreSQL rate limiter is closed');
    try {
      return await this.pool.query<R>({ ...statement, values });
    } catch (error) {
      const { code, message } = error as { code?: string; message?: string };
      const hint =
        code && NOT_MIGRATED.has(code)
          ? ' (the schema lacks migrations 2 and 3: run `mailroom migrate`)'
          : '';
      throw new RateLimiterUnavailableError(
        `PostgreSQL rate limiter (schema ${this.schema}): ${message ?? String(error)}${hint}`,
        { cause: error },
      );
    }
  }
}

/** The keys, rates and bursts as three arrays: the statements unnest them side by side. */
function columns(specs: readonly BucketSpec[]): [string[], number[], number[]] {
  return [specs.map((s) => s.key), specs.map((s) => s.ratePerSec), specs.map((s) => s.burst)];
}
