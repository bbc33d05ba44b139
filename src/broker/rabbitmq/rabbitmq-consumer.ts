import type { Channel, ChannelModel, ConsumeMessage, Options } from 'amqplib';
import type { Logger } from 'pino';
import { PRIORITY_BY_RANK } from '../../domain/email.js';
import type {
  BrokerDeadLetterReason,
  Consumer,
  DecodeResult,
  Delivery,
  DeliveryHandler,
  JobMessage,
  MessageCodec,
} from '../broker.js';
import { pickDelayTier } from './delay-tiers.js';
import type { RabbitMqTopology } from './topology.js';

/** What a consumer needs from its broker. */
export interface ConsumerContext {
  readonly topology: RabbitMqTopology;
  readonly codec: MessageCodec;
  readonly logger: Logger;
  /** RabbitMQ-side prefetch per priority queue; at least the consumer's own prefetch. */
  readonly queuePrefetch: number;
  /** Publishes with confirm on the broker's publishing channel; rejects when there is none. */
  publish(exchange: string, routingKey: string, body: Buffer, options: Options.Publish): Promise<void>;
  /** A channel broke while its connection may still be up: reconnect to get a clean slate. */
  channelFailed(model: ChannelModel, why: string): void;
}

/** Longest `x-mailroom-error` header kept; the Store has the full error. */
const MAX_ERROR_LENGTH = 1000;

/** One consumer's channel on one connection. A new connection gets a new attachment. */
interface Attachment {
  readonly model: ChannelModel;
  channel?: Channel;
  readonly tags: string[];
  open: boolean;
  /** We close it ourselves (stopped and drained): not a failure. */
  closing: boolean;
  ready?: Promise<void>;
}

/** A message received from RabbitMQ and decoded, waiting to be handed out or handed out. */
interface Received {
  readonly raw: ConsumeMessage;
  readonly attachment: Attachment;
  /** The work queue it came from: retries go back there. */
  readonly queue: string;
  readonly message: JobMessage;
}

/**
 * Consumes the three priority queues on one channel and hands deliveries to the handler high first,
 * then normal, then low, never more than `prefetch` unsettled at once. RabbitMQ may push up to
 * `queuePrefetch` messages per queue; those not yet handed out wait in a small local buffer, which
 * is how a high-priority message overtakes low ones already received.
 */
export class RabbitMqConsumer implements Consumer {
  private running = true;
  private attachment: Attachment | undefined;
  /** Received, not yet handed out, by priority rank. */
  private readonly waiting: Received[][] = PRIORITY_BY_RANK.map(() => []);
  private handedOut = 0;

  constructor(
    private readonly context: ConsumerContext,
    private readonly handler: DeliveryHandler,
    private readonly prefetch: number,
    private readonly onStop: () => void,
  ) {}

  /** Handed out and not yet settled. */
  get unsettled(): number {
    return this.handedOut;
  }

  /** Starts consuming on `model` (a no-op if already attached to it). */
  attach(model: ChannelModel): Promise<void> {
    if (!this.running) return Promise.resolve();
    if (this.attachment?.model === model && this.attachment.ready) return this.attachment.ready;
    const attachment: Attachment = { model, tags: [], open: true, closing: false };
    this.attachment = attachment;
    attachment.ready = this.open(attachment);
    return attachment.ready;
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.onStop();
    const attachment = this.attachment;
    if (attachment) {
      await attachment.ready?.catch(() => {});
      await Promise.all(attachment.tags.map((tag) => attachment.channel?.cancel(tag).catch(() => {})));
    }
    for (const queue of this.waiting) {
      for (const received of queue.splice(0)) this.requeue(received);
    }
    this.closeIfDrained();
  }

  private async open(attachment: Attachment): Promise<void> {
    const channel = await attachment.model.createChannel();
    attachment.channel = channel;
    channel.on('error', (error: Error) => {
      this.context.logger.warn({ err: error }, 'rabbitmq: consumer channel error');
    });
    channel.on('close', () => this.detached(attachment));
    await channel.prefetch(this.context.queuePrefetch);
    for (const [rank, priority] of PRIORITY_BY_RANK.entries()) {
      const queue = this.context.topology.workQueues[priority];
      const reply = await channel.consume(queue, (raw) => this.receive(attachment, rank, queue, raw));
      attachment.tags.push(reply.consumerTag);
    }
  }

  private detached(attachment: Attachment): void {
    attachment.open = false;
    // Received on that channel and not handed out: RabbitMQ gives them back to the queue.
    for (const [rank, queue] of this.waiting.entries()) {
      this.waiting[rank] = queue.filter((received) => received.attachment !== attachment);
    }
    if (this.running && !attachment.closing && this.attachment === attachment) {
      this.context.channelFailed(attachment.model, 'a consumer channel closed');
    }
  }

  private receive(attachment: Attachment, rank: number, queue: string, raw: ConsumeMessage | null): void {
    if (raw === null) {
      // RabbitMQ cancelled the consumer: the queue was deleted. Reconnecting declares it again.
      if (this.running)
        this.context.channelFailed(attachment.model, `consumer of ${queue} cancelled by the server`);
      return;
    }
    if (attachment !== this.attachment) return;
    const decoded = decode(this.context.codec, raw);
    if (!decoded.ok) {
      const received: Received = {
        raw,
        attachment,
        queue,
        message: { jobId: '', priority: 'normal', headers: {} },
      };
      this.context.logger.warn(
        { queue, message_id: raw.properties.messageId, reason: decoded.reason, error: decoded.error },
        'rabbitmq: message cannot be decoded: dead-lettered',
      );
      void this.deadLetter(received, decoded.reason, decoded.error);
      return;
    }
    const message = withTransportHeaders(decoded.message, raw);
    const received: Received = { raw, attachment, queue, message };
    if (!this.running) {
      this.requeue(received);
      return;
    }
    this.waiting[rank]!.push(received);
    this.pump();
  }

  private pump(): void {
    while (this.running && this.handedOut < this.prefetch) {
      const next = this.takeNext();
      if (!next) return;
      this.handedOut++;
      const [delivery, giveBack] = this.deliveryFor(next);
      try {
        this.handler(delivery);
      } catch (error) {
        this.context.logger.error(
          { err: error, job_id: next.message.jobId },
          'rabbitmq: delivery handler threw',
        );
        void giveBack();
      }
    }
  }

  private takeNext(): Received | undefined {
    for (const queue of this.waiting) {
      const next = queue.shift();
      if (next) return next;
    }
    return undefined;
  }

  /** The delivery, and a way to give it back to its queue unsettled. */
  private deliveryFor(received: Received): [Delivery, () => Promise<void>] {
    let settled = false;
    const settle = async (how: () => Promise<void>): Promise<void> => {
      if (settled) return;
      settled = true;
      try {
        await how();
      } finally {
        this.handedOut--;
        this.pump();
        this.closeIfDrained();
      }
    };
    const { raw, message } = received;
    const count = raw.properties.headers?.['x-delivery-count'];
    const delivery: Delivery = {
      message,
      // Quorum queues count earlier returns of this message in x-delivery-count (0 on the first).
      deliveryCount: typeof count === 'number' ? count + 1 : raw.fields.redelivered ? 2 : 1,
      ack: () => settle(async () => this.ack(received)),
      retryLater: (delayMs) => settle(() => this.retryLater(received, delayMs)),
      deadLetter: (reason, error) => settle(() => this.deadLetter(received, reason, error)),
    };
    return [delivery, () => settle(async () => this.requeue(received))];
  }

  /**
   * Publishes a copy to the delay tier (or straight to the work queue), then acks the original. An
   * ack lost after the publish leaves two copies, which the worker's claim makes harmless.
   */
  private async retryLater(received: Received, delayMs: number): Promise<void> {
    if (!this.stillOpen(received, 'retryLater')) return;
    const tier = pickDelayTier(
      delayMs,
      this.context.topology.delayTiers.map((t) => t.delayMs),
    );
    const exchange =
      tier === undefined ? '' : this.context.topology.delayTiers.find((t) => t.delayMs === tier)!.name;
    await this.publishThenAck(received, exchange, copiedProperties(received.raw), 'retryLater');
  }

  private async deadLetter(
    received: Received,
    reason: BrokerDeadLetterReason,
    error?: string,
  ): Promise<void> {
    if (!this.stillOpen(received, 'deadLetter')) return;
    const properties = copiedProperties(received.raw);
    properties.headers = {
      ...properties.headers,
      'x-mailroom-reason': reason,
      'x-mailroom-error': truncate(error ?? '', MAX_ERROR_LENGTH),
      'x-mailroom-original-queue': received.queue,
      'x-mailroom-dead-lettered-at': new Date().toISOString(),
    };
    await this.publishThenAck(received, this.context.topology.deadLetterExchange, properties, 'deadLetter');
  }

  private async publishThenAck(
    received: Received,
    exchange: string,
    properties: Options.Publish,
    what: string,
  ): Promise<void> {
    try {
      // The routing key is the work queue: the default exchange delivers there directly, a delay
      // tier dead-letters the message back there, and the dead-letter exchange ignores it.
      await this.context.publish(exchange, received.queue, received.raw.content, properties);
    } catch (error) {
      // Not stored elsewhere: give the message back rather than leave it unsettled. It returns at
      // once and counts towards the delivery limit.
      this.context.logger.warn(
        { err: error, job_id: received.message.jobId, queue: received.queue },
        `rabbitmq: ${what} could not publish; the message goes back to its queue`,
      );
      this.requeue(received);
      return;
    }
    this.ack(received);
  }

  private ack(received: Received): void {
    if (!this.stillOpen(received, 'ack')) return;
    try {
      received.attachment.channel!.ack(received.raw);
    } catch (error) {
      this.context.logger.debug(
        { err: error },
        'rabbitmq: ack failed (channel closing); RabbitMQ redelivers',
      );
    }
  }

  private requeue(received: Received): void {
    if (!received.attachment.open) return;
    try {
      received.attachment.channel!.nack(received.raw, false, true);
    } catch (error) {
      this.context.logger.debug(
        { err: error },
        'rabbitmq: requeue failed (channel closing); RabbitMQ redelivers',
      );
    }
  }

  /** Settling on a channel that is gone is a no-op: RabbitMQ has already put the message back. */
  private stillOpen(received: Received, what: string): boolean {
    if (received.attachment.open) return true;
    this.context.logger.debug(
      { job_id: received.message.jobId },
      `rabbitmq: ${what} after the channel closed: a no-op, RabbitMQ redelivers the message`,
    );
    return false;
  }

  private closeIfDrained(): void {
    const attachment = this.attachment;
    if (this.running || this.handedOut > 0 || !attachment?.open || attachment.closing) return;
    attachment.closing = true;
    attachment.channel?.close().catch(() => {});
  }
}

function decode(codec: MessageCodec, raw: ConsumeMessage): DecodeResult {
  try {
    return codec.decode(raw.content, raw.properties.contentType);
  } catch (error) {
    // A codec should answer, not throw; if it throws, the message is still unreadable, not retryable.
    return {
      ok: false,
      reason: 'undecodable',
      error: error instanceof Error ? error.message : String(error),
    };
  }
}

/** Properties a republished copy keeps: body, content type, id and headers travel unchanged. */
function copiedProperties(raw: ConsumeMessage): Options.Publish {
  const { contentType, contentEncoding, messageId, headers, timestamp, type, appId } = raw.properties;
  const properties: Options.Publish = { persistent: true, headers: { ...headers } };
  if (contentType !== undefined) properties.contentType = contentType;
  if (contentEncoding !== undefined) properties.contentEncoding = contentEncoding;
  if (messageId !== undefined) properties.messageId = messageId;
  if (timestamp !== undefined) properties.timestamp = timestamp;
  if (type !== undefined) properties.type = type;
  if (appId !== undefined) properties.appId = appId;
  return properties;
}

/**
 * Propagation headers (trace context) may travel as AMQP headers, as Mailroom publishes them; they
 * win over any in the body. RabbitMQ's own (`x-…`) and non-string values are not propagation headers.
 */
function withTransportHeaders(message: JobMessage, raw: ConsumeMessage): JobMessage {
  const amqpHeaders = raw.properties.headers;
  if (!amqpHeaders) return message;
  const extra: Record<string, string> = {};
  for (const [name, value] of Object.entries(amqpHeaders)) {
    if (typeof value === 'string' && !name.toLowerCase().startsWith('x-')) extra[name] = value;
  }
  return Object.keys(extra).length === 0
    ? message
    : { ...message, headers: { ...message.headers, ...extra } };
}

function truncate(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}
