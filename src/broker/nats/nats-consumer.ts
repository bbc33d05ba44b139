import type { ConsumerMessages, Consumer as JsConsumer, JsMsg } from '@nats-io/jetstream';
import type { MsgHdrs } from '@nats-io/transport-node';
import type { Logger } from 'pino';
import { PRIORITY_BY_RANK, type Priority } from '../../domain/email.js';
import type {
  BrokerDeadLetterReason,
  Consumer,
  DecodeResult,
  Delivery,
  DeliveryHandler,
  JobMessage,
  MessageCodec,
} from '../broker.js';
import {
  copiedHeaders,
  HEADERS,
  headerValue,
  MAX_ERROR_LENGTH,
  oneLine,
  withTransportHeaders,
} from './message-headers.js';
import type { NatsTopology } from './topology.js';

/** What a consumer needs from its broker. */
export interface ConsumerContext {
  readonly topology: NatsTopology;
  readonly codec: MessageCodec;
  readonly logger: Logger;
  /** Per priority: messages received and not yet settled, plus those asked for, at most this many. */
  readonly holdPerPriority: number;
  /** Deliveries of one message handed to the handler; one more and it is dead-lettered. */
  readonly maxDeliver: number;
  /** How often unsettled messages get an in-progress ack (well inside AckWait). */
  readonly keepAliveMs: number;
  /** How long one pull request waits for messages before the next is sent. */
  readonly fetchExpiresMs: number;
  /** The server's heartbeat on a waiting pull request; two missed end the request. */
  readonly fetchHeartbeatMs: number;
  /** How long an `ackAck` waits for the server. */
  readonly settleTimeoutMs: number;
  /** Connected right now: settling on a lost connection is not even tried (it would be lost). */
  readonly connected: boolean;
  /** Counts connections lost: a pull request made under another epoch is dead. */
  readonly epoch: number;
  /** Resolves true once connected with the topology declared; false once the broker is closing. */
  ready(): Promise<boolean>;
  /** The durable pull consumer of a priority, looked up once. */
  pullConsumer(priority: Priority): Promise<JsConsumer>;
  /** Publishes to JetStream, resolving on the server's ack; rejects when not connected. */
  publish(subject: string, body: Uint8Array, headers: MsgHdrs, msgID: string): Promise<void>;
  /** One round trip to the server: whatever was sent before has arrived. */
  flush(): Promise<void>;
  /** A pull request failed: log it, and look for a missing stream or consumer. */
  pullFailed(priority: Priority, error: unknown, failures: number): void;
}

/** A message received and decoded, waiting to be handed out or handed out. */
interface Received {
  readonly raw: JsMsg;
  readonly rank: number;
  readonly message: JobMessage;
}

/** A handler that throws gets its delivery back after this long, not at once. */
const GIVE_BACK_DELAY_MS = 1000;
/** A dead letter that could not be published: the message comes back after this long to try again. */
const DEAD_LETTER_RETRY_MS = 5000;
/** A copy whose `Mailroom-Not-Before` is at most this close is handed out rather than delayed again. */
const NOT_BEFORE_SLACK_MS = 20;
/** Pause after a failed pull request: doubling from the first to the last. */
const PULL_RETRY_FIRST_MS = 100;
const PULL_RETRY_MAX_MS = 5000;

/**
 * Pulls from the three priority consumers in parallel and hands deliveries to the handler high
 * first, then normal, then low, never more than `prefetch` unsettled at once. Each priority holds at
 * most `holdPerPriority` messages (received and not settled, or asked for), so a high message that
 * arrives overtakes low ones already received. Every message held gets an in-progress ack every
 * `keepAliveMs`, in the local buffer as well as in the handler, so AckWait never runs out while this
 * process is alive: it only measures how long a dead worker keeps a message.
 */
export class NatsConsumer implements Consumer {
  private running = true;
  /** Received, not yet handed out, by priority rank. */
  private readonly waiting: Received[][] = PRIORITY_BY_RANK.map(() => []);
  /** Received and not yet settled, by rank (waiting, handed out, or being settled here). */
  private readonly held: number[] = PRIORITY_BY_RANK.map(() => 0);
  /** Every message held: each gets in-progress acks until it is settled. */
  private readonly alive = new Set<JsMsg>();
  private readonly fetches = new Set<ConsumerMessages>();
  private readonly wakeUps: ((() => void) | undefined)[] = PRIORITY_BY_RANK.map(() => undefined);
  private readonly loops: Promise<void>[];
  private handedOut = 0;
  private keepAlive: NodeJS.Timeout | undefined;
  private stopping: Promise<void> | undefined;
  private stopped!: () => void;
  /** Resolves (to false, "not ready") when the consumer stops: ends a wait for the connection. */
  private readonly stopSignal = new Promise<false>((resolve) => {
    this.stopped = () => resolve(false);
  });

  constructor(
    private readonly context: ConsumerContext,
    private readonly handler: DeliveryHandler,
    private readonly prefetch: number,
    private readonly onStop: () => void,
  ) {
    this.keepAlive = setInterval(() => this.touch(), context.keepAliveMs);
    this.keepAlive.unref();
    this.loops = PRIORITY_BY_RANK.map((priority, rank) => this.pull(priority, rank));
  }

  /**
   * Stops pulling; messages received and not handed out go back to their stream at once (`nak`).
   * Deliveries handed out stay valid, and are kept alive, until settled.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.running = false;
      this.onStop();
      this.stopped();
      this.closeFetches();
      for (const wake of this.wakeUps) wake?.();
      const givenBack: Promise<void>[] = [];
      for (const queue of this.waiting) {
        for (const received of queue.splice(0)) {
          givenBack.push(this.finish(received.rank, received.raw, () => this.nak(received.raw, 0)));
        }
      }
      await Promise.all([...this.loops, ...givenBack]);
      this.stopIfDrained();
    })();
    return this.stopping;
  }

  /** The connection dropped: pull requests die with it (they are asked again once it is back). */
  disconnected(): void {
    this.closeFetches();
  }

  /**
   * The topology was declared again: pull loops waiting out a failure try again now. When something
   * had to be created (a stream or consumer was deleted), pull requests still open may be attached
   * to what is gone and would wait for their heartbeats to be missed: they are made again.
   */
  redeclared(created: boolean): void {
    if (created) this.closeFetches();
    for (const wake of this.wakeUps) wake?.();
  }

  /** The broker closed its connection: nothing can be kept alive or settled any more. */
  closed(): void {
    clearInterval(this.keepAlive);
    this.keepAlive = undefined;
  }

  private closeFetches(): void {
    for (const fetch of this.fetches) void fetch.close().catch(() => {});
  }

  /** One priority's pull loop: asks for as many messages as it may hold, waits, repeats. */
  private async pull(priority: Priority, rank: number): Promise<void> {
    let failures = 0;
    while (this.running) {
      if (this.held[rank]! >= this.context.holdPerPriority) {
        await new Promise<void>((resolve) => {
          this.wakeUps[rank] = resolve;
        });
        this.wakeUps[rank] = undefined;
        continue;
      }
      if (!(await Promise.race([this.context.ready(), this.stopSignal])) || !this.running) return;
      const epoch = this.context.epoch;
      const want = this.context.holdPerPriority - this.held[rank]!;
      let messages: ConsumerMessages | undefined;
      try {
        const consumer = await this.context.pullConsumer(priority);
        if (!this.running || this.context.epoch !== epoch) continue;
        messages = await consumer.fetch({
          max_messages: want,
          expires: this.context.fetchExpiresMs,
          idle_heartbeat: this.context.fetchHeartbeatMs,
        });
        this.fetches.add(messages);
        // Stopped, or the connection dropped, while it was being made: closeFetches missed it.
        if (!this.running || this.context.epoch !== epoch) void messages.close().catch(() => {});
        for await (const raw of messages) {
          this.receive(rank, raw);
        }
        failures = 0;
      } catch (error) {
        if (!this.running) return;
        failures++;
        this.context.pullFailed(priority, error, failures);
        await this.pause(Math.min(PULL_RETRY_MAX_MS, PULL_RETRY_FIRST_MS * 2 ** (failures - 1)), rank);
      } finally {
        if (messages) this.fetches.delete(messages);
      }
    }
  }

  /** Waits `ms`, or less if the consumer stops. */
  private pause(ms: number, rank: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUps[rank] = done;
    });
  }

  private receive(rank: number, raw: JsMsg): void {
    this.held[rank]!++;
    this.alive.add(raw);
    if (!this.running) {
      void this.finish(rank, raw, () => this.nak(raw, 0));
      return;
    }
    const count = raw.info.deliveryCount;
    if (count > this.context.maxDeliver) {
      const error = `delivered ${count} times without being settled; the limit is ${this.context.maxDeliver}`;
      this.context.logger.warn(
        { subject: raw.subject, stream_seq: raw.seq, deliveries: count },
        'nats: message delivered more often than the limit: dead-lettered',
      );
      void this.finish(rank, raw, () => this.deadLetter(raw, 'delivery_limit', error));
      return;
    }
    const notBefore = Number(headerValue(raw.headers, HEADERS.notBefore));
    if (Number.isFinite(notBefore) && notBefore - Date.now() > NOT_BEFORE_SLACK_MS) {
      // A copy published by retryLater: it waits out the rest of its delay in JetStream.
      void this.finish(rank, raw, () => this.nak(raw, notBefore - Date.now()));
      return;
    }
    const decoded = decode(this.context.codec, raw);
    if (!decoded.ok) {
      this.context.logger.warn(
        {
          subject: raw.subject,
          stream_seq: raw.seq,
          msg_id: headerValue(raw.headers, HEADERS.msgId),
          reason: decoded.reason,
          error: decoded.error,
        },
        'nats: message cannot be decoded: dead-lettered',
      );
      void this.finish(rank, raw, () => this.deadLetter(raw, decoded.reason, decoded.error));
      return;
    }
    const message = withTransportHeaders(decoded.message, raw.headers);
    this.waiting[rank]!.push({ raw, rank, message });
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
        this.context.logger.error({ err: error, job_id: next.message.jobId }, 'nats: delivery handler threw');
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

  /** The delivery, and a way to give it back unsettled. */
  private deliveryFor(received: Received): [Delivery, () => Promise<void>] {
    let settled = false;
    const { raw, rank, message } = received;
    const settle = async (how: () => Promise<void>): Promise<void> => {
      if (settled) return;
      settled = true;
      try {
        await this.finish(rank, raw, how);
      } finally {
        this.handedOut--;
        this.pump();
        this.stopIfDrained();
      }
    };
    const delivery: Delivery = {
      message,
      deliveryCount: raw.info.deliveryCount,
      ack: () => settle(() => this.ack(raw)),
      retryLater: (delayMs) => settle(() => this.retryLater(received, delayMs)),
      deadLetter: (reason, error) => settle(() => this.deadLetter(raw, reason, error)),
    };
    return [delivery, () => settle(() => this.nak(raw, GIVE_BACK_DELAY_MS))];
  }

  /** Runs one settling operation (which never throws), then forgets the message. */
  private async finish(rank: number, raw: JsMsg, how: () => Promise<void>): Promise<void> {
    try {
      await how();
    } catch (error) {
      this.context.logger.warn({ err: error, stream_seq: raw.seq }, 'nats: settling a message failed');
    } finally {
      this.alive.delete(raw);
      this.held[rank]!--;
      this.wakeUps[rank]?.();
    }
  }

  /** Acks and waits for the server to confirm it (`ackAck`). */
  private async ack(raw: JsMsg): Promise<void> {
    if (!this.lostWith(raw, 'ack')) return;
    try {
      await raw.ackAck({ timeout: this.context.settleTimeoutMs });
    } catch (error) {
      this.context.logger.debug(
        { err: error, stream_seq: raw.seq },
        'nats: ack not confirmed; if it was lost, JetStream delivers the message again after AckWait',
      );
    }
  }

  /**
   * `nak` with the delay: JetStream delivers the message again once it is over (at once for 0).
   * On the message's last allowed delivery a nak would bring it back only to be dead-lettered, so
   * a fresh copy carrying the delay is published instead and the original acked (`retryAsCopy`).
   */
  private async retryLater(received: Received, delayMs: number): Promise<void> {
    const delay = Number.isFinite(delayMs) ? Math.max(0, Math.ceil(delayMs)) : 0;
    if (received.raw.info.deliveryCount >= this.context.maxDeliver) {
      return this.retryAsCopy(received, delay);
    }
    return this.nak(received.raw, delay);
  }

  private async retryAsCopy(received: Received, delayMs: number): Promise<void> {
    const { raw } = received;
    const headers = copiedHeaders(raw.headers);
    if (delayMs > 0) headers.set(HEADERS.notBefore, String(Date.now() + delayMs));
    headers.set(HEADERS.retryOf, String(raw.seq));
    try {
      // The id makes a second try of this very copy (the ack below lost) a duplicate.
      await this.context.publish(raw.subject, raw.data, headers, `retry:${raw.seq}`);
    } catch (error) {
      this.context.logger.warn(
        { err: error, job_id: received.message.jobId, stream_seq: raw.seq },
        'nats: retryLater on the last allowed delivery could not publish a fresh copy; the message comes back once more and is then dead-lettered (delivery_limit)',
      );
      return this.nak(raw, delayMs);
    }
    await this.ack(raw);
  }

  /**
   * Publishes a copy (same body and headers) to the dead-letter subject with the reason, waits for
   * the server's ack, then terminates the original. When the copy cannot be published the original
   * comes back after a pause, to be tried again.
   */
  private async deadLetter(raw: JsMsg, reason: BrokerDeadLetterReason, error?: string): Promise<void> {
    const headers = copiedHeaders(raw.headers);
    const msgId = headerValue(raw.headers, HEADERS.msgId);
    if (msgId !== undefined) headers.set(HEADERS.originalMsgId, oneLine(msgId, MAX_ERROR_LENGTH));
    headers.set(HEADERS.reason, reason);
    headers.set(HEADERS.error, oneLine(error ?? '', MAX_ERROR_LENGTH));
    headers.set(HEADERS.originalSubject, raw.subject);
    headers.set(HEADERS.originalStream, raw.info.stream);
    headers.set(HEADERS.originalSequence, String(raw.seq));
    headers.set(HEADERS.deliveryCount, String(raw.info.deliveryCount));
    headers.set(HEADERS.deadLetteredAt, new Date().toISOString());
    try {
      // The id makes a second dead letter of the same message (the term below lost) a duplicate.
      await this.context.publish(
        this.context.topology.deadLetterSubject,
        raw.data,
        headers,
        `dead:${raw.info.stream}:${raw.seq}`,
      );
    } catch (publishError) {
      this.context.logger.warn(
        { err: publishError, stream_seq: raw.seq, reason },
        `nats: dead-lettering failed; the message comes back in ${DEAD_LETTER_RETRY_MS / 1000} s to try again`,
      );
      return this.nak(raw, DEAD_LETTER_RETRY_MS);
    }
    if (!this.lostWith(raw, 'term')) return;
    raw.term();
    await this.flush(raw, 'term');
  }

  private async nak(raw: JsMsg, delayMs: number): Promise<void> {
    if (!this.lostWith(raw, 'nak')) return;
    raw.nak(delayMs);
    await this.flush(raw, 'nak');
  }

  /** Waits until the server has what was sent (acks other than `ackAck` get no answer). */
  private async flush(raw: JsMsg, what: string): Promise<void> {
    await this.context.flush().catch((error: unknown) => {
      this.context.logger.debug(
        { err: error, stream_seq: raw.seq },
        `nats: ${what} may not have reached the server; JetStream delivers the message again after AckWait`,
      );
    });
  }

  /** True when connected; otherwise logs that settling is lost (JetStream redelivers) and is false. */
  private lostWith(raw: JsMsg, what: string): boolean {
    if (this.context.connected) return true;
    this.context.logger.debug(
      { stream_seq: raw.seq },
      `nats: ${what} while disconnected is lost; JetStream delivers the message again after AckWait`,
    );
    return false;
  }

  /** In-progress acks for every message held: AckWait starts again for each. */
  private touch(): void {
    if (!this.context.connected) return;
    for (const raw of this.alive) raw.working();
  }

  private stopIfDrained(): void {
    if (this.running || this.handedOut > 0 || this.alive.size > 0) return;
    this.closed();
  }
}

function decode(codec: MessageCodec, raw: JsMsg): DecodeResult {
  try {
    return codec.decode(raw.data, headerValue(raw.headers, HEADERS.contentType));
  } catch (error) {
    // A codec should answer, not throw; if it throws, the message is still unreadable, not retryable.
    return {
      ok: false,
      reason: 'undecodable',
      error: error instanceof Error ? error.message : String(error),
    };
  }
}
