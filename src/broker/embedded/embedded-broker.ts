import type { Logger } from 'pino';
import type { Store } from '../../store/store.js';
import type { ComponentHealth } from '../../transport/transport.js';
import type { Broker, ConsumeOptions, Consumer, Delivery, DeliveryHandler, JobMessage } from '../broker.js';

export interface EmbeddedBrokerOptions {
  /** How often to look for due jobs when nothing wakes the consumer sooner. */
  readonly pollIntervalMs: number;
  readonly logger: Logger;
}

/**
 * The broker of the embedded shape: the Store's table of jobs is the queue. A committed job is
 * already "published"; consuming means finding due jobs in the Store. Retries and dead letters are
 * the Store's own `deferred` and `failed` records, so settling a delivery only frees its slot.
 * At-least-once holds because nothing leaves the Store until a worker records an outcome there.
 */
export class EmbeddedBroker implements Broker {
  readonly name = 'embedded';
  readonly publishesOnCommit = true;
  private readonly consumers = new Set<EmbeddedConsumer>();

  constructor(
    private readonly store: Store,
    private readonly options: EmbeddedBrokerOptions,
  ) {}

  async start(): Promise<void> {}

  async close(): Promise<void> {
    await Promise.all([...this.consumers].map((consumer) => consumer.stop()));
  }

  async publish(_messages: readonly JobMessage[]): Promise<void> {
    this.notify();
  }

  notify(): void {
    for (const consumer of this.consumers) consumer.wake();
  }

  async consume(handler: DeliveryHandler, options: ConsumeOptions): Promise<Consumer> {
    const consumer = new EmbeddedConsumer(this.store, handler, options.prefetch, this.options, () =>
      this.consumers.delete(consumer),
    );
    this.consumers.add(consumer);
    consumer.wake();
    return consumer;
  }

  async health(): Promise<ComponentHealth> {
    return { ok: true, detail: 'queue kept in the store' };
  }
}

class EmbeddedConsumer implements Consumer {
  private readonly inFlight = new Set<string>();
  private running = true;
  private polling = false;
  private wakeRequested = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: Store,
    private readonly handler: DeliveryHandler,
    private readonly prefetch: number,
    private readonly options: EmbeddedBrokerOptions,
    private readonly onStop: () => void,
  ) {}

  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    this.onStop();
  }

  /** Looks for work now (or right after the poll under way). */
  wake(): void {
    if (!this.running) return;
    if (this.polling) {
      this.wakeRequested = true;
      return;
    }
    clearTimeout(this.timer);
    this.timer = undefined;
    setImmediate(() => void this.poll());
  }

  private async poll(): Promise<void> {
    if (!this.running || this.polling) return;
    this.polling = true;
    this.wakeRequested = false;
    let found = 0;
    try {
      const capacity = this.prefetch - this.inFlight.size;
      if (capacity > 0) {
        const due = await this.store.findDueJobs(Date.now(), capacity, this.inFlight);
        // Stopped while the query ran: the worker no longer waits for new deliveries, so hand out none.
        if (!this.running) return;
        found = due.length;
        for (const job of due) this.deliver({ jobId: job.id, priority: job.priority, headers: {} });
      }
    } catch (error) {
      this.options.logger.error({ err: error }, 'embedded broker: looking for due jobs failed');
    } finally {
      this.polling = false;
    }
    if (!this.running) return;
    // A full batch means more may be waiting: come back as soon as slots free up (settle wakes us).
    if (this.wakeRequested && this.inFlight.size < this.prefetch) this.wake();
    else if (found === 0 || this.inFlight.size < this.prefetch) this.sleep();
  }

  private sleep(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.poll(), this.options.pollIntervalMs);
    this.timer.unref();
  }

  private deliver(message: JobMessage): void {
    this.inFlight.add(message.jobId);
    let settled = false;
    const settle = async (): Promise<void> => {
      if (settled) return;
      settled = true;
      this.inFlight.delete(message.jobId);
      // Refill in batches rather than one job per settled delivery.
      if (this.inFlight.size <= this.prefetch / 2) this.wake();
    };
    const delivery: Delivery = {
      message,
      deliveryCount: 1,
      ack: settle,
      retryLater: settle,
      deadLetter: settle,
    };
    this.handler(delivery);
  }
}
