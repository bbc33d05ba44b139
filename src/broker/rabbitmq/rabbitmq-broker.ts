import { hostname } from 'node:os';
import { type ChannelModel, connect, type Options, type RecoveringChannelModel } from 'amqplib';
import type { Logger } from 'pino';
import { retryDelayMs } from '../../domain/backoff.js';
import { inMessageTrace } from '../../telemetry/job-spans.js';
import { tracing } from '../../telemetry/tracing.js';
import type { ComponentHealth } from '../../transport/transport.js';
import {
  type Broker,
  type BrokerBacklog,
  BrokerUnavailableError,
  type ConsumeOptions,
  type Consumer,
  type DeliveryHandler,
  type JobMessage,
  type MessageCodec,
} from '../broker.js';
import { ConfirmPublisher } from './confirm-publisher.js';
import { DEFAULT_DELAY_TIERS_MS } from './delay-tiers.js';
import { RabbitMqConsumer } from './rabbitmq-consumer.js';
import { declareTopology, describeTopology, type RabbitMqTopology } from './topology.js';

export interface RabbitMqBrokerOptions {
  /** `amqp[s]://user:pass@host[:port][/vhost]`; never logged (it holds the password). */
  readonly url: string;
  /** The normal-priority work queue; `.high`, `.low`, `.dlx`, `.delay.<ms>` are named after it. Default `email_tasks`. */
  readonly queue?: string;
  /** Where given-up messages go. Default `email_failed_queue`. */
  readonly deadLetterQueue?: string;
  /** Returns of one message before RabbitMQ dead-letters it (`delivery_limit`). Default 20. */
  readonly deliveryLimit?: number;
  /** `retryLater` delay tiers in ms. Default 1 s, 5 s, 30 s, 2 min, 10 min, 1 h. */
  readonly delayTiersMs?: readonly number[];
  /**
   * Messages RabbitMQ may push per priority queue to one consumer, ahead of the `prefetch` it hands
   * out (a deeper local buffer hides the round trip and lets more high messages overtake). Default:
   * the consumer's `prefetch`.
   */
  readonly prefetch?: number;
  readonly codec: MessageCodec;
  readonly logger: Logger;
  /** Backoff between connection attempts, with jitter, from `minMs` growing to `maxMs`. Default 100 ms … 30 s. */
  readonly reconnect?: { readonly minMs: number; readonly maxMs: number };
  /** Connection attempts `start()` makes before it gives up. Default 5. */
  readonly startAttempts?: number;
}

/** After `close()` stopped the consumers, how long it waits for publishes still waiting for a confirm. */
const CLOSE_PUBLISH_GRACE_MS = 5000;

interface Live {
  readonly model: ChannelModel;
  readonly publisher: ConfirmPublisher;
  readonly since: number;
}

/**
 * The broker of the scaled-out shape, on RabbitMQ 3.10+: one quorum queue per priority, publisher
 * confirms, delay tiers (TTL + dead-lettering) for `retryLater`, and a dead-letter queue that
 * RabbitMQ fills at least once. Owns one connection; when it drops, reconnects with backoff,
 * declares the topology again and resumes every live consumer. Nothing is buffered while
 * disconnected: `publish` rejects at once (the Store's outbox holds the backlog).
 */
export class RabbitMqBroker implements Broker {
  readonly name = 'rabbitmq';
  readonly publishesOnCommit = false;
  readonly topology: RabbitMqTopology;
  private readonly consumers = new Set<RabbitMqConsumer>();
  private readonly inFlight = new Set<Promise<void>>();
  private connection: RecoveringChannelModel | undefined;
  private live: Live | undefined;
  private blocked: string | undefined;
  private closing: Promise<void> | undefined;
  private everConnected = false;
  private down = { since: Date.now(), reason: 'not started', attempts: 0 };
  private lastFailure: string | undefined;

  constructor(private readonly options: RabbitMqBrokerOptions) {
    this.topology = describeTopology({
      queue: options.queue ?? 'email_tasks',
      deadLetterQueue: options.deadLetterQueue ?? 'email_failed_queue',
      deliveryLimit: options.deliveryLimit ?? 20,
      delayTiersMs: [...(options.delayTiersMs ?? DEFAULT_DELAY_TIERS_MS)].sort((a, b) => a - b),
    });
  }

  private get logger(): Logger {
    return this.options.logger;
  }

  /** Host and port, for logs and health: the URL itself carries a password. */
  private get where(): string {
    const url = new URL(this.options.url);
    return `${url.hostname}:${url.port || (url.protocol === 'amqps:' ? 5671 : 5672)}`;
  }

  /** Connects, declares the topology; rejects when the first `startAttempts` attempts all fail. */
  async start(): Promise<void> {
    if (this.connection) return;
    const { minMs, maxMs } = this.options.reconnect ?? { minMs: 100, maxMs: 30_000 };
    const connection = await connect(this.options.url, {
      clientProperties: { connection_name: `mailroom ${hostname()} pid ${process.pid}` },
      recovery: {
        waitForConnect: false,
        initialMaxRetries: (this.options.startAttempts ?? 5) - 1,
        // Equal jitter from minMs to maxMs (half fixed, half random), like the job retries.
        calculateDelay: (attempt) => retryDelayMs(attempt, 2 * minMs, maxMs),
        setup: (model: ChannelModel) => this.setUp(model),
      },
    });
    this.connection = connection;
    connection.on('connect', () => this.connected());
    connection.on('connect-failed', (error: Error) => this.attemptFailed(error));
    connection.on('reconnect-scheduled', (info: { attempt: number; delay: number }) =>
      this.logger.debug({ attempt: info.attempt, delay_ms: info.delay }, 'rabbitmq: reconnect scheduled'),
    );
    connection.on('error', (error: Error) => this.logger.debug({ err: error }, 'rabbitmq: connection error'));
    connection.on('blocked', (reason: string) => {
      this.blocked = reason;
      this.logger.warn({ reason }, 'rabbitmq: the server blocked publishing (resource alarm)');
    });
    connection.on('unblocked', () => {
      this.blocked = undefined;
      this.logger.info('rabbitmq: the server unblocked publishing');
    });
    try {
      await connection.waitForConnect();
    } catch (error) {
      throw new Error(`rabbitmq: could not connect to ${this.where}: ${describe(error)}`, { cause: error });
    }
  }

  /**
   * Stops the consumers (deliveries handed out and not settled go back to their queue when the
   * connection closes), waits for publishes in flight, then closes the connection. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await Promise.all([...this.consumers].map((consumer) => consumer.stop()));
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.allSettled([...this.inFlight]),
        new Promise((resolve) => {
          timer = setTimeout(resolve, CLOSE_PUBLISH_GRACE_MS);
        }),
      ]);
      clearTimeout(timer);
      await this.connection?.close();
      this.live = undefined;
    })();
    return this.closing;
  }

  async publish(messages: readonly JobMessage[]): Promise<void> {
    if (messages.length === 0) return;
    if (this.closing) throw new BrokerUnavailableError('rabbitmq: the broker is closed');
    if (this.blocked) throw new BrokerUnavailableError(`rabbitmq: publishing is blocked: ${this.blocked}`);
    const live = this.live;
    if (!live?.publisher.isOpen) {
      throw new BrokerUnavailableError(
        `rabbitmq: not connected to ${this.where} since ${new Date(this.down.since).toISOString()} (${this.down.reason})`,
      );
    }
    await Promise.all(
      messages.map((message) => {
        const encoded = this.options.codec.encode(message);
        const publish = () =>
          live.publisher.publish('', this.topology.workQueues[message.priority], toBuffer(encoded.body), {
            persistent: true,
            contentType: encoded.contentType,
            messageId: message.jobId,
            headers: { ...message.headers },
          });
        // Tracing on: amqplib's instrumentation makes the producer span (and rewrites traceparent)
        // under the active context, so the message's own trace must be the active one.
        const t = tracing();
        return this.track(t ? inMessageTrace(t, message.headers, publish) : publish());
      }),
    );
  }

  async consume(handler: DeliveryHandler, options: ConsumeOptions): Promise<Consumer> {
    if (this.closing) throw new Error('rabbitmq: the broker is closed');
    if (!Number.isInteger(options.prefetch) || options.prefetch < 1) {
      throw new RangeError(`rabbitmq: prefetch must be a positive integer, got ${options.prefetch}`);
    }
    const consumer = new RabbitMqConsumer(
      {
        topology: this.topology,
        codec: this.options.codec,
        logger: this.logger,
        queuePrefetch: Math.max(options.prefetch, this.options.prefetch ?? 0),
        publish: (exchange, routingKey, body, publishOptions) =>
          this.publishRaw(exchange, routingKey, body, publishOptions),
        channelFailed: (model, why) => this.channelFailed(model, why),
      },
      handler,
      options.prefetch,
      () => this.consumers.delete(consumer),
    );
    this.consumers.add(consumer);
    // Not connected now: setUp attaches it once the connection is back.
    const live = this.live;
    if (live) {
      await consumer.attach(live.model).catch((error: unknown) => {
        this.channelFailed(live.model, `starting a consumer failed: ${describe(error)}`);
      });
    }
    return consumer;
  }

  /** A no-op: RabbitMQ pushes deliveries. */
  notify(): void {}

  async health(): Promise<ComponentHealth> {
    if (this.live && !this.blocked) {
      return {
        ok: true,
        detail: `connected to ${this.where} since ${new Date(this.live.since).toISOString()}`,
      };
    }
    if (this.live)
      return { ok: false, detail: `connected to ${this.where}, publishing blocked: ${this.blocked}` };
    const since = new Date(this.down.since).toISOString();
    const state = this.closing ? 'closed' : `reconnecting (${this.down.reason})`;
    return { ok: false, detail: `not connected to ${this.where} since ${since}: ${state}` };
  }

  /**
   * Ready messages in each work queue (`checkQueue`; RabbitMQ's count leaves out the unacknowledged),
   * on a short-lived channel of its own, so a failure here never touches publishing or consuming.
   */
  async backlog(): Promise<readonly BrokerBacklog[]> {
    const live = this.live;
    if (!live) throw new BrokerUnavailableError(`rabbitmq: not connected to ${this.where}`);
    const channel = await live.model.createChannel();
    channel.on('error', () => {});
    try {
      const queues = Object.values(this.topology.workQueues);
      const replies = await Promise.all(queues.map((queue) => channel.checkQueue(queue)));
      return replies.map((reply) => ({ queue: reply.queue, messages: reply.messageCount }));
    } finally {
      await channel.close().catch(() => {});
    }
  }

  /**
   * Runs on every new connection, before it counts as connected: declares the topology, opens the
   * publishing channel and resumes the consumers. Throwing closes this connection and tries again.
   */
  private async setUp(model: ChannelModel): Promise<void> {
    // The recovery wrapper listens only once setUp succeeded; until then an 'error' would be unhandled.
    model.on('error', () => {});
    model.once('close', (error?: Error) => this.lost(model, error));
    const channel = await model.createChannel();
    channel.on('error', () => {});
    await declareTopology(channel, this.topology);
    await channel.close();
    const confirmChannel = await model.createConfirmChannel();
    confirmChannel.on('error', (error: Error) => {
      this.logger.warn({ err: error }, 'rabbitmq: publishing channel error');
    });
    confirmChannel.on('close', () => this.channelFailed(model, 'the publishing channel closed'));
    this.live = { model, publisher: new ConfirmPublisher(confirmChannel), since: Date.now() };
    this.blocked = undefined;
    await Promise.all([...this.consumers].map((consumer) => consumer.attach(model)));
  }

  private connected(): void {
    if (!this.everConnected) {
      this.everConnected = true;
      this.logger.info({ at: this.where, queue: this.topology.workQueues.normal }, 'rabbitmq: connected');
    } else {
      this.logger.info(
        { at: this.where, down_ms: Date.now() - this.down.since, failed_attempts: this.down.attempts },
        'rabbitmq: reconnected; topology declared, consumers resumed',
      );
    }
    this.down.attempts = 0;
    this.lastFailure = undefined;
  }

  /** One failed attempt: logged when its error differs from the last one, so an outage logs once. */
  private attemptFailed(error: Error): void {
    this.down.attempts++;
    this.down.reason = describe(error);
    const fields = { err: error, at: this.where, attempt: this.down.attempts };
    if (this.down.reason !== this.lastFailure)
      this.logger.warn(fields, 'rabbitmq: connecting failed, retrying');
    else this.logger.debug(fields, 'rabbitmq: connecting failed again');
    this.lastFailure = this.down.reason;
  }

  private lost(model: ChannelModel, error?: Error): void {
    if (this.live?.model !== model) return;
    this.live = undefined;
    this.blocked = undefined;
    this.down = { since: Date.now(), reason: error ? describe(error) : 'connection closed', attempts: 0 };
    if (!this.closing) {
      this.logger.warn({ err: error, at: this.where }, 'rabbitmq: connection lost, reconnecting');
    }
  }

  /** A channel closed under a live connection: close the connection so recovery starts clean. */
  private channelFailed(model: ChannelModel, why: string): void {
    // amqplib closes the channels of a lost connection just before it reports the connection
    // closed, in the same turn: look after that turn, so a lost connection is not also a channel failure.
    setImmediate(() => {
      if (this.closing || this.live?.model !== model) return;
      this.logger.warn({ why }, 'rabbitmq: channel failure, reconnecting');
      model.close().catch(() => {});
    });
  }

  private publishRaw(
    exchange: string,
    routingKey: string,
    body: Buffer,
    options: Options.Publish,
  ): Promise<void> {
    const live = this.live;
    if (!live) return Promise.reject(new BrokerUnavailableError(`rabbitmq: not connected to ${this.where}`));
    return this.track(live.publisher.publish(exchange, routingKey, body, options));
  }

  private track(publish: Promise<void>): Promise<void> {
    this.inFlight.add(publish);
    const forget = () => this.inFlight.delete(publish);
    publish.then(forget, forget);
    return publish;
  }
}

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
