/**
 * The RabbitMQ broker against a real RabbitMQ (3.10+). Every test gets its own queue names under
 * one random prefix for the run; all of them are deleted at the end.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, afterEach, before, describe, test } from 'node:test';
import { type ChannelModel, type ConfirmChannel, connect } from 'amqplib';
import pino from 'pino';
import type { Delivery, JobMessage, MessageCodec } from '../src/broker/broker.js';
import { RabbitMqBroker, type RabbitMqBrokerOptions } from '../src/broker/rabbitmq/rabbitmq-broker.js';
import { declareTopology, type RabbitMqTopology } from '../src/broker/rabbitmq/topology.js';
import type { Priority } from '../src/domain/email.js';
import { AMQP_URL, serviceAvailable } from './support/services.js';
import { TcpProxy } from './support/tcp-proxy.js';
import { waitFor } from './support/wait-for.js';

const available = await serviceAvailable('RabbitMQ', AMQP_URL);
const RUN = `mailroom-test-${randomUUID().slice(0, 8)}`;
const logger = pino({ level: process.env.LOG_LEVEL ?? 'silent' });

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
): JobMessage => ({
  jobId,
  priority,
  headers,
});

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

describe('RabbitMQ broker', { skip: !available }, () => {
  let admin: ChannelModel;
  const brokers: RabbitMqBroker[] = [];
  const topologies: RabbitMqTopology[] = [];
  const proxies: TcpProxy[] = [];
  let counter = 0;

  /** Runs `use` on a fresh admin channel (a failed operation closes a channel). */
  async function withChannel<T>(use: (channel: ConfirmChannel) => Promise<T>): Promise<T> {
    const channel = await admin.createConfirmChannel();
    channel.on('error', () => {});
    try {
      return await use(channel);
    } finally {
      await channel.close().catch(() => {});
    }
  }

  const ready = (queue: string) =>
    withChannel(async (channel) => (await channel.checkQueue(queue)).messageCount);
  const getOne = (queue: string) =>
    withChannel(async (channel) => {
      const message = await channel.get(queue, { noAck: true });
      return message === false ? undefined : message;
    });

  /** A broker on fresh queues (or on the queues of `sameAs`). Closed after the test. */
  function makeBroker(
    overrides: Partial<RabbitMqBrokerOptions> = {},
    sameAs?: RabbitMqBroker,
  ): RabbitMqBroker {
    counter++;
    const broker = new RabbitMqBroker({
      url: AMQP_URL,
      queue: sameAs?.topology.workQueues.normal ?? `${RUN}.${counter}.tasks`,
      deadLetterQueue: sameAs?.topology.deadLetterQueue ?? `${RUN}.${counter}.failed`,
      codec: jsonCodec,
      logger,
      reconnect: { minMs: 50, maxMs: 500 },
      ...overrides,
    });
    brokers.push(broker);
    topologies.push(broker.topology);
    return broker;
  }

  before(async () => {
    admin = await connect(AMQP_URL);
  });

  afterEach(async () => {
    await Promise.all(brokers.splice(0).map((broker) => broker.close()));
    await Promise.all(proxies.splice(0).map((proxy) => proxy.close()));
  });

  after(async () => {
    await withChannel(async (channel) => {
      for (const topology of topologies) {
        for (const queue of topology.queues) await channel.deleteQueue(queue.name);
        for (const exchange of topology.exchanges) await channel.deleteExchange(exchange);
      }
    });
    await admin.close();
  });

  test('declares its topology idempotently: again at start, and again by hand, with the same arguments', async () => {
    const first = makeBroker();
    await first.start();
    await first.close();
    const second = makeBroker({}, first);
    await second.start();
    // RabbitMQ refuses (PRECONDITION_FAILED) to declare an existing queue with other arguments.
    await withChannel((channel) => declareTopology(channel, first.topology));
    await withChannel(async (channel) => {
      for (const queue of first.topology.queues) await channel.checkQueue(queue.name);
      for (const exchange of first.topology.exchanges) await channel.checkExchange(exchange);
    });
    await assert.rejects(
      withChannel((channel) =>
        channel.assertQueue(first.topology.workQueues.normal, {
          durable: true,
          arguments: { 'x-queue-type': 'quorum', 'x-delivery-limit': 3 },
        }),
      ),
      /PRECONDITION_FAILED/,
    );
    const health = await second.health();
    assert.equal(health.ok, true);
    assert.match(health.detail!, /^connected to 127\.0\.0\.1:5672 since /);
  });

  test('start fails, naming the argument, when a queue exists with other arguments', async () => {
    const first = makeBroker();
    await first.start();
    await first.close();
    const other = makeBroker({ deliveryLimit: 5, startAttempts: 1 }, first);
    await assert.rejects(other.start(), /could not connect .*PRECONDITION_FAILED.*x-delivery-limit/);
  });

  test('publish, consume, ack: each message arrives once with its fields, and nothing is left', async () => {
    const broker = makeBroker();
    await broker.start();
    await broker.publish([
      job('a', 'high', { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' }),
      job('b', 'normal'),
      job('c', 'low'),
    ]);
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 10 });
    await recorder.nth(3);
    assert.deepEqual(recorder.ids(), ['a', 'b', 'c']);
    const first = recorder.received[0]!.delivery;
    assert.deepEqual(first.message, {
      jobId: 'a',
      priority: 'high',
      headers: { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' },
    });
    assert.equal(first.deliveryCount, 1);
    for (const received of recorder.received) await recorder.ack(received);
    // Closing returns anything unacked to its queue: the queues must still be empty after it.
    await broker.close();
    for (const queue of Object.values(broker.topology.workQueues)) assert.equal(await ready(queue), 0);
    assert.equal(recorder.received.length, 3);
  });

  test('hands out high, then normal, then low: high messages overtake low ones already buffered', async () => {
    const broker = makeBroker();
    await broker.start();
    const { workQueues } = broker.topology;
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 2 });
    // Two normal messages take both slots and stay unsettled.
    await broker.publish([job('n1'), job('n2')]);
    await recorder.nth(2);
    // Low ones arrive and wait in the local buffer (RabbitMQ pushed them: its queue is empty)...
    await broker.publish([job('l1', 'low'), job('l2', 'low')]);
    await waitFor('low messages pushed to the consumer', async () => (await ready(workQueues.low)) === 0);
    // ...then high ones arrive.
    await broker.publish([job('h1', 'high'), job('h2', 'high')]);
    await waitFor('high messages pushed to the consumer', async () => (await ready(workQueues.high)) === 0);
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
    assert.equal(recorder.maxUnsettled, 2);
  });

  test('never more than prefetch deliveries unsettled at once', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 3 });
    const priorities: Priority[] = ['high', 'normal', 'low'];
    await broker.publish(Array.from({ length: 12 }, (_, i) => job(`m${i}`, priorities[i % 3])));
    await recorder.nth(3);
    // Each queue pushed up to 3 to the consumer: 9 received, 3 handed out.
    await waitFor('the consumer holds 3 per queue', async () => {
      const counts = await Promise.all(Object.values(broker.topology.workQueues).map(ready));
      return counts.every((count) => count === 1);
    });
    assert.equal(recorder.received.length, 3);
    let next = 0;
    while (next < 12) {
      await recorder.nth(next + 1);
      await recorder.ack(recorder.received[next]!);
      next++;
    }
    assert.equal(recorder.received.length, 12);
    assert.equal(recorder.maxUnsettled, 3);
  });

  test('retryLater(1500) waits in the 1 s tier: back after at least a second, not at once', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await broker.publish([job('r', 'low', { traceparent: 'tp' })]);
    const first = await recorder.nth(1);
    const retriedAt = Date.now();
    await first.delivery.retryLater(1500);
    const second = await recorder.nth(2, 5000);
    const waited = second.at - retriedAt;
    assert.ok(waited >= 1000, `came back after ${waited} ms, before the 1 s tier`);
    assert.ok(waited < 4000, `came back after ${waited} ms: the 1 s tier, not the 5 s one`);
    // A new message, with the same body, id and headers, back in its own queue.
    assert.deepEqual(second.delivery.message, first.delivery.message);
    assert.equal(second.delivery.deliveryCount, 1);
    await recorder.ack(second);
    await broker.close();
    assert.equal(await ready(broker.topology.workQueues.low), 0);
    assert.equal(await ready(broker.topology.delayTiers[0]!.name), 0);
  });

  test('retryLater with a long delay walks down the tiers and comes back soon after it is due', async () => {
    const broker = makeBroker({ delayTiersMs: [250, 1000] });
    await broker.start();
    const dueAt = Date.now() + 1900;
    const hops: number[] = [];
    let doneAt: number | undefined;
    // What the worker does: a claim that answers "busy until" the due time retries for the rest.
    await broker.consume(
      (delivery) => {
        const rest = dueAt - Date.now();
        if (rest > 0) {
          hops.push(rest);
          void delivery.retryLater(rest);
        } else {
          doneAt = Date.now();
          void delivery.ack();
        }
      },
      { prefetch: 5 },
    );
    await broker.publish([job('w')]);
    await waitFor('the due delivery', () => doneAt, 5000);
    const late = doneAt! - dueAt;
    assert.ok(late < 250 + 250, `${late} ms late: about the smallest tier at most (plus scheduling)`);
    // ~1900 ms: the 1000 ms tier; then ~900, ~650, ~400 and ~150 (rounded up) in the 250 ms tier.
    assert.ok(hops.length >= 4, `hops: ${hops.join(', ')}`);
    assert.ok(hops[0]! > 1000 && hops.slice(1).every((hop) => hop < 1000), `hops: ${hops.join(', ')}`);
    await broker.close();
    for (const queue of broker.topology.queues) assert.equal(await ready(queue.name), 0, queue.name);
  });

  test('deadLetter puts the message in the dead-letter queue with reason, error and origin', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await broker.publish([job('d', 'high', { traceparent: 'tp-d' })]);
    const received = await recorder.nth(1);
    const before = Date.now();
    await received.delivery.deadLetter('max_attempts', `550 mailbox unavailable ${'x'.repeat(5000)}`);
    const dead = await waitFor('the dead letter', () => getOne(broker.topology.deadLetterQueue));
    const headers = dead.properties.headers!;
    assert.equal(headers['x-mailroom-reason'], 'max_attempts');
    assert.match(headers['x-mailroom-error'], /^550 mailbox unavailable x+…$/);
    assert.equal(headers['x-mailroom-error'].length, 1000);
    assert.equal(headers['x-mailroom-original-queue'], broker.topology.workQueues.high);
    assert.ok(Date.parse(headers['x-mailroom-dead-lettered-at']) >= before - 1000);
    assert.equal(headers.traceparent, 'tp-d');
    assert.equal(dead.properties.messageId, 'd');
    assert.equal(dead.properties.contentType, 'application/json');
    assert.deepEqual(JSON.parse(dead.content.toString()), { jobId: 'd', priority: 'high' });
    await broker.close();
    assert.equal(await ready(broker.topology.workQueues.high), 0);
  });

  test('an undecodable message goes to the dead-letter queue at once, never handed out nor redelivered', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await withChannel(async (channel) => {
      channel.sendToQueue(broker.topology.workQueues.normal, Buffer.from('{not json'), {
        contentType: 'application/json',
        messageId: 'garbage',
        persistent: true,
      });
      await channel.waitForConfirms();
    });
    const dead = await waitFor('the dead letter', () => getOne(broker.topology.deadLetterQueue));
    assert.equal(dead.properties.headers!['x-mailroom-reason'], 'undecodable');
    assert.match(dead.properties.headers!['x-mailroom-error'], /JSON/);
    assert.equal(dead.content.toString(), '{not json');
    assert.equal(dead.properties.messageId, 'garbage');
    // A good message published after it is handed out: the consumer moved on.
    await broker.publish([job('after')]);
    await recorder.nth(1);
    await recorder.ack(recorder.received[0]!);
    assert.deepEqual(recorder.ids(), ['after']);
    await broker.close();
    assert.equal(await ready(broker.topology.workQueues.normal), 0);
    assert.equal(await ready(broker.topology.deadLetterQueue), 0);
  });

  test('a message returned more often than the delivery limit ends in the dead-letter queue (x-death)', async () => {
    const broker = makeBroker({ deliveryLimit: 2 });
    await broker.start();
    await broker.publish([job('poison')]);
    let deliveries = 0;
    await withChannel(async (channel) => {
      await channel.consume(broker.topology.workQueues.normal, (message) => {
        if (!message) return;
        deliveries++;
        channel.nack(message, false, true);
      });
      const dead = await waitFor('the dead letter', () => getOne(broker.topology.deadLetterQueue));
      const death = (dead.properties.headers!['x-death'] as { reason: string; queue: string }[])[0]!;
      assert.equal(death.reason, 'delivery_limit');
      assert.equal(death.queue, broker.topology.workQueues.normal);
      assert.equal(dead.properties.messageId, 'poison');
    });
    // x-delivery-limit N allows N returns: N + 1 deliveries in all.
    assert.equal(deliveries, 3);
    assert.equal(await ready(broker.topology.workQueues.normal), 0);
  });

  test('publish rejects when RabbitMQ cannot route the message (its queue was deleted)', async () => {
    const broker = makeBroker();
    await broker.start();
    await withChannel((channel) => channel.deleteQueue(broker.topology.workQueues.low));
    await assert.rejects(broker.publish([job('lost', 'low')]), /unroutable/);
    // The same connection still publishes what it can route.
    await broker.publish([job('kept', 'normal')]);
    assert.equal(await ready(broker.topology.workQueues.normal), 1);
  });

  test('a cut connection: publish rejects at once while down, unacked messages come back, consuming resumes', async () => {
    const proxy = await TcpProxy.start(AMQP_URL);
    proxies.push(proxy);
    const lines: { level: number; msg: string }[] = [];
    const broker = makeBroker({
      url: proxy.urlFor(AMQP_URL),
      logger: pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line)) }),
    });
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    await broker.publish([job('u1'), job('u2')]);
    const [u1] = [await recorder.nth(1), await recorder.nth(2)];

    proxy.pause();
    proxy.cutAll();
    await waitFor('the broker to notice', async () => !(await broker.health()).ok);
    assert.match((await broker.health()).detail!, /^not connected to 127\.0\.0\.1:\d+ since .*reconnecting/);
    const started = Date.now();
    await assert.rejects(broker.publish([job('while-down')]), { code: 'BROKER_UNAVAILABLE' });
    assert.ok(Date.now() - started < 100, 'rejected at once, not after a timeout');
    // Settling on the lost channel is a no-op: RabbitMQ puts the message back itself.
    await u1!.delivery.ack();
    await waitFor('a few failed reconnection attempts', () => proxy.refused >= 3);

    proxy.resume();
    await waitFor('the broker to reconnect', async () => (await broker.health()).ok);
    // Both unacked messages come back, counted as redeliveries; u1's ack was lost with the channel.
    const back = [await recorder.nth(3), await recorder.nth(4)];
    assert.deepEqual(back.map((r) => r.delivery.message.jobId).sort(), ['u1', 'u2']);
    assert.deepEqual(
      back.map((r) => r.delivery.deliveryCount),
      [2, 2],
    );
    await broker.publish([job('after-cut', 'high')]);
    const after = await recorder.nth(5);
    assert.equal(after.delivery.message.jobId, 'after-cut');
    for (const received of recorder.received.slice(2)) await recorder.ack(received);
    await broker.close();
    for (const queue of Object.values(broker.topology.workQueues)) assert.equal(await ready(queue), 0);
    // One line for the loss, one for the first failed attempt (the others fail alike), one for the recovery.
    assert.deepEqual(
      lines.map((line) => line.msg),
      [
        'rabbitmq: connected',
        'rabbitmq: connection lost, reconnecting',
        'rabbitmq: connecting failed, retrying',
        'rabbitmq: reconnected; topology declared, consumers resumed',
      ],
    );
  });

  test('a work queue deleted under a consumer: the broker reconnects, declares it again, consumes again', async () => {
    const broker = makeBroker();
    await broker.start();
    const recorder = new Recorder();
    await broker.consume(recorder.handler, { prefetch: 5 });
    const connectedSince = (await broker.health()).detail;
    await withChannel((channel) => channel.deleteQueue(broker.topology.workQueues.low));
    await waitFor('a new connection', async () => {
      const health = await broker.health();
      return health.ok && health.detail !== connectedSince;
    });
    await broker.publish([job('back', 'low')]);
    const received = await recorder.nth(1);
    assert.equal(received.delivery.message.jobId, 'back');
    await recorder.ack(received);
  });

  test('retryLater(0) sends the message straight back to its queue', async () => {
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
    assert.equal((await broker.health()).ok, false);
  });
});
