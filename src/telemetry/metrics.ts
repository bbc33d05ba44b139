import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { BrokerBacklog } from '../broker/broker.js';
import type { Job } from '../domain/email.js';
import type { BreakerState } from '../flow/circuit-breaker.js';
import type { RateLimitWait } from '../flow/flow-control.js';
import type { JobCounts, OutboxStats, Outcome } from '../store/store.js';
import type { ServiceTags } from './service-tags.js';

/**
 * Mailroom's Prometheus metrics (prom-client), one registry per process. Everything is counted where
 * it happens (HTTP hook, store intake, worker outcomes, breaker transitions); the job gauges read the
 * store when scraped, at most once per JOB_COUNTS_TTL_MS, since counting is not free on a big table.
 */

/** How long a scrape reuses the store's counts. */
const JOB_COUNTS_TTL_MS = 5000;

const BREAKER_STATE_VALUE: Record<BreakerState, number> = { closed: 0, half_open: 1, open: 2 };

/** Delivery latency runs from milliseconds (embedded, idle) to hours (retries): wide buckets. */
const DELIVERY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600];
const SEND_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Waits in place for tokens: a domain's up to 250 ms, the transport's up to 10 s. */
const RATE_LIMIT_WAIT_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** A scrape waits this long at most for the broker's counts; past it the last figures stand. */
const BROKER_BACKLOG_DEADLINE_MS = 2000;
const HTTP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export class Metrics {
  readonly registry = new Registry();
  readonly contentType = this.registry.contentType;

  private readonly httpRequests = new Counter({
    name: 'mailroom_http_requests_total',
    help: 'HTTP requests answered, by route template, method and status code.',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.registry],
  });
  private readonly httpDuration = new Histogram({
    name: 'mailroom_http_request_duration_seconds',
    help: 'Time to answer an HTTP request, by route template and method.',
    labelNames: ['route', 'method'] as const,
    buckets: HTTP_BUCKETS,
    registers: [this.registry],
  });
  private readonly accepted = new Counter({
    name: 'mailroom_emails_accepted_total',
    help: 'Emails committed as new jobs (from the API or from producers on the broker).',
    registers: [this.registry],
  });
  private readonly sent = new Counter({
    name: 'mailroom_emails_sent_total',
    help: 'Emails the relay accepted.',
    labelNames: ['transport'] as const,
    registers: [this.registry],
  });
  private readonly deferred = new Counter({
    name: 'mailroom_emails_deferred_total',
    help: 'Attempts that failed transiently and will be retried, by error code.',
    labelNames: ['transport', 'code'] as const,
    registers: [this.registry],
  });
  private readonly failed = new Counter({
    name: 'mailroom_emails_failed_total',
    help: 'Emails that ended failed, by reason: permanent (5xx), max_attempts, invalid_message.',
    labelNames: ['transport', 'reason'] as const,
    registers: [this.registry],
  });
  private readonly heldBack = new Counter({
    name: 'mailroom_emails_held_back_total',
    help: 'Jobs flow control handed back untried, by reason: circuit_open, rate_limited (with the bucket).',
    labelNames: ['reason', 'limit'] as const,
    registers: [this.registry],
  });
  private readonly delivery = new Histogram({
    name: 'mailroom_delivery_seconds',
    help: 'From acceptance (or send_at, for scheduled emails) to the relay accepting the email.',
    labelNames: ['transport'] as const,
    buckets: DELIVERY_BUCKETS,
    registers: [this.registry],
  });
  private readonly sendDuration = new Histogram({
    name: 'mailroom_send_duration_seconds',
    help: 'One attempt at the transport, by outcome (sent, deferred, failed).',
    labelNames: ['transport', 'outcome'] as const,
    buckets: SEND_BUCKETS,
    registers: [this.registry],
  });
  private readonly breakerState = new Gauge({
    name: 'mailroom_breaker_state',
    help: 'The transport circuit breaker of this process: 0 closed, 1 half-open, 2 open.',
    labelNames: ['transport'] as const,
    registers: [this.registry],
  });
  private readonly breakerTransitions = new Counter({
    name: 'mailroom_breaker_transitions_total',
    help: 'Circuit breaker transitions, by the state entered.',
    labelNames: ['transport', 'to'] as const,
    registers: [this.registry],
  });

  private readonly rateLimitWait = new Histogram({
    name: 'mailroom_rate_limit_wait_seconds',
    help: 'Waits in place for rate-limit tokens before a send, by limit (transport, domain). Takes granted at once are not observed.',
    labelNames: ['limit'] as const,
    buckets: RATE_LIMIT_WAIT_BUCKETS,
    registers: [this.registry],
  });
  private readonly rateLimitWaits = new Counter({
    name: 'mailroom_rate_limit_waits_total',
    help: 'Waits in place for rate-limit tokens, by limit and bucket (transport:<name>, a configured domain:<name>, or domain:* for any other).',
    labelNames: ['limit', 'bucket'] as const,
    registers: [this.registry],
  });
  /** Broker-wide: set at scrape time by watchBroker (no series without a network broker). */
  private readonly brokerMessages = new Gauge({
    name: 'mailroom_broker_messages',
    help: "Messages waiting in the broker for this shape's work queues, by queue (RabbitMQ: ready; NATS: pending + unacknowledged). Broker-wide.",
    labelNames: ['queue'] as const,
    registers: [this.registry],
    collect: () => this.readBrokerBacklog?.(),
  });
  private readBrokerBacklog: (() => Promise<void>) | undefined;

  private readonly webhookTries = new Counter({
    name: 'mailroom_webhook_deliveries_total',
    help: 'Webhook delivery tries by this process, by result: delivered, retry, failed.',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  private readonly liveClients = new Gauge({
    name: 'mailroom_live_clients',
    help: 'Clients following live status on this process, by channel (sse, websocket).',
    labelNames: ['channel'] as const,
    registers: [this.registry],
  });

  constructor(labels: ServiceTags, countJobs?: () => Promise<JobCounts>) {
    this.registry.setDefaultLabels({
      service: labels.service,
      version: labels.version,
      ...(labels.env && { env: labels.env }),
    });
    collectDefaultMetrics({ register: this.registry });
    if (countJobs) this.registerJobGauges(countJobs);
  }

  /** The text a Prometheus scrape gets. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  httpAnswered(route: string, method: string, status: number, seconds: number): void {
    this.httpRequests.inc({ route, method, status: String(status) });
    this.httpDuration.observe({ route, method }, seconds);
  }

  jobsAccepted(count: number): void {
    if (count > 0) this.accepted.inc(count);
  }

  /** A worker recorded `outcome` for `job` after `sendSeconds` at the transport (none: never sent). */
  outcomeRecorded(
    transport: string,
    job: Job,
    outcome: Outcome,
    sendSeconds: number | undefined,
    now: number,
  ): void {
    const code = String(outcome.detail.code ?? '');
    switch (outcome.kind) {
      case 'sent':
        this.sent.inc({ transport });
        this.delivery.observe(
          { transport },
          Math.max(0, now - Math.max(job.createdAt, job.sendAt ?? 0)) / 1000,
        );
        break;
      case 'deferred':
        this.deferred.inc({ transport, code });
        break;
      case 'failed':
        this.failed.inc({ transport, reason: outcome.deadLetter ?? 'permanent' });
        break;
      case 'released':
        if (code === 'CIRCUIT_OPEN') this.heldBack.inc({ reason: 'circuit_open', limit: '' });
        if (code === 'RATE_LIMITED')
          this.heldBack.inc({ reason: 'rate_limited', limit: String(outcome.detail.limit_group ?? '') });
        break;
    }
    if (sendSeconds !== undefined && outcome.kind !== 'released') {
      this.sendDuration.observe({ transport, outcome: outcome.kind }, sendSeconds);
    }
  }

  /** A send waited in place for rate-limit tokens (FlowControl's onWait). */
  rateLimitWaited(wait: RateLimitWait): void {
    this.rateLimitWait.observe({ limit: wait.limit }, wait.waitMs / 1000);
    this.rateLimitWaits.inc({ limit: wait.limit, bucket: wait.bucket });
  }

  webhookTried(result: 'delivered' | 'retry' | 'failed'): void {
    this.webhookTries.inc({ result });
  }

  liveClientsChanged(channel: 'sse' | 'websocket', delta: number): void {
    this.liveClients.inc({ channel }, delta);
  }

  breakerEntered(transport: string, state: BreakerState, counted = true): void {
    this.breakerState.set({ transport }, BREAKER_STATE_VALUE[state]);
    if (counted) this.breakerTransitions.inc({ transport, to: state });
  }

  /**
   * The outbox of a network broker's shape: entries due and not yet published, and how long the
   * oldest has waited. Store-wide, read when scraped (at most every JOB_COUNTS_TTL_MS).
   */
  watchOutbox(stats: (now: number) => Promise<OutboxStats>): void {
    const read = cachedFor(JOB_COUNTS_TTL_MS, () => stats(Date.now()));
    new Gauge({
      name: 'mailroom_outbox_due',
      help: 'Outbox entries due and not yet published to the broker (store-wide).',
      registers: [this.registry],
      async collect() {
        const found = await read().catch(() => undefined);
        if (found) this.set(found.due);
      },
    });
    new Gauge({
      name: 'mailroom_outbox_lag_seconds',
      help: 'How long the oldest due outbox entry has waited to be published (0 when none; store-wide).',
      registers: [this.registry],
      async collect() {
        const found = await read().catch(() => undefined);
        if (found)
          this.set(found.oldestDueAt === undefined ? 0 : Math.max(0, Date.now() - found.oldestDueAt) / 1000);
      },
    });
  }

  /**
   * The backlog of a network broker's work queues, read when scraped (at most every
   * JOB_COUNTS_TTL_MS, and never waiting more than BROKER_BACKLOG_DEADLINE_MS): a broker that does
   * not answer leaves the last figures rather than fail or hold up the scrape.
   */
  watchBroker(backlog: () => Promise<readonly BrokerBacklog[]>): void {
    // One read at a time: a broker that answers slowly must not get a new read (a RabbitMQ channel
    // each) on every scrape while the ones before are still waiting; the deadline bounds the scrape.
    // A read that answers after its scrape gave up still sets the figures, for the next scrape.
    const single = oneAtATime(async () => {
      for (const queue of await backlog()) this.brokerMessages.set({ queue: queue.queue }, queue.messages);
    });
    const read = cachedFor(JOB_COUNTS_TTL_MS, () => withDeadline(single(), BROKER_BACKLOG_DEADLINE_MS));
    this.readBrokerBacklog = () => read().catch(() => undefined);
  }

  private registerJobGauges(countJobs: () => Promise<JobCounts>): void {
    const counts = cachedFor(JOB_COUNTS_TTL_MS, oneAtATime(countJobs));
    new Gauge({
      name: 'mailroom_jobs',
      help: 'Jobs in the store by status (queue depth: queued, scheduled, processing, deferred). Store-wide: every process reports the same figure.',
      labelNames: ['status'] as const,
      registers: [this.registry],
      async collect() {
        // A store that cannot answer leaves the last figures: the scrape itself must not fail.
        const found = await counts().catch(() => undefined);
        for (const [status, n] of Object.entries(found?.byStatus ?? {})) this.set({ status }, n);
      },
    });
    new Gauge({
      name: 'mailroom_dead_letters',
      help: 'Failed jobs kept for replay. Store-wide.',
      registers: [this.registry],
      async collect() {
        const found = await counts().catch(() => undefined);
        if (found) this.set(found.deadLetters);
      },
    });
  }
}

/** `read`, answered from its last result for `ttlMs`; a failed read is not kept, so the next asks again. */
function cachedFor<T>(ttlMs: number, read: () => Promise<T>): () => Promise<T> {
  let cached: { at: number; value: Promise<T> } | undefined;
  return () => {
    const now = Date.now();
    if (!cached || now - cached.at >= ttlMs) {
      const entry = { at: now, value: read() };
      cached = entry;
      entry.value.catch(() => {
        if (cached === entry) cached = undefined;
      });
    }
    return cached.value;
  };
}

/** `read`, but while one call is running every other call shares it instead of starting another. */
function oneAtATime<T>(read: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | undefined;
  return () => {
    running ??= read().finally(() => {
      running = undefined;
    });
    return running;
  };
}

/** `work`, or a rejection once `ms` have passed (the timer does not hold the process open). */
function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}
