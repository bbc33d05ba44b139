import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { ApiContext } from './api/api-context.js';
import { ApiRateLimit } from './api/api-rate-limit.js';
import { ApiKeyAuth } from './api/auth.js';
import { buildOpsServer, buildServer } from './api/build-server.js';
import { EmailIntake } from './api/email-intake.js';
import type { Broker } from './broker/broker.js';
import { DEFAULT_DISPATCHER_OPTIONS, OutboxDispatcher } from './broker/outbox-dispatcher.js';
import { type Config, HOUR, SECOND } from './config/config-schema.js';
import { storeKind } from './config/load-config.js';
import { parseMailbox } from './domain/validate-email.js';
import { WEBHOOK_EVENT_TYPES } from './domain/webhook.js';
import { MailroomError } from './errors.js';
import { AdaptiveRates } from './flow/adaptive-rates.js';
import { CircuitBreaker } from './flow/circuit-breaker.js';
import { FallbackRateLimiter } from './flow/fallback-rate-limiter.js';
import { FlowControl } from './flow/flow-control.js';
import { MemoryRateLimiter } from './flow/memory-rate-limiter.js';
import type { RateLimiter } from './flow/rate-limiter.js';
import { DevInbox } from './inbox/dev-inbox.js';
import { LiveHub } from './live/live-hub.js';
import { createBroker, createRateLimiter, createStore } from './select-adapters.js';
import type { Store } from './store/store.js';
import { Metrics } from './telemetry/metrics.js';
import { serviceTags } from './telemetry/service-tags.js';
import { tracing } from './telemetry/tracing.js';
import { ChaosTransport } from './transport/chaos/chaos-transport.js';
import { describeChaos } from './transport/chaos/parse-chaos.js';
import { SesTransport } from './transport/ses/ses-transport.js';
import { SmtpTransport } from './transport/smtp/smtp-transport.js';
import type { Transport } from './transport/transport.js';
import { forbiddenHost } from './webhooks/address-guard.js';
import { WebhookDispatcher } from './webhooks/webhook-dispatcher.js';
import { WireCodec } from './wire/wire-codec.js';
import { Worker } from './worker/worker.js';

/** The id of the endpoint MAILROOM_STATUS_CALLBACK_URL registers. */
export const STATUS_CALLBACK_ID = 'status-callback';

export interface AppRoles {
  readonly api: boolean;
  readonly worker: boolean;
}

export interface App {
  readonly config: Config;
  readonly store: Store;
  readonly broker: Broker;
  /** The HTTP API; undefined for `mailroom worker`, which serves only `ops`. */
  readonly server: FastifyInstance | undefined;
  /** `mailroom worker`'s /metrics, /health and /ready on MAILROOM_METRICS_PORT. */
  readonly ops: FastifyInstance | undefined;
  readonly metrics: Metrics;
  readonly inbox: DevInbox | undefined;
  readonly worker: Worker | undefined;
  /** Listens (when the API role is on) and starts the worker. Returns the URLs it serves. */
  start(): Promise<{ apiUrl?: string; inboxUrl?: string; inboxSmtp?: string; opsUrl?: string }>;
  /** Graceful shutdown: refuse new work, finish or release in-flight sends, close everything. */
  stop(): Promise<void>;
}

const IDEMPOTENCY_TTL_MS = 24 * HOUR;
/** Finished webhook deliveries (and their tries) are kept this long for `GET /v1/webhooks/{id}/deliveries`. */
const WEBHOOK_LOG_RETENTION_MS = 7 * 24 * HOUR;
const SCHEDULE_AHEAD_MAX_MS = 366 * 24 * HOUR;
const MAX_RECIPIENTS = 50;
/** The longest a claimed job waits in place for a transport token before it is handed back. */
const MAX_TRANSPORT_WAIT_MS = 10 * SECOND;

/** The one composition root: picks adapters from the configuration and wires them together. */
export async function buildApp(
  config: Config,
  logger: Logger,
  roles: AppRoles = { api: true, worker: true },
): Promise<App> {
  const defaultFrom = parseMailbox(config.from);
  if (!defaultFrom.ok) {
    throw new MailroomError(
      'CONFIG_INVALID',
      `Invalid configuration:\n  MAILROOM_FROM=${JSON.stringify(config.from)}: ${defaultFrom.message}`,
    );
  }
  const validation = () => ({
    defaultFrom: config.from,
    maxRecipients: MAX_RECIPIENTS,
    maxMessageBytes: config.maxMessageBytes,
    maxScheduleAheadMs: SCHEDULE_AHEAD_MAX_MS,
    now: Date.now(),
  });
  const metrics = new Metrics(serviceTags(config), () => store.countJobs());
  // Every job committed, from the API or from producers on the broker, is counted as accepted.
  const store: Store = countingAccepted(createStore(config), metrics);
  await store.migrate();
  if (store.outbox) {
    const outbox = store.outbox;
    metrics.watchOutbox((now) => outbox.stats(now));
  }
  const codec = new WireCodec({ validation, idempotencyTtlMs: IDEMPOTENCY_TTL_MS });
  const broker: Broker = createBroker(config, store, codec, logger);
  const backlog = broker.backlog?.bind(broker);
  if (backlog) metrics.watchBroker(backlog);
  // A network broker is fed from the store's outbox; the embedded one reads the store directly.
  const dispatcher =
    store.outbox && !broker.publishesOnCommit
      ? new OutboxDispatcher(store.outbox, broker, { ...DEFAULT_DISPATCHER_OPTIONS, logger })
      : undefined;
  /** Committed jobs are waiting: publish them, or wake the embedded consumer. */
  const workAdded = () => (dispatcher ? dispatcher.notify() : broker.notify());
  // The dev inbox runs where the sends are: with the worker, when SMTP has no relay configured.
  const inbox =
    config.transport === 'smtp' && config.smtpUrl === undefined && roles.worker
      ? new DevInbox({
          host: '127.0.0.1',
          smtpPort: config.inboxSmtpPort,
          maxMessages: config.inboxMaxMessages,
          maxMessageBytes: config.maxMessageBytes * 2,
          logger,
        })
      : undefined;
  let transport: Transport | undefined;
  let worker: Worker | undefined;
  let flow: FlowControl | undefined;
  // Rate limits are shared by every process of the shape (Redis, else PostgreSQL); each process
  // also keeps buckets of its own to fall back on when the shared ones cannot be reached.
  const needsLimiter = config.apiRatePerMin !== undefined || roles.worker;
  const limiter = needsLimiter
    ? new FallbackRateLimiter(createRateLimiter(config), new MemoryRateLimiter(), logger)
    : undefined;
  const apiRateLimit =
    config.apiRatePerMin !== undefined && limiter
      ? new ApiRateLimit(config.apiRatePerMin, limiter)
      : undefined;
  const chaos = config.chaos ? describeChaos(config.chaos) : undefined;
  const intake = new EmailIntake(
    store,
    workAdded,
    {
      maxBacklog: config.maxBacklog,
      idempotencyTtlMs: IDEMPOTENCY_TTL_MS,
      concurrentCommits: storeKind(config) === 'postgres' ? 2 : 1,
      ...(storeKind(config) === 'postgres' && { commitStallMs: SECOND }),
    },
    logger,
  );
  let draining = false;
  let pruneTimer: NodeJS.Timeout | undefined;
  // Live status streams are served by the API; every process delivers webhooks.
  const feed = roles.api ? store.openEventFeed(feedErrorLogger(logger)) : undefined;
  const live = feed ? new LiveHub(feed, store.events, logger) : undefined;
  const webhooks = new WebhookDispatcher(store.webhooks, logger, metrics, {
    timeoutMs: config.webhookTimeoutMs,
    allowPrivate: config.webhooksAllowPrivate,
    retryBaseMs: config.webhookRetryBaseMs,
    retryWindowMs: config.webhookRetryWindowMs,
  });

  const ctx: ApiContext = {
    config,
    store,
    broker,
    get transport() {
      return transport;
    },
    intake,
    auth: new ApiKeyAuth(config.apiKeys ?? []),
    inbox,
    apiRateLimit,
    get flow() {
      return flow;
    },
    chaos,
    metrics,
    live,
    workAdded,
    validation,
    workerHealth: () =>
      roles.worker
        ? { ok: worker?.running ?? false, detail: `${worker?.activeCount ?? 0} in flight` }
        : undefined,
    isDraining: () => draining,
  };
  const server = roles.api ? await buildServer(ctx, logger) : undefined;
  const ops = roles.api ? undefined : await buildOpsServer(ctx, logger);

  async function start() {
    const urls: { apiUrl?: string; inboxUrl?: string; inboxSmtp?: string; opsUrl?: string } = {};
    if (inbox) {
      await inbox.start().catch((error: Error) => {
        throw new MailroomError(
          'CONFIG_INVALID',
          `The dev inbox cannot listen on 127.0.0.1:${config.inboxSmtpPort} (MAILROOM_INBOX_SMTP_PORT): ${error.message}` +
            (roles.api
              ? ''
              : '. With several workers, run `mailroom inbox` once and point every worker at it with MAILROOM_SMTP_URL=smtp://127.0.0.1:1025'),
        );
      });
      urls.inboxSmtp = `smtp://127.0.0.1:${inbox.port}`;
    }
    if (roles.worker) {
      transport =
        config.transport === 'ses'
          ? new SesTransport({
              region: config.awsRegion!,
              endpoint: config.sesEndpoint,
              configurationSet: config.sesConfigurationSet,
              timeoutMs: config.sesTimeoutMs,
              // One connection per send in flight: sends never queue for a socket.
              maxSockets: config.concurrency,
            })
          : new SmtpTransport({
              url: config.smtpUrl ?? urls.inboxSmtp!,
              pool: config.smtpPool,
              timeoutMs: config.smtpTimeoutMs,
            });
      if (config.chaos) {
        transport = new ChaosTransport(transport, config.chaos);
        logger.warn(
          { chaos: chaos },
          `!!! FAULT INJECTION IS ON (MAILROOM_CHAOS): ${chaos}. Sends through ${transport.name} will fail, be refused or slow down on purpose.`,
        );
      }
      flow = buildFlowControl(config, transport.name, limiter!, logger, metrics);
    }
    await broker.start();
    dispatcher?.start();
    await intake.start();
    await registerStatusCallback(config, store);
    await feed?.start();
    webhooks.start();
    // A prune that fails (the store briefly unreachable) is logged and tried again next hour; left
    // unhandled, its rejection would end the process.
    const prune = (what: string, run: () => Promise<unknown>) =>
      run().catch((error: unknown) =>
        logger.warn({ err: error }, `could not prune ${what}; next try in an hour`),
      );
    pruneTimer = setInterval(() => {
      void prune('idempotency keys', () => store.pruneIdempotencyKeys(Date.now() - IDEMPOTENCY_TTL_MS));
      void prune('webhook deliveries', () =>
        store.webhooks.pruneDeliveries(Date.now() - WEBHOOK_LOG_RETENTION_MS),
      );
    }, HOUR);
    pruneTimer.unref();
    if (ops) urls.opsUrl = await ops.listen({ host: config.host, port: config.metricsPort });
    if (server) {
      const address = await server.listen({ host: config.host, port: config.port });
      urls.apiUrl = address;
      if (inbox) urls.inboxUrl = `${address}/inbox`;
    }
    if (roles.worker && transport) {
      worker = new Worker(store, broker, transport, { ...config, workAdded, flow, metrics }, logger);
      await worker.start();
    }
    return urls;
  }

  let stopped: Promise<void> | undefined;

  /**
   * Graceful shutdown. The HTTP listener stays open until the worker has drained, so that during the
   * drain clients get an answer they can act on (503 SHUTTING_DOWN from build-server.ts) instead of a
   * refused connection, and /health and /ready keep answering for the orchestrator watching the
   * drain. Only then does the listener close (requests in progress finish first), followed by
   * everything the worker and the API used; the store goes last because everything writes to it.
   * Every step runs even if an earlier one failed; the first failure is rethrown at the end.
   * Calling stop() again returns the same shutdown.
   */
  function stop(): Promise<void> {
    stopped ??= shutDown();
    return stopped;
  }

  async function shutDown(): Promise<void> {
    draining = true;
    clearInterval(pruneTimer);
    await runInOrder(logger, [
      ['worker', () => worker?.stop(config.shutdownTimeoutMs)],
      // Open streams would hold the HTTP server open: end them (clients resume elsewhere).
      ['live streams', () => live?.closeAll('shutting down')],
      ['http server', () => server?.close()],
      ['ops server', () => ops?.close()],
      ['intake', () => intake.stop()],
      ['outbox dispatcher', () => dispatcher?.stop()],
      ['webhook dispatcher', () => webhooks.stop()],
      ['event feed', () => feed?.close()],
      ['transport', () => transport?.close()],
      ['rate limiter', () => limiter?.close()],
      ['broker', () => broker.close()],
      ['dev inbox', () => inbox?.close()],
      ['store', () => store.close()],
      // Last: the spans of everything above, still buffered, go out before the process exits.
      ['traces', () => tracing()?.flush()],
    ]);
  }

  return {
    config,
    store,
    broker,
    server,
    ops,
    metrics,
    inbox,
    get worker() {
      return worker;
    },
    start,
    stop,
  };
}

/** The transport's circuit breaker, whose transitions are logged, and the send-side rate limits. */
function buildFlowControl(
  config: Config,
  transportName: string,
  limiter: RateLimiter,
  logger: Logger,
  metrics: Metrics,
): FlowControl {
  const breaker = new CircuitBreaker(transportName, {
    failures: config.breakerFailures,
    openMs: config.breakerOpenMs,
    halfOpenMax: config.breakerHalfOpenMax,
    successes: config.breakerSuccesses,
  });
  metrics.breakerEntered(transportName, 'closed', false);
  breaker.onTransition((transition) => {
    metrics.breakerEntered(transition.transport, transition.to);
    const line = {
      breaker: transition.transport,
      from: transition.from,
      to: transition.to,
      reason: transition.reason,
    };
    const message = `circuit breaker ${transition.transport}: ${transition.from} → ${transition.to} (${transition.reason})`;
    if (transition.to === 'open')
      logger.warn({ ...line, probe_at: new Date(transition.probeAt!).toISOString() }, message);
    else logger.info(line, message);
  });
  return new FlowControl({
    breaker,
    limiter,
    adaptive: new AdaptiveRates(),
    ...(config.ratePerSec !== undefined && {
      transportRate: {
        ratePerSec: config.ratePerSec,
        burst: config.rateBurst ?? Math.max(1, Math.ceil(config.ratePerSec)),
      },
    }),
    domainRates: config.domainRates ?? { byDomain: new Map() },
    onWait: (wait) => metrics.rateLimitWaited(wait),
    // A job waits in place for a transport token while its lease still covers the longest send.
    transportMaxWaitMs: Math.min(
      MAX_TRANSPORT_WAIT_MS,
      config.leaseMs - (config.transport === 'ses' ? config.sesTimeoutMs : config.smtpTimeoutMs) - SECOND,
    ),
    logger,
  });
}

/**
 * `store`, with the jobs each createJobs call committed counted as accepted. A Proxy, so that every
 * other member (and any state a method sets) is the store's own.
 */
function countingAccepted(store: Store, metrics: Metrics): Store {
  const createJobs: Store['createJobs'] = async (jobs) => {
    const results = await store.createJobs(jobs);
    metrics.jobsAccepted(results.filter((result) => result.kind === 'created').length);
    return results;
  };
  return new Proxy(store, {
    get: (target, name) => {
      if (name === 'createJobs') return createJobs;
      const value = Reflect.get(target, name, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

/**
 * MAILROOM_STATUS_CALLBACK_URL: the endpoint `status-callback`, for every event, put (created or
 * brought up to date and enabled) at every start, after the same address check as the API's.
 */
async function registerStatusCallback(config: Config, store: Store): Promise<void> {
  if (config.statusCallbackUrl === undefined || config.statusCallbackSecret === undefined) return;
  if (!config.webhooksAllowPrivate) {
    // A name that does not resolve now is let through: a DNS failure at start-up should not stop
    // every process, and each delivery is checked again when it connects.
    const reason = await forbiddenHost(new URL(config.statusCallbackUrl).hostname, undefined, 'allow');
    if (reason) {
      throw new MailroomError(
        'CONFIG_INVALID',
        `MAILROOM_STATUS_CALLBACK_URL: webhooks may only target public addresses (${reason}); MAILROOM_WEBHOOKS_ALLOW_PRIVATE=1 allows others`,
      );
    }
  }
  await store.webhooks.putEndpoint({
    id: STATUS_CALLBACK_ID,
    url: config.statusCallbackUrl,
    events: WEBHOOK_EVENT_TYPES,
    secret: config.statusCallbackSecret,
    source: 'env',
    createdAt: Date.now(),
  });
}

/**
 * Logs the live-status feed's failures (a lost LISTEN connection, a read that failed), at most one
 * line every 10 s: the feed retries by itself, and an outage would otherwise log every poll.
 */
function feedErrorLogger(logger: Logger): (error: unknown) => void {
  let lastLoggedAt = 0;
  return (error) => {
    const now = Date.now();
    if (now - lastLoggedAt < 10 * SECOND) return;
    lastLoggedAt = now;
    logger.warn({ err: error }, 'live status feed: cannot follow events; retrying');
  };
}

/** Runs each step in turn, even after one failed; logs each failure and rethrows the first. */
async function runInOrder(
  logger: Logger,
  steps: readonly (readonly [name: string, step: () => unknown])[],
): Promise<void> {
  const failures: unknown[] = [];
  for (const [name, step] of steps) {
    try {
      await step();
    } catch (error) {
      logger.error({ err: error, step: name }, `shutdown: stopping the ${name} failed`);
      failures.push(error);
    }
  }
  if (failures.length > 0) throw failures[0];
}
