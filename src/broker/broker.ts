/**
 * The Broker port: carries job messages from the API to workers, at least once.
 *
 * A worker settles every delivery exactly once, and only after the job's outcome is committed to
 * the Store: `ack` when the job needs nothing more, `retryLater` when it is deferred, `deadLetter`
 * when it is given up. A delivery that is never settled (the worker died) comes back.
 * No client, channel or connection type crosses this port.
 */
import type { DeadLetterReason, NewJob, Priority } from '../domain/email.js';
import type { ComponentHealth } from '../transport/transport.js';

/** What travels through the broker: a pointer to a committed job, plus context. */
export interface JobMessage {
  readonly jobId: string;
  readonly priority: Priority;
  /** W3C trace context and other propagation headers. */
  readonly headers: Readonly<Record<string, string>>;
  /**
   * The email itself, when a producer outside Mailroom published it straight to the broker: the job
   * to create on first sight (its id, or its idempotency key, makes a republish a no-op). Absent on
   * what Mailroom publishes: then the job is already in the Store.
   */
  readonly newJob?: NewJob;
}

/**
 * Why a broker gave a message up. The Store's dead-letter reasons, plus two only a broker meets:
 * a payload it could not decode, and a message it delivered more often than its limit allows.
 */
export type BrokerDeadLetterReason = DeadLetterReason | 'undecodable' | 'delivery_limit';

/**
 * Raised by a network broker's `publish` when there is no connection to publish on (or publishing is
 * blocked): nothing is buffered in memory; the caller's outbox keeps the message.
 */
export class BrokerUnavailableError extends Error {
  readonly code = 'BROKER_UNAVAILABLE';
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'BrokerUnavailableError';
  }
}

/** A message body on the wire, with the content type that says how to read it. */
export interface EncodedMessage {
  readonly body: Uint8Array;
  readonly contentType: string;
}

export type DecodeResult =
  | { readonly ok: true; readonly message: JobMessage }
  /** Never to be redelivered: the broker dead-letters it at once with this reason. */
  | { readonly ok: false; readonly reason: 'undecodable' | 'invalid_message'; readonly error: string };

/**
 * Turns job messages into bytes and back (the wire contract, proto/email.proto). Network brokers
 * hold one; it knows nothing of any broker.
 */
export interface MessageCodec {
  /** What Mailroom publishes: a pointer to a committed job (id, priority, trace context). */
  encode(message: JobMessage): EncodedMessage;
  /** Reads what anyone published: protobuf, JSON or MessagePack, by content type. */
  decode(body: Uint8Array, contentType: string | undefined): DecodeResult;
}

export interface Delivery {
  readonly message: JobMessage;
  /** 1 on the first delivery, more on redeliveries. */
  readonly deliveryCount: number;
  /** The job needs nothing more from this message. */
  ack(): Promise<void>;
  /** Deliver again after `delayMs` (the job was deferred). */
  retryLater(delayMs: number): Promise<void>;
  /** Give the message up, with a reason a person can read. */
  deadLetter(reason: BrokerDeadLetterReason, error?: string): Promise<void>;
}

export interface ConsumeOptions {
  /** At most this many unsettled deliveries at once. */
  readonly prefetch: number;
}

export interface Consumer {
  /** Stops taking new deliveries; those already handed out stay valid until settled. */
  stop(): Promise<void>;
}

/** Messages waiting in one of the broker's work queues. */
export interface BrokerBacklog {
  /** The queue's (RabbitMQ) or durable consumer's (NATS) name. */
  readonly queue: string;
  /** Waiting for a worker: RabbitMQ's ready messages; NATS's pending plus delivered and not yet acked. */
  readonly messages: number;
}

export type DeliveryHandler = (delivery: Delivery) => void;

export interface Broker {
  /** `embedded`, `rabbitmq`, `nats`. */
  readonly name: string;
  /**
   * True when the Store's commit of a job is itself the publish (the embedded broker reads the Store).
   * Then the API needs no outbox and no dispatcher. Default for network brokers: false.
   */
  readonly publishesOnCommit: boolean;
  start(): Promise<void>;
  close(): Promise<void>;
  /** Publishes messages; resolves once the broker confirmed all of them. */
  publish(messages: readonly JobMessage[]): Promise<void>;
  /** Hands deliveries to `handler` until the consumer is stopped. */
  consume(handler: DeliveryHandler, options: ConsumeOptions): Promise<Consumer>;
  /** Tells the broker that work may be waiting (a commit just happened in this process). */
  notify(): void;
  health(): Promise<ComponentHealth>;
  /**
   * Messages waiting in the broker for this shape's work queues, one entry per queue, for the
   * `mailroom_broker_messages` gauge. Absent when the broker keeps no queue of its own (embedded:
   * the Store is the queue, and `mailroom_jobs` counts it). Rejects when the broker cannot answer.
   */
  backlog?(): Promise<readonly BrokerBacklog[]>;
}
