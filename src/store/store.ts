/**
 * The Store port: the durable record of jobs, their history, idempotency keys and dead letters.
 *
 * Every method that changes state commits before its promise resolves; an adapter never answers
 * for a write it has not made durable. Methods take batches where the hot path calls them, so an
 * adapter can make one round trip (one transaction, one fsync) for many jobs.
 * No driver type crosses this port: adapters own their connections.
 */
import {
  type DeadLetterReason,
  JOB_STATUSES,
  type Job,
  type JobEvent,
  type JobStatus,
  type JobWithEvents,
  type NewJob,
  type Priority,
} from '../domain/email.js';
import type { TemplateContent, TemplateVersion, TemplateVersionSummary } from '../domain/template.js';
import type { TraceContext } from '../telemetry/trace-context.js';
import type { ComponentHealth } from '../transport/transport.js';
import type { EventFeed, EventLog } from './event-log.js';
import type { WebhookStore } from './webhook-store.js';

export type CreateJobResult =
  | { readonly kind: 'created'; readonly id: string; readonly status: JobStatus }
  /** The idempotency key was seen with the same request: the original job. */
  | { readonly kind: 'duplicate'; readonly id: string; readonly status: JobStatus }
  /** The idempotency key was seen with another request. */
  | { readonly kind: 'conflict'; readonly id: string };

export interface ClaimRequest {
  readonly jobId: string;
  readonly workerId: string;
  /** Lease length in ms: past it, another worker may claim the job. */
  readonly leaseMs: number;
  /** Also read the trace context saved at acceptance (tracing on); costs a read, so only then. */
  readonly withTraceContext?: boolean;
}

export type ClaimResult =
  | {
      readonly kind: 'claimed';
      readonly job: Job;
      readonly leaseToken: string;
      /** The trace context saved with the job, when asked for and present. */
      readonly traceContext?: TraceContext;
    }
  | { readonly kind: 'not_found' }
  /** Already sent, failed or cancelled: a redelivery to acknowledge and drop. */
  | { readonly kind: 'finished'; readonly status: JobStatus }
  /** Leased by a worker whose lease has not expired, or not due yet. */
  | { readonly kind: 'busy'; readonly status: JobStatus; readonly retryAt: number };

/** What a worker learned from one attempt, recorded under its lease. */
export type Outcome =
  | { readonly kind: 'sent'; readonly detail: OutcomeDetail }
  | { readonly kind: 'deferred'; readonly retryAt: number; readonly detail: OutcomeDetail }
  | {
      readonly kind: 'failed';
      readonly detail: OutcomeDetail;
      /** Set when the job goes to the dead-letter list (replayable). */
      readonly deadLetter?: DeadLetterReason;
    }
  /**
   * The worker gives the job back (shutdown, an open circuit breaker, a rate limit): untried, no
   * attempt is spent. Due again at `retryAt`, or at once.
   */
  | {
      readonly kind: 'released';
      readonly detail: OutcomeDetail;
      readonly attemptSpent: boolean;
      readonly retryAt?: number;
    };

export interface OutcomeDetail {
  readonly code?: string;
  readonly message?: string;
  readonly smtpCode?: number;
  readonly response?: string;
  readonly [key: string]: unknown;
}

export interface JobCounts {
  /** Every status, 0 included. */
  readonly byStatus: Readonly<Record<JobStatus, number>>;
  /** Failed jobs kept for replay. */
  readonly deadLetters: number;
}

export interface RecordOutcome {
  readonly jobId: string;
  readonly leaseToken: string;
  readonly outcome: Outcome;
}

export interface JobFilter {
  readonly status?: JobStatus;
  readonly to?: string;
  readonly tag?: string;
  /** Epoch ms, inclusive. */
  readonly since?: number;
  /** Epoch ms, exclusive. */
  readonly until?: number;
  readonly limit: number;
  /** Opaque, from a previous page's `nextCursor`. */
  readonly cursor?: string;
}

export interface Page<T> {
  readonly items: readonly T[];
  readonly nextCursor?: string;
}

export interface DeadLetterFilter {
  readonly reason?: DeadLetterReason;
  readonly since?: number;
  readonly ids?: readonly string[];
  readonly limit: number;
}

export interface DueJob {
  readonly id: string;
  readonly priority: Priority;
}

export type CancelResult =
  | { readonly kind: 'cancelled'; readonly job: Job }
  | { readonly kind: 'not_found' }
  | { readonly kind: 'invalid_state'; readonly status: JobStatus };

/**
 * `createJobs` could not tell whether its commit happened (the connection died during COMMIT and the
 * database stayed unreachable while the store checked). The jobs may exist: a caller must not say
 * "nothing was accepted".
 */
export class CommitUnknownError extends Error {
  constructor(
    /** The ids of the jobs that were being created. */
    readonly jobIds: readonly string[],
    override readonly cause: unknown,
  ) {
    super(
      `could not tell whether ${jobIds.length} new jobs were committed: ${(cause as Error)?.message ?? cause}`,
    );
    this.name = 'CommitUnknownError';
  }
}

/** A job whose message a dispatcher must publish to the broker. */
export interface OutboxEntry {
  readonly jobId: string;
  readonly priority: Priority;
  /** Propagation headers saved with the job (W3C trace context). */
  readonly headers: Readonly<Record<string, string>>;
}

/**
 * The outbox, for brokers that are not the Store (`Broker.publishesOnCommit` false): it closes the
 * gap between committing a job and publishing its message. `createJobs` and `replayDeadLetters`
 * add an entry in the same transaction as the job; a dispatcher takes entries, publishes them with
 * confirms and completes them. An entry taken by a dispatcher that died comes back when its
 * hold expires, so every committed job is published at least once.
 */
export interface Outbox {
  /**
   * Takes up to `limit` entries that are due (`send_at` reached for scheduled jobs), hiding them from
   * other dispatchers for `holdMs`. Concurrent callers never get the same entry while it is held.
   */
  take(now: number, limit: number, holdMs: number): Promise<OutboxEntry[]>;
  /** Removes entries whose publish the broker confirmed. */
  complete(jobIds: readonly string[]): Promise<void>;
  /** Makes taken entries due again at once (their publish failed): no need to wait out the hold. */
  release(jobIds: readonly string[], now: number): Promise<void>;
  /**
   * The safety net for messages lost outside Mailroom (a queue purged, a broker's delivery limit):
   * adds entries for active jobs (queued, scheduled, processing, deferred) whose `run_at` (due
   * time, lease expiry or retry time) passed before `staleBefore` and that have no entry yet.
   * Returns how many were added. A job merely waiting in a deep queue may get a second message;
   * that costs a no-op delivery (the claim answers `finished` or `busy`), never a second email.
   */
  sweep(staleBefore: number, limit: number): Promise<number>;
  /**
   * For metrics: entries due now and not held by a dispatcher, and when the oldest of them became
   * due (how far publishing lags behind). Scheduled jobs' entries, not due yet, are not counted.
   */
  stats(now: number): Promise<OutboxStats>;
}

export interface OutboxStats {
  readonly due: number;
  /** Epoch ms; undefined when nothing is due. */
  readonly oldestDueAt?: number;
}

export interface Store {
  /**
   * Present on stores that can serve a network broker (PostgreSQL). The composition root turns it
   * on (the adapter's `outbox` option) only when the broker is not the Store itself.
   */
  readonly outbox?: Outbox;
  /** Every committed transition, by a store-wide increasing id (live status, webhooks). */
  readonly events: EventLog;
  /** Webhook endpoints and the durable delivery queue. */
  readonly webhooks: WebhookStore;
  /**
   * A feed of the events that commit from now on in any process sharing this store; not started.
   * SQLite polls its log (one process writes it); PostgreSQL LISTENs for what a trigger NOTIFYs.
   */
  openEventFeed(onError?: (error: unknown) => void): EventFeed;

  /** Creates tables or brings them up to date. Safe to call on every start. */
  migrate(): Promise<void>;
  close(): Promise<void>;
  health(): Promise<ComponentHealth>;

  /**
   * Commits new jobs with their first event, in one transaction, honouring idempotency keys.
   * A job whose id already exists is not written again: its result is `duplicate` with the stored
   * status (a producer outside Mailroom republished it).
   * Results are in the order of `jobs`. Resolves only once the commit is durable. Rejects with
   * `CommitUnknownError` when the adapter cannot tell whether the commit happened; any other
   * rejection means nothing was written.
   */
  createJobs(jobs: readonly NewJob[]): Promise<CreateJobResult[]>;

  getJob(id: string): Promise<JobWithEvents | undefined>;
  /** Newest first. */
  listJobs(filter: JobFilter): Promise<Page<Job>>;
  /** The histories of several jobs, oldest event first. */
  eventsFor(jobIds: readonly string[]): Promise<Map<string, JobEvent[]>>;
  cancelJob(id: string, now: number): Promise<CancelResult>;

  /**
   * Jobs a worker may claim now (queued, scheduled and deferred ones that are due, and processing ones
   * whose lease expired), high priority first, oldest first within a priority.
   */
  findDueJobs(now: number, limit: number, exclude: ReadonlySet<string>): Promise<DueJob[]>;
  /** Epoch ms of the next job to come due, if any: lets a poller sleep until then. */
  nextDueAt(): Promise<number | undefined>;

  /** Claims jobs for an attempt: spends an attempt, sets `processing` and a lease. One transaction. */
  claimJobs(requests: readonly ClaimRequest[], now: number): Promise<ClaimResult[]>;
  /**
   * Records attempt outcomes. Each is applied only if its lease token is still the job's;
   * the result is false for a stale worker's late result.
   */
  recordOutcomes(outcomes: readonly RecordOutcome[], now: number): Promise<boolean[]>;

  listDeadLetters(filter: DeadLetterFilter): Promise<Job[]>;
  /** Puts dead letters back in the queue with a fresh attempt budget; keeps id and history. Returns their ids. */
  replayDeadLetters(filter: DeadLetterFilter, now: number): Promise<string[]>;

  /** How many jobs are queued, scheduled, processing or deferred. */
  countActive(): Promise<number>;
  /** Jobs by status, and dead letters, for metrics. Reads an index; still a count: call it seldom. */
  countJobs(): Promise<JobCounts>;
  /** Deletes idempotency keys older than `before` (epoch ms). */
  pruneIdempotencyKeys(before: number): Promise<number>;

  /**
   * Saves version 1 of a new template. Undefined (and nothing written) when the code is taken.
   * Durable before it resolves.
   */
  createTemplate(code: string, content: TemplateContent, now: number): Promise<TemplateVersion | undefined>;
  /**
   * Saves the next version of a template (the newest + 1, numbered atomically: two concurrent saves
   * get two versions). Undefined when there is no such template.
   */
  updateTemplate(code: string, content: TemplateContent, now: number): Promise<TemplateVersion | undefined>;
  /** One version; the newest when `version` is absent. */
  getTemplate(code: string, version?: number): Promise<TemplateVersion | undefined>;
  /** The newest version of each template, by code, after `after` (exclusive), up to `limit`. */
  listTemplates(limit: number, after?: string): Promise<TemplateVersionSummary[]>;
  /** Every version of a template, oldest first; undefined when there is no such template. */
  listTemplateVersions(code: string): Promise<TemplateVersionSummary[] | undefined>;
  /** Deletes a template and all its versions. False when there was none. Emails already accepted keep their content. */
  deleteTemplate(code: string): Promise<boolean>;
}

/** Turns `status, count` rows into a count for every status, 0 for those with no row. */
export function countsByStatus(rows: readonly { status: JobStatus; n: number }[]): Record<JobStatus, number> {
  const counts = Object.fromEntries(JOB_STATUSES.map((status) => [status, 0])) as Record<JobStatus, number>;
  for (const row of rows) counts[row.status] = Number(row.n);
  return counts;
}
