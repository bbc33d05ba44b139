import { hostname } from 'node:os';
import {
  type JetStreamClient,
  type JetStreamManager,
  type Consumer as JsConsumer,
  jetstreamManager,
  type PubAck,
  type StoredMsg,
} from '@nats-io/jetstream';
import {
  type ConnectionOptions,
  connect,
  type MsgHdrs,
  type NatsConnection,
  TimeoutError,
} from '@nats-io/transport-node';
import type { Logger } from 'pino';
import type { Priority } from '../../domain/email.js';
import { producerSpan } from '../../telemetry/job-spans.js';
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
import { HEADERS, publishHeaders } from './message-headers.js';
import { NatsConsumer } from './nats-consumer.js';
import { declareTopology, describeTopology, type NatsTopology } from './topology.js';

export interface NatsBrokerOptions {
  /**
   * `nats://[user:pass@ | token@]host[:port]`, or `tls://…` for TLS; never logged (it may hold a
   * password).
   */
  readonly url: string;
  /** The work stream. Default `messages`. */
  readonly stream?: string;
  /** The normal-priority subject; `.high` and `.low` are the others. Default `messages.email`. */
  readonly subject?: string;
  /** The normal-priority durable pull consumer; `-high` and `-low` are the others. Default `email-processor`. */
  readonly consumer?: string;
  /** Where given-up messages go. Default `<subject>.failed`. */
  readonly deadLetterSubject?: string;
  /** The stream that keeps them. Default `<stream>_failed`. */
  readonly deadLetterStream?: string;
  /**
   * How long JetStream waits for an ack before it delivers a message again. Pass more than the SMTP
   * timeout. Default 60 s. While this process lives, in-progress acks every third of it keep its
   * messages from coming back; so it is, in effect, how long a dead worker holds a message.
   */
  readonly ackWaitMs?: number;
  /**
   * Deliveries of one message handed to workers. A message delivered once more (its workers kept
   * dying, or never settled it) is dead-lettered with reason `delivery_limit`. Default 20.
   */
  readonly maxDeliver?: number;
  /** How long JetStream remembers a `Nats-Msg-Id` to drop a republish. Default 2 min. */
  readonly duplicateWindowMs?: number;
  /** Unacked messages per priority consumer across all workers before JetStream pauses it. Default 10,000. */
  readonly maxAckPending?: number;
  /** Replicas of the streams when Mailroom creates them (a JetStream cluster). Default 1. */
  readonly replicas?: number;
  /**
   * Messages one consumer may hold per priority, ahead of the `prefetch` it hands out (a deeper
   * buffer hides the pull round trip and lets more high messages overtake). Default: the
   * consumer's `prefetch`.
   */
  readonly prefetch?: number;
  /** How long a publish waits for the server's ack. Default 10 s. */
  readonly publishTimeoutMs?: number;
  readonly codec: MessageCodec;
  readonly logger: Logger;
  /** Between reconnection attempts: `waitMs` plus up to `jitterMs`. Default 2 s + 0.5 s. */
  readonly reconnect?: { readonly waitMs: number; readonly jitterMs: number };
  /** Connection attempts `start()` makes before it gives up. Default 5. */
  readonly startAttempts?: number;
}

const DEFAULTS = {
  stream: 'messages',
  subject: 'messages.email',
  consumer: 'email-processor',
  ackWaitMs: 60_000,
  maxDeliver: 20,
  duplicateWindowMs: 120_000,
  maxAckPending: 10_000,
  replicas: 1,
  publishTimeoutMs: 10_000,
  reconnect: { waitMs: 2000, jitterMs: 500 },
  startAttempts: 5,
} as const;

/** After `close()` stopped the consumers, how long it waits for publishes still waiting for an ack. */
const CLOSE_PUBLISH_GRACE_MS = 5000;
/** How long `close()` lets the client drain (acks and naks still buffered) before closing outright. */
const CLOSE_DRAIN_MS = 5000;
/** One pull request waits this long for messages, then the next is sent. */
const FETCH_EXPIRES_MS = 30_000;
/**
 * The server's heartbeat while a pull request waits. A request the server dropped without a word
 * (2.9.10 does, sometimes, when its stream is deleted) is noticed after three missed: 6 s.
 */
const FETCH_HEARTBEAT_MS = 2000;
/** How long an ack waits for the server to confirm it. */
const SETTLE_TIMEOUT_MS = 5000;
/** After a failed pull or publish, the topology is declared again this much later (see `recheck`). */
const RECHECK_DELAY_MS = 2000;
/** A declaration that failed while connected is tried again this much later. */
const DECLARE_RETRY_MS = 2000;
/** Pings: a silent connection counts as dead after about `interval × (maxOut + 1)`. */
const PING_INTERVAL_MS = 20_000;
const MAX_PINGS_OUT = 2;

interface Live {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly js: JetStreamClient;
}

/**
 * The broker of the scaled-out shape on NATS JetStream (server 2.9 or later): a work-queue stream
 * with one subject and one durable pull consumer per priority, publishes deduplicated by
 * `Nats-Msg-Id` = the job id, `retryLater` as `nak` with the delay, and a dead-letter subject kept in
 * a stream of its own, which Mailroom fills itself (JetStream has no dead-letter queue). The client
 * reconnects on its own; the broker then declares the topology again and the consumers pull again.
 * Nothing is buffered while disconnected: `publish` rejects at once (the Store's outbox holds the
 * backlog).
 */
export class NatsBroker implements Broker {
  readonly name = 'nats';
  readonly publishesOnCommit = false;
  readonly topology: NatsTopology;
  /** Consumers pulling now (a stopped one leaves). */
  private readonly consumers = new Set<NatsConsumer>();
  /** Every consumer made: a stopped one keeps its unsettled deliveries alive until `close`. */
  private readonly everyConsumer = new Set<NatsConsumer>();
  private readonly inFlight = new Set<Promise<unknown>>();
  /** Publishes waiting for their ack: rejected at once when the connection drops. */
  private readonly awaitingAck = new Set<(error: Error) => void>();
  private readonly pullConsumers = new Map<Priority, Promise<JsConsumer>>();
  private readyWaiters: ((ready: boolean) => void)[] = [];
  private live: Live | undefined;
  private connected = false;
  /** Connected and the topology declared since: consumers may pull, health is ok. */
  private ready = false;
  private readySince = 0;
  private epoch = 0;
  private starting: Promise<void> | undefined;
  private started = false;
  private closing: Promise<void> | undefined;
  private declaring: Promise<string[]> | undefined;
  private declareFailing = false;
  private recheckTimer: NodeJS.Timeout | undefined;
  private down = { since: Date.now(), reason: 'not started' };
  private readonly maxDeliver: number;

  constructor(private readonly options: NatsBrokerOptions) {
    const stream = options.stream ?? DEFAULTS.stream;
    const subject = options.subject ?? DEFAULTS.subject;
    this.topology = describeTopology({
      stream,
      subject,
      consumer: options.consumer ?? DEFAULTS.consumer,
      deadLetterSubject: options.deadLetterSubject ?? `${subject}.failed`,
      deadLetterStream: options.deadLetterStream ?? `${stream}_failed`,
      ackWaitMs: options.ackWaitMs ?? DEFAULTS.ackWaitMs,
      duplicateWindowMs: options.duplicateWindowMs ?? DEFAULTS.duplicateWindowMs,
      maxAckPending: options.maxAckPending ?? DEFAULTS.maxAckPending,
      replicas: options.replicas ?? DEFAULTS.replicas,
    });
    this.maxDeliver = options.maxDeliver ?? DEFAULTS.maxDeliver;
    if (!Number.isInteger(this.maxDeliver) || this.maxDeliver < 1) {
      throw new RangeError(`nats: maxDeliver must be a positive integer, got ${this.maxDeliver}`);
    }
    connectionOptions(options.url); // fails now on a URL it cannot use
  }

  private get logger(): Logger {
    return this.options.logger;
  }

  /** Host and port, for logs and health: the URL itself may carry a password. */
  private get where(): string {
    const url = new URL(this.options.url);
    return `${url.hostname}:${url.port || 4222}`;
  }

  /**
   * Connects (up to `startAttempts` tries) and declares the streams and consumers. Rejects when it
   * cannot connect, or when an existing stream or consumer differs in a way Mailroom will not change.
   */
  start(): Promise<void> {
    if (this.closing) return Promise.reject(new Error('nats: the broker is closed'));
    this.starting ??= this.connectAndDeclare();
    return this.starting;
  }

  private async connectAndDeclare(): Promise<void> {
    const attempts = this.options.startAttempts ?? DEFAULTS.startAttempts;
    const { waitMs, jitterMs } = this.options.reconnect ?? DEFAULTS.reconnect;
    let nc: NatsConnection | undefined;
    let declared: string[] = [];
    for (let attempt = 1; nc === undefined; attempt++) {
      try {
        nc = await connect(connectionOptions(this.options.url, this.options.reconnect));
      } catch (error) {
        this.down.reason = describe(error);
        if (attempt >= attempts) {
          throw new Error(`nats: could not connect to ${this.where}: ${describe(error)}`, { cause: error });
        }
        this.logger.warn({ err: error, at: this.where, attempt }, 'nats: connecting failed, retrying');
        await sleep(waitMs + Math.random() * jitterMs);
      }
    }
    try {
      if (this.closing) throw new Error('the broker was closed while starting');
      const jsm = await jetstreamManager(nc);
      this.live = { nc, jsm, js: jsm.jetstream() };
      this.connected = true;
      this.watch(nc);
      declared = await this.declare();
    } catch (error) {
      this.live = undefined;
      this.connected = false;
      await nc.close().catch(() => {});
      throw new Error(`nats: could not start on ${this.where}: ${describe(error)}`, { cause: error });
    }
    this.started = true;
    this.logger.info(
      { at: this.where, stream: this.topology.stream, subject: this.topology.subjects.normal, declared },
      'nats: connected',
    );
  }

  /**
   * Stops the consumers (messages received and not handed out go back at once; deliveries handed
   * out are kept alive until settled or until the connection closes, after which JetStream
   * redelivers them after AckWait), waits for publishes in flight, then drains and closes the
   * connection. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearTimeout(this.recheckTimer);
      this.setReady(false);
      await Promise.all([...this.consumers].map((consumer) => consumer.stop()));
      await withDeadline(Promise.allSettled([...this.inFlight]), CLOSE_PUBLISH_GRACE_MS);
      const nc = this.live?.nc;
      if (nc && !nc.isClosed()) {
        const drained = await withDeadline(
          nc.drain().then(
            () => true,
            () => false,
          ),
          CLOSE_DRAIN_MS,
        );
        if (drained !== true) await nc.close().catch(() => {});
      }
      for (const consumer of this.everyConsumer) consumer.closed();
      this.connected = false;
      this.down = { since: Date.now(), reason: 'closed' };
    })();
    return this.closing;
  }

  async publish(messages: readonly JobMessage[]): Promise<void> {
    if (messages.length === 0) return;
    if (this.closing) throw new BrokerUnavailableError('nats: the broker is closed');
    await Promise.all(messages.map((message) => this.publishOne(message)));
  }

  async consume(handler: DeliveryHandler, options: ConsumeOptions): Promise<Consumer> {
    if (this.closing) throw new Error('nats: the broker is closed');
    if (!Number.isInteger(options.prefetch) || options.prefetch < 1) {
      throw new RangeError(`nats: prefetch must be a positive integer, got ${options.prefetch}`);
    }
    const ackWaitMs = this.options.ackWaitMs ?? DEFAULTS.ackWaitMs;
    const broker = this;
    const consumer = new NatsConsumer(
      {
        topology: this.topology,
        codec: this.options.codec,
        logger: this.logger,
        holdPerPriority: Math.max(options.prefetch, this.options.prefetch ?? 0),
        maxDeliver: this.maxDeliver,
        keepAliveMs: Math.max(100, Math.floor(ackWaitMs / 3)),
        fetchExpiresMs: FETCH_EXPIRES_MS,
        fetchHeartbeatMs: FETCH_HEARTBEAT_MS,
        settleTimeoutMs: SETTLE_TIMEOUT_MS,
        get connected() {
          return broker.connected;
        },
        get epoch() {
          return broker.epoch;
        },
        ready: () => this.whenReady(),
        pullConsumer: (priority) => this.pullConsumer(priority),
        publish: async (subject, body, headers, msgID) => {
          await this.publishRaw(subject, body, headers, msgID);
        },
        flush: () => this.flush(),
        pullFailed: (priority, error, failures) => this.pullFailed(priority, error, failures),
      },
      handler,
      options.prefetch,
      () => this.consumers.delete(consumer),
    );
    this.consumers.add(consumer);
    this.everyConsumer.add(consumer);
    return consumer;
  }

  /** A no-op: consumers keep a pull request waiting at the server. */
  notify(): void {}

  async health(): Promise<ComponentHealth> {
    if (this.ready) {
      return {
        ok: true,
        detail: `connected to ${this.where} since ${new Date(this.readySince).toISOString()}`,
      };
    }
    const since = new Date(this.down.since).toISOString();
    if (this.closing) return { ok: false, detail: `not connected to ${this.where} since ${since}: closed` };
    if (this.connected) {
      return {
        ok: false,
        detail: `connected to ${this.where}, but the streams and consumers are not declared yet (${this.down.reason})`,
      };
    }
    return {
      ok: false,
      detail: `not connected to ${this.where} since ${since}: reconnecting (${this.down.reason})`,
    };
  }

  /**
   * Per priority consumer, the messages JetStream still holds for it: not yet delivered
   * (`num_pending`) plus delivered and not yet acknowledged (`num_ack_pending`).
   */
  async backlog(): Promise<readonly BrokerBacklog[]> {
    const live = this.live;
    if (!live || !this.connected) throw new BrokerUnavailableError(`nats: not connected to ${this.where}`);
    const names = Object.values(this.topology.consumers);
    const infos = await Promise.all(names.map((name) => live.jsm.consumers.info(this.topology.stream, name)));
    return infos.map((info, i) => ({ queue: names[i]!, messages: info.num_pending + info.num_ack_pending }));
  }

  // -------------------------------------------------------------------------------------------------------
  // Connection state

  /** Follows the connection's status: disconnects, reconnects, errors. */
  private watch(nc: NatsConnection): void {
    void (async () => {
      for await (const status of nc.status()) {
        switch (status.type) {
          case 'disconnect':
            this.lost('connection lost');
            break;
          case 'reconnect':
            this.reconnected();
            break;
          case 'staleConnection':
            this.down.reason = 'the server stopped answering pings';
            break;
          case 'error':
            this.down.reason = describe(status.error);
            this.logger.debug({ err: status.error }, 'nats: connection error');
            break;
          default:
            break;
        }
      }
    })().catch((error: unknown) => this.logger.debug({ err: error }, 'nats: status stream ended'));
    void nc.closed().then((error) => {
      if (!this.closing) {
        // Only if reconnecting was given up, which maxReconnectAttempts -1 never does.
        this.logger.error({ err: error, at: this.where }, 'nats: connection closed for good');
      }
      this.lost(error ? describe(error) : 'connection closed');
    });
  }

  private lost(reason: string): void {
    const wasConnected = this.connected;
    this.connected = false;
    this.setReady(false);
    if (!wasConnected) return;
    this.epoch++;
    this.down = { since: Date.now(), reason };
    for (const reject of this.awaitingAck) {
      reject(new BrokerUnavailableError(`nats: ${reason} before the server acked the publish`));
    }
    this.awaitingAck.clear();
    for (const consumer of this.consumers) consumer.disconnected();
    if (!this.closing) this.logger.warn({ at: this.where, reason }, 'nats: connection lost, reconnecting');
  }

  private reconnected(): void {
    if (this.closing) return;
    this.connected = true;
    const downMs = Date.now() - this.down.since;
    void this.declare().then(
      (declared) =>
        this.logger.info(
          { at: this.where, down_ms: downMs, declared },
          'nats: reconnected; topology declared, consumers resumed',
        ),
      () => {},
    );
  }

  /**
   * Declares the topology (one run at a time), then marks the broker ready and wakes the consumers.
   * Resolves with what it created or changed. On failure while connected it tries again after a
   * pause (logging the first failure and the recovery), and the broker stays not ready meanwhile.
   */
  private declare(): Promise<string[]> {
    this.declaring ??= (async () => {
      try {
        const live = this.live;
        if (!live) throw new Error('not connected');
        const declared = await declareTopology(live.jsm, this.topology);
        if (this.declareFailing) {
          this.logger.info({ declared }, 'nats: streams and consumers declared');
          this.declareFailing = false;
        }
        if (this.connected && !this.closing) {
          this.setReady(true);
          for (const consumer of this.consumers) consumer.redeclared(declared.length > 0);
        }
        return declared;
      } catch (error) {
        this.down.reason = `declaring the streams and consumers failed: ${describe(error)}`;
        // At start, start() reports the failure; once started, the broker keeps trying.
        if (this.started && this.connected && !this.closing && this.live) {
          if (!this.declareFailing) {
            this.logger.warn(
              { err: error },
              'nats: declaring the streams and consumers failed; trying again',
            );
          }
          this.declareFailing = true;
          setTimeout(() => {
            if (this.connected && !this.closing && !this.ready) void this.declare().catch(() => {});
          }, DECLARE_RETRY_MS).unref();
        }
        throw error;
      } finally {
        this.declaring = undefined;
      }
    })();
    return this.declaring;
  }

  /** Ready or not; waiters learn of ready, and of closing (as not ready). */
  private setReady(ready: boolean): void {
    if (ready !== this.ready) {
      this.ready = ready;
      if (ready) this.readySince = Date.now();
    }
    if (ready || this.closing) {
      const waiters = this.readyWaiters;
      this.readyWaiters = [];
      for (const resolve of waiters) resolve(ready);
    }
  }

  /** Resolves true once ready, false once closing. */
  private whenReady(): Promise<boolean> {
    if (this.closing) return Promise.resolve(false);
    if (this.ready) return Promise.resolve(true);
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  /**
   * A pull request failed. Logged once it keeps failing; and since a deleted stream or consumer
   * looks like this (no answer, heartbeats missed, "consumer deleted"), the topology is declared
   * again shortly (`recheck`).
   */
  private pullFailed(priority: Priority, error: unknown, failures: number): void {
    this.pullConsumers.delete(priority);
    const fields = { err: error, consumer: this.topology.consumers[priority], failures };
    if (failures === 3) this.logger.warn(fields, 'nats: pulling messages keeps failing');
    else this.logger.debug(fields, 'nats: pulling messages failed');
    this.recheck();
  }

  /**
   * Declares again (what is there stays as it is) a little later, at most one at a time. Later,
   * not at once: nats-server 2.9.10 removes a deleted stream's files in the background, and a stream
   * made again under the same name within milliseconds lost its first message file to that removal
   * (the consumer then logs "error looking up message … 1.blk: no such file or directory" for ever).
   */
  private recheck(): void {
    if (this.recheckTimer || !this.connected || this.closing) return;
    this.recheckTimer = setTimeout(() => {
      this.recheckTimer = undefined;
      if (!this.connected || this.closing) return;
      void this.declare().then(
        (declared) => {
          if (declared.length > 0) {
            this.logger.warn(
              { declared },
              'nats: streams or consumers were missing or changed; declared again',
            );
          }
        },
        () => {},
      );
    }, RECHECK_DELAY_MS);
    this.recheckTimer.unref();
  }

  private pullConsumer(priority: Priority): Promise<JsConsumer> {
    let consumer = this.pullConsumers.get(priority);
    if (!consumer) {
      const live = this.live;
      if (!live) return Promise.reject(new BrokerUnavailableError('nats: not connected'));
      consumer = live.js.consumers.get(this.topology.stream, this.topology.consumers[priority]);
      consumer.catch(() => this.pullConsumers.delete(priority));
      this.pullConsumers.set(priority, consumer);
    }
    return consumer;
  }

  private async flush(): Promise<void> {
    const live = this.live;
    if (!live || !this.connected) throw new BrokerUnavailableError('nats: not connected');
    await withDeadline(live.nc.flush(), SETTLE_TIMEOUT_MS, () => new Error('nats: flush timed out'));
  }

  // -------------------------------------------------------------------------------------------------------
  // Publishing

  private async publishOne(message: JobMessage): Promise<void> {
    const t = tracing();
    if (!t) return this.publishWith(message, message.headers);
    const destination = this.topology.subjects[message.priority];
    // NATS has no OpenTelemetry instrumentation: the producer span is Mailroom's.
    return producerSpan(t, { system: 'nats', destination, message }, (headers) =>
      this.publishWith(message, headers),
    );
  }

  /** Publishes `message` with `propagation` as its headers (its own, or a producer span's). */
  private async publishWith(
    message: JobMessage,
    propagation: Readonly<Record<string, string>>,
  ): Promise<void> {
    const encoded = this.options.codec.encode({ ...message, headers: propagation });
    const subject = this.topology.subjects[message.priority];
    const headers = publishHeaders(encoded.contentType, propagation);
    const ack = await this.publishRaw(subject, encoded.body, headers, message.jobId);
    if (ack.duplicate) await this.afterDuplicate(message, subject, encoded.body, headers, ack);
  }

  /**
   * JetStream dropped the publish: a message with this job id was stored within the dedupe window.
   * That is the point when it is this same pointer, still waiting (a republish after a lost ack).
   * But a work-queue stream deletes what was consumed, so a job published again on purpose (a dead
   * letter replayed soon after) would get no message at all; and an outside producer may have used
   * the job's id as its `Nats-Msg-Id` for the email the job came from. So: when the stored message
   * is gone, or is not this pointer, publish under an id of its own (derived from the stored one,
   * so that a republish of this is dropped in turn).
   */
  private async afterDuplicate(
    message: JobMessage,
    subject: string,
    body: Uint8Array,
    headers: MsgHdrs,
    ack: PubAck,
  ): Promise<void> {
    const live = this.live;
    if (!live) throw new BrokerUnavailableError('nats: not connected');
    // null: no such message (consumed since).
    const stored = await live.jsm.streams.getMessage(this.topology.stream, { seq: ack.seq });
    if (stored && stored.subject === subject && this.isSamePointer(stored, message, body)) {
      this.logger.debug({ job_id: message.jobId, stream_seq: ack.seq }, 'nats: duplicate publish dropped');
      return;
    }
    this.logger.debug(
      { job_id: message.jobId, stream_seq: ack.seq },
      'nats: the job id was used within the dedupe window by a message since consumed, or another one; publishing under a new id',
    );
    await this.publishRaw(subject, body, headers, `${message.jobId}:${ack.seq}`);
  }

  /**
   * Whether the stored message is the pointer `message` would publish. Byte equality is not enough:
   * with tracing on each publish carries the trace context of its own producer span, so a republish
   * of the same pointer differs in its `trace_context`; what matters is job id, priority, no content.
   */
  private isSamePointer(stored: StoredMsg, message: JobMessage, body: Uint8Array): boolean {
    if (equalBytes(stored.data, body)) return true;
    const decoded = this.options.codec.decode(
      stored.data,
      stored.header?.get(HEADERS.contentType) || undefined,
    );
    return (
      decoded.ok &&
      decoded.message.newJob === undefined &&
      decoded.message.jobId === message.jobId &&
      decoded.message.priority === message.priority
    );
  }

  /**
   * One JetStream publish, resolving on the server's ack. Rejects at once when not connected, and
   * as soon as the connection drops while it waits. (While `close` runs, deliveries still being
   * settled may publish their dead letters and copies.)
   */
  private publishRaw(subject: string, body: Uint8Array, headers: MsgHdrs, msgID: string): Promise<PubAck> {
    const live = this.live;
    if (!live || !this.connected) {
      return Promise.reject(
        new BrokerUnavailableError(
          `nats: not connected to ${this.where} since ${new Date(this.down.since).toISOString()} (${this.down.reason})`,
        ),
      );
    }
    const timeout = this.options.publishTimeoutMs ?? DEFAULTS.publishTimeoutMs;
    let rejectOnLoss!: (error: Error) => void;
    const lost = new Promise<never>((_, reject) => {
      rejectOnLoss = reject;
    });
    this.awaitingAck.add(rejectOnLoss);
    const acked = live.js.publish(subject, body, { msgID, headers, timeout }).catch((error: unknown) => {
      throw this.publishError(subject, timeout, error);
    });
    const publish = Promise.race([acked, lost]).finally(() => this.awaitingAck.delete(rejectOnLoss));
    acked.catch(() => {});
    lost.catch(() => {});
    return this.track(publish);
  }

  private publishError(subject: string, timeoutMs: number, error: unknown): Error {
    if (error instanceof Error && error.name === 'JetStreamNotEnabled') {
      // "No responders": no stream takes the subject (deleted?), or JetStream is off.
      this.recheck();
      return new Error(`nats: no stream takes ${subject} (is JetStream enabled? the stream deleted?)`, {
        cause: error,
      });
    }
    if (error instanceof TimeoutError) {
      return new Error(`nats: publish to ${subject} not acked within ${timeoutMs} ms`, { cause: error });
    }
    return error instanceof Error ? error : new Error(String(error));
  }

  private track<T>(publish: Promise<T>): Promise<T> {
    this.inFlight.add(publish);
    const forget = () => this.inFlight.delete(publish);
    publish.then(forget, forget);
    return publish;
  }
}

/**
 * Connection options from the URL: `nats://host[:port]`, with `user:pass@` or `token@`; `tls://` for
 * TLS. The client reconnects for ever.
 */
export function connectionOptions(
  url: string,
  reconnect: { readonly waitMs: number; readonly jitterMs: number } = DEFAULTS.reconnect,
): ConnectionOptions {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new RangeError('nats: the broker URL is not a URL (expected nats://host:port)');
  }
  if (parsed.protocol !== 'nats:' && parsed.protocol !== 'tls:') {
    throw new RangeError(`nats: the broker URL must start with nats:// or tls://, not ${parsed.protocol}//`);
  }
  const user = decodeURIComponent(parsed.username);
  const pass = decodeURIComponent(parsed.password);
  return {
    servers: `${parsed.hostname}:${parsed.port || 4222}`,
    ...(user !== '' && pass !== '' && { user, pass }),
    ...(user !== '' && pass === '' && { token: user }),
    ...(parsed.protocol === 'tls:' && { tls: {} }),
    name: `mailroom ${hostname()} pid ${process.pid}`,
    maxReconnectAttempts: -1,
    reconnectTimeWait: reconnect.waitMs,
    reconnectJitter: reconnect.jitterMs,
    pingInterval: PING_INTERVAL_MS,
    maxPingOut: MAX_PINGS_OUT,
    timeout: 5000,
  };
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && Buffer.from(a).equals(Buffer.from(b));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `work`, or undefined after `ms` (or the error `onTimeout` makes). */
async function withDeadline<T>(
  work: Promise<T>,
  ms: number,
  onTimeout?: () => Error,
): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<undefined>((resolve, reject) => {
    timer = setTimeout(() => (onTimeout ? reject(onTimeout()) : resolve(undefined)), ms);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
