import {
  CANCELLABLE_STATUSES,
  type Job,
  type JobEvent,
  type JobStatus,
  type JobWithEvents,
  type NewJob,
  PRIORITY_BY_RANK,
} from '../../domain/email.js';
import type { TemplateContent, TemplateVersion, TemplateVersionSummary } from '../../domain/template.js';
import type { ComponentHealth } from '../../transport/transport.js';
import { decodeCursor, encodeCursor } from '../cursor.js';
import type { EventFeed } from '../event-log.js';
import {
  type CancelResult,
  type ClaimRequest,
  type ClaimResult,
  CommitUnknownError,
  type CreateJobResult,
  countsByStatus,
  type DeadLetterFilter,
  type DueJob,
  type JobCounts,
  type JobFilter,
  type Outbox,
  type Page,
  type RecordOutcome,
  type Store,
} from '../store.js';
import { claimJobs } from './claim-jobs.js';
import { Conditions } from './conditions.js';
import { createJobs } from './create-jobs.js';
import { CommitOutcomeUnknownError, checkSchemaName, Database } from './database.js';
import { migrate } from './migrations.js';
import { PostgresEventFeed, PostgresEvents } from './postgres-events.js';
import { PostgresOutbox } from './postgres-outbox.js';
import { PostgresTemplates } from './postgres-templates.js';
import { PostgresWebhooks } from './postgres-webhooks.js';
import { probeHealth } from './probe-health.js';
import { recordOutcomes } from './record-outcomes.js';
import { type EventRow, type JobRow, toEvent, toJob, toJson } from './rows.js';

/** After a connection lost during COMMIT: how often, and how far apart, to ask whether it happened. */
const COMMIT_CHECK_ATTEMPTS = 25;
const COMMIT_CHECK_PAUSE_MS = 200;

export interface PostgresStoreOptions {
  /** `postgres://user[:password]@host[:port]/database`. */
  readonly url: string;
  /** Holds the store's tables; created by `migrate()`. Default `mailroom`. */
  readonly schema?: string;
  /** Connections in this process's pool. Default 10. */
  readonly poolSize?: number;
  /** Write outbox entries and expose `outbox` (for a network broker). Default false. */
  readonly outbox?: boolean;
  /**
   * How long getting a connection may take (opening one, or waiting for a free one in the pool)
   * before the call rejects. Default 5 s.
   */
  readonly connectTimeoutMs?: number;
  /** The server cancels any statement running longer (lock waits included). Default: the server's setting. */
  readonly statementTimeoutMs?: number;
}

/**
 * The store on PostgreSQL, which several Mailroom processes can share. Same tables, same `run_at`
 * rule and same answers as the SQLite store; what differs is how a batch is written: a batch of
 * claims or of outcomes is one multi-row statement (arrays through unnest), a transaction of its
 * own; a batch of new jobs is one short transaction of a few such statements. Row locks, not a
 * single writer, keep concurrent workers from claiming one job twice.
 *
 * Every write commits before its promise resolves, at one of two durability levels, as in the
 * SQLite store: new jobs, cancels and replays durably (the server's synchronous_commit, on by
 * default: flushed to disk first); claims, outcomes and the outbox's bookkeeping lightly
 * (synchronous_commit off: on disk a fraction of a second later). See `Durability` in database.ts.
 */
export class PostgresStore implements Store {
  readonly outbox?: Outbox;
  private readonly db: Database;
  private readonly schema: string;
  private readonly withOutbox: boolean;
  private readonly templates: PostgresTemplates;
  readonly events: PostgresEvents;
  readonly webhooks: PostgresWebhooks;
  private readonly url: string;
  private readonly connectTimeoutMs: number;

  constructor(options: PostgresStoreOptions) {
    this.schema = checkSchemaName(options.schema ?? 'mailroom');
    this.db = new Database({
      url: options.url,
      schema: this.schema,
      poolSize: options.poolSize ?? 10,
      connectTimeoutMs: options.connectTimeoutMs ?? 5000,
      ...(options.statementTimeoutMs !== undefined && { statementTimeoutMs: options.statementTimeoutMs }),
    });
    this.withOutbox = options.outbox ?? false;
    if (this.withOutbox) this.outbox = new PostgresOutbox(this.db);
    this.templates = new PostgresTemplates(this.db);
    this.events = new PostgresEvents(this.db);
    this.webhooks = new PostgresWebhooks(this.db);
    this.url = options.url;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 5000;
  }

  openEventFeed(onError?: (error: unknown) => void): EventFeed {
    return new PostgresEventFeed({
      url: this.url,
      schema: this.schema,
      log: this.events,
      connectTimeoutMs: this.connectTimeoutMs,
      ...(onError && { onError }),
    });
  }

  migrate(): Promise<void> {
    return migrate(this.db, this.schema);
  }

  close(): Promise<void> {
    return this.db.close();
  }

  health(): Promise<ComponentHealth> {
    return probeHealth(this.db, this.schema);
  }

  async createJobs(jobs: readonly NewJob[]): Promise<CreateJobResult[]> {
    if (jobs.length === 0) return [];
    try {
      return await this.db.transaction((sql) => createJobs(sql, jobs, this.withOutbox));
    } catch (error) {
      if (!(error instanceof CommitOutcomeUnknownError)) throw error;
      return this.afterUncertainCommit(error as CommitOutcomeUnknownError<CreateJobResult[]>);
    }
  }

  /**
   * The connection died during COMMIT. The new jobs' ids are known, so ask (on another connection)
   * whether they exist: all there → the commit happened and its results stand; none → it did not,
   * and the caller may truthfully say nothing was accepted. But only once the server process that
   * ran the transaction has ended: until then the COMMIT may still be landing, and "none" would be
   * premature (seen in the fault test that cuts the connection right after COMMIT). While the
   * database cannot be asked, or that process lingers, keep trying for a few seconds, then give up
   * with `CommitUnknownError`.
   */
  private async afterUncertainCommit(
    uncertain: CommitOutcomeUnknownError<CreateJobResult[]>,
  ): Promise<CreateJobResult[]> {
    const results = uncertain.result;
    const created = results.flatMap((result) => (result.kind === 'created' ? [result.id] : []));
    // Nothing new was written either way: duplicates and conflicts point at jobs that exist.
    if (created.length === 0) return results;
    for (let attempt = 1; attempt <= COMMIT_CHECK_ATTEMPTS; attempt++) {
      const found = await this.countExisting(created).catch(() => undefined);
      if (found === created.length) return results;
      if (found === 0 && (await this.backendGone(uncertain.backendPid))) throw uncertain.cause;
      await new Promise((resolve) => setTimeout(resolve, COMMIT_CHECK_PAUSE_MS));
    }
    throw new CommitUnknownError(created, uncertain.cause);
  }

  /** True once the server process `pid` has ended, so its transaction is decided. */
  private async backendGone(pid: number | undefined): Promise<boolean> {
    if (pid === undefined) return false;
    try {
      const { rows } = await this.db.query<{ alive: number }>(
        'SELECT count(*)::int AS alive FROM pg_stat_activity WHERE pid = $1',
        [pid],
      );
      return rows[0]?.alive === 0;
    } catch {
      return false;
    }
  }

  private async countExisting(ids: readonly string[]): Promise<number> {
    const { rows } = await this.db.query<{ found: number }>(
      'SELECT count(*)::int AS found FROM jobs WHERE id = ANY($1::text[])',
      [ids],
    );
    return rows[0]?.found ?? 0;
  }

  async getJob(id: string): Promise<JobWithEvents | undefined> {
    const { rows } = await this.db.query<JobRow>('SELECT * FROM jobs WHERE id = $1', [id]);
    if (!rows[0]) return undefined;
    const events = await this.eventsFor([id]);
    return { ...toJob(rows[0]), events: events.get(id)! };
  }

  async listJobs(filter: JobFilter): Promise<Page<Job>> {
    const where = new Conditions();
    if (filter.status) where.add(`j.status = ${where.param(filter.status)}`);
    if (filter.to) {
      const address = where.param(filter.to.toLowerCase());
      where.add(`j.id IN (SELECT job_id FROM job_recipients WHERE address = ${address})`);
    }
    if (filter.tag) where.add(`j.id IN (SELECT job_id FROM job_tags WHERE tag = ${where.param(filter.tag)})`);
    if (filter.since !== undefined) where.add(`j.created_at >= ${where.param(filter.since)}`);
    if (filter.until !== undefined) where.add(`j.created_at < ${where.param(filter.until)}`);
    const cursor = filter.cursor ? decodeCursor(filter.cursor) : undefined;
    if (cursor)
      where.add(`(j.created_at, j.id) < (${where.param(cursor.createdAt)}, ${where.param(cursor.id)})`);
    const limit = where.param(filter.limit + 1);
    const { rows } = await this.db.query<JobRow>(
      `SELECT j.* FROM jobs j ${where.sql()} ORDER BY j.created_at DESC, j.id DESC LIMIT ${limit}`,
      where.values,
    );
    const page = rows.slice(0, filter.limit).map(toJob);
    const last = page.at(-1);
    return rows.length > filter.limit && last
      ? { items: page, nextCursor: encodeCursor({ createdAt: last.createdAt, id: last.id }) }
      : { items: page };
  }

  async eventsFor(jobIds: readonly string[]): Promise<Map<string, JobEvent[]>> {
    const byJob = new Map(jobIds.map((id) => [id, [] as JobEvent[]]));
    if (jobIds.length === 0) return byJob;
    const { rows } = await this.db.query<EventRow>(
      'SELECT job_id, type, at, attempt, detail FROM job_events WHERE job_id = ANY($1::text[]) ORDER BY id',
      [jobIds],
    );
    for (const row of rows) byJob.get(row.job_id)?.push(toEvent(row));
    return byJob;
  }

  cancelJob(id: string, now: number): Promise<CancelResult> {
    return this.db.transaction(async (sql): Promise<CancelResult> => {
      const found = await sql.query<{ status: JobStatus; attempts: number }>(
        'SELECT status, attempts FROM jobs WHERE id = $1 FOR UPDATE',
        [id],
      );
      const row = found.rows[0];
      if (!row) return { kind: 'not_found' };
      if (!CANCELLABLE_STATUSES.includes(row.status)) return { kind: 'invalid_state', status: row.status };
      const { rows } = await sql.query<JobRow>(
        `WITH cancelled AS (
           UPDATE jobs SET status = 'cancelled', run_at = NULL, updated_at = $2 WHERE id = $1 RETURNING *
         ),
         event AS (
           INSERT INTO job_events (job_id, type, at, attempt, detail) VALUES ($1, 'cancelled', $2, $3, $4::json)
         )
         SELECT * FROM cancelled`,
        [id, now, row.attempts, toJson({ previous_status: row.status })],
      );
      return { kind: 'cancelled', job: toJob(rows[0]!) };
    });
  }

  /**
   * One index range per priority (jobs_due: priority, run_at), so jobs scheduled for later cost
   * nothing to skip, however many there are.
   */
  async findDueJobs(now: number, limit: number, exclude: ReadonlySet<string>): Promise<DueJob[]> {
    const { rows } = await this.db.query<{ id: string; priority: number }>(
      `SELECT due.id, due.priority
       FROM generate_series(0, $4::int) AS p(rank)
       CROSS JOIN LATERAL (
         SELECT id, priority, run_at FROM jobs
         WHERE priority = p.rank AND run_at <= $1 AND id <> ALL($2::text[])
         ORDER BY run_at LIMIT $3
       ) AS due
       ORDER BY due.priority, due.run_at
       LIMIT $3`,
      [now, [...exclude], limit, PRIORITY_BY_RANK.length - 1],
    );
    return rows.map((row) => ({ id: row.id, priority: PRIORITY_BY_RANK[row.priority] ?? 'normal' }));
  }

  async nextDueAt(): Promise<number | undefined> {
    const { rows } = await this.db.query<{ next: number | null }>(
      `SELECT min(first.run_at) AS next
       FROM generate_series(0, $1::int) AS p(rank)
       CROSS JOIN LATERAL (
         SELECT run_at FROM jobs WHERE priority = p.rank AND run_at IS NOT NULL ORDER BY run_at LIMIT 1
       ) AS first`,
      [PRIORITY_BY_RANK.length - 1],
    );
    return rows[0]?.next ?? undefined;
  }

  /** A light commit (see `Durability`): a claim lost to a crash of PostgreSQL is made again. */
  claimJobs(requests: readonly ClaimRequest[], now: number): Promise<ClaimResult[]> {
    return claimJobs(this.db, requests, now);
  }

  /** A light commit (see `Durability`): a `sent` lost to a crash of PostgreSQL is sent again. */
  recordOutcomes(outcomes: readonly RecordOutcome[], now: number): Promise<boolean[]> {
    return recordOutcomes(this.db, outcomes, now);
  }

  async listDeadLetters(filter: DeadLetterFilter): Promise<Job[]> {
    const where = deadLetterConditions(filter);
    const { rows } = await this.db.query<JobRow>(
      `SELECT * FROM jobs ${where.sql()} ORDER BY dead_lettered_at DESC, id DESC LIMIT ${where.param(filter.limit)}`,
      where.values,
    );
    return rows.map(toJob);
  }

  /** One statement; a transaction all the same, so a commit lost with its connection is not retried. */
  replayDeadLetters(filter: DeadLetterFilter, now: number): Promise<string[]> {
    const where = deadLetterConditions(filter);
    const limit = where.param(filter.limit);
    const at = where.param(now);
    const withOutbox = where.param(this.withOutbox);
    return this.db.transaction(async (sql) => {
      const { rows } = await sql.query<{ id: string }>(
        `WITH picked AS (
           SELECT id, priority, attempts, dead_letter_reason, dead_lettered_at FROM jobs ${where.sql()}
           ORDER BY dead_lettered_at, id LIMIT ${limit}
           FOR UPDATE
         ),
         replayed AS (
           UPDATE jobs j SET status = 'queued', attempts = 0, run_at = ${at}, dead_letter_reason = NULL,
             dead_lettered_at = NULL, updated_at = ${at}
           FROM picked p WHERE j.id = p.id
         ),
         events AS (
           INSERT INTO job_events (job_id, type, at, attempt, detail)
           SELECT id, 'replayed', ${at}, 0,
             json_build_object('previous_reason', dead_letter_reason, 'previous_attempts', attempts)
           FROM picked
         ),
         outbox AS (
           INSERT INTO outbox (job_id, priority, headers, available_at)
           SELECT id, priority, '{}', ${at} FROM picked WHERE ${withOutbox}::boolean
           ON CONFLICT (job_id) DO NOTHING
         )
         SELECT id FROM picked ORDER BY dead_lettered_at, id`,
        where.values,
      );
      return rows.map((row) => row.id);
    });
  }

  async countActive(): Promise<number> {
    const { rows } = await this.db.query<{ n: number }>(
      'SELECT count(*) AS n FROM jobs WHERE run_at IS NOT NULL',
    );
    return rows[0]!.n;
  }

  async countJobs(): Promise<JobCounts> {
    const [byStatus, deadLetters] = await Promise.all([
      this.db.query<{ status: JobStatus; n: number }>(
        'SELECT status, count(*)::int AS n FROM jobs GROUP BY status',
      ),
      this.db.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM jobs WHERE dead_letter_reason IS NOT NULL',
      ),
    ]);
    return { byStatus: countsByStatus(byStatus.rows), deadLetters: deadLetters.rows[0]!.n };
  }

  async pruneIdempotencyKeys(before: number): Promise<number> {
    const result = await this.db.query('DELETE FROM idempotency_keys WHERE created_at < $1', [before]);
    return result.rowCount ?? 0;
  }

  createTemplate(code: string, content: TemplateContent, now: number): Promise<TemplateVersion | undefined> {
    return this.templates.create(code, content, now);
  }

  updateTemplate(code: string, content: TemplateContent, now: number): Promise<TemplateVersion | undefined> {
    return this.templates.update(code, content, now);
  }

  getTemplate(code: string, version?: number): Promise<TemplateVersion | undefined> {
    return this.templates.get(code, version);
  }

  listTemplates(limit: number, after?: string): Promise<TemplateVersionSummary[]> {
    return this.templates.list(limit, after);
  }

  listTemplateVersions(code: string): Promise<TemplateVersionSummary[] | undefined> {
    return this.templates.versions(code);
  }

  deleteTemplate(code: string): Promise<boolean> {
    return this.templates.delete(code);
  }
}

function deadLetterConditions(filter: DeadLetterFilter): Conditions {
  const where = new Conditions();
  where.add("status = 'failed' AND dead_letter_reason IS NOT NULL");
  if (filter.reason) where.add(`dead_letter_reason = ${where.param(filter.reason)}`);
  if (filter.since !== undefined) where.add(`dead_lettered_at >= ${where.param(filter.since)}`);
  if (filter.ids) where.add(`id = ANY(${where.param(filter.ids)}::text[])`);
  return where;
}
