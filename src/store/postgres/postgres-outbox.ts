/**
 * The Outbox of the PostgreSQL store: entries are rows of `outbox`, written by `createJobs` and
 * `replayDeadLetters` in the job's own transaction (see create-jobs.ts, postgres-store.ts).
 *
 * Taking an entry does not delete it: it moves `available_at` past the hold. A dispatcher that dies
 * before `complete` leaves its entries to be taken again once the hold ends; that is what makes
 * publishing at-least-once.
 *
 * Take, complete and release commit lightly (synchronous_commit off, see `Durability`): one that a
 * crash of PostgreSQL forgets leaves its entries as they were before it, so they are published
 * again (a second message for a job, which its claim turns into a no-op), never lost: the entries
 * themselves are written durably with their jobs. The sweep stays durable; it runs twice a minute.
 */
import { PRIORITY_BY_RANK } from '../../domain/email.js';
import type { Outbox, OutboxEntry, OutboxStats } from '../store.js';
import type { Database, NamedStatement } from './database.js';

interface EntryRow {
  job_id: string;
  priority: number;
  headers: Record<string, string>;
  was_available_at: number;
}

const TAKE: NamedStatement = {
  name: 'mailroom_outbox_take',
  text: `WITH due AS (
       SELECT job_id, available_at FROM outbox
       WHERE available_at <= $1
       ORDER BY priority, available_at
       LIMIT $2
       FOR UPDATE SKIP LOCKED
     )
     UPDATE outbox o SET available_at = $3
     FROM due WHERE o.job_id = due.job_id
     RETURNING o.job_id, o.priority, o.headers, due.available_at AS was_available_at`,
};

const COMPLETE: NamedStatement = {
  name: 'mailroom_outbox_complete',
  text: 'DELETE FROM outbox WHERE job_id = ANY($1::text[])',
};

const RELEASE: NamedStatement = {
  name: 'mailroom_outbox_release',
  text: 'UPDATE outbox SET available_at = $2 WHERE job_id = ANY($1::text[])',
};

export class PostgresOutbox implements Outbox {
  constructor(private readonly db: Database) {}

  /**
   * One statement. SKIP LOCKED lets concurrent dispatchers take disjoint sets without waiting; one
   * that reads an entry another has just taken re-checks it after that commit and finds it held.
   * Safe to run twice (the retry after a dead connection): entries taken and lost come back.
   */
  async take(now: number, limit: number, holdMs: number): Promise<OutboxEntry[]> {
    const { rows } = await this.db.query<EntryRow>(TAKE, [now, limit, now + holdMs], 'light');
    // RETURNING has no order of its own: put back the queue's.
    rows.sort((a, b) => a.priority - b.priority || a.was_available_at - b.was_available_at);
    return rows.map((row) => ({
      jobId: row.job_id,
      priority: PRIORITY_BY_RANK[row.priority] ?? 'normal',
      headers: row.headers,
    }));
  }

  async complete(jobIds: readonly string[]): Promise<void> {
    if (jobIds.length === 0) return;
    await this.db.query(COMPLETE, [jobIds], 'light');
  }

  async release(jobIds: readonly string[], now: number): Promise<void> {
    if (jobIds.length === 0) return;
    await this.db.query(RELEASE, [jobIds, now], 'light');
  }

  async stats(now: number): Promise<OutboxStats> {
    const { rows } = await this.db.query<{ due: number; oldest: string | null }>(
      'SELECT count(*)::int AS due, min(available_at) AS oldest FROM outbox WHERE available_at <= $1',
      [now],
      'light',
    );
    const oldest = rows[0]?.oldest;
    return {
      due: rows[0]?.due ?? 0,
      ...(oldest !== null && oldest !== undefined && { oldestDueAt: Number(oldest) }),
    };
  }

  /**
   * Every active job (`run_at` is NULL once a job is finished) that is long overdue and has no
   * entry: its message was lost outside Mailroom (a purged queue, a broker's delivery limit). An
   * added entry is available since the job's `run_at`: stale jobs go out in the order they went
   * stale. Jobs that already have an entry are not counted. Safe to run twice.
   */
  async sweep(staleBefore: number, limit: number): Promise<number> {
    const result = await this.db.query(
      `INSERT INTO outbox (job_id, priority, headers, available_at)
       SELECT j.id, j.priority, '{}', j.run_at FROM jobs j
       WHERE j.run_at < $1
         AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id)
       ORDER BY j.run_at
       LIMIT $2
       ON CONFLICT (job_id) DO NOTHING`,
      [staleBefore, limit],
    );
    return result.rowCount ?? 0;
  }
}
