/**
 * The shape the integration suite runs on, chosen by `MAILROOM_TEST_SHAPE`: `embedded` (SQLite and
 * the embedded broker, the default), `rabbitmq` (PostgreSQL and RabbitMQ) or `nats` (PostgreSQL and
 * NATS JetStream), on the real servers of this machine. One suite, every adapter: `npm test` runs the shape-neutral files once per shape.
 *
 * Each app of a scaled-out shape gets its own PostgreSQL schema and its own queue or stream names,
 * deleted when it stops, so runs never see each other's jobs or messages.
 */
import { randomBytes } from 'node:crypto';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect as connectNats } from '@nats-io/transport-node';
import { connect } from 'amqplib';
import pg from 'pg';
import { DEFAULT_DELAY_TIERS_MS } from '../../src/broker/rabbitmq/delay-tiers.js';
import { describeTopology } from '../../src/broker/rabbitmq/topology.js';
import { AMQP_URL, NATS_URL, POSTGRES_URL } from './services.js';

export type TestShape = 'embedded' | 'rabbitmq' | 'nats';

const SHAPES: readonly TestShape[] = ['embedded', 'rabbitmq', 'nats'];
export const TEST_SHAPE: TestShape =
  SHAPES.find((shape) => shape === process.env.MAILROOM_TEST_SHAPE) ?? 'embedded';

export interface ShapeResources {
  /** Variables that point an app at this shape's servers, names and all. */
  readonly env: Readonly<Record<string, string>>;
  /** Deletes what the shape created (schema, queues, exchanges). */
  cleanup(): Promise<void>;
}

const NOTHING: ShapeResources = { env: {}, cleanup: async () => {} };

export function provisionShape(shape: TestShape = TEST_SHAPE): ShapeResources {
  if (shape === 'embedded') return NOTHING;
  const suffix = randomBytes(5).toString('hex');
  const schema = `mailroom_test_${suffix}`;
  if (shape === 'nats') {
    const stream = `mailroom_test_${suffix}`;
    return {
      env: {
        MAILROOM_DATABASE_URL: POSTGRES_URL,
        MAILROOM_DATABASE_SCHEMA: schema,
        MAILROOM_BROKER_URL: NATS_URL,
        MAILROOM_NATS_STREAM: stream,
        MAILROOM_NATS_SUBJECT: `mailroom_test_${suffix}.email`,
        MAILROOM_NATS_CONSUMER: `mailroom-test-${suffix}`,
      },
      async cleanup() {
        await Promise.all([dropSchema(schema), deleteStreams([stream, `${stream}_failed`])]);
      },
    };
  }
  const queue = `mailroom_test_${suffix}`;
  const deadLetterQueue = `${queue}_failed`;
  return {
    env: {
      MAILROOM_DATABASE_URL: POSTGRES_URL,
      MAILROOM_DATABASE_SCHEMA: schema,
      MAILROOM_BROKER_URL: AMQP_URL,
      MAILROOM_AMQP_QUEUE: queue,
      MAILROOM_AMQP_DEAD_LETTER_QUEUE: deadLetterQueue,
    },
    async cleanup() {
      await Promise.all([dropSchema(schema), deleteTopology(queue, deadLetterQueue)]);
    },
  };
}

async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: POSTGRES_URL });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}

async function deleteTopology(queue: string, deadLetterQueue: string): Promise<void> {
  const topology = describeTopology({
    queue,
    deadLetterQueue,
    deliveryLimit: 20,
    delayTiersMs: DEFAULT_DELAY_TIERS_MS,
  });
  const connection = await connect(AMQP_URL);
  try {
    const channel = await connection.createChannel();
    for (const { name } of topology.queues) await channel.deleteQueue(name);
    for (const exchange of topology.exchanges) await channel.deleteExchange(exchange);
  } finally {
    await connection.close();
  }
}

async function deleteStreams(streams: readonly string[]): Promise<void> {
  const connection = await connectNats({ servers: NATS_URL });
  try {
    const manager = await jetstreamManager(connection);
    for (const stream of streams) await manager.streams.delete(stream).catch(() => false);
  } finally {
    await connection.close();
  }
}
