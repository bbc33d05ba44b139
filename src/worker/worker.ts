import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Broker, Consumer, Delivery } from '../broker/broker.js';
import type { Job, NewJob } from '../domain/email.js';
import type { FlowControl, Gate } from '../flow/flow-control.js';
import { buildMessage } from '../mime/build-message.js';
import type {
  ClaimRequest,
  ClaimResult,
  CreateJobResult,
  Outcome,
  RecordOutcome,
  Store,
} from '../store/store.js';
import { ended, inBatchSpan, startProcessSpan, tracedSend } from '../telemetry/job-spans.js';
import type { Metrics } from '../telemetry/metrics.js';
import { tracing, untraced } from '../telemetry/tracing.js';
import type { OutgoingMessage, Transport } from '../transport/transport.js';
import { Batcher } from '../util/batcher.js';
import { decideOutcome, type RetryPolicy } from './decide-outcome.js';

export interface WorkerOptions extends RetryPolicy {
  readonly leaseMs: number;
  /** Deliveries in flight at once (claim, build, send, record). */
  readonly concurrency: number;
  /** Called after jobs from producers outside Mailroom were committed: wakes the outbox dispatcher. */
  readonly workAdded?: () => void;
  /** The circuit breaker and rate limits every send passes; none: send at will. */
  readonly flow?: FlowControl;
  /** Where recorded outcomes are counted. */
  readonly metrics?: Metrics;
}

interface InFlight {
  readonly jobId: string;
  leaseToken?: string;
  /** Epoch ms before which the lease certainly holds (taken before the claim was asked for). */
  leaseHoldsUntil?: number;
  /** The claimed job, once claimed. */
  job?: Job;
  /** The message was handed to the transport: the relay may have it even if we never hear back. */
  sending: boolean;
  /** How long the transport took, once it answered. */
  sendSeconds?: number;
  /** Set once an outcome was recorded (or given up on at shutdown). */
  done: boolean;
  readonly finished: Promise<void>;
}

/** Largest batch of claims or outcomes written in one transaction. */
const MAX_BATCH = 256;
/** After a Store error, how long a delivery waits before it is given back to the broker. */
const STORE_ERROR_PAUSE_MS = 1000;
/** Retrying an outcome write: first pause, longest pause, and how long before the lease ends to stop. */
const OUTCOME_RETRY_FIRST_PAUSE_MS = 100;
const OUTCOME_RETRY_MAX_PAUSE_MS = 2000;
const OUTCOME_RETRY_MARGIN_MS = 1000;
/** How often the worker logs its send rate (only when it recorded something). */
const THROUGHPUT_LOG_MS = 1000;

function emptyCounts(): Record<Outcome['kind'], number> {
  return { sent: 0, deferred: 0, failed: 0, released: 0 };
}
/** At shutdown, how long to wait for claims still being written after the drain deadline. */
const CLAIM_GRACE_MS = 5000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

/** A view of `delivery` whose first settling call wins; later ones do nothing. */
function settleOnce(delivery: Delivery): Delivery {
  let settled = false;
  const guard =
    <A extends unknown[]>(settle: (...args: A) => Promise<void>) =>
    async (...args: A): Promise<void> => {
      if (settled) return;
      settled = true;
      await settle(...args);
    };
  return {
    message: delivery.message,
    deliveryCount: delivery.deliveryCount,
    ack: guard(() => delivery.ack()),
    retryLater: guard((delayMs: number) => delivery.retryLater(delayMs)),
    deadLetter: guard((reason, error) => delivery.deadLetter(reason, error)),
  };
}

/**
 * Takes deliveries from the broker and drives each job through one attempt: claim under a lease,
 * build the message, send it, record the outcome, then settle the delivery. Claims and outcomes of
 * deliveries in flight together are written in batches.
 */
export class Worker {
  readonly id = `worker-${randomUUID().slice(0, 8)}`;
  private consumer: Consumer | undefined;
  private stopping = false;
  private readonly inFlight = new Map<Delivery, InFlight>();
  private readonly claims: Batcher<ClaimRequest, ClaimResult>;
  private readonly outcomes: Batcher<RecordOutcome, boolean>;
  private readonly creations: Batcher<NewJob, CreateJobResult>;
  /** Outcomes recorded since the last throughput line. */
  private counts: Record<Outcome['kind'], number> = emptyCounts();
  private throughputTimer: NodeJS.Timeout | undefined;
  /** Resolves when stop() is called: ends pauses early. */
  private readonly stopped: Promise<void>;
  private signalStopped!: () => void;

  constructor(
    private readonly store: Store,
    private readonly broker: Broker,
    private readonly transport: Transport,
    private readonly options: WorkerOptions,
    private readonly logger: Logger,
  ) {
    // Claims and outcomes of many jobs share a transaction: no single job's trace gets its queries.
    this.claims = new Batcher(
      (requests) => untraced(() => this.store.claimJobs(requests, Date.now())),
      MAX_BATCH,
    );
    this.outcomes = new Batcher(
      (outcomes) => untraced(() => this.store.recordOutcomes(outcomes, Date.now())),
      MAX_BATCH,
    );
    this.creations = new Batcher((jobs) => {
      const t = tracing();
      return t
        ? inBatchSpan(t, 'store group commit', jobs, () => this.store.createJobs(jobs))
        : this.store.createJobs(jobs);
    }, MAX_BATCH);
    this.stopped = new Promise((resolve) => {
      this.signalStopped = resolve;
    });
  }

  get running(): boolean {
    return this.consumer !== undefined && !this.stopping;
  }

  get activeCount(): number {
    return this.inFlight.size;
  }

  async start(): Promise<void> {
    this.consumer = await this.broker.consume((delivery) => this.accept(delivery), {
      prefetch: this.options.concurrency,
    });
    this.logger.info({ worker: this.id, concurrency: this.options.concurrency }, 'worker started');
    this.throughputTimer = setInterval(() => this.logThroughput(), THROUGHPUT_LOG_MS);
    this.throughputTimer.unref();
  }

  /**
   * Stops taking work, lets sends in flight finish for up to `timeoutMs`, then gives the rest back
   * to the Store (released, to be claimed again on the next start).
   */
  async stop(timeoutMs: number): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.signalStopped();
    clearInterval(this.throughputTimer);
    await this.consumer?.stop();
    const all = Promise.all([...this.inFlight.values()].map((entry) => entry.finished));
    const timedOut = await Promise.race([
      all.then(() => false),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(true), timeoutMs).unref()),
    ]);
    if (timedOut) {
      await this.releaseUnfinished();
      // Deliveries whose claim was still being written hold no lease token yet: once the claim
      // lands, process() sees `stopping` and releases the job itself. Wait for that (bounded, in
      // case the store hangs) so the store is not closed under them, leaving jobs `processing`.
      const claiming = [...this.inFlight.values()].filter((entry) => !entry.leaseToken);
      let grace: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(claiming.map((entry) => entry.finished)),
        new Promise((resolve) => {
          grace = setTimeout(resolve, CLAIM_GRACE_MS);
        }),
      ]);
      clearTimeout(grace);
    }
    this.logger.info({ worker: this.id, timedOut }, 'worker stopped');
  }

  private accept(delivery: Delivery): void {
    let resolveFinished!: () => void;
    const entry: InFlight = {
      jobId: delivery.message.jobId,
      sending: false,
      done: false,
      finished: new Promise<void>((resolve) => {
        resolveFinished = resolve;
      }),
    };
    const once = settleOnce(delivery);
    this.inFlight.set(delivery, entry);
    this.process(once, entry)
      .catch((error: unknown) => this.afterStoreError(once, entry, error))
      .finally(() => {
        this.inFlight.delete(delivery);
        resolveFinished();
      });
  }

  /**
   * A Store read or write threw (disk full, I/O error, the store thread gone). The job's state in the
   * Store is whatever last committed: unclaimed, or claimed under a lease that will expire. Settle the
   * delivery so the broker frees its slot and offers the job again, but only after a pause, so that a
   * failing Store is not hammered in a tight loop; the slot stays taken meanwhile, which slows intake.
   */
  private async afterStoreError(delivery: Delivery, entry: InFlight, error: unknown): Promise<void> {
    this.logger.error({ err: error, job_id: entry.jobId }, 'worker: store error, the job will be retried');
    if (!this.stopping) await sleep(STORE_ERROR_PAUSE_MS);
    await delivery.retryLater(0).catch((settleError: unknown) => {
      this.logger.error({ err: settleError, job_id: entry.jobId }, 'worker: could not settle delivery');
    });
  }

  private async process(delivery: Delivery, entry: InFlight): Promise<void> {
    if (delivery.message.newJob) return this.ingest(delivery, delivery.message.newJob);
    const jobId = entry.jobId;
    const askedAt = Date.now();
    const t = tracing();
    const claim = await this.claims.add({
      jobId,
      workerId: this.id,
      leaseMs: this.options.leaseMs,
      ...(t && { withTraceContext: true }),
    });
    if (claim.kind !== 'claimed') return this.settleUnclaimed(delivery, claim);
    entry.leaseToken = claim.leaseToken;
    entry.leaseHoldsUntil = askedAt + this.options.leaseMs;
    entry.job = claim.job;
    if (!t) return this.attempt(delivery, entry, claim.job);
    const span = startProcessSpan(t, {
      broker: this.broker.name,
      jobId,
      headers: delivery.message.headers,
      ...(claim.traceContext && { saved: claim.traceContext }),
      claimAskedAt: askedAt,
      attempt: claim.job.attempts,
      deliveryCount: delivery.deliveryCount,
    });
    return ended(t, span, () => t.withSpan(span, () => this.attempt(delivery, entry, claim.job)));
  }

  /** One attempt at a claimed job: build, ask flow control, send, record, settle. */
  private async attempt(delivery: Delivery, entry: InFlight, job: Job): Promise<void> {
    const log = this.logger.child({ job_id: job.id, attempt: job.attempts });

    if (this.stopping) {
      await this.record(
        entry,
        { kind: 'released', attemptSpent: false, detail: { reason: 'shutdown' } },
        log,
      );
      return delivery.ack();
    }
    if (job.attempts > this.options.maxAttempts) {
      // A worker died holding this job on its last attempt: never try more than promised.
      const outcome: Outcome = {
        kind: 'failed',
        deadLetter: 'max_attempts',
        detail: {
          code: 'MAX_ATTEMPTS',
          message: 'attempts exhausted: the last worker stopped answering (lease expired)',
        },
      };
      if (await this.record(entry, outcome, log))
        await delivery.deadLetter('max_attempts', outcome.detail.message);
      return;
    }
    let message: OutgoingMessage;
    try {
      message = buildMessage(job);
    } catch (error) {
      return this.failInvalid(delivery, entry, job, error as Error, log);
    }
    const gate = this.options.flow ? await this.options.flow.admit(message.envelope.to) : undefined;
    if (gate && gate.kind !== 'go') return this.holdBack(delivery, entry, gate, log);
    if (gate && (this.stopping || entry.done)) {
      // Shutdown began while the job waited for a token: it must not be sent now, since the drain
      // may already have given it back (done) for the next start to send.
      gate.cancel();
      if (!entry.done)
        await this.record(
          entry,
          { kind: 'released', attemptSpent: false, detail: { reason: 'shutdown' } },
          log,
        );
      return delivery.ack();
    }
    entry.sending = true;
    const sendStarted = performance.now();
    const t = tracing();
    const result = await (t
      ? tracedSend(t, this.transport.name, job.id, () => this.transport.send(message))
      : this.transport.send(message));
    entry.sendSeconds = (performance.now() - sendStarted) / 1000;
    const flowDetail = gate?.done(result);
    const decided = decideOutcome(result, job.attempts, this.options, Date.now());
    const outcome = flowDetail ? { ...decided, detail: { ...decided.detail, ...flowDetail } } : decided;
    if (!(await this.record(entry, outcome, log))) return delivery.ack();
    await this.settle(delivery, outcome);
  }

  /**
   * Flow control says not now: give the job back untried until `retryAt` (the history says why). For
   * an open circuit breaker, keep this delivery's slot until then as well, so the worker stops taking
   * work it cannot send instead of cycling through the queue; shutdown ends the wait at once.
   */
  private async holdBack(
    delivery: Delivery,
    entry: InFlight,
    gate: Exclude<Gate, { kind: 'go' }>,
    log: Logger,
  ): Promise<void> {
    const outcome: Outcome = {
      kind: 'released',
      attemptSpent: false,
      retryAt: gate.retryAt,
      detail: gate.detail,
    };
    if (!(await this.record(entry, outcome, log))) return delivery.ack();
    if (gate.kind === 'circuit_open') await this.pauseUntil(gate.retryAt);
    await delivery.retryLater(Math.max(0, gate.retryAt - Date.now()));
  }

  /** Sleeps until `at`, or until stop() is called. */
  private async pauseUntil(at: number): Promise<void> {
    await Promise.race([sleep(Math.max(0, at - Date.now())), this.stopped]);
  }

  /**
   * A message a producer outside Mailroom published with the email in it. Commits its job (a no-op
   * when its id or idempotency key is known already) and acknowledges the message; the job's outbox
   * entry then publishes it like a job from the API, so scheduling, priority and retries work the
   * same. A key reused for another email is given up at once: retrying cannot help.
   */
  private async ingest(delivery: Delivery, message: NewJob): Promise<void> {
    const t = tracing();
    if (!t) return this.commitIngested(delivery, message);
    // The producer's traceparent (if any) is the parent; the job keeps this span's context, so the
    // publish from the outbox and the send continue the producer's trace.
    const span = startProcessSpan(t, {
      broker: this.broker.name,
      jobId: message.id,
      headers: delivery.message.headers,
      claimAskedAt: Date.now(),
      deliveryCount: delivery.deliveryCount,
    });
    const job = { ...message, traceContext: t.contextOf(span) };
    return ended(t, span, () => t.withSpan(span, () => this.commitIngested(delivery, job)));
  }

  private async commitIngested(delivery: Delivery, job: NewJob): Promise<void> {
    const result = await this.creations.add(job);
    if (result.kind === 'conflict') {
      const error = `idempotency_key ${JSON.stringify(job.idempotency?.key)} was already used for a different email (job ${result.id})`;
      this.logger.warn({ job_id: result.id }, `message from the broker dead-lettered: ${error}`);
      return delivery.deadLetter('invalid_message', error);
    }
    if (result.kind === 'created') {
      this.logger.info({ job_id: result.id, status: result.status }, 'accepted from the broker');
      this.options.workAdded?.();
    }
    return delivery.ack();
  }

  private async settleUnclaimed(
    delivery: Delivery,
    claim: Exclude<ClaimResult, { kind: 'claimed' }>,
  ): Promise<void> {
    if (claim.kind === 'busy') {
      // Not due yet (scheduled or deferred), or leased by another worker: bring the message back
      // when that changes. For a lease this matters on a network broker: if the holder died, this
      // redelivery is the job's only message, and dropping it would leave the job to the sweeper.
      // Should the holder finish first, the next claim says `finished` and the message is dropped.
      return delivery.retryLater(Math.max(0, claim.retryAt - Date.now()));
    }
    if (claim.kind === 'not_found') {
      this.logger.warn({ job_id: delivery.message.jobId }, 'worker: delivery for an unknown job, dropped');
    }
    // Finished (or unknown): this redelivery is a no-op.
    return delivery.ack();
  }

  private async settle(delivery: Delivery, outcome: Outcome): Promise<void> {
    switch (outcome.kind) {
      case 'deferred':
        return delivery.retryLater(Math.max(0, outcome.retryAt - Date.now()));
      case 'failed':
        return outcome.deadLetter
          ? delivery.deadLetter(outcome.deadLetter, String(outcome.detail.message ?? ''))
          : delivery.ack();
      default:
        return delivery.ack();
    }
  }

  private async failInvalid(
    delivery: Delivery,
    entry: InFlight,
    job: Job,
    error: Error,
    log: Logger,
  ): Promise<void> {
    log.error({ err: error, job_id: job.id }, 'job cannot be built into a message: dead-lettered');
    const outcome: Outcome = {
      kind: 'failed',
      deadLetter: 'invalid_message',
      detail: { code: 'MESSAGE_BUILD_FAILED', message: error.message.slice(0, 500) },
    };
    if (await this.record(entry, outcome, log)) await delivery.deadLetter('invalid_message', error.message);
  }

  /** Records an outcome under the entry's lease; false when the lease was lost (a stale result). */
  private async record(entry: InFlight, outcome: Outcome, log: Logger): Promise<boolean> {
    if (entry.done || !entry.leaseToken) return false;
    entry.done = true;
    const accepted = await this.commitOutcome(
      { jobId: entry.jobId, leaseToken: entry.leaseToken, outcome },
      (entry.leaseHoldsUntil ?? 0) - OUTCOME_RETRY_MARGIN_MS,
      log,
    );
    if (accepted) {
      this.counts[outcome.kind]++;
      if (entry.job)
        this.options.metrics?.outcomeRecorded(
          this.transport.name,
          entry.job,
          outcome,
          entry.sendSeconds,
          Date.now(),
        );
    }
    if (!accepted)
      log.warn({ outcome: outcome.kind }, 'result rejected: the lease was lost to another worker');
    else if (outcome.kind === 'sent') log.debug({ response: outcome.detail.response }, 'sent');
    // Routine under a rate limit, and counted in the throughput line: one line per job would flood.
    else if (outcome.detail.code === 'RATE_LIMITED')
      log.debug({ limit: outcome.detail.limit }, 'rate limited: handed back untried');
    else
      log.info(
        { outcome: outcome.kind, code: outcome.detail.code, error: outcome.detail.message },
        outcome.kind,
      );
    return accepted;
  }

  /**
   * Writes an outcome, retrying a failing Store until `deadline` (shortly before the lease ends).
   * This matters most for `sent`: the relay has the email, and an outcome that is never written lets
   * the lease expire and the job be sent again. A brief Store outage (a failover, connections cut)
   * should not cost a duplicate. Past the deadline the error propagates: another worker may claim
   * the job by then, and a late write would be refused under the stale token anyway.
   */
  private async commitOutcome(request: RecordOutcome, deadline: number, log: Logger): Promise<boolean> {
    let pauseMs = OUTCOME_RETRY_FIRST_PAUSE_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        const accepted = await this.outcomes.add(request);
        if (!accepted && attempt > 1) {
          // The failed write may have committed with its reply lost: then the job has moved on
          // under this very token and this retry finds nothing to change. Say so, rather than
          // blame another worker; the caller settles the delivery either way.
          log.warn(
            { outcome: request.outcome.kind },
            'outcome write retried after an error and refused: the first write probably landed',
          );
          return true;
        }
        return accepted;
      } catch (error) {
        if (Date.now() + pauseMs >= deadline) throw error;
        if (attempt === 1)
          log.warn({ err: error }, 'could not record the outcome; retrying while the lease lasts');
        await sleep(pauseMs);
        pauseMs = Math.min(pauseMs * 2, OUTCOME_RETRY_MAX_PAUSE_MS);
      }
    }
  }

  /** One line a second while sending (quiet when idle): what operators watch a send rate with. */
  private logThroughput(): void {
    const { sent, deferred, failed, released } = this.counts;
    if (sent + deferred + failed + released === 0) return;
    this.counts = emptyCounts();
    const perSecond = 1000 / THROUGHPUT_LOG_MS;
    this.logger.info(
      {
        worker: this.id,
        sent_per_sec: sent * perSecond,
        deferred_per_sec: deferred * perSecond,
        failed_per_sec: failed * perSecond,
        held_back_per_sec: released * perSecond,
        in_flight: this.inFlight.size,
      },
      'throughput',
    );
  }

  /** Shutdown deadline passed: give every claimed, unfinished job back so the next start takes it. */
  private async releaseUnfinished(): Promise<void> {
    const pending = [...this.inFlight.values()].filter((entry) => !entry.done && entry.leaseToken);
    await Promise.all(
      pending.map((entry) =>
        this.record(
          entry,
          // A send in progress may already have reached the relay: that attempt counts.
          { kind: 'released', attemptSpent: entry.sending, detail: { reason: 'shutdown_timeout' } },
          this.logger.child({ job_id: entry.jobId }),
        ),
      ),
    );
  }
}
