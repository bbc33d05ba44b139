/**
 * `Store.claimJobs` for PostgreSQL: one statement per batch, its own transaction.
 *
 * The requested rows are locked first (FOR UPDATE, in id order so two workers' batches cannot
 * deadlock), then the claimable ones are updated and their `processing` events inserted, in the
 * same statement. A second worker claiming the same job waits for the first one's commit, then
 * reads the job `processing` under a live lease and answers `busy`: one delivery, one attempt.
 *
 * A batch that asks for one job twice goes the long way (lock, decide in JavaScript, write: a
 * transaction of three statements), so the second request sees the first one's claim.
 */
import { randomBytes } from 'node:crypto';
import { traceContextIn } from '../../telemetry/trace-context.js';
import type { ClaimRequest, ClaimResult } from '../store.js';
import type { Database, NamedStatement, Sql } from './database.js';
import { FINISHED, type JobRow, toJob, toJson } from './rows.js';

interface Claim {
  readonly id: string;
  readonly leaseToken: string;
  readonly worker: string;
  readonly leaseUntil: number;
  readonly attempt: number;
  readonly detail: Record<string, unknown>;
}

/**
 * The jobs as they were, locked, with `claimed` true for those this statement claimed. A job is
 * claimable when it is not finished and its `run_at` has come (`run_at` is NULL only once finished):
 * the same rule as `decide` below. Its `processing` event says LEASE_EXPIRED when it was processing
 * (the detail is chosen here, written by JavaScript: json keeps its text as given).
 */
const CLAIM: NamedStatement = {
  name: 'mailroom_claim_jobs',
  text: `WITH request AS (
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::json[], $6::json[])
         AS r(id, lease_token, lease_owner, run_at, detail, expired_detail)
     ),
     locked AS MATERIALIZED (
       SELECT * FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
     ),
     claimable AS MATERIALIZED (
       SELECT l.id, l.status, l.attempts + 1 AS attempt, r.lease_token, r.lease_owner, r.run_at,
         CASE WHEN l.status = 'processing' THEN r.expired_detail ELSE r.detail END AS detail
       FROM locked l JOIN request r USING (id)
       WHERE l.status NOT IN ('sent', 'failed', 'cancelled') AND (l.run_at IS NULL OR l.run_at <= $7)
     ),
     updated AS (
       UPDATE jobs j SET status = 'processing', attempts = c.attempt, lease_token = c.lease_token,
         lease_owner = c.lease_owner, run_at = c.run_at, updated_at = $7
       FROM claimable c WHERE j.id = c.id
     ),
     events AS (
       INSERT INTO job_events (job_id, type, at, attempt, detail)
       SELECT id, 'processing', $7, attempt, detail FROM claimable
     )
     SELECT l.*, c.id IS NOT NULL AS claimed,
       -- The trace context saved at acceptance, only when asked for (tracing on): one index probe.
       CASE WHEN $8::boolean AND c.id IS NOT NULL THEN
         (SELECT e.detail FROM job_events e WHERE e.job_id = l.id ORDER BY e.id LIMIT 1)
       END AS first_detail
     FROM locked l LEFT JOIN claimable c ON c.id = l.id`,
};

export async function claimJobs(
  db: Database,
  requests: readonly ClaimRequest[],
  now: number,
): Promise<ClaimResult[]> {
  if (requests.length === 0) return [];
  const ids = requests.map((request) => request.jobId);
  if (new Set(ids).size < ids.length) {
    return db.transaction((sql) => claimInTransaction(sql, requests, now), 'light');
  }
  const tokens = leaseTokens(requests.length);
  const { rows } = await db.write<
    JobRow & { claimed: boolean; first_detail: Record<string, unknown> | null }
  >(
    CLAIM,
    [
      ids,
      tokens,
      requests.map((request) => request.workerId),
      requests.map((request) => now + request.leaseMs),
      requests.map((request) => toJson(claimDetail(request.workerId, false))),
      requests.map((request) => toJson(claimDetail(request.workerId, true))),
      now,
      requests.some((request) => request.withTraceContext === true),
    ],
    'light',
  );
  const locked = new Map(rows.map((row) => [row.id, row]));
  return requests.map((request, index) => {
    const row = locked.get(request.jobId);
    const result = decide(request, row, tokens[index]!, now);
    // The statement and `decide` apply the same rule; a difference would be a bug in one of them.
    if ((result.kind === 'claimed') !== (row?.claimed ?? false)) {
      throw new Error(`claimJobs: the claim statement and decide() disagree about job ${request.jobId}`);
    }
    return withSavedTrace(result, row?.first_detail ?? undefined);
  });
}

/** A claim with the trace context found in its job's first event detail, when there is one. */
function withSavedTrace(result: ClaimResult, firstDetail: Record<string, unknown> | undefined): ClaimResult {
  if (result.kind !== 'claimed') return result;
  const traceContext = traceContextIn(firstDetail);
  return traceContext ? { ...result, traceContext } : result;
}

/** What a request gets, given its job's row as it stands (locked): the job as claimed, or why not. */
function decide(
  request: ClaimRequest,
  row: JobRow | undefined,
  leaseToken: string,
  now: number,
): ClaimResult {
  if (!row) return { kind: 'not_found' };
  if (FINISHED.has(row.status)) return { kind: 'finished', status: row.status };
  if (row.run_at !== null && row.run_at > now)
    return { kind: 'busy', status: row.status, retryAt: row.run_at };
  const claimed: JobRow = {
    ...row,
    status: 'processing',
    attempts: row.attempts + 1,
    run_at: now + request.leaseMs,
    lease_token: leaseToken,
    updated_at: now,
  };
  return { kind: 'claimed', job: toJob(claimed), leaseToken };
}

function claimDetail(worker: string, leaseExpired: boolean): Record<string, unknown> {
  return { worker, ...(leaseExpired && { code: 'LEASE_EXPIRED' }) };
}

/** Unguessable lease tokens, one per request: 12 random bytes each, drawn at once. */
function leaseTokens(count: number): string[] {
  const bytes = randomBytes(12 * count);
  return Array.from({ length: count }, (_, i) => bytes.subarray(12 * i, 12 * i + 12).toString('base64url'));
}

/**
 * The long way, for a batch that asks for a job more than once: lock, decide each request against
 * the rows as the earlier requests left them, then write the claims. Three statements.
 */
async function claimInTransaction(
  sql: Sql,
  requests: readonly ClaimRequest[],
  now: number,
): Promise<ClaimResult[]> {
  const locked = await sql.query<JobRow>(
    'SELECT * FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE',
    [[...new Set(requests.map((request) => request.jobId))]],
  );
  // Rows as they stand after each request, so a job asked for twice in one batch is claimed once.
  const rows = new Map(locked.rows.map((row) => [row.id, row]));
  const claims: Claim[] = [];
  const tokens = leaseTokens(requests.length);
  const results = requests.map((request, index): ClaimResult => {
    const row = rows.get(request.jobId);
    const result = decide(request, row, tokens[index]!, now);
    if (result.kind !== 'claimed' || !row) return result;
    claims.push({
      id: row.id,
      leaseToken: result.leaseToken,
      worker: request.workerId,
      leaseUntil: now + request.leaseMs,
      attempt: result.job.attempts,
      detail: claimDetail(request.workerId, row.status === 'processing'),
    });
    rows.set(row.id, {
      ...row,
      status: 'processing',
      attempts: result.job.attempts,
      run_at: now + request.leaseMs,
      lease_token: result.leaseToken,
      updated_at: now,
    });
    return result;
  });
  if (claims.length === 0) return results;
  await writeClaims(sql, claims, now);
  if (!requests.some((request) => request.withTraceContext === true)) return results;
  // As the one-statement claim does: the trace context saved at acceptance, for each job claimed.
  const first = await sql.query<{ job_id: string; detail: Record<string, unknown> }>(
    `SELECT DISTINCT ON (job_id) job_id, detail FROM job_events WHERE job_id = ANY($1::text[])
      ORDER BY job_id, id`,
    [claims.map((claim) => claim.id)],
  );
  const details = new Map(first.rows.map((row) => [row.job_id, row.detail]));
  return results.map((result) =>
    withSavedTrace(result, result.kind === 'claimed' ? details.get(result.job.id) : undefined),
  );
}

/** The claims' updates and their `processing` events, in one statement. */
async function writeClaims(sql: Sql, claims: readonly Claim[], now: number): Promise<void> {
  await sql.query(
    `WITH claim AS (
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::int[], $6::json[])
         AS c(id, lease_token, lease_owner, run_at, attempts, detail)
     ),
     updated AS (
       UPDATE jobs j SET status = 'processing', attempts = c.attempts, lease_token = c.lease_token,
         lease_owner = c.lease_owner, run_at = c.run_at, updated_at = $7
       FROM claim c WHERE j.id = c.id
     )
     INSERT INTO job_events (job_id, type, at, attempt, detail)
     SELECT id, 'processing', $7, attempts, detail FROM claim`,
    [
      claims.map((c) => c.id),
      claims.map((c) => c.leaseToken),
      claims.map((c) => c.worker),
      claims.map((c) => c.leaseUntil),
      claims.map((c) => c.attempt),
      claims.map((c) => toJson(c.detail)),
      now,
    ],
  );
}
