/**
 * The RabbitMQ objects Mailroom uses, described as plain data (names and arguments) and declared
 * idempotently: the same arguments every time, so a second declaration is a no-op and a changed one
 * fails loudly (PRECONDITION_FAILED) instead of running against a queue that behaves differently.
 *
 *   publish ──► <queue>.high | <queue> | <queue>.low        quorum, x-delivery-limit
 *                  │  nack/return past the limit, or deadLetter()
 *                  ▼
 *               <queue>.dlx (fanout) ──► <deadLetterQueue>   quorum
 *
 *   retryLater ──► <queue>.delay.<ms> (fanout) ──► <queue>.delay.<ms>   quorum, x-message-ttl
 *                  expired ──► default exchange, original routing key ──► the work queue
 */
import type { Channel } from 'amqplib';
import type { Priority } from '../../domain/email.js';

export interface TopologyOptions {
  /** The normal-priority work queue; the others are named after it. */
  readonly queue: string;
  readonly deadLetterQueue: string;
  /** Returns (nack with requeue, channel lost) a message may take before RabbitMQ dead-letters it. */
  readonly deliveryLimit: number;
  /** Delay tiers in ms, ascending. */
  readonly delayTiersMs: readonly number[];
}

export interface QueueSpec {
  readonly name: string;
  readonly arguments: Readonly<Record<string, string | number>>;
}

export interface DelayTier {
  readonly delayMs: number;
  /** A fanout exchange and a queue, both with this name. */
  readonly name: string;
}

export interface RabbitMqTopology {
  readonly workQueues: Readonly<Record<Priority, string>>;
  readonly deadLetterExchange: string;
  readonly deadLetterQueue: string;
  readonly delayTiers: readonly DelayTier[];
  /** Every queue, with its arguments, in declaration order. */
  readonly queues: readonly QueueSpec[];
  /** Every exchange (all fanout). */
  readonly exchanges: readonly string[];
  readonly bindings: readonly { readonly exchange: string; readonly queue: string }[];
}

/**
 * Dead-lettering that RabbitMQ confirms: the source queue keeps a dead-lettered message until the
 * target queue has it. It requires `reject-publish` overflow (there is no length limit, so it never
 * rejects anything here).
 */
const AT_LEAST_ONCE = { 'x-dead-letter-strategy': 'at-least-once', 'x-overflow': 'reject-publish' } as const;

export function describeTopology(options: TopologyOptions): RabbitMqTopology {
  const { queue, deadLetterQueue } = options;
  const deadLetterExchange = `${queue}.dlx`;
  const workQueues = { high: `${queue}.high`, normal: queue, low: `${queue}.low` } as const;
  const delayTiers = options.delayTiersMs.map((delayMs) => ({ delayMs, name: `${queue}.delay.${delayMs}` }));
  const workArguments = {
    'x-queue-type': 'quorum',
    'x-dead-letter-exchange': deadLetterExchange,
    ...AT_LEAST_ONCE,
    'x-delivery-limit': options.deliveryLimit,
  };
  return {
    workQueues,
    deadLetterExchange,
    deadLetterQueue,
    delayTiers,
    queues: [
      { name: deadLetterQueue, arguments: { 'x-queue-type': 'quorum' } },
      ...Object.values(workQueues).map((name) => ({ name, arguments: workArguments })),
      ...delayTiers.map((tier) => ({
        name: tier.name,
        arguments: {
          'x-queue-type': 'quorum',
          'x-message-ttl': tier.delayMs,
          // The default exchange with no x-dead-letter-routing-key: the message keeps the routing
          // key it was published with, which names its work queue.
          'x-dead-letter-exchange': '',
          ...AT_LEAST_ONCE,
        },
      })),
    ],
    exchanges: [deadLetterExchange, ...delayTiers.map((tier) => tier.name)],
    bindings: [
      { exchange: deadLetterExchange, queue: deadLetterQueue },
      ...delayTiers.map((tier) => ({ exchange: tier.name, queue: tier.name })),
    ],
  };
}

/** The slice of an amqplib channel that declaring needs. */
export type TopologyChannel = Pick<Channel, 'assertExchange' | 'assertQueue' | 'bindQueue'>;

/** Declares every exchange, queue and binding; safe to repeat. */
export async function declareTopology(channel: TopologyChannel, topology: RabbitMqTopology): Promise<void> {
  await Promise.all(
    topology.exchanges.map((name) => channel.assertExchange(name, 'fanout', { durable: true })),
  );
  await Promise.all(
    topology.queues.map((queue) =>
      channel.assertQueue(queue.name, { durable: true, arguments: queue.arguments }),
    ),
  );
  await Promise.all(
    topology.bindings.map((binding) => channel.bindQueue(binding.queue, binding.exchange, '')),
  );
}
