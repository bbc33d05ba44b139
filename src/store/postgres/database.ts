/**
 * The PostgreSQL store's connection pools, and the ways it runs SQL: a statement that is safe to
 * repeat, a statement that writes (its own transaction), or a transaction of several. Nothing here
 * knows about jobs.
 */
import pg from 'pg';

/** Statements on one connection: what a transaction's work is given. */
export type Sql = Pick<pg.PoolClient, 'query'>;

/**
 * A hot statement with a name: each connection has PostgreSQL parse and plan it once (a prepared
 * statement), then only binds and executes it. The text must be fixed: one name, one text.
 */
export interface NamedStatement {
  readonly name: string;
  readonly text: string;
}

/** SQL text, or a named statement. */
export type Statement = string | NamedStatement;

/** The query config pg takes for `statement` with `values`. */
export function bind(statement: Statement, values?: unknown[]): pg.QueryConfig {
  return typeof statement === 'string'
    ? { text: statement, ...(values && { values }) }
    : { name: statement.name, text: statement.text, ...(values && { values }) };
}

/**
 * How durable a commit is before its promise resolves.
 * - `durable`: the server's `synchronous_commit` (`on` by default: the commit's WAL is flushed to
 *   disk first; a stricter setting, for synchronous standbys, is kept). New jobs, cancels and
 *   replays.
 * - `light`: `synchronous_commit = off`: the commit is visible at once and reaches the disk within
 *   about 3 × wal_writer_delay (0.6 s by default), or sooner with the next durable commit. A crash
 *   of PostgreSQL or of its machine may forget the last light commits (never a durable one, nor
 *   anything committed before it). Claims, attempt outcomes and the outbox's bookkeeping: see
 *   docs/failure-modes.md, "Power loss".
 */
export type Durability = 'durable' | 'light';

export interface DatabaseOptions {
  readonly url: string;
  /** Already checked with `checkSchemaName`. */
  readonly schema: string;
  /**
   * Connections in all. From 2 up they are split between the durable and the light pool (the light
   * one gets the smaller half); with 1, every commit is durable.
   */
  readonly poolSize: number;
  /** How long getting a connection (opening one, or waiting for a free one) may take. */
  readonly connectTimeoutMs: number;
  readonly statementTimeoutMs?: number;
}

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/** Throws unless `schema` is a plain lower-case identifier: it goes into SQL and a startup option unquoted. */
export function checkSchemaName(schema: string): string {
  if (!SCHEMA_NAME.test(schema)) {
    throw new Error(
      `invalid PostgreSQL schema name ${JSON.stringify(schema)}: use lower-case letters, digits and _ (not first), at most 63`,
    );
  }
  return schema;
}

/**
 * Times are epoch ms in BIGINT columns, and pg returns BIGINT as a string to be safe beyond 2^53.
 * Milliseconds stay far below that, so they come back as numbers. Per pool, not pg's global parser.
 */
const TYPES: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === pg.types.builtins.INT8
      ? Number
      : pg.types.getTypeParser(oid, format)) as pg.CustomTypesConfig['getTypeParser'],
};

/**
 * The connection was lost while a COMMIT (or a statement that is its own transaction) was under
 * way: PostgreSQL may or may not have committed. Carries what the transaction's work returned,
 * which holds if it did (undefined for a lone statement: its answer never came), and the server
 * process that ran it: until that process has ended, the COMMIT may still be landing.
 */
export class CommitOutcomeUnknownError<T> extends Error {
  constructor(
    readonly result: T,
    override readonly cause: unknown,
    readonly backendPid: number | undefined,
  ) {
    super(`the connection was lost before the commit was confirmed: ${(cause as Error)?.message ?? cause}`);
    this.name = 'CommitOutcomeUnknownError';
  }
}

export class Database {
  readonly connectTimeoutMs: number;
  private readonly durable: ConnectionPool;
  /** The same pool as `durable` when there is only one connection. */
  private readonly light: ConnectionPool;
  private ended = false;

  constructor(options: DatabaseOptions) {
    if (hasOptionsParameter(options.url)) {
      // pg lets the URL's parameters override the config: `options` there would drop the search_path.
      throw new Error(
        'the PostgreSQL URL must not carry an `options` parameter: the store sets search_path through it',
      );
    }
    this.connectTimeoutMs = options.connectTimeoutMs;
    const lightSize = Math.floor(options.poolSize / 2);
    // Settings are made per connection at startup: a light commit costs no extra round trip.
    this.durable = openPool(options, options.poolSize - lightSize, lightSize > 0 ? [] : INDEX_PLANS);
    this.light =
      lightSize > 0 ? openPool(options, lightSize, ['synchronous_commit=off', ...INDEX_PLANS]) : this.durable;
  }

  /**
   * Runs one statement. If the connection it got turns out to be dead (closed by the server while
   * idle in the pool, before the pool noticed: a restart ends them all at once), it runs it again
   * on another. Only for statements that are safe to repeat: reads, and writes whose repetition
   * changes nothing.
   */
  async query<R extends pg.QueryResultRow>(
    statement: Statement,
    values?: unknown[],
    durability: Durability = 'durable',
  ): Promise<pg.QueryResult<R>> {
    return this.withLiveConnection(
      this.pool(durability),
      (client) => client.query<R>(bind(statement, values)),
      (client, result) => {
        client.release();
        return result;
      },
      isConnectionLost,
    );
  }

  /**
   * Runs one statement that writes, as its own transaction: atomic, one round trip, no BEGIN or
   * COMMIT. It is run again on another connection only when pg refused to send it (the connection
   * was known dead); when the connection is lost after it was sent, PostgreSQL may have committed
   * it, and this rejects with `CommitOutcomeUnknownError` (its `result` undefined) for the caller
   * to find out.
   */
  async write<R extends pg.QueryResultRow>(
    statement: Statement,
    values: unknown[],
    durability: Durability,
  ): Promise<pg.QueryResult<R>> {
    try {
      return await this.withLiveConnection(
        this.pool(durability),
        (client) => client.query<R>(bind(statement, values)),
        (client, result) => {
          client.release();
          return result;
        },
        wasNeverSent,
      );
    } catch (error) {
      if (isConnectionLost(error) && !wasNeverSent(error))
        throw new CommitOutcomeUnknownError(undefined, error, undefined);
      throw error;
    }
  }

  /**
   * Runs `work` in a transaction and commits it, at the durability asked for, before resolving.
   * Rolls back and rejects if `work` throws. BEGIN goes out with the work's first statement (pg's
   * pipeline mode), saving a round trip; COMMIT only once every statement has answered, so a
   * connection lost before it means nothing was committed. When the connection is found dead at
   * BEGIN, the work runs again on another: nothing it sent could have committed.
   */
  async transaction<T>(work: (sql: Sql) => Promise<T>, durability: Durability = 'durable'): Promise<T> {
    const { pool, size } = this.pool(durability);
    for (let attempt = 1; ; attempt++) {
      const client = await pool.connect();
      const begun = client.query('BEGIN').then(
        () => undefined,
        (error: unknown) => error as Error,
      );
      let result: T;
      try {
        result = await work(client);
      } catch (error) {
        const beginError = await begun;
        if (beginError) {
          // Like pg's own pool.query: a connection that failed a statement is not reused.
          client.release(beginError);
          // Dead connections met in a row: at most every one the pool holds.
          if (attempt <= size && isConnectionLost(beginError)) continue;
          throw beginError;
        }
        await client.query('ROLLBACK').then(
          () => client.release(),
          // The connection itself failed: the pool must not hand it out again.
          (rollbackError: Error) => client.release(rollbackError),
        );
        throw error;
      }
      // Answered before the work's first statement: already settled, and fine.
      await begun;
      try {
        await client.query('COMMIT');
      } catch (error) {
        client.release(error as Error);
        // The COMMIT may have reached the server and committed before the connection died: the
        // caller must find out which, not assume it failed.
        if (isConnectionLost(error)) throw new CommitOutcomeUnknownError(result, error, backendPidOf(client));
        throw error;
      }
      client.release();
      return result;
    }
  }

  async close(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    await Promise.all([this.durable.pool.end(), this.light !== this.durable && this.light.pool.end()]);
  }

  private pool(durability: Durability): ConnectionPool {
    return durability === 'light' ? this.light : this.durable;
  }

  /**
   * Runs `first` on a pooled connection, and again on another as long as it failed in a way
   * `mayRetry` accepts (the connection it got was dead).
   */
  private async withLiveConnection<F, T>(
    { pool, size }: ConnectionPool,
    first: (client: pg.PoolClient) => Promise<F>,
    then: (client: pg.PoolClient, result: F) => T,
    mayRetry: (error: unknown) => boolean,
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await pool.connect();
      let result: F;
      try {
        result = await first(client);
      } catch (error) {
        // Like pg's own pool.query: a connection that failed a statement is not reused.
        client.release(error as Error);
        // Dead connections met in a row: at most every one the pool holds.
        if (attempt <= size && mayRetry(error)) continue;
        throw error;
      }
      return then(client, result);
    }
  }
}

interface ConnectionPool {
  readonly pool: pg.Pool;
  readonly size: number;
}

/**
 * Settings for the connections that run the claims, outcomes and outbox statements. Those are
 * named (`NamedStatement`): after five runs PostgreSQL may keep one generic plan for each, costed
 * once with the table sizes of that moment. Each finds its rows through an index, but a plan made
 * while a table looks tiny (a new schema that autovacuum has not analyzed yet) can scan it instead,
 * and a cached generic plan keeps scanning as the table grows: a claim reading every job. With
 * enable_seqscan off the planner takes an index whenever there is one. jit off: a penalised scan's
 * cost would otherwise trigger JIT compilation, tens of milliseconds for a statement of one.
 * (The durable pool's named statements, the intake's, read no table: only their own input.)
 */
const INDEX_PLANS = ['enable_seqscan=off', 'jit=off'];

function openPool(options: DatabaseOptions, size: number, settings: readonly string[]): ConnectionPool {
  const pool = new pg.Pool({
    connectionString: options.url,
    max: size,
    // A statement is written as soon as it is asked for, not after the previous one's answer: only
    // `transaction` asks for two at once (BEGIN and the first statement). Everything else awaits
    // each statement, and runs exactly as without it.
    pipeline: true,
    connectionTimeoutMillis: options.connectTimeoutMs,
    keepAlive: true,
    options: [`search_path=${options.schema}`, ...settings].map((s) => `-c ${s}`).join(' '),
    // Names the schema in pg_stat_activity: which Mailroom a connection (or a lock) belongs to.
    application_name: `mailroom:${options.schema}`,
    types: TYPES,
    ...(options.statementTimeoutMs !== undefined && { statement_timeout: options.statementTimeoutMs }),
  });
  // A connection that dies (server restart, pg_terminate_backend, network) emits 'error': on the
  // pool while idle (the pool drops it and opens another when needed), on the client while checked
  // out (its statements reject, and the transaction's caller gets that). Unhandled, either event
  // would crash the process.
  pool.on('error', () => {});
  pool.on('connect', (client) => client.on('error', () => {}));
  return { pool, size };
}

/** The server process behind a connection (pg's BackendKeyData), when pg exposes it. */
function backendPidOf(client: pg.PoolClient): number | undefined {
  const pid = (client as unknown as { processID?: unknown }).processID;
  return typeof pid === 'number' && pid > 0 ? pid : undefined;
}

/** SQLSTATE classes that mean the connection is gone, not that the statement was wrong. */
const CONNECTION_LOST_CODE = /^(08|57P01|57P02|57P03)/;
const CONNECTION_LOST_MESSAGE = /Connection terminated|not queryable|ECONNRESET|EPIPE/;

/** pg refused to send the statement: its connection was already known to be dead. */
function wasNeverSent(error: unknown): boolean {
  return /is not queryable/.test((error as Error)?.message ?? '');
}

export function isConnectionLost(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && (CONNECTION_LOST_CODE.test(code) || /^(ECONNRESET|EPIPE)$/.test(code)))
    return true;
  return typeof message === 'string' && CONNECTION_LOST_MESSAGE.test(message);
}

function hasOptionsParameter(url: string): boolean {
  try {
    return new URL(url).searchParams.has('options');
  } catch {
    return false;
  }
}
