import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import {
  type DeadLetterReason,
  type EmailContent,
  type Job,
  type JobEvent,
  type JobEventType,
  type JobStatus,
  type NewJob,
  PRIORITY_BY_RANK,
  PRIORITY_RANK,
} from '../../domain/email.js';
import type { TemplateContent, TemplateVersion, TemplateVersionSummary } from '../../domain/template.js';
import { type TraceContext, traceContextIn, traceDetail } from '../../telemetry/trace-context.js';
import type { ComponentHealth } from '../../transport/transport.js';
import { decodeCursor, encodeCursor } from '../cursor.js';
import type { EventFeed } from '../event-log.js';
import { PollingEventFeed } from '../polling-event-feed.js';
import {
  type CancelResult,
  type ClaimRequest,
  type ClaimResult,
  type CreateJobResult,
  countsByStatus,
  type DeadLetterFilter,
  type DueJob,
  type JobCounts,
  type JobFilter,
  type Outcome,
  type Page,
  type RecordOutcome,
  type Store,
} from '../store.js';
import { MIGRATIONS } from './migrations.js';
import { SqliteEvents } from './sqlite-events.js';
import { SqliteWebhooks } from './sqlite-webhooks.js';

interface JobRow {
  id: string;
  status: JobStatus;
  priority: number;
  attempts: number;
  run_at: number | null;
  send_at: number | null;
  lease_token: string | null;
  message_id: string;
  content: string;
  tags: string;
  metadata: string;
  last_error: string | null;
  dead_letter_reason: string | null;
  dead_lettered_at: number | null;
  created_at: number;
  updated_at: number;
}

interface EventRow {
  job_id: string;
  type: JobEventType;
  at: number;
  attempt: number;
  detail: string;
}

const FINISHED: ReadonlySet<JobStatus> = new Set(['sent', 'failed', 'cancelled']);

/** How often commits made without fsync are forced to disk (see `commitLight`). */
const LIGHT_SYNC_INTERVAL_MS = 1000;

/**
 * The embedded store: one SQLite file in WAL mode. better-sqlite3 is synchronous; each batch is one
 * short transaction, which is why callers hand it batches.
 *
 * Two levels of durability, chosen per write:
 * - new jobs, cancels and replays commit with `synchronous=FULL`: fsync'd before the promise
 *   resolves, so a 202 survives power loss;
 * - claims and attempt outcomes commit with `synchronous=NORMAL`: in WAL mode that survives a crash
 *   of the process (the bytes are in the OS), and reaches the disk with the next FULL commit or within
 *   LIGHT_SYNC_INTERVAL_MS. An fsync per claim and per outcome would block the event loop for most of
 *   its time. What power loss can cost is written in docs/failure-modes.md.
 */
export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly statements: ReturnType<SqliteStore['prepare']>;
  private unsynced = false;
  /** The connection's current `synchronous` level (set FULL when opened). */
  private synchronous: 'FULL' | 'NORMAL' = 'FULL';
  private readonly syncTimer: NodeJS.Timeout;
  readonly events: SqliteEvents;
  readonly webhooks: SqliteWebhooks;

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.runMigrations();
    this.statements = this.prepare();
    this.events = new SqliteEvents(this.db);
    this.webhooks = new SqliteWebhooks(this.db, (durable, work) =>
      this.commit(durable ? 'FULL' : 'NORMAL', work),
    );
    this.syncTimer = setInterval(() => this.syncLightCommits(), LIGHT_SYNC_INTERVAL_MS);
    this.syncTimer.unref();
  }

  openEventFeed(onError?: (error: unknown) => void): EventFeed {
    return new PollingEventFeed(this.events, undefined, onError);
  }

  async migrate(): Promise<void> {
    this.runMigrations();
  }

  async close(): Promise<void> {
    clearInterval(this.syncTimer);
    if (!this.db.open) return;
    this.syncLightCommits();
    this.db.close();
  }

  /**
   * Probes the real database file and writes nothing: the file is still where it was opened (an open
   * handle keeps working on a deleted file, and everything written there would be lost at the next
   * start), a row of `jobs` reads, and BEGIN IMMEDIATE takes the database's write lock, which fails
   * when the file is read-only or another connection holds the lock. ROLLBACK releases it at once.
   * The lock is waited for HEALTH_LOCK_WAIT_MS, not the busy timeout: /ready must answer quickly.
   */
  async health(): Promise<ComponentHealth> {
    if (!this.db.memory && !existsSync(this.db.name)) {
      return {
        ok: false,
        detail: `database file ${this.db.name} is missing (data directory removed?): writes would be lost`,
      };
    }
    const busyTimeout = this.db.pragma('busy_timeout', { simple: true }) as number;
    try {
      this.db.pragma(`busy_timeout = ${HEALTH_LOCK_WAIT_MS}`);
      this.db.prepare('SELECT id FROM jobs LIMIT 1').get();
      this.db.exec('BEGIN IMMEDIATE');
      this.db.exec('ROLLBACK');
      return { ok: true };
    } catch (error) {
      try {
        if (this.db.inTransaction) this.db.exec('ROLLBACK');
      } catch {
        // The probe failed already; a failed ROLLBACK adds nothing to its detail.
      }
      return { ok: false, detail: describeProbeFailure(error) };
    } finally {
      this.db.pragma(`busy_timeout = ${busyTimeout}`);
    }
  }

  async createJobs(jobs: readonly NewJob[]): Promise<CreateJobResult[]> {
    return this.commitDurable(() => jobs.map((job) => this.createOne(job)));
  }

  async getJob(id: string): Promise<(Job & { events: JobEvent[] }) | undefined> {
    const row = this.statements.getJob.get(id) as JobRow | undefined;
    if (!row) return undefined;
    const events = (this.statements.eventsOf.all(id) as EventRow[]).map(toEvent);
    return { ...toJob(row), events };
  }

  async listJobs(filter: JobFilter): Promise<Page<Job>> {
    const where = new WhereClause();
    if (filter.status) where.add('j.status = ?', filter.status);
    if (filter.to)
      where.add('j.id IN (SELECT job_id FROM job_recipients WHERE address = ?)', filter.to.toLowerCase());
    if (filter.tag) where.add('j.id IN (SELECT job_id FROM job_tags WHERE tag = ?)', filter.tag);
    if (filter.since !== undefined) where.add('j.created_at >= ?', filter.since);
    if (filter.until !== undefined) where.add('j.created_at < ?', filter.until);
    const cursor = filter.cursor ? decodeCursor(filter.cursor) : undefined;
    if (cursor)
      where.add(
        '(j.created_at < ? OR (j.created_at = ? AND j.id < ?))',
        cursor.createdAt,
        cursor.createdAt,
        cursor.id,
      );
    const { params } = where;
    const sql = `SELECT j.* FROM jobs j ${where.sql()}
      ORDER BY j.created_at DESC, j.id DESC LIMIT ?`;
    const rows = this.db.prepare(sql).all(...params, filter.limit + 1) as JobRow[];
    const page = rows.slice(0, filter.limit).map(toJob);
    const last = page.at(-1);
    const nextCursor =
      rows.length > filter.limit && last
        ? encodeCursor({ createdAt: last.createdAt, id: last.id })
        : undefined;
    return nextCursor ? { items: page, nextCursor } : { items: page };
  }

  async eventsFor(jobIds: readonly string[]): Promise<Map<string, JobEvent[]>> {
    const byJob = new Map<string, JobEvent[]>(jobIds.map((id) => [id, []]));
    for (const id of jobIds) {
      byJob.set(id, (this.statements.eventsOf.all(id) as EventRow[]).map(toEvent));
    }
    return byJob;
  }

  async cancelJob(id: string, now: number): Promise<CancelResult> {
    return this.commitDurable((): CancelResult => {
      const row = this.statements.getJob.get(id) as JobRow | undefined;
      if (!row) return { kind: 'not_found' };
      const changed = this.statements.cancel.run(now, id).changes;
      if (changed === 0) return { kind: 'invalid_state', status: row.status };
      this.addEvent(id, 'cancelled', now, row.attempts, { previous_status: row.status });
      return { kind: 'cancelled', job: toJob(this.statements.getJob.get(id) as JobRow) };
    });
  }

  async findDueJobs(now: number, limit: number, exclude: ReadonlySet<string>): Promise<DueJob[]> {
    const due: DueJob[] = [];
    for (let rank = 0; rank < PRIORITY_BY_RANK.length && due.length < limit; rank++) {
      const rows = this.statements.dueByPriority.all(rank, now, limit - due.length + exclude.size) as {
        id: string;
      }[];
      for (const { id } of rows) {
        if (due.length >= limit) break;
        if (!exclude.has(id)) due.push({ id, priority: PRIORITY_BY_RANK[rank]! });
      }
    }
    return due;
  }

  async nextDueAt(): Promise<number | undefined> {
    let next: number | undefined;
    for (let rank = 0; rank < PRIORITY_BY_RANK.length; rank++) {
      const row = this.statements.nextDue.get(rank) as { run_at: number } | undefined;
      if (row && (next === undefined || row.run_at < next)) next = row.run_at;
    }
    return next;
  }

  async claimJobs(requests: readonly ClaimRequest[], now: number): Promise<ClaimResult[]> {
    return this.commitLight(() => requests.map((request) => this.claimOne(request, now)));
  }

  async recordOutcomes(outcomes: readonly RecordOutcome[], now: number): Promise<boolean[]> {
    return this.commitLight(() => outcomes.map((outcome) => this.recordOne(outcome, now)));
  }

  async listDeadLetters(filter: DeadLetterFilter): Promise<Job[]> {
    const { sql, params } = deadLetterQuery('SELECT *', filter);
    return (
      this.db
        .prepare(`${sql} ORDER BY dead_lettered_at DESC LIMIT ?`)
        .all(...params, filter.limit) as JobRow[]
    ).map(toJob);
  }

  async replayDeadLetters(filter: DeadLetterFilter, now: number): Promise<string[]> {
    return this.commitDurable(() => {
      const { sql, params } = deadLetterQuery('SELECT id, dead_letter_reason, attempts', filter);
      const rows = this.db
        .prepare(`${sql} ORDER BY dead_lettered_at LIMIT ?`)
        .all(...params, filter.limit) as {
        id: string;
        dead_letter_reason: string;
        attempts: number;
      }[];
      for (const row of rows) {
        this.statements.replay.run(now, now, row.id);
        this.addEvent(row.id, 'replayed', now, 0, {
          previous_reason: row.dead_letter_reason,
          previous_attempts: row.attempts,
        });
      }
      return rows.map((row) => row.id);
    });
  }

  async countActive(): Promise<number> {
    return (this.statements.countActive.get() as { n: number }).n;
  }

  async countJobs(): Promise<JobCounts> {
    const rows = this.statements.countByStatus.all() as { status: JobStatus; n: number }[];
    const deadLetters = (this.statements.countDeadLetters.get() as { n: number }).n;
    return { byStatus: countsByStatus(rows), deadLetters };
  }

  async pruneIdempotencyKeys(before: number): Promise<number> {
    return this.statements.pruneKeys.run(before).changes;
  }

  async createTemplate(
    code: string,
    content: TemplateContent,
    now: number,
  ): Promise<TemplateVersion | undefined> {
    return this.commitDurable(() => {
      const inserted = this.db
        .prepare(
          'INSERT INTO templates (code, latest_version, created_at) VALUES (?, 1, ?) ON CONFLICT DO NOTHING',
        )
        .run(code, now);
      if (inserted.changes === 0) return undefined;
      return this.insertTemplateVersion(code, 1, content, now);
    });
  }

  async updateTemplate(
    code: string,
    content: TemplateContent,
    now: number,
  ): Promise<TemplateVersion | undefined> {
    return this.commitDurable(() => {
      const row = this.db
        .prepare(
          'UPDATE templates SET latest_version = latest_version + 1 WHERE code = ? RETURNING latest_version',
        )
        .get(code) as { latest_version: number } | undefined;
      if (!row) return undefined;
      return this.insertTemplateVersion(code, row.latest_version, content, now);
    });
  }

  async getTemplate(code: string, version?: number): Promise<TemplateVersion | undefined> {
    const row = (
      version === undefined
        ? this.db
            .prepare(
              `SELECT v.* FROM template_versions v JOIN templates t ON t.code = v.code AND t.latest_version = v.version
                WHERE t.code = ?`,
            )
            .get(code)
        : this.db
            .prepare(
              'SELECT v.* FROM template_versions v JOIN templates t ON t.code = v.code WHERE v.code = ? AND v.version = ?',
            )
            .get(code, version)
    ) as TemplateRow | undefined;
    return row ? toTemplateVersion(row) : undefined;
  }

  async listTemplates(limit: number, after?: string): Promise<TemplateVersionSummary[]> {
    const rows = this.db
      .prepare(
        `SELECT v.code, v.version, v.subject, v.saved_at FROM templates t
           JOIN template_versions v ON v.code = t.code AND v.version = t.latest_version
          WHERE t.code > ? ORDER BY t.code LIMIT ?`,
      )
      .all(after ?? '', limit) as TemplateRow[];
    return rows.map(toTemplateSummary);
  }

  async listTemplateVersions(code: string): Promise<TemplateVersionSummary[] | undefined> {
    if (!this.db.prepare('SELECT 1 FROM templates WHERE code = ?').get(code)) return undefined;
    const rows = this.db
      .prepare(
        'SELECT code, version, subject, saved_at FROM template_versions WHERE code = ? ORDER BY version',
      )
      .all(code) as TemplateRow[];
    return rows.map(toTemplateSummary);
  }

  async deleteTemplate(code: string): Promise<boolean> {
    return this.commitDurable(() => {
      const deleted = this.db.prepare('DELETE FROM templates WHERE code = ?').run(code).changes > 0;
      this.db.prepare('DELETE FROM template_versions WHERE code = ?').run(code);
      return deleted;
    });
  }

  private insertTemplateVersion(
    code: string,
    version: number,
    content: TemplateContent,
    now: number,
  ): TemplateVersion {
    this.db
      .prepare(
        `INSERT INTO template_versions (code, version, subject, html, text, mjml, required_variables, saved_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        code,
        version,
        content.subject,
        content.html ?? null,
        content.text ?? null,
        content.mjml ?? null,
        JSON.stringify(content.requiredVariables),
        now,
      );
    return { code, version, savedAt: now, ...content };
  }

  private createOne(job: NewJob): CreateJobResult {
    const claim = job.idempotency;
    if (claim) {
      const existing = this.statements.getKey.get(claim.scope, claim.key) as
        | { request_hash: string; job_id: string; status: JobStatus; created_at: number }
        | undefined;
      if (existing && existing.created_at >= claim.notBefore) {
        return existing.request_hash === claim.requestHash
          ? { kind: 'duplicate', id: existing.job_id, status: existing.status }
          : { kind: 'conflict', id: existing.job_id };
      }
    }
    const scheduled = job.sendAt !== undefined && job.sendAt > job.createdAt;
    const status: JobStatus = scheduled ? 'scheduled' : 'queued';
    const s = this.statements;
    const inserted = s.insertJob.run({
      id: job.id,
      status,
      priority: PRIORITY_RANK[job.priority],
      run_at: scheduled ? job.sendAt : job.createdAt,
      send_at: job.sendAt ?? null,
      message_id: job.messageId,
      content: JSON.stringify(job.content),
      tags: JSON.stringify(job.tags),
      metadata: JSON.stringify(job.metadata),
      created_at: job.createdAt,
    });
    if (inserted.changes === 0) {
      // The id is taken: a producer outside Mailroom republished a message with the same job id.
      const stored = s.getJob.get(job.id) as JobRow;
      return { kind: 'duplicate', id: job.id, status: stored.status };
    }
    for (const address of recipientsOf(job.content)) s.insertRecipient.run(address, job.id);
    for (const tag of new Set(job.tags)) s.insertTag.run(tag, job.id);
    this.addEvent(job.id, status, job.createdAt, 0, {
      ...(scheduled && { send_at: new Date(job.sendAt!).toISOString() }),
      ...traceDetail(job.traceContext),
    });
    if (claim) s.upsertKey.run(claim.scope, claim.key, claim.requestHash, job.id, status, job.createdAt);
    return { kind: 'created', id: job.id, status };
  }

  private claimOne(request: ClaimRequest, now: number): ClaimResult {
    const row = this.statements.getJob.get(request.jobId) as JobRow | undefined;
    if (!row) return { kind: 'not_found' };
    if (FINISHED.has(row.status)) return { kind: 'finished', status: row.status };
    if (row.run_at !== null && row.run_at > now)
      return { kind: 'busy', status: row.status, retryAt: row.run_at };
    const leaseToken = randomBytes(12).toString('base64url');
    const attempt = row.attempts + 1;
    this.statements.claim.run({
      id: row.id,
      lease_token: leaseToken,
      lease_owner: request.workerId,
      run_at: now + request.leaseMs,
      now,
    });
    const detail: Record<string, unknown> = { worker: request.workerId };
    if (row.status === 'processing') detail.code = 'LEASE_EXPIRED';
    this.addEvent(row.id, 'processing', now, attempt, detail);
    const job = toJob({ ...row, status: 'processing', attempts: attempt, updated_at: now });
    const traceContext = request.withTraceContext ? this.savedTraceContext(row.id) : undefined;
    return { kind: 'claimed', job, leaseToken, ...(traceContext && { traceContext }) };
  }

  /** The trace context saved in the job's first event at acceptance. */
  private savedTraceContext(jobId: string): TraceContext | undefined {
    const first = this.statements.firstEventDetail.get(jobId) as { detail: string } | undefined;
    return first ? traceContextIn(JSON.parse(first.detail) as Record<string, unknown>) : undefined;
  }

  private recordOne({ jobId, leaseToken, outcome }: RecordOutcome, now: number): boolean {
    const row = this.statements.getLease.get(jobId) as
      | { lease_token: string | null; status: JobStatus; attempts: number }
      | undefined;
    if (row?.status !== 'processing' || row.lease_token !== leaseToken) return false;
    const update = outcomeUpdate(outcome, row.attempts, now);
    this.statements.settle.run({ ...update, id: jobId, now });
    const detail = { ...outcome.detail } as Record<string, unknown>;
    const retryAt = outcome.kind === 'deferred' || outcome.kind === 'released' ? outcome.retryAt : undefined;
    if (retryAt !== undefined) detail.retry_at = new Date(retryAt).toISOString();
    this.addEvent(jobId, update.event, now, row.attempts, detail);
    if (update.dead_letter_reason) {
      this.addEvent(jobId, 'dead_lettered', now, row.attempts, { reason: update.dead_letter_reason });
    }
    return true;
  }

  /** Runs `work` in a transaction whose commit is fsync'd before this returns. */
  private commitDurable<T>(work: () => T): T {
    return this.commit('FULL', work);
  }

  /** Runs `work` in a transaction that survives a process crash; fsync follows within a second. */
  private commitLight<T>(work: () => T): T {
    return this.commit('NORMAL', work);
  }

  private commit<T>(synchronous: 'FULL' | 'NORMAL', work: () => T): T {
    // A pragma is a statement of its own: set the level only when it changes.
    if (this.synchronous !== synchronous) {
      this.db.pragma(`synchronous = ${synchronous}`);
      this.synchronous = synchronous;
    }
    const result = this.db.transaction(work)();
    // A FULL commit syncs the WAL up to itself, light commits before it included.
    this.unsynced = synchronous === 'NORMAL';
    return result;
  }

  private syncLightCommits(): void {
    if (!this.unsynced || !this.db.open) return;
    // A checkpoint fsyncs the WAL (and then the database file) in synchronous=NORMAL.
    this.db.pragma('wal_checkpoint(PASSIVE)');
    this.unsynced = false;
  }

  private addEvent(jobId: string, type: JobEventType, at: number, attempt: number, detail: object): void {
    this.statements.insertEvent.run(jobId, type, at, attempt, JSON.stringify(detail));
  }

  private runMigrations(): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    for (const migration of MIGRATIONS.filter((m) => m.version > current)) {
      this.db.transaction(() => {
        this.db.exec(migration.sql);
        this.db.pragma(`user_version = ${migration.version}`);
      })();
    }
  }

  private prepare() {
    const db = this.db;
    return {
      getJob: db.prepare('SELECT * FROM jobs WHERE id = ?'),
      getLease: db.prepare('SELECT lease_token, status, attempts FROM jobs WHERE id = ?'),
      eventsOf: db.prepare(
        'SELECT job_id, type, at, attempt, detail FROM job_events WHERE job_id = ? ORDER BY id',
      ),
      insertJob: db.prepare(`INSERT INTO jobs
        (id, status, priority, attempts, run_at, send_at, message_id, content, tags, metadata, created_at, updated_at)
        VALUES (@id, @status, @priority, 0, @run_at, @send_at, @message_id, @content, @tags, @metadata, @created_at, @created_at)
        ON CONFLICT (id) DO NOTHING`),
      insertRecipient: db.prepare('INSERT OR IGNORE INTO job_recipients (address, job_id) VALUES (?, ?)'),
      insertTag: db.prepare('INSERT OR IGNORE INTO job_tags (tag, job_id) VALUES (?, ?)'),
      insertEvent: db.prepare(
        'INSERT INTO job_events (job_id, type, at, attempt, detail) VALUES (?, ?, ?, ?, ?)',
      ),
      firstEventDetail: db.prepare('SELECT detail FROM job_events WHERE job_id = ? ORDER BY id LIMIT 1'),
      getKey: db.prepare(
        'SELECT request_hash, job_id, status, created_at FROM idempotency_keys WHERE scope = ? AND key = ?',
      ),
      upsertKey:
        db.prepare(`INSERT OR REPLACE INTO idempotency_keys (scope, key, request_hash, job_id, status, created_at)
        VALUES (?, ?, ?, ?, ?, ?)`),
      pruneKeys: db.prepare('DELETE FROM idempotency_keys WHERE created_at < ?'),
      cancel: db.prepare(`UPDATE jobs SET status = 'cancelled', run_at = NULL, updated_at = ?
        WHERE id = ? AND status IN ('queued', 'scheduled', 'deferred')`),
      dueByPriority: db.prepare(
        'SELECT id FROM jobs WHERE priority = ? AND run_at <= ? ORDER BY run_at LIMIT ?',
      ),
      nextDue: db.prepare(
        'SELECT run_at FROM jobs WHERE priority = ? AND run_at IS NOT NULL ORDER BY run_at LIMIT 1',
      ),
      claim:
        db.prepare(`UPDATE jobs SET status = 'processing', attempts = attempts + 1, lease_token = @lease_token,
        lease_owner = @lease_owner, run_at = @run_at, updated_at = @now WHERE id = @id`),
      settle: db.prepare(`UPDATE jobs SET status = @status, attempts = @attempts, run_at = @run_at,
        lease_token = NULL, lease_owner = NULL, last_error = COALESCE(@last_error, last_error),
        dead_letter_reason = @dead_letter_reason, dead_lettered_at = @dead_lettered_at, updated_at = @now
        WHERE id = @id`),
      replay:
        db.prepare(`UPDATE jobs SET status = 'queued', attempts = 0, run_at = ?, dead_letter_reason = NULL,
        dead_lettered_at = NULL, updated_at = ? WHERE id = ?`),
      countActive: db.prepare('SELECT count(*) AS n FROM jobs WHERE run_at IS NOT NULL'),
      countByStatus: db.prepare('SELECT status, count(*) AS n FROM jobs GROUP BY status'),
      countDeadLetters: db.prepare('SELECT count(*) AS n FROM jobs WHERE dead_letter_reason IS NOT NULL'),
    };
  }
}

/** How long the health probe waits for the write lock before reporting the database locked. */
const HEALTH_LOCK_WAIT_MS = 500;

function describeProbeFailure(error: unknown): string {
  const { code = '', message } = error as Error & { code?: string };
  const cause = code ? `${code}: ${message}` : message;
  if (/^SQLITE_(BUSY|LOCKED)/.test(code)) {
    return `database is locked: another connection held the write lock for over ${HEALTH_LOCK_WAIT_MS} ms (${cause})`;
  }
  if (code.startsWith('SQLITE_READONLY')) return `database is read-only (${cause})`;
  if (/^SQLITE_(IOERR|FULL|CORRUPT|NOTADB|CANTOPEN)/.test(code)) return `database disk error (${cause})`;
  return cause;
}

function outcomeUpdate(outcome: Outcome, attempts: number, now: number) {
  const base = { attempts, last_error: null as string | null, dead_letter_reason: null as string | null };
  const error = outcome.detail.message ?? null;
  switch (outcome.kind) {
    case 'sent':
      return { ...base, event: 'sent' as const, status: 'sent', run_at: null, dead_lettered_at: null };
    case 'deferred':
      return {
        ...base,
        event: 'deferred' as const,
        status: 'deferred',
        run_at: outcome.retryAt,
        last_error: error,
        dead_lettered_at: null,
      };
    case 'failed':
      return {
        ...base,
        event: 'failed' as const,
        status: 'failed',
        run_at: null,
        last_error: error,
        dead_letter_reason: outcome.deadLetter ?? null,
        dead_lettered_at: outcome.deadLetter ? now : null,
      };
    case 'released': {
      const remaining = outcome.attemptSpent ? attempts : attempts - 1;
      return {
        ...base,
        event: 'released' as const,
        status: remaining === 0 ? 'queued' : 'deferred',
        attempts: remaining,
        run_at: outcome.retryAt ?? now,
        dead_lettered_at: null,
      };
    }
  }
}

function deadLetterQuery(select: string, filter: DeadLetterFilter) {
  const where = new WhereClause();
  where.add("status = 'failed' AND dead_letter_reason IS NOT NULL");
  if (filter.reason) where.add('dead_letter_reason = ?', filter.reason);
  if (filter.since !== undefined) where.add('dead_lettered_at >= ?', filter.since);
  if (filter.ids) where.add(`id IN (${filter.ids.map(() => '?').join(', ') || 'NULL'})`, ...filter.ids);
  return { sql: `${select} FROM jobs ${where.sql()}`, params: where.params };
}

/** Conditions joined with AND, with their parameters in order. */
class WhereClause {
  private readonly clauses: string[] = [];
  readonly params: unknown[] = [];

  add(clause: string, ...values: unknown[]): void {
    this.clauses.push(clause);
    this.params.push(...values);
  }

  sql(): string {
    return this.clauses.length > 0 ? `WHERE ${this.clauses.join(' AND ')}` : '';
  }
}

function recipientsOf(content: EmailContent): Set<string> {
  return new Set(
    [...content.to, ...content.cc, ...content.bcc].map((mailbox) => mailbox.address.toLowerCase()),
  );
}

function toJob(row: JobRow): Job {
  return {
    id: row.id,
    status: row.status,
    priority: PRIORITY_BY_RANK[row.priority] ?? 'normal',
    attempts: row.attempts,
    content: JSON.parse(row.content) as EmailContent,
    tags: JSON.parse(row.tags) as string[],
    metadata: JSON.parse(row.metadata) as Record<string, string>,
    messageId: row.message_id,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    ...(row.send_at !== null && { sendAt: row.send_at }),
    ...(row.last_error !== null && { lastError: row.last_error }),
    ...(row.dead_letter_reason !== null && { deadLetterReason: row.dead_letter_reason as DeadLetterReason }),
    ...(row.dead_lettered_at !== null && { deadLetteredAt: row.dead_lettered_at }),
  };
}

interface TemplateRow {
  code: string;
  version: number;
  subject: string;
  html: string | null;
  text: string | null;
  mjml: string | null;
  required_variables: string;
  saved_at: number;
}

function toTemplateVersion(row: TemplateRow): TemplateVersion {
  return {
    code: row.code,
    version: row.version,
    subject: row.subject,
    ...(row.html !== null && { html: row.html }),
    ...(row.text !== null && { text: row.text }),
    ...(row.mjml !== null && { mjml: row.mjml }),
    requiredVariables: JSON.parse(row.required_variables) as string[],
    savedAt: row.saved_at,
  };
}

function toTemplateSummary(row: TemplateRow): TemplateVersionSummary {
  return { code: row.code, version: row.version, subject: row.subject, savedAt: row.saved_at };
}

function toEvent(row: EventRow): JobEvent {
  return {
    type: row.type,
    at: row.at,
    attempt: row.attempt,
    detail: JSON.parse(row.detail) as Record<string, unknown>,
  };
}
