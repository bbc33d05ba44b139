/**
 * `Store.recordOutcomes` for PostgreSQL: one statement per batch, its own transaction.
 *
 * The jobs are locked first (in id order, as claims lock them), then each outcome is checked
 * against the job's current lease: a stale worker's late result (its lease expired and another
 * worker claimed the job) writes nothing. The settlements and their events are written by the same
 * statement.
 *
 * A batch with two outcomes for one job goes the long way (lock, decide in JavaScript, write: a
 * transaction of three statements), so the second one finds the lease the first one ended.
 */
import type { DeadLetterReason, JobEventType, JobStatus } from '../../domain/email.js';
import type { Outcome, RecordOutcome } from '../store.js';
import type { Database, NamedStatement, Sql } from './database.js';
import { toJson, toText } from './rows.js';

/** What an outcome does to its job's row, whatever the attempts spent so far. */
interface Settlement {
  /** Undefined for `released`: `queued` if no attempt is left spent, `deferred` otherwise. */
  readonly status: JobStatus | undefined;
  /** Added to the attempts spent: -1 gives back the attempt of a job released untried. */
  readonly attemptsChange: 0 | -1;
  readonly runAt: number | null;
  /** Kept as it was when null. */
  readonly lastError: string | null;
  readonly deadLetterReason: DeadLetterReason | null;
}

/** A job's row after an outcome. */
interface Update {
  readonly id: string;
  readonly status: JobStatus;
  readonly attempts: number;
  readonly runAt: number | null;
  readonly lastError: string | null;
  readonly deadLetterReason: DeadLetterReason | null;
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

/**
 * Returns the ids whose outcome applied. The events keep the outcomes' order, a `dead_lettered`
 * event right after its `failed` one; each carries the attempt it belongs to (the attempts spent
 * before the settlement).
 */
const RECORD: NamedStatement = {
  name: 'mailroom_record_outcomes',
  text: `WITH outcome AS (
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::bigint[],
                            $7::text[], $8::text[], $9::json[], $10::json[])
         WITH ORDINALITY
         AS o(id, lease_token, type, status, attempts_change, run_at, last_error, dead_letter_reason,
              detail, dead_letter_detail, n)
     ),
     locked AS MATERIALIZED (
       SELECT id, status, attempts, lease_token FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
     ),
     applied AS MATERIALIZED (
       SELECT o.*, l.attempts AS attempt FROM outcome o JOIN locked l USING (id)
       WHERE l.status = 'processing' AND l.lease_token = o.lease_token
     ),
     settled AS (
       UPDATE jobs j SET
         status = COALESCE(a.status,
           CASE WHEN a.attempt + a.attempts_change = 0 THEN 'queued' ELSE 'deferred' END),
         attempts = a.attempt + a.attempts_change, run_at = a.run_at,
         lease_token = NULL, lease_owner = NULL, last_error = COALESCE(a.last_error, j.last_error),
         dead_letter_reason = a.dead_letter_reason,
         dead_lettered_at = CASE WHEN a.dead_letter_reason IS NULL THEN NULL ELSE $11::bigint END,
         updated_at = $11
       FROM applied a WHERE j.id = a.id
     ),
     events AS (
       INSERT INTO job_events (job_id, type, at, attempt, detail)
       SELECT e.id, e.type, $11, e.attempt, e.detail FROM (
         SELECT id, type, attempt, detail, n, 0 AS k FROM applied
         UNION ALL
         SELECT id, 'dead_lettered', attempt, dead_letter_detail, n, 1 FROM applied
         WHERE dead_letter_reason IS NOT NULL
       ) e
       ORDER BY e.n, e.k
     )
     SELECT id FROM applied`,
};

export async function recordOutcomes(
  db: Database,
  outcomes: readonly RecordOutcome[],
  now: number,
): Promise<boolean[]> {
  if (outcomes.length === 0) return [];
  const ids = outcomes.map((o) => o.jobId);
  if (new Set(ids).size < ids.length) {
    return db.transaction((sql) => recordInTransaction(sql, outcomes, now), 'light');
  }
  const settlements = outcomes.map(({ outcome }) => settle(outcome, now));
  const { rows } = await db.write<{ id: string }>(
    RECORD,
    [
      ids,
      outcomes.map((o) => o.leaseToken),
      outcomes.map((o) => o.outcome.kind),
      settlements.map((s) => s.status ?? null),
      settlements.map((s) => s.attemptsChange),
      settlements.map((s) => s.runAt),
      settlements.map((s) => (s.lastError === null ? null : toText(s.lastError))),
      settlements.map((s) => s.deadLetterReason),
      outcomes.map((o) => toJson(eventDetail(o.outcome))),
      settlements.map((s) => (s.deadLetterReason ? toJson({ reason: s.deadLetterReason }) : null)),
      now,
    ],
    'light',
  );
  const applied = new Set(rows.map((row) => row.id));
  return ids.map((id) => applied.has(id));
}

/** What an outcome does to a job, whatever the attempts it has spent. */
export function settle(outcome: Outcome, now: number): Settlement {
  const base = { attemptsChange: 0, runAt: null, lastError: null, deadLetterReason: null } as const;
  const error = outcome.detail.message ?? null;
  switch (outcome.kind) {
    case 'sent':
      return { ...base, status: 'sent' };
    case 'deferred':
      return { ...base, status: 'deferred', runAt: outcome.retryAt, lastError: error };
    case 'failed':
      return { ...base, status: 'failed', lastError: error, deadLetterReason: outcome.deadLetter ?? null };
    case 'released':
      // Released untried: the attempt is given back. Due at once, unless flow control said when.
      return {
        ...base,
        status: undefined,
        attemptsChange: outcome.attemptSpent ? 0 : -1,
        runAt: outcome.retryAt ?? now,
      };
  }
}

/** A job's row after `settlement`, for a job that had spent `attempts` attempts (this one included). */
function settled(id: string, settlement: Settlement, attempts: number): Update {
  const remaining = attempts + settlement.attemptsChange;
  return {
    id,
    status: settlement.status ?? (remaining === 0 ? 'queued' : 'deferred'),
    attempts: remaining,
    runAt: settlement.runAt,
    lastError: settlement.lastError,
    deadLetterReason: settlement.deadLetterReason,
  };
}

/**
 * The long way, for a batch with more than one outcome for a job: lock, check each outcome against
 * the leases as the earlier outcomes left them, then write. Three statements.
 */
async function recordInTransaction(
  sql: Sql,
  outcomes: readonly RecordOutcome[],
  now: number,
): Promise<boolean[]> {
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
    const update = settled(jobId, settle(outcome, now), lease.attempts);
    updates.push(update);
    events.push({ jobId, type: outcome.kind, attempt: lease.attempts, detail: eventDetail(outcome) });
    if (update.deadLetterReason) {
      events.push({
        jobId,
        type: 'dead_lettered',
        attempt: lease.attempts,
        detail: { reason: update.deadLetterReason },
      });
    }
    leases.set(jobId, { ...lease, status: update.status, lease_token: null });
    return true;
  });
  if (updates.length > 0) await writeSettlements(sql, updates, events, now);
  return applied;
}

function eventDetail(outcome: Outcome): Record<string, unknown> {
  const detail: Record<string, unknown> = { ...outcome.detail };
  const retryAt = outcome.kind === 'deferred' || outcome.kind === 'released' ? outcome.retryAt : undefined;
  if (retryAt !== undefined) detail.retry_at = new Date(retryAt).toISOString();
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
