import { join } from 'node:path';
import Database from 'better-sqlite3';

export interface JobRow {
  readonly id: string;
  readonly status: string;
  readonly attempts: number;
  readonly message_id: string;
}

export interface EventRow {
  readonly job_id: string;
  readonly type: string;
  readonly attempt: number;
  readonly detail: Record<string, unknown>;
}

export interface StoreSnapshot {
  readonly jobs: readonly JobRow[];
  readonly events: readonly EventRow[];
}

/** Where `mailroom start` keeps its store for a given MAILROOM_DATA_DIR (no MAILROOM_DATABASE_URL). */
export function databaseFile(dataDir: string): string {
  return join(dataDir, 'mailroom.db');
}

/**
 * Reads every job and event from a Mailroom database file while no Mailroom runs on it (it was
 * stopped, or killed). Read-only: SQLite still reads what is committed in the WAL, which is where
 * a killed process leaves its last commits, and nothing is changed before the next start.
 */
export function readStore(dataDir: string): StoreSnapshot {
  const db = new Database(databaseFile(dataDir), { readonly: true, fileMustExist: true });
  try {
    const jobs = db
      .prepare('SELECT id, status, attempts, message_id FROM jobs ORDER BY id')
      .all() as JobRow[];
    const events = (
      db.prepare('SELECT job_id, type, attempt, detail FROM job_events ORDER BY id').all() as (Omit<
        EventRow,
        'detail'
      > & { detail: string })[]
    ).map((row) => ({ ...row, detail: JSON.parse(row.detail) as Record<string, unknown> }));
    return { jobs, events };
  } finally {
    db.close();
  }
}

/** How many jobs are in each status, e.g. `{ sent: 140, processing: 32 }`, for assertions and diagnostics. */
export function countByStatus(jobs: readonly JobRow[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const job of jobs) counts[job.status] = (counts[job.status] ?? 0) + 1;
  return counts;
}
