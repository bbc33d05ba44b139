/**
 * Reads a scaled-out Mailroom's store straight from PostgreSQL (the schema a test provisioned), the
 * way read-store.ts reads an embedded one from its SQLite file: jobs and their event history, for
 * checking what a crash or a cut left behind. Read-only, on a connection of its own that goes to
 * the real server (never through a test's proxy).
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import pg from 'pg';
import type { EventRow, JobRow } from './read-store.js';
import { POSTGRES_URL } from './services.js';

export interface PgJobRow extends JobRow {
  /** The worker holding the job's lease (`Worker.id`), while it is `processing`. */
  readonly lease_owner: string | null;
}

export interface PgSnapshot {
  readonly jobs: readonly PgJobRow[];
  readonly events: readonly EventRow[];
}

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

async function withSchema<T>(schema: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  if (!SCHEMA_NAME.test(schema)) throw new Error(`read-postgres: not a schema name: ${schema}`);
  const client = new pg.Client({ connectionString: POSTGRES_URL, options: `-c search_path=${schema}` });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/** Every job and event of the schema, events in the order they were written. */
export function readPostgres(schema: string): Promise<PgSnapshot> {
  return withSchema(schema, async (client) => {
    const jobs = await client.query<PgJobRow>(
      'SELECT id, status, attempts, message_id, lease_owner FROM jobs ORDER BY id',
    );
    const events = await client.query<EventRow>(
      'SELECT job_id, type, attempt, detail FROM job_events ORDER BY id',
    );
    return { jobs: jobs.rows, events: events.rows };
  });
}

/** The jobs `processing` under a lease of `workerId`, by Message-ID: what that worker held. */
export function leasedBy(schema: string, workerId: string): Promise<PgJobRow[]> {
  return withSchema(schema, async (client) => {
    const { rows } = await client.query<PgJobRow>(
      `SELECT id, status, attempts, message_id, lease_owner FROM jobs
       WHERE status = 'processing' AND lease_owner = $1 ORDER BY id`,
      [workerId],
    );
    return rows;
  });
}

/** How many jobs are in each status, straight from the table (cheap enough to poll). */
export function statusCounts(schema: string): Promise<Record<string, number>> {
  return withSchema(schema, async (client) => {
    const { rows } = await client.query<{ status: string; n: number }>(
      'SELECT status, count(*)::int AS n FROM jobs GROUP BY status',
    );
    return Object.fromEntries(rows.map((row) => [row.status, row.n]));
  });
}

/**
 * Jobs claimed again after a lease ran out (a `processing` event with `detail.code =
 * LEASE_EXPIRED`): the attempt before it never recorded an outcome, so it may have reached the relay.
 * This is how a history shows the duplicate window (docs/failure-modes.md#the-duplicate-window).
 * Maps each such job id to the workers whose attempt was lost.
 */
export function leaseExpiries(events: readonly EventRow[]): Map<string, string[]> {
  const lastClaimBy = new Map<string, string>();
  const lost = new Map<string, string[]>();
  for (const event of events) {
    if (event.type !== 'processing') continue;
    if (event.detail.code === 'LEASE_EXPIRED') {
      const previous = lastClaimBy.get(event.job_id) ?? '?';
      lost.set(event.job_id, [...(lost.get(event.job_id) ?? []), previous]);
    }
    lastClaimBy.set(event.job_id, String(event.detail.worker ?? '?'));
  }
  return lost;
}

/** Outbox entries not yet published (or published and not yet marked so). */
export function outboxCount(schema: string): Promise<number> {
  return withSchema(schema, async (client) => {
    const { rows } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM outbox');
    return rows[0]!.n;
  });
}

/** Outbox entries at `now`: `due` (any dispatcher may take them) and `held` (taken, hidden until their hold ends). */
export function outboxState(schema: string, now: number): Promise<{ due: number; held: number }> {
  return withSchema(schema, async (client) => {
    const { rows } = await client.query<{ due: number; held: number }>(
      `SELECT count(*) FILTER (WHERE available_at <= $1)::int AS due,
              count(*) FILTER (WHERE available_at > $1)::int AS held
       FROM outbox`,
      [now],
    );
    return rows[0]!;
  });
}

/**
 * The local ports of the TCP connections process `pid` holds to `remotePort` (Linux: read from
 * /proc). Taken just before a kill -9, they name the dead process's sessions in pg_stat_activity
 * (`client_port`). Empty where /proc is not available.
 */
export function connectionsOf(pid: number, remotePort: number): Set<number> {
  const inodes = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (match) inodes.add(match[1]!);
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    return new Set();
  }
  const ports = new Set<number>();
  for (const table of [`/proc/${pid}/net/tcp`, `/proc/${pid}/net/tcp6`]) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10 || !inodes.has(fields[9]!)) continue;
      const port = (address: string) => Number.parseInt(address.slice(address.lastIndexOf(':') + 1), 16);
      if (port(fields[2]!) === remotePort) ports.add(port(fields[1]!));
    }
  }
  return ports;
}

/**
 * Server sessions still open for client connections from these local ports. Once none is left, the
 * server has finished with everything a dead client sent: a COMMIT already on its way has landed,
 * any other open transaction has rolled back. Reading after that sees exactly what the client left.
 */
export async function sessionsFrom(clientPorts: ReadonlySet<number>): Promise<number> {
  const client = new pg.Client({ connectionString: POSTGRES_URL });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM pg_stat_activity WHERE client_port = ANY($1::int[])',
      [[...clientPorts]],
    );
    return rows[0]!.n;
  } finally {
    await client.end();
  }
}
