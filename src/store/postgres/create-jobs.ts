/**
 * `Store.createJobs` for PostgreSQL: a batch of new jobs in one transaction, with the same few
 * statements whatever the batch size.
 *
 * 1. Claim the batch's idempotency keys with one INSERT … ON CONFLICT: a key row inserted (or an
 *    expired one taken over) is ours; any other is read back and answers `duplicate` or `conflict`.
 *    The conflicting row stays locked to the end of the transaction, and a key being inserted by a
 *    concurrent transaction is waited for, so processes racing on one key make exactly one job.
 * 2. Insert the jobs with their recipients, tags, first events and outbox entries in one statement;
 *    ON CONFLICT (id) DO NOTHING makes a known id a `duplicate` with its stored status.
 *
 * Within a batch, requests are answered as if made one after another: a second request with the
 * key of an earlier one is that one's duplicate (or conflict), a second with the same id a duplicate.
 * Keys and jobs are written sorted: two batches that share keys or ids take their locks in the same
 * order, so they wait for each other instead of deadlocking.
 */
import { type IdempotencyClaim, type JobStatus, type NewJob, PRIORITY_RANK } from '../../domain/email.js';
import { traceDetail } from '../../telemetry/trace-context.js';
import type { CreateJobResult } from '../store.js';
import type { NamedStatement, Sql } from './database.js';
import { toJson } from './rows.js';

/**
 * Claims idempotency keys: a key row inserted (or an expired one taken over) is ours; the keys it
 * returns are the ones won.
 */
const CLAIM_KEYS: NamedStatement = {
  name: 'mailroom_claim_keys',
  text: `WITH claim AS (
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])
         AS c(scope, key, request_hash, job_id, status, created_at, not_before)
     )
     INSERT INTO idempotency_keys AS k (scope, key, request_hash, job_id, status, created_at)
     SELECT scope, key, request_hash, job_id, status, created_at FROM claim
     ON CONFLICT (scope, key) DO UPDATE
       SET request_hash = excluded.request_hash, job_id = excluded.job_id, status = excluded.status,
           created_at = excluded.created_at
       -- A key older than the request's notBefore no longer counts: the request takes it over.
       WHERE k.created_at < (SELECT c.not_before FROM claim c WHERE c.scope = k.scope AND c.key = k.key)
     RETURNING k.scope, k.key`,
};

/** Inserts the jobs whose id is free, with everything that goes with them; returns the ids inserted. */
const INSERT_JOBS: NamedStatement = {
  name: 'mailroom_insert_jobs',
  text: `WITH input AS (
       SELECT * FROM unnest($1::text[], $2::text[], $3::smallint[], $4::bigint[], $5::bigint[], $6::text[],
                            $7::json[], $8::json[], $9::json[], $10::bigint[], $11::json[], $17::json[])
         AS i(id, status, priority, run_at, send_at, message_id, content, tags, metadata, created_at, first_event,
              headers)
     ),
     inserted AS (
       INSERT INTO jobs (id, status, priority, attempts, run_at, send_at, message_id, content, tags, metadata,
                         created_at, updated_at)
       SELECT id, status, priority, 0, run_at, send_at, message_id, content, tags, metadata, created_at, created_at
       FROM input
       ON CONFLICT (id) DO NOTHING
       RETURNING id
     ),
     recipients AS (
       INSERT INTO job_recipients (address, job_id)
       SELECT r.address, r.job_id FROM unnest($12::text[], $13::text[]) AS r(job_id, address)
       WHERE r.job_id IN (SELECT id FROM inserted)
       ON CONFLICT DO NOTHING
     ),
     tags AS (
       INSERT INTO job_tags (tag, job_id)
       SELECT t.tag, t.job_id FROM unnest($14::text[], $15::text[]) AS t(job_id, tag)
       WHERE t.job_id IN (SELECT id FROM inserted)
       ON CONFLICT DO NOTHING
     ),
     events AS (
       INSERT INTO job_events (job_id, type, at, attempt, detail)
       SELECT i.id, i.status, i.created_at, 0, i.first_event FROM input i JOIN inserted USING (id)
     ),
     outbox AS (
       INSERT INTO outbox (job_id, priority, headers, available_at)
       SELECT i.id, i.priority, i.headers::jsonb, i.run_at FROM input i JOIN inserted USING (id)
       WHERE $16::boolean
     )
     SELECT id FROM inserted`,
};

/** Who holds an idempotency key: the request hash and job it was first used for. */
interface KeyOwner {
  readonly requestHash: string;
  readonly jobId: string;
  status: JobStatus;
}

export async function createJobs(
  sql: Sql,
  jobs: readonly NewJob[],
  withOutbox: boolean,
): Promise<CreateJobResult[]> {
  const keys = await claimKeys(sql, jobs);
  // Jobs without a key or with a key they won may be created: the first of each id.
  const mayCreate = jobs.flatMap((job, index) => (!job.idempotency || keys.wonBy.has(index) ? [index] : []));
  const firstOfId = new Map<string, number>();
  for (const index of mayCreate) if (!firstOfId.has(jobs[index]!.id)) firstOfId.set(jobs[index]!.id, index);
  const inserted = await insertJobs(
    sql,
    [...firstOfId.keys()].sort().map((id) => jobs[firstOfId.get(id)!]!),
    withOutbox,
  );
  const created = new Set([...firstOfId.values()].filter((index) => inserted.has(jobs[index]!.id)));

  // The others found their id taken (before, or earlier in this batch): duplicates of the stored job.
  const taken = mayCreate.filter((index) => !created.has(index)).map((index) => jobs[index]!);
  const stored = await storedStatuses(sql, taken);
  const takenWithKey = taken.filter((job) => job.idempotency !== undefined);
  await releaseKeys(sql, takenWithKey);
  for (const job of takenWithKey) {
    const owner = keys.owners.get(keyOf(job.idempotency));
    if (owner?.jobId === job.id) owner.status = stored.get(job.id)!;
  }

  return jobs.map((job, index): CreateJobResult => {
    if (created.has(index)) return { kind: 'created', id: job.id, status: statusOf(job) };
    if (!job.idempotency || keys.wonBy.has(index)) {
      return { kind: 'duplicate', id: job.id, status: stored.get(job.id)! };
    }
    const owner = keys.owners.get(keyOf(job.idempotency))!;
    return owner.requestHash === job.idempotency.requestHash
      ? { kind: 'duplicate', id: owner.jobId, status: owner.status }
      : { kind: 'conflict', id: owner.jobId };
  });
}

function statusOf(job: NewJob): JobStatus {
  return isScheduled(job) ? 'scheduled' : 'queued';
}

function isScheduled(job: NewJob): boolean {
  return job.sendAt !== undefined && job.sendAt > job.createdAt;
}

function keyOf(claim: Pick<IdempotencyClaim, 'scope' | 'key'> | undefined): string {
  return JSON.stringify([claim?.scope, claim?.key]);
}

/**
 * Claims the batch's idempotency keys. Returns the indexes of the jobs that won theirs (the first
 * request of each key, when the key was free or expired) and every key's owner.
 */
async function claimKeys(
  sql: Sql,
  jobs: readonly NewJob[],
): Promise<{ wonBy: Set<number>; owners: Map<string, KeyOwner> }> {
  const firstOfKey = new Map<string, number>();
  jobs.forEach((job, index) => {
    const key = keyOf(job.idempotency);
    if (job.idempotency && !firstOfKey.has(key)) firstOfKey.set(key, index);
  });
  const wonBy = new Set<number>();
  const owners = new Map<string, KeyOwner>();
  if (firstOfKey.size === 0) return { wonBy, owners };

  const claimants = [...firstOfKey.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([, index]) => ({ index, job: jobs[index]! }));
  const claims = claimants.map(({ job }) => job.idempotency!);
  const won = await sql.query<{ scope: string; key: string }>({
    ...CLAIM_KEYS,
    values: [
      claims.map((c) => c.scope),
      claims.map((c) => c.key),
      claims.map((c) => c.requestHash),
      claimants.map(({ job }) => job.id),
      claimants.map(({ job }) => statusOf(job)),
      claimants.map(({ job }) => job.createdAt),
      claims.map((c) => c.notBefore),
    ],
  });
  const wonKeys = new Set(won.rows.map((row) => keyOf(row)));
  for (const { index, job } of claimants) {
    const key = keyOf(job.idempotency);
    if (!wonKeys.has(key)) continue;
    wonBy.add(index);
    owners.set(key, { requestHash: job.idempotency!.requestHash, jobId: job.id, status: statusOf(job) });
  }

  const lost = claims.filter((claim) => !wonKeys.has(keyOf(claim)));
  if (lost.length > 0) {
    const held = await sql.query<{
      scope: string;
      key: string;
      request_hash: string;
      job_id: string;
      status: JobStatus;
    }>(
      `SELECT k.scope, k.key, k.request_hash, k.job_id, k.status
       FROM idempotency_keys k JOIN unnest($1::text[], $2::text[]) AS c(scope, key)
         ON k.scope = c.scope AND k.key = c.key`,
      [lost.map((c) => c.scope), lost.map((c) => c.key)],
    );
    for (const row of held.rows) {
      owners.set(keyOf(row), { requestHash: row.request_hash, jobId: row.job_id, status: row.status });
    }
  }
  return { wonBy, owners };
}

/** Inserts the jobs whose id is free, with everything that goes with them. Returns the ids inserted. */
async function insertJobs(sql: Sql, jobs: readonly NewJob[], withOutbox: boolean): Promise<Set<string>> {
  if (jobs.length === 0) return new Set();
  const recipients = jobs.flatMap((job) =>
    [...recipientsOf(job)].map((address) => ({ id: job.id, address })),
  );
  const tags = jobs.flatMap((job) => [...new Set(job.tags)].map((tag) => ({ id: job.id, tag })));
  const result = await sql.query<{ id: string }>({
    ...INSERT_JOBS,
    values: [
      jobs.map((job) => job.id),
      jobs.map(statusOf),
      jobs.map((job) => PRIORITY_RANK[job.priority]),
      jobs.map((job) => (isScheduled(job) ? job.sendAt! : job.createdAt)),
      jobs.map((job) => job.sendAt ?? null),
      jobs.map((job) => job.messageId),
      jobs.map((job) => toJson(job.content)),
      jobs.map((job) => toJson(job.tags)),
      jobs.map((job) => toJson(job.metadata)),
      jobs.map((job) => job.createdAt),
      jobs.map((job) =>
        toJson({
          ...(isScheduled(job) && { send_at: new Date(job.sendAt!).toISOString() }),
          ...traceDetail(job.traceContext),
        }),
      ),
      recipients.map((r) => r.id),
      recipients.map((r) => r.address),
      tags.map((t) => t.id),
      tags.map((t) => t.tag),
      withOutbox,
      // The outbox entry's propagation headers: the dispatcher publishes in the job's trace.
      jobs.map((job) => toJson(job.traceContext ?? {})),
    ],
  });
  return new Set(result.rows.map((row) => row.id));
}

async function storedStatuses(sql: Sql, jobs: readonly NewJob[]): Promise<Map<string, JobStatus>> {
  if (jobs.length === 0) return new Map();
  const result = await sql.query<{ id: string; status: JobStatus }>(
    'SELECT id, status FROM jobs WHERE id = ANY($1::text[])',
    [jobs.map((job) => job.id)],
  );
  return new Map(result.rows.map((row) => [row.id, row.status]));
}

/**
 * A request that won its key but found its id taken created nothing: its key must not stay, as if
 * that request had made the stored job (the SQLite store does not write the key in that case).
 * Matching on job_id leaves alone a key an earlier request of the batch really won.
 */
async function releaseKeys(sql: Sql, jobs: readonly NewJob[]): Promise<void> {
  if (jobs.length === 0) return;
  await sql.query(
    `DELETE FROM idempotency_keys k USING unnest($1::text[], $2::text[], $3::text[]) AS c(scope, key, job_id)
     WHERE k.scope = c.scope AND k.key = c.key AND k.job_id = c.job_id`,
    [
      jobs.map((job) => job.idempotency!.scope),
      jobs.map((job) => job.idempotency!.key),
      jobs.map((job) => job.id),
    ],
  );
}

/** Every address the job goes to, lower-cased (in JavaScript, as the listJobs filter is). */
function recipientsOf(job: NewJob): Set<string> {
  const { to, cc, bcc } = job.content;
  return new Set([...to, ...cc, ...bcc].map((mailbox) => mailbox.address.toLowerCase()));
}
