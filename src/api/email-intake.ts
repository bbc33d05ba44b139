import type { Logger } from 'pino';
import { v7 as uuidv7 } from 'uuid';
import type { JobStatus, NewJob } from '../domain/email.js';
import { newJobFrom } from '../domain/new-job.js';
import type { ValidatedEmail } from '../domain/validate-email.js';
import { MailroomError } from '../errors.js';
import { CommitUnknownError, type CreateJobResult, type Store } from '../store/store.js';
import { inBatchSpan, jobAttributes } from '../telemetry/job-spans.js';
import type { TraceContext } from '../telemetry/trace-context.js';
import { tracing } from '../telemetry/tracing.js';
import { Batcher } from '../util/batcher.js';

export interface IntakeOptions {
  readonly maxBacklog: number;
  /** How long an Idempotency-Key holds. */
  readonly idempotencyTtlMs: number;
  /**
   * Group commits in flight at once: 1 for SQLite (one writer); 2 for PostgreSQL, so that a commit
   * whose outcome is being checked after a lost connection does not hold every later request (they
   * fail fast with STORE_UNAVAILABLE meanwhile, instead of waiting out the check).
   */
  readonly concurrentCommits?: number;
  /**
   * A group commit still running after this long stops holding its slot (it goes on, and its
   * requests still get its outcome), so commits cut at COMMIT and checking their outcome cannot
   * hold every later request: those reach the store and get their answer. Unset: held to the end.
   */
  readonly commitStallMs?: number;
}

export interface AcceptRequest {
  readonly email: ValidatedEmail;
  readonly idempotencyKey?: string;
  /** Who owns the key: an API key fingerprint, or '' when the server is open. */
  readonly scope: string;
  /** The request as received, for telling a repeat from a different request under the same key. */
  readonly canonicalBody: unknown;
}

export interface Accepted {
  readonly id: string;
  readonly status: JobStatus;
  /** True when an Idempotency-Key matched an earlier request: nothing new was created. */
  readonly replayed: boolean;
}

/** One request's result: a conflict is an Idempotency-Key already used for another request. */
export type AcceptOutcome =
  | ({ readonly kind: 'accepted' } & Accepted)
  | { readonly kind: 'conflict'; readonly id: string };

const MAX_GROUP_COMMIT = 512;
const BACKLOG_REFRESH_MS = 1000;

/**
 * Accepts emails: turns validated requests into jobs and commits them in groups (one transaction
 * and one fsync for every request that arrived in the same tick). A request resolves only after
 * its job is durable; then `onCommit` says there is work (wakes the embedded broker or the outbox
 * dispatcher).
 */
export class EmailIntake {
  private readonly commits: Batcher<NewJob, CreateJobResult>;
  private backlog = 0;
  private backlogTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: Store,
    private readonly onCommit: () => void,
    private readonly options: IntakeOptions,
    private readonly logger: Logger,
  ) {
    const commit = async (jobs: readonly NewJob[]) => {
      const results = await this.store.createJobs(jobs);
      this.backlog += results.filter((result) => result.kind === 'created').length;
      this.onCommit();
      return results;
    };
    this.commits = new Batcher(
      (jobs) => {
        const t = tracing();
        return t ? inBatchSpan(t, 'store group commit', jobs, () => commit(jobs)) : commit(jobs);
      },
      MAX_GROUP_COMMIT,
      options.concurrentCommits ?? 1,
      options.commitStallMs,
    );
  }

  async start(): Promise<void> {
    await this.refreshBacklog();
    this.backlogTimer = setInterval(() => void this.refreshBacklog(), BACKLOG_REFRESH_MS);
    this.backlogTimer.unref();
  }

  stop(): void {
    clearInterval(this.backlogTimer);
  }

  /** Seconds a client should wait before retrying, when the backlog is over its limit. */
  get retryAfterSeconds(): number | undefined {
    return this.backlog >= this.options.maxBacklog ? 5 : undefined;
  }

  async accept(request: AcceptRequest): Promise<Accepted> {
    const [outcome] = await this.acceptAll([request]);
    if (outcome!.kind === 'conflict') {
      throw new MailroomError(
        'IDEMPOTENCY_CONFLICT',
        `Idempotency-Key was already used for a different request (email ${outcome!.id}).`,
      );
    }
    return outcome!;
  }

  /**
   * Commits several requests in one transaction (they join the current group commit, never split
   * across two); results in their order. Refused as a whole with BACKLOG_FULL unless
   * `checkBacklog` is false (the second part of a batch whose first part already passed).
   * `now` is every job's creation time, which is also when their idempotency keys expire.
   */
  async acceptAll(
    requests: readonly AcceptRequest[],
    options: { readonly now?: number; readonly checkBacklog?: boolean } = {},
  ): Promise<AcceptOutcome[]> {
    if (options.checkBacklog !== false && this.retryAfterSeconds !== undefined) {
      throw new MailroomError('BACKLOG_FULL', `The backlog holds ${this.backlog} jobs; try again later.`);
    }
    const now = options.now ?? Date.now();
    // Tracing on: the request's wait for its group commit is a span, whose context each job keeps.
    const t = tracing();
    const span = t?.startSpan('store commit');
    const traceContext = span && t!.contextOf(span);
    const jobs = requests.map((request) => this.newJob(request, now, traceContext));
    span?.setAttributes(jobAttributes(jobs.map((job) => job.id)));
    let results: CreateJobResult[];
    try {
      results = await this.commits.addAll(jobs);
    } catch (error) {
      if (span) t!.end(span, error);
      throw this.commitError(error, jobs);
    }
    if (span) t!.end(span);
    return results.map((result): AcceptOutcome => {
      if (result.kind === 'conflict') return result;
      if (result.kind === 'created')
        this.logger.debug({ job_id: result.id, status: result.status }, 'accepted');
      return {
        kind: 'accepted',
        id: result.id,
        status: result.status,
        replayed: result.kind === 'duplicate',
      };
    });
  }

  private commitError(error: unknown, jobs: readonly NewJob[]): MailroomError {
    const ids = jobs.map((job) => job.id);
    this.logger.error({ err: error, job_ids: ids }, 'could not commit new jobs');
    if (!(error instanceof CommitUnknownError)) {
      const what = jobs.length === 1 ? 'The email' : `The ${jobs.length} emails`;
      return new MailroomError(
        'STORE_UNAVAILABLE',
        `${what} could not be stored; nothing was accepted. Retry.`,
      );
    }
    if (jobs.length === 1) {
      return new MailroomError(
        'STORE_OUTCOME_UNKNOWN',
        `The connection to the store broke during the commit and the store could not be asked afterwards: the email may have been accepted as ${ids[0]}. Look it up (GET /v1/emails/${ids[0]}) before sending it again, or retry with the same Idempotency-Key.`,
      );
    }
    return new MailroomError(
      'STORE_OUTCOME_UNKNOWN',
      `The connection to the store broke during the commit and the store could not be asked afterwards: the ${jobs.length} emails may all have been accepted (as ${ids[0]} to ${ids.at(-1)}, in the order sent), or none. Look one up (GET /v1/emails/${ids[0]}) before sending them again, or retry with the same Idempotency-Key.`,
    );
  }

  private newJob(request: AcceptRequest, now: number, traceContext: TraceContext | undefined): NewJob {
    return newJobFrom(request.email, {
      id: uuidv7(),
      now,
      ...(traceContext && { traceContext }),
      ...(request.idempotencyKey !== undefined && {
        idempotency: {
          scope: request.scope,
          key: request.idempotencyKey,
          request: request.canonicalBody,
          ttlMs: this.options.idempotencyTtlMs,
        },
      }),
    });
  }

  private async refreshBacklog(): Promise<void> {
    try {
      this.backlog = await this.store.countActive();
    } catch (error) {
      this.logger.warn({ err: error }, 'could not count the backlog');
    }
  }
}
