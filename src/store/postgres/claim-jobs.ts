/**
 * `Store.claimJobs` for PostgreSQL: one transaction of three statements per batch.
 *
 * The requested rows are locked first (SELECT … FOR UPDATE, in id order so two workers' batches
 * cannot deadlock). A second worker claiming the same job waits for the first one's commit, then
 * reads the job `processing` under a live lease and answers `busy`: one delivery, one attempt.
 */
import { randomBytes } from 'node:crypto';
import type { ClaimRequest, ClaimResult } from '../store.js';
import type { Sql } from './database.js';
import { FINISHED, type JobRow, toJob, toJson } from './rows.js';

interface Claim {
  readonly id: string;
  readonly leaseToken: string;
  readonly worker: string;
  readonly leaseUntil: number;
  readonly attempt: number;
  readonly detail: Record<string, unknown>;
}

export async function claimJobs(
  sql: Sql,
  requests: readonly ClaimRequest[],
  now: number,
): Promise<ClaimResult[]> {
  if (requests.length === 0) return [];
  const locked = await sql.query<JobRow>(
    'SELECT * FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE',
    [[...new Set(requests.map((request) => request.jobId))]],
  );
  // Rows as they stand after each request, so a job asked for twice in one batch is claimed once.
  const rows = new Map(locked.rows.map((row) => [row.id, row]));
  const claims: Claim[] = [];
  const results = requests.map((request): ClaimResult => {
    const row = rows.get(request.jobId);
    if (!row) return { kind: 'not_found' };
    if (FINISHED.has(row.status)) return { kind: 'finished', status: row.status };
    if (row.run_at !== null && row.run_at > now)
      return { kind: 'busy', status: row.status, retryAt: row.run_at };
    const claim: Claim = {
      id: row.id,
      leaseToken: randomBytes(12).toString('base64url'),
      worker: request.workerId,
      leaseUntil: now + request.leaseMs,
      attempt: row.attempts + 1,
      detail: { worker: request.workerId, ...(row.status === 'processing' && { code: 'LEASE_EXPIRED' }) },
    };
    claims.push(claim);
    const claimed: JobRow = {
      ...row,
      status: 'processing',
      attempts: claim.attempt,
      run_at: claim.leaseUntil,
      lease_token: claim.leaseToken,
      updated_at: now,
    };
    rows.set(row.id, claimed);
    return { kind: 'claimed', job: toJob(claimed), leaseToken: claim.leaseToken };
  });
  if (claims.length > 0) await writeClaims(sql, claims, now);
  return results;
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
