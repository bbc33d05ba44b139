/**
 * `Store.recordOutcomes` for PostgreSQL: one transaction of three statements per batch.
 *
 * The jobs are locked first, then each outcome is checked against the job's current lease: a stale
 * worker's late result (its lease expired and another worker claimed the job) writes nothing.
 */
import type { DeadLetterReason, JobEventType, JobStatus } from '../../domain/email.js';
import type { Outcome, RecordOutcome } from '../store.js';
import type { Sql } from './database.js';
import { toJson, toText } from './rows.js';

/** A job's row after an outcome. */
interface Settlement {
  readonly status: JobStatus;
  readonly attempts: number;
  readonly runAt: number | null;
  /** Kept as it was when null. */
  readonly lastError: string | null;
  readonly deadLetterReason: DeadLetterReason | null;
}

interface Update extends Settlement {
  readonly id: string;
}

interface NewEvent {
  readonly jobId: string;
  readonly type: JobEventType;
  readonly attempt: number;
  readonly detail: Record<string, unknown>;
}

interface LeaseRow {
  id: string;
  status: JobStatus;
  attempts: number;
  lease_token: string | null;
}

export async function recordOutcomes(
  sql: Sql,
  outcomes: readonly RecordOutcome[],
  now: number,
): Promise<boolean[]> {
  if (outcomes.length === 0) return [];
  const locked = await sql.query<LeaseRow>(
    'SELECT id, status, attempts, lease_token FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE',
    [[...new Set(outcomes.map((o) => o.jobId))]],
  );
  // Leases as they stand after each outcome: a second result under one lease is stale too.
  const leases = new Map(locked.rows.map((row) => [row.id, row]));
  const updates: Update[] = [];
  const events: NewEvent[] = [];
  const applied = outcomes.map(({ jobId, leaseToken, outcome }) => {
    const lease = leases.get(jobId);
    if (lease?.status !== 'processing' || lease.lease_token !== leaseToken) return false;
    const settlement = settle(outcome, lease.attempts, now);
    updates.push({ id: jobId, ...settlement });
    events.push({ jobId, type: outcome.kind, attempt: lease.attempts, detail: eventDetail(outcome) });
    if (settlement.deadLetterReason) {
      events.push({
        jobId,
        type: 'dead_lettered',
        attempt: lease.attempts,
        detail: { reason: settlement.deadLetterReason },
      });
    }
    leases.set(jobId, { ...lease, status: settlement.status, lease_token: null });
    return true;
  });
  if (updates.length > 0) await writeSettlements(sql, updates, events, now);
  return applied;
}

/** What an outcome does to a job that has spent `attempts` attempts (this one included). */
export function settle(outcome: Outcome, attempts: number, now: number): Settlement {
  const base = { attempts, runAt: null, lastError: null, deadLetterReason: null };
  const error = outcome.detail.message ?? null;
  switch (outcome.kind) {
    case 'sent':
      return { ...base, status: 'sent' };
    case 'deferred':
      return { ...base, status: 'deferred', runAt: outcome.retryAt, lastError: error };
    case 'failed':
      return { ...base, status: 'failed', lastError: error, deadLetterReason: outcome.deadLetter ?? null };
    case 'released': {
      // Released untried: the attempt is given back. Due at once either way.
      const remaining = outcome.attemptSpent ? attempts : attempts - 1;
      return { ...base, status: remaining === 0 ? 'queued' : 'deferred', attempts: remaining, runAt: now };
    }
  }
}

function eventDetail(outcome: Outcome): Record<string, unknown> {
  const detail: Record<string, unknown> = { ...outcome.detail };
  if (outcome.kind === 'deferred') detail.retry_at = new Date(outcome.retryAt).toISOString();
  return detail;
}

/** The jobs' updates and their events, in one statement; events keep their order (failed, then dead_lettered). */
async function writeSettlements(
  sql: Sql,
  updates: readonly Update[],
  events: readonly NewEvent[],
  now: number,
): Promise<void> {
  await sql.query(
    `WITH settled AS (
       UPDATE jobs j SET status = s.status, attempts = s.attempts, run_at = s.run_at,
         lease_token = NULL, lease_owner = NULL, last_error = COALESCE(s.last_error, j.last_error),
         dead_letter_reason = s.dead_letter_reason,
         dead_lettered_at = CASE WHEN s.dead_letter_reason IS NULL THEN NULL ELSE $6::bigint END,
         updated_at = $6
       FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::text[], $7::text[])
         AS s(id, status, attempts, run_at, last_error, dead_letter_reason)
       WHERE j.id = s.id
     )
     INSERT INTO job_events (job_id, type, at, attempt, detail)
     SELECT e.job_id, e.type, $6, e.attempt, e.detail
     FROM unnest($8::text[], $9::text[], $10::int[], $11::json[]) WITH ORDINALITY AS e(job_id, type, attempt, detail, n)
     ORDER BY e.n`,
    [
      updates.map((u) => u.id),
      updates.map((u) => u.status),
      updates.map((u) => u.attempts),
      updates.map((u) => u.runAt),
      updates.map((u) => (u.lastError === null ? null : toText(u.lastError))),
      now,
      updates.map((u) => u.deadLetterReason),
      events.map((e) => e.jobId),
      events.map((e) => e.type),
      events.map((e) => e.attempt),
      events.map((e) => toJson(e.detail)),
    ],
  );
}
