/**
 * The NATS JetStream broker against a real nats-server with JetStream. Every test gets its own
 * streams, subjects and consumers under one random prefix for the run; every stream is deleted at
 * the end.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { type AddressInfo, createServer } from 'node:net';
import { after, afterEach, before, describe, test } from 'node:test';
import { encode as encodeMsgpack } from '@msgpack/msgpack';
import {
  AckPolicy,
  type JetStreamClient,
  type JetStreamManager,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type StoredMsg,
} from '@nats-io/jetstream';
import { connect, type NatsConnection, headers as natsHeaders } from '@nats-io/transport-node';
import pino from 'pino';
import type { Delivery, JobMessage, MessageCodec } from '../src/broker/broker.js';
import { NatsBroker, type NatsBrokerOptions } from '../src/broker/nats/nats-broker.js';
import { PRIORITY_BY_RANK, type Priority } from '../src/domain/email.js';
import { WireCodec } from '../src/wire/wire-codec.js';
import { NATS_URL, serviceAvailable } from './support/services.js';
import { TcpProxy } from './support/tcp-proxy.js';
import { waitFor } from './support/wait-for.js';

const available = await serviceAvailable('NATS', NATS_URL);
const RUN = randomUUID().slice(0, 8);
const logger = pino({ level: process.env.LOG_LEVEL ?? 'silent' });
const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** Mailroom's own codec, for the tests that depend on what it writes. */
function wireCodec(): WireCodec {
  return new WireCodec({
    validation: () => ({
      defaultFrom: 'Mailroom <mailroom@localhost>',
      maxRecipients: 50,
      maxMessageBytes: 10 * 1024 * 1024,
      maxScheduleAheadMs: 366 * 24 * 3600 * 1000,
      now: Date.now(),
    }),
    idempotencyTtlMs: 24 * 3600 * 1000,
  });
}

/** A tiny JSON codec standing in for the wire codec: the broker only needs the port. */
const jsonCodec: MessageCodec = {
  encode: (message) => ({
    body: Buffer.from(JSON.stringify({ jobId: message.jobId, priority: message.priority })),
    contentType: 'application/json',
  }),
  decode(body, contentType) {
    if (contentType !== 'application/json') {
      return { ok: false, reason: 'undecodable', error: `unsupported content type ${contentType}` };
    }
    try {
      const { jobId, priority } = JSON.parse(Buffer.from(body).toString('utf8'));
      if (typeof jobId !== 'string' || !['high', 'normal', 'low'].includes(priority)) {
        return { ok: false, reason: 'invalid_message', error: 'jobId or priority missing' };
      }
      return { ok: true, message: { jobId, priority, headers: {} } };
    } catch (error) {
      return { ok: false, reason: 'undecodable', error: (error as Error).message };
    }
  },
};

const job = (
  jobId: string,
  priority: Priority = 'normal',
  headers: Record<string, string> = {},
): JobMessage => ({ jobId, priority, headers });

interface Received {
  readonly delivery: Delivery;
  readonly at: number;
}

/** Records deliveries as the broker hands them out, and how many were unsettled at most. */
class Recorder {
  readonly received: Received[] = [];
  private settled = 0;
  maxUnsettled = 0;

  readonly handler = (delivery: Delivery): void => {
    this.received.push({ delivery, at: Date.now() });
    this.maxUnsettled = Math.max(this.maxUnsettled, this.unsettled);
  };

  get unsettled(): number {
    return this.received.length - this.settled;
  }

  ids(): string[] {
    return this.received.map((r) => r.delivery.message.jobId);
  }

  /** Waits for the `n`th delivery (1-based) and returns it. */
  nth(n: number, timeoutMs = 10_000): Promise<Received> {
    return waitFor(`delivery #${n}`, () => this.received[n - 1], timeoutMs);
  }

  async ack(received: Received): Promise<void> {
    this.settled++;
    await received.delivery.ack();
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('NATS JetStream broker', { skip: !available }, () => {
  let admin: NatsConnection;
  let jsm: JetStreamManager;
  let js: JetStreamClient;
  const brokers: NatsBroker[] = [];
  const streams = new Set<string>();
  const proxies: TcpProxy[] = [];
  let counter = 0;

  /** A broker on fresh names (or on the names of `sameAs`). Closed after the test. */
  function makeBroker(overrides: Partial<NatsBrokerOptions> = {}, sameAs?: NatsBroker): NatsBroker {
    counter++;
    const names = sameAs
      ? {
          stream: sameAs.topology.stream,
          subject: sameAs.topology.subjects.normal,
          consumer: sameAs.topology.consumers.normal,
        }
      : {
          stream: `mailroom_test_${RUN}_${counter}`,
          subject: `mailroom-test.${RUN}.${counter}.email`,
          consumer: 'email-processor',
        };
    const broker = new NatsBroker({
      url: NATS_URL,
      ...names,
      codec: jsonCodec,
      logger,
      reconnect: { waitMs: 100, jitterMs: 50 },
      ...overrides,
    });
    brokers.push(broker);
    streams.add(broker.topology.stream);
    streams.add(broker.topology.deadLetterStream);
    return broker;
  }

  const messagesIn = async (stream: string) => (await jsm.streams.info(stream)).state.messages;
  const consumerInfo = (broker: NatsBroker, priority: Priority) =>
    jsm.consumers.info(broker.topology.stream, broker.topology.consumers[priority]);
  /** The `n`th dead letter (1-based), once it is there. */
  const deadLetter = (broker: NatsBroker, n = 1): Promise<StoredMsg> =>
    waitFor(`dead letter #${n}`, async () => {
      if ((await messagesIn(broker.topology.deadLetterStream)) < n) return undefined;
      return (await jsm.streams.getMessage(broker.topology.deadLetterStream, { seq: n })) ?? undefined;
    });
  const header = (message: StoredMsg, name: string) => message.header.get(name);

  before(async () => {
    admin = await connect({ servers: NATS_URL });
    jsm = await jetstreamManager(admin);
    js = jsm.jetstream();
  });

  afterEach(async () => {
    await Promise.all(brokers.splice(0).map((broker) => broker.close()));
    await Promise.all(proxies.splice(0).map((proxy) => proxy.close()));
  });

  after(async () => {
    for (const stream of streams) await jsm.streams.delete(stream).catch(() => {});
    await admin.close();
  });

  test('declares streams and consumers idempotently, with the settings email needs', async () => {
    const first = makeBroker();
    await first.start();
    await first.close();
    const second = makeBroker({}, first);
    await second.start();
    const { topology } = second;
    const stream = (await jsm.streams.info(topology.stream)).config;
    assert.equal(stream.retention, RetentionPolicy.Workqueue);
    assert.equal(stream.storage, StorageType.File);
    assert.deepEqual(stream.subjects, [
      topology.subjects.high,
      topology.subjects.normal,
      topology.subjects.low,
    ]);
    assert.equal(stream.duplicate_window, 120e9);
    const dead = (await jsm.streams.info(topology.deadLetterStream)).config;
    assert.equal(topology.deadLetterStream, `${topology.stream}_failed`);
    assert.deepEqual(dead.subjects, [`${topology.subjects.normal}.failed`]);
    assert.equal(dead.retention, RetentionPolicy.Limits);
    assert.equal(dead.storage, StorageType.File);
    for (const priority of PRIORITY_BY_RANK) {
      const { config } = await consumerInfo(second, priority);
      assert.equal(
        config.durable_name,
        priority === 'normal' ? 'email-processor' : `email-processor-${priority}`,
      );
      assert.equal(config.filter_subject, topology.subjects[priority]);
      assert.equal(config.ack_policy, AckPolicy.Explicit);
      assert.equal(config.deliver_policy, 'all');
      assert.equal(config.ack_wait, 60e9);
      assert.equal(config.max_deliver, -1);
      assert.equal(config.max_ack_pending, 10_000);
      assert.equal(config.deliver_subject, undefined);
    }
    const health = await second.health();
    assert.equal(health.ok, true);
    assert.match(health.detail!, /^connected to 127\.0\.0\.1:4222 since /);
  });

  test('start changes what is safe to change in place, and refuses what is not, naming it', async () => {
    const first = makeBroker();
    await first.start();
    await first.close();
    const changed = makeBroker({ ackWaitMs: 90_000, duplicateWindowMs: 60_000, maxAckPending: 500 }, first);
    await changed.start();
    const { config } = await consumerInfo(changed, 'low');
    assert.equal(config.ack_wait, 90e9);
    assert.equal(config.max_ack_pending, 500);
    assert.equal((await jsm.streams.info(first.topology.stream)).config.duplicate_window, 60e9);
    await changed.close();

    // A stream of the name with limits retention: Mailroom will not run on it.
    const limits = makeBroker({ startAttempts: 1 });
    await jsm.streams.add({ name: limits.topology.stream, subjects: [limits.topology.subjects.normal] });
    await assert.rejects(
      limits.start(),
      /stream mailroom_test_\S+: retention is limits, Mailroom needs workqueue/,
    );
    assert.equal((await limits.health()).ok, false);

    // A consumer of the name that filters another subject.
    const filtered = makeBroker({ startAttempts: 1 });
    await jsm.streams.add({
      name: filtered.topology.stream,
      subjects: [...Object.values(filtered.topology.subjects)],
      retention: RetentionPolicy.Workqueue,
    });
    await jsm.consumers.add(filtered.topology.stream, {
      durable_name: 'email-processor',
      ack_policy: AckPolicy.Explicit,
      filter_subject: filtered.topology.subjects.low,
    });
    await assert.rejects(
      filtered.start(),
      /consumer email-processor on stream \S+: filter_subject is "\S+\.email\.low", Mailroom needs "\S+\.email"/,
    );
  });

  test('publish, consume, ack: each message once, with its fields; Nats-Msg-Id is the job id; nothing is left', async () => {
    const broker = makeBroker();
    await broker.start();
    await broker.publish([job('a', 'high', { traceparent: TRACEPARENT }), job('b'), job('c', 'low')]);
    const stored = await jsm.streams.getMessage(broker.topology.stream, { seq: 1 });
    assert.equal(stored?.subject, broker.topology.subjects.high);
    assert.equal(header(stored!, 'Nats-Msg-Id'), 'a');
    assert.equal(header(stored!, 'Content-Type'), 'application/json');
    assert.equal(header(stored!, 'traceparent'), TRACEPARENT);

    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 10 });
    await recorder.nth(3);
    assert.deepEqual(recorder.ids().sort(), ['a', 'b', 'c']);
    const a = recorder.received.find((r) => r.delivery.message.jobId === 'a')!.delivery;
    assert.deepEqual(a.message, { jobId: 'a', priority: 'high', headers: { traceparent: TRACEPARENT } });
    assert.equal(a.deliveryCount, 1);
    for (const received of recorder.received) await recorder.ack(received);
    await broker.close();
    assert.equal(await messagesIn(broker.topology.stream), 0);
    for (const priority of PRIORITY_BY_RANK) {
      const info = await consumerInfo(broker, priority);
      assert.equal(info.num_pending, 0, priority);
      assert.equal(info.num_ack_pending, 0, priority);
      assert.equal(info.num_redelivered, 0, priority);
    }
    assert.equal(recorder.received.length, 3);
  });

  test('a republish of a job id within the dedupe window is dropped; after the first was consumed it is not', async () => {
    const broker = makeBroker();
    await broker.start();
    await broker.publish([job('x')]);
    await broker.publish([job('x')]);
    await broker.publish([job('x'), job('x')]);
    assert.equal(await messagesIn(broker.topology.stream), 1);
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await recorder.ack(await recorder.nth(1));
    await sleep(300);
    assert.equal(recorder.received.length, 1);
    // Consumed, so gone from the work queue: a job published again on purpose (a dead letter
    // replayed) must not be dropped as a duplicate of it.
    await broker.publish([job('x')]);
    const again = await recorder.nth(2);
    assert.equal(again.delivery.message.jobId, 'x');
    const stored = await jsm.streams.getMessage(broker.topology.stream, { seq: 2 });
    assert.equal(header(stored!, 'Nats-Msg-Id'), 'x:1');
    await recorder.ack(again);
    // A republish of that one is dropped in turn.
    await broker.publish([job('x')]);
    await sleep(300);
    assert.equal(recorder.received.length, 2);
    assert.equal(await messagesIn(broker.topology.stream), 0);
  });

  test('a republish that differs only in its trace context is the same pointer: dropped', async () => {
    const broker = makeBroker({ codec: wireCodec() });
    await broker.start();
    // With tracing on, each publish carries its own producer span's context in the body.
    const traced = (span: string) => ({
      ...job('t'),
      headers: { traceparent: `00-0af7651916cd43dd8448eb211c80319c-${span}-01` },
    });
    await broker.publish([traced('b7ad6b7169203331')]);
    await broker.publish([traced('00f067aa0ba902b7')]);
    assert.equal(await messagesIn(broker.topology.stream), 1);
  });

  test('an outside producer that used the job id as its Nats-Msg-Id does not swallow the pointer', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    // The producer's own message (here any body) under the id the job will get...
    const ack = await js.publish(
      broker.topology.subjects.normal,
      JSON.stringify({ jobId: 'p1', priority: 'low' }),
      {
        msgID: 'p1',
        headers: contentType('application/json'),
      },
    );
    assert.equal(ack.duplicate, false);
    const producers = await recorder.nth(1);
    // ...still unacked when the pointer for the job it created is published.
    await broker.publish([job('p1')]);
    const pointer = await recorder.nth(2);
    assert.deepEqual(pointer.delivery.message, job('p1'));
    await recorder.ack(producers);
    await recorder.ack(pointer);
  });

  test('hands out high, then normal, then low: high messages overtake low ones already buffered', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 2 });
    // Two normal messages take both slots and stay unsettled.
    await broker.publish([job('n1'), job('n2')]);
    await recorder.nth(2);
    // Low ones arrive and wait in the local buffer (pulled: unacked at the server)...
    await broker.publish([job('l1', 'low'), job('l2', 'low')]);
    await waitFor(
      'low messages pulled',
      async () => (await consumerInfo(broker, 'low')).num_ack_pending === 2,
    );
    // ...then high ones arrive.
    await broker.publish([job('h1', 'high'), job('h2', 'high')]);
    await waitFor(
      'high messages pulled',
      async () => (await consumerInfo(broker, 'high')).num_ack_pending === 2,
    );
    assert.deepEqual(recorder.ids(), ['n1', 'n2']);
    await recorder.ack(recorder.received[0]!);
    await recorder.nth(3);
    await recorder.ack(recorder.received[1]!);
    await recorder.nth(4);
    assert.deepEqual(recorder.ids(), ['n1', 'n2', 'h1', 'h2']);
    await recorder.ack(recorder.received[2]!);
    await recorder.ack(recorder.received[3]!);
    await recorder.nth(6);
    assert.deepEqual(recorder.ids(), ['n1', 'n2', 'h1', 'h2', 'l1', 'l2']);
    for (const received of recorder.received.slice(4)) await recorder.ack(received);
    assert.equal(recorder.maxUnsettled, 2);
  });

  test('never more than prefetch unsettled, nor more than prefetch held per priority', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 3 });
    await broker.publish(Array.from({ length: 12 }, (_, i) => job(`m${i}`, PRIORITY_BY_RANK[i % 3])));
    await recorder.nth(3);
    // Each priority pulled 3: 9 held, 3 handed out, 1 per priority still in the stream.
    await waitFor('3 held per priority', async () => {
      const infos = await Promise.all(PRIORITY_BY_RANK.map((priority) => consumerInfo(broker, priority)));
      return infos.every((info) => info.num_ack_pending === 3 && info.num_pending === 1);
    });
    assert.equal(recorder.received.length, 3);
    for (let next = 0; next < 12; next++) {
      await recorder.nth(next + 1);
      await recorder.ack(recorder.received[next]!);
    }
    assert.equal(recorder.received.length, 12);
    assert.equal(recorder.maxUnsettled, 3);
  });

  test('retryLater(1500) is a nak with the delay: back after 1.5 s, not at once', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await broker.publish([job('r', 'low', { traceparent: TRACEPARENT })]);
    const first = await recorder.nth(1);
    const retriedAt = Date.now();
    await first.delivery.retryLater(1500);
    const second = await recorder.nth(2, 5000);
    const waited = second.at - retriedAt;
    assert.ok(waited >= 1450, `came back after ${waited} ms, before its delay`);
    assert.ok(waited < 3000, `came back after ${waited} ms`);
    assert.deepEqual(second.delivery.message, first.delivery.message);
    assert.equal(second.delivery.deliveryCount, 2);
    await recorder.ack(second);
    await broker.close();
    assert.equal(await messagesIn(broker.topology.stream), 0);
  });

  test('retryLater(0) sends the message straight back', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await broker.publish([job('z', 'high')]);
    const first = await recorder.nth(1);
    const retriedAt = Date.now();
    await first.delivery.retryLater(0);
    const second = await recorder.nth(2);
    assert.ok(second.at - retriedAt < 500, `came back after ${second.at - retriedAt} ms`);
    assert.equal(second.delivery.message.priority, 'high');
    await recorder.ack(second);
  });

  test('retryLater on the last allowed delivery publishes a fresh copy that keeps the delay', async () => {
    const broker = makeBroker({ maxDeliver: 2 });
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await broker.publish([job('m', 'high', { traceparent: TRACEPARENT })]);
    const first = await recorder.nth(1);
    await first.delivery.retryLater(200);
    const second = await recorder.nth(2);
    assert.equal(second.delivery.deliveryCount, 2);
    const retriedAt = Date.now();
    await second.delivery.retryLater(1200);
    const third = await recorder.nth(3, 5000);
    const waited = third.at - retriedAt;
    assert.ok(waited >= 1150 && waited < 3000, `came back after ${waited} ms`);
    assert.deepEqual(third.delivery.message, first.delivery.message);
    // A new message: it waited out its delay once in JetStream (a nak), then was handed out.
    assert.equal(third.delivery.deliveryCount, 2);
    await recorder.ack(third);
    await broker.close();
    assert.equal(await messagesIn(broker.topology.stream), 0);
    assert.equal(await messagesIn(broker.topology.deadLetterStream), 0);
  });

  test('deadLetter puts a copy on the dead-letter subject, with reason, error and origin, and terminates the original', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await broker.publish([job('d', 'high', { traceparent: 'tp-d' })]);
    const received = await recorder.nth(1);
    const before = Date.now();
    await received.delivery.deadLetter('max_attempts', `550 mailbox unavailable\r\n${'x'.repeat(5000)}`);
    const dead = await deadLetter(broker);
    assert.equal(dead.subject, `${broker.topology.subjects.normal}.failed`);
    assert.equal(header(dead, 'Mailroom-Reason'), 'max_attempts');
    assert.match(header(dead, 'Mailroom-Error'), /^550 mailbox unavailable x+…$/);
    assert.equal(header(dead, 'Mailroom-Error').length, 1000);
    assert.equal(header(dead, 'Mailroom-Original-Subject'), broker.topology.subjects.high);
    assert.equal(header(dead, 'Mailroom-Original-Stream'), broker.topology.stream);
    assert.equal(header(dead, 'Mailroom-Original-Sequence'), '1');
    assert.equal(header(dead, 'Mailroom-Original-Msg-Id'), 'd');
    assert.equal(header(dead, 'Mailroom-Delivery-Count'), '1');
    assert.ok(Date.parse(header(dead, 'Mailroom-Dead-Lettered-At')) >= before - 1000);
    assert.equal(header(dead, 'Content-Type'), 'application/json');
    assert.equal(header(dead, 'traceparent'), 'tp-d');
    assert.deepEqual(JSON.parse(dead.string()), { jobId: 'd', priority: 'high' });
    await broker.close();
    assert.equal(await messagesIn(broker.topology.stream), 0);
  });

  test('an undecodable or invalid message is dead-lettered at once, never handed out nor redelivered', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await js.publish(broker.topology.subjects.normal, '{not json', {
      msgID: 'garbage',
      headers: contentType('application/json'),
    });
    const dead = await deadLetter(broker);
    assert.equal(header(dead, 'Mailroom-Reason'), 'undecodable');
    assert.match(header(dead, 'Mailroom-Error'), /JSON/);
    assert.equal(header(dead, 'Mailroom-Original-Msg-Id'), 'garbage');
    assert.equal(header(dead, 'Content-Type'), 'application/json');
    assert.equal(dead.string(), '{not json');
    await js.publish(broker.topology.subjects.low, JSON.stringify({ priority: 'low' }), {
      headers: contentType('application/json'),
    });
    const invalid = await deadLetter(broker, 2);
    assert.equal(header(invalid, 'Mailroom-Reason'), 'invalid_message');
    assert.equal(header(invalid, 'Mailroom-Original-Subject'), broker.topology.subjects.low);
    // A good message published after them is handed out: the consumer moved on.
    await broker.publish([job('after')]);
    await recorder.ack(await recorder.nth(1));
    await sleep(300);
    assert.deepEqual(recorder.ids(), ['after']);
    await broker.close();
    assert.equal(await messagesIn(broker.topology.stream), 0);
    assert.equal(await messagesIn(broker.topology.deadLetterStream), 2);
    assert.equal((await consumerInfo(broker, 'normal')).num_redelivered, 0);
  });

  test('a message whose workers keep dying is dead-lettered (delivery_limit) once over maxDeliver, not left in the stream', async () => {
    const options = { maxDeliver: 2, ackWaitMs: 1000 };
    const first = makeBroker(options);
    await first.start();
    await first.publish([job('poison')]);
    const deliveries: number[] = [];
    // Two workers die holding it: closing the broker stops its in-progress acks, AckWait runs out.
    for (const broker of [first, makeBroker(options, first)]) {
      await broker.start();
      const recorder = new Recorder();
      await broker.consume(recorder.handler, { prefetch: 1 });
      deliveries.push((await recorder.nth(1, 5000)).delivery.deliveryCount);
      await broker.close();
    }
    assert.deepEqual(deliveries, [1, 2]);
    const third = makeBroker(options, first);
    await third.start();
    const recorder = new Recorder();
    await third.consume(recorder.handler, { prefetch: 1 });
    const dead = await deadLetter(third);
    assert.equal(header(dead, 'Mailroom-Reason'), 'delivery_limit');
    assert.match(header(dead, 'Mailroom-Error'), /delivered 3 times .* limit is 2/);
    assert.equal(header(dead, 'Mailroom-Delivery-Count'), '3');
    assert.equal(header(dead, 'Mailroom-Original-Msg-Id'), 'poison');
    assert.equal(recorder.received.length, 0);
    assert.equal(await messagesIn(third.topology.stream), 0);
  });

  test('in-progress acks keep a slow delivery, and one waiting in the buffer, alive past AckWait', async () => {
    // Hands out one at a time, holds two.
    const broker = makeBroker({ ackWaitMs: 1000, prefetch: 2 });
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 1 });
    await broker.publish([job('slow'), job('waits')]);
    const slow = await recorder.nth(1);
    await waitFor('both pulled', async () => (await consumerInfo(broker, 'normal')).num_ack_pending === 2);
    // A send three times longer than AckWait.
    await sleep(3000);
    assert.equal(recorder.received.length, 1);
    assert.equal((await consumerInfo(broker, 'normal')).num_redelivered, 0);
    await recorder.ack(slow);
    const waits = await recorder.nth(2);
    assert.equal(waits.delivery.message.jobId, 'waits');
    assert.equal(waits.delivery.deliveryCount, 1);
    await recorder.ack(waits);
    assert.equal(await messagesIn(broker.topology.stream), 0);
  });

  test('a cut connection: publish rejects at once while down, health says so, consuming resumes', async () => {
    const proxy = await TcpProxy.start(NATS_URL);
    proxies.push(proxy);
    const lines: { level: number; msg: string }[] = [];
    const broker = makeBroker({
      url: proxy.urlFor(NATS_URL),
      ackWaitMs: 3000,
      logger: pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) }),
    });
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await broker.publish([job('u1'), job('u2')]);
    const [u1, u2] = [await recorder.nth(1), await recorder.nth(2)];

    proxy.pause();
    proxy.cutAll();
    await waitFor('the broker to notice', async () => !(await broker.health()).ok);
    assert.match((await broker.health()).detail!, /^not connected to 127\.0\.0\.1:\d+ since .*reconnecting/);
    const started = Date.now();
    await assert.rejects(broker.publish([job('while-down')]), { code: 'BROKER_UNAVAILABLE' });
    assert.ok(Date.now() - started < 100, 'rejected at once, not after a timeout');
    // An ack while disconnected is lost: JetStream delivers the message again after AckWait.
    await recorder.ack(u1!);
    await waitFor('a few failed reconnection attempts', () => proxy.refused >= 3);

    proxy.resume();
    await waitFor('the broker to reconnect', async () => (await broker.health()).ok);
    // u2 was held all along: still valid, its ack confirmed now.
    await recorder.ack(u2!);
    const back = await recorder.nth(3, 8000);
    assert.equal(back.delivery.message.jobId, 'u1');
    assert.equal(back.delivery.deliveryCount, 2);
    await broker.publish([job('after-cut', 'high')]);
    const afterCut = await recorder.nth(4);
    assert.equal(afterCut.delivery.message.jobId, 'after-cut');
    await recorder.ack(back);
    await recorder.ack(afterCut);
    await broker.close();
    assert.equal(await messagesIn(broker.topology.stream), 0);
    assert.equal(recorder.received.length, 4, 'u2 was not delivered again');
    assert.deepEqual(
      lines.map((line) => line.msg),
      [
        'nats: connected',
        'nats: connection lost, reconnecting',
        'nats: reconnected; topology declared, consumers resumed',
      ],
    );
  });

  test('a stream deleted under a running consumer is declared again, and consuming resumes', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await jsm.streams.delete(broker.topology.stream);
    await waitFor(
      'the stream and its consumers declared again',
      async () => {
        const names = await Promise.all(
          PRIORITY_BY_RANK.map((priority) =>
            consumerInfo(broker, priority).then(
              () => true,
              () => false,
            ),
          ),
        );
        return names.every(Boolean);
      },
      15_000,
    );
    await broker.publish([job('back', 'low')]);
    const received = await recorder.nth(1, 15_000);
    assert.equal(received.delivery.message.jobId, 'back');
    await recorder.ack(received);
    assert.equal((await broker.health()).ok, true);
  });

  test('start gives up after its attempts when nothing listens', async () => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const broker = makeBroker({ url: `nats://127.0.0.1:${port}`, startAttempts: 2 });
    await assert.rejects(broker.start(), new RegExp(`could not connect to 127\\.0\\.0\\.1:${port}`));
    assert.equal((await broker.health()).ok, false);
  });

  test('close is idempotent, and publish or consume after it is refused', async () => {
    const broker = makeBroker();
    await broker.start();
    await Promise.all([broker.close(), broker.close()]);
    await broker.close();
    await assert.rejects(broker.publish([job('late')]), { code: 'BROKER_UNAVAILABLE' });
    await assert.rejects(
      broker.consume(() => {}, { prefetch: 1 }),
      /closed/,
    );
    const health = await broker.health();
    assert.equal(health.ok, false);
    assert.match(health.detail!, /closed$/);
  });

  test('with the wire codec: pointers round-trip, and an outside MessagePack {uuid, email, subject, body} is an email', async () => {
    const broker = makeBroker({ codec: wireCodec() });
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await broker.publish([job('0197a3c2-5f1e-7d4a-9b2c-1a2b3c4d5e6f', 'low', { traceparent: TRACEPARENT })]);
    const pointer = await recorder.nth(1);
    assert.deepEqual(pointer.delivery.message, {
      jobId: '0197a3c2-5f1e-7d4a-9b2c-1a2b3c4d5e6f',
      priority: 'low',
      headers: { traceparent: TRACEPARENT },
    });
    // An existing producer: core NATS, no headers, the map it always sent.
    const uuid = randomUUID();
    admin.publish(
      broker.topology.subjects.normal,
      encodeMsgpack({ uuid, email: 'ada@example.org', subject: 'Welcome', body: '<p>Hi</p>' }),
    );
    const email = await recorder.nth(2);
    const newJob = email.delivery.message.newJob!;
    assert.match(newJob.id, UUID_V7);
    assert.equal(newJob.idempotency?.key, uuid);
    assert.deepEqual(newJob.content.to, [{ address: 'ada@example.org' }]);
    assert.equal(newJob.content.subject, 'Welcome');
    assert.equal(newJob.content.html, '<p>Hi</p>');
    assert.deepEqual(newJob.content.from, { address: 'mailroom@localhost', name: 'Mailroom' });
    await recorder.ack(pointer);
    await recorder.ack(email);
    assert.equal(await messagesIn(broker.topology.stream), 0);
  });
});

function contentType(value: string) {
  const headers = natsHeaders();
  headers.set('Content-Type', value);
  return headers;
}
