import type { Logger } from 'pino';
import { retryDelayMs } from '../domain/backoff.js';
import { eventMessage } from '../live/event-message.js';
import type { DeliveryNext, DeliveryResult, DueDelivery, WebhookStore } from '../store/webhook-store.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { PostOptions, PostResult } from './post-webhook.js';
import { postWebhook } from './post-webhook.js';
import { signWebhook } from './sign-webhook.js';

export interface WebhookDispatcherOptions {
  readonly timeoutMs: number;
  readonly allowPrivate: boolean;
  /** Delay before the second try; doubles per try, with jitter, up to RETRY_MAX_MS. */
  readonly retryBaseMs: number;
  /** How long after its event a delivery is still tried. */
  readonly retryWindowMs: number;
  /** Deliveries in flight at once, across endpoints. */
  readonly concurrency?: number;
  readonly pollIntervalMs?: number;
  readonly post?: (
    url: string,
    headers: Record<string, string>,
    body: string,
    options: PostOptions,
  ) => Promise<PostResult>;
  readonly now?: () => number;
}

const RETRY_MAX_MS = 2 * 60 * 60 * 1000;
/**
 * Tries of one endpoint in flight at once in a process: a receiver that is down makes each try
 * wait out the timeout, and without a cap its backlog of retries would fill every slot.
 */
const MAX_IN_FLIGHT_PER_ENDPOINT = 4;

/**
 * Delivers webhooks from the store's durable queue: one per process, any number of processes.
 * Each delivery is taken (hidden from other dispatchers while it is tried), signed, POSTed and
 * recorded on its own. One endpoint has at most MAX_IN_FLIGHT_PER_ENDPOINT tries in flight here
 * (a take gives it no more than that, and none while it has that many), so a receiver that is down
 * or slow holds a few slots, never the queue. What to do next:
 * - 2xx: delivered;
 * - 410 Gone: failed, and the endpoint is turned off at once (the receiver asked);
 * - anything else (no answer, 3xx, 4xx, 5xx): tried again with exponential backoff and jitter
 *   while the retry window (24 h) lasts; past it the delivery fails and the endpoint is turned off,
 *   unless it accepted some other delivery since this one's event (one poisoned payload should not
 *   silence an otherwise healthy receiver).
 */
export class WebhookDispatcher {
  private running = false;
  private inFlight = 0;
  private readonly inFlightByEndpoint = new Map<string, number>();
  private readonly settled = new Set<Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  /** The take in progress, if any: one at a time, and stop() waits for it. */
  private taking: Promise<void> | undefined;
  private failingSince: number | undefined;
  private readonly concurrency: number;
  private readonly pollIntervalMs: number;
  private readonly post: NonNullable<WebhookDispatcherOptions['post']>;
  private readonly now: () => number;

  constructor(
    private readonly store: WebhookStore,
    private readonly logger: Logger,
    private readonly metrics: Metrics | undefined,
    private readonly options: WebhookDispatcherOptions,
  ) {
    this.concurrency = options.concurrency ?? 16;
    this.pollIntervalMs = options.pollIntervalMs ?? 250;
    this.post = options.post ?? postWebhook;
    this.now = options.now ?? Date.now;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.timer = setInterval(() => void this.fill(), this.pollIntervalMs);
    this.timer.unref();
    void this.fill();
  }

  /** Stops taking deliveries and waits for those in flight (each bounded by the timeout). */
  async stop(): Promise<void> {
    this.running = false;
    clearInterval(this.timer);
    await this.taking;
    await Promise.allSettled([...this.settled]);
  }

  /** Takes as many due deliveries as there are free slots. */
  private fill(): Promise<void> {
    if (!this.running || this.taking || this.inFlight >= this.concurrency) return Promise.resolve();
    this.taking = this.take().finally(() => {
      this.taking = undefined;
    });
    return this.taking;
  }

  private async take(): Promise<void> {
    try {
      const free = this.concurrency - this.inFlight;
      const holdMs = this.options.timeoutMs + 30_000;
      const skip = [...this.inFlightByEndpoint]
        .filter(([, count]) => count >= MAX_IN_FLIGHT_PER_ENDPOINT)
        .map(([endpointId]) => endpointId);
      const taken = await this.store.takeDeliveries(this.now(), free, holdMs, {
        perEndpoint: MAX_IN_FLIGHT_PER_ENDPOINT,
        skip,
      });
      this.recovered();
      // Taken while stopping: left held; another dispatcher (or this one's next start) tries them.
      if (this.running) for (const delivery of taken) this.launch(delivery);
    } catch (error) {
      this.failed(error);
    }
  }

  private launch(delivery: DueDelivery): void {
    const endpointId = delivery.endpoint.id;
    this.inFlight++;
    this.inFlightByEndpoint.set(endpointId, (this.inFlightByEndpoint.get(endpointId) ?? 0) + 1);
    const done = this.deliver(delivery)
      .catch((error) =>
        this.logger.error({ err: error, delivery_id: delivery.id }, 'webhook delivery crashed'),
      )
      .finally(() => {
        this.inFlight--;
        const left = this.inFlightByEndpoint.get(endpointId)! - 1;
        if (left > 0) this.inFlightByEndpoint.set(endpointId, left);
        else this.inFlightByEndpoint.delete(endpointId);
        this.settled.delete(done);
        void this.fill();
      });
    this.settled.add(done);
  }

  private async deliver(delivery: DueDelivery): Promise<void> {
    const at = this.now();
    const outcome = delivery.endpoint.enabled
      ? await this.send(delivery)
      : { error: 'endpoint disabled', durationMs: 0 };
    const next = this.decide(delivery, outcome, at);
    const result: DeliveryResult = {
      deliveryId: delivery.id,
      endpointId: delivery.endpoint.id,
      attempt: delivery.attempt,
      outcome: { at, ...outcome },
      next,
    };
    await this.store.recordDeliveries([result]);
    this.metrics?.webhookTried(next.kind);
    this.log(delivery, outcome, next);
  }

  private send(delivery: DueDelivery): Promise<PostResult> {
    const body = JSON.stringify(eventMessage(delivery.event, { to: delivery.to, subject: delivery.subject }));
    // One id per event, the same on every try: receivers deduplicate on it.
    const id = `evt_${delivery.event.id}`;
    const timestamp = Math.floor(this.now() / 1000);
    const headers = {
      'webhook-id': id,
      'webhook-timestamp': String(timestamp),
      'webhook-signature': signWebhook(delivery.endpoint.secret, id, timestamp, body),
    };
    return this.post(delivery.endpoint.url, headers, body, {
      timeoutMs: this.options.timeoutMs,
      allowPrivate: this.options.allowPrivate,
    });
  }

  private decide(delivery: DueDelivery, outcome: PostResult, at: number): DeliveryNext {
    const code = outcome.statusCode;
    if (code !== undefined && code >= 200 && code < 300) return { kind: 'delivered' };
    if (!delivery.endpoint.enabled) return { kind: 'failed' };
    if (code === 410) return { kind: 'failed', disableEndpoint: { reason: 'gone' } };
    const retryAt = at + retryDelayMs(delivery.attempt, this.options.retryBaseMs, RETRY_MAX_MS);
    if (retryAt <= delivery.createdAt + this.options.retryWindowMs) return { kind: 'retry', at: retryAt };
    return {
      kind: 'failed',
      disableEndpoint: { reason: 'failing', unlessDeliveredSince: delivery.createdAt },
    };
  }

  private log(delivery: DueDelivery, outcome: PostResult, next: DeliveryNext): void {
    const fields = {
      delivery_id: delivery.id,
      endpoint_id: delivery.endpoint.id,
      job_id: delivery.event.jobId,
      event: delivery.eventType,
      attempt: delivery.attempt,
      status_code: outcome.statusCode,
      next: next.kind,
    };
    if (next.kind === 'delivered') this.logger.debug(fields, 'webhook delivered');
    else if (next.kind === 'retry')
      this.logger.info({ ...fields, error: outcome.error }, 'webhook try failed');
    else
      this.logger.warn(
        { ...fields, error: outcome.error, disable: next.disableEndpoint },
        'webhook delivery failed',
      );
  }

  private failed(error: unknown): void {
    if (this.failingSince !== undefined) return;
    this.failingSince = this.now();
    this.logger.error({ err: error }, 'webhook dispatcher cannot read its queue; retrying');
  }

  private recovered(): void {
    if (this.failingSince === undefined) return;
    this.logger.info({ down_ms: this.now() - this.failingSince }, 'webhook dispatcher reads its queue again');
    this.failingSince = undefined;
  }
}
