/**
 * Which Store, Broker and rate limiter the configuration asks for. The only place that knows the adapters'
 * classes; everything else sees the ports.
 */
import type { Logger } from 'pino';
import type { Broker, MessageCodec } from './broker/broker.js';
import { EmbeddedBroker } from './broker/embedded/embedded-broker.js';
import { NatsBroker } from './broker/nats/nats-broker.js';
import { RabbitMqBroker } from './broker/rabbitmq/rabbitmq-broker.js';
import type { Config } from './config/config-schema.js';
import { isNetworkBroker, sqlitePath, storeKind } from './config/load-config.js';
import { MemoryRateLimiter } from './flow/memory-rate-limiter.js';
import { PostgresRateLimiter } from './flow/postgres-rate-limiter.js';
import type { RateLimiter } from './flow/rate-limiter.js';
import { RedisRateLimiter } from './flow/redis-rate-limiter.js';
import { PostgresStore } from './store/postgres/postgres-store.js';
import { ThreadedSqliteStore } from './store/sqlite/threaded-sqlite-store.js';
import type { Store } from './store/store.js';

export function createStore(config: Config): Store {
  if (storeKind(config) === 'postgres') {
    return new PostgresStore({
      url: config.databaseUrl!,
      schema: config.databaseSchema,
      poolSize: config.databasePool,
      // The outbox is needed only when the broker is not the store itself.
      outbox: isNetworkBroker(config),
    });
  }
  return new ThreadedSqliteStore(sqlitePath(config));
}

export function createBroker(config: Config, store: Store, codec: MessageCodec, logger: Logger): Broker {
  if (!isNetworkBroker(config)) {
    return new EmbeddedBroker(store, { pollIntervalMs: config.pollIntervalMs, logger });
  }
  if (/^(nats|tls):/.test(config.brokerUrl)) {
    return new NatsBroker({
      url: config.brokerUrl,
      stream: config.natsStream,
      subject: config.natsSubject,
      consumer: config.natsConsumer,
      // A message a worker holds must outlive its longest send; the lease is longer than the SMTP
      // timeout by the configuration's own check.
      ackWaitMs: config.leaseMs,
      prefetch: config.prefetch,
      codec,
      logger,
    });
  }
  return new RabbitMqBroker({
    url: config.brokerUrl,
    queue: config.amqpQueue,
    deadLetterQueue: config.amqpDeadLetterQueue,
    prefetch: config.prefetch,
    codec,
    logger,
  });
}

/**
 * Where rate-limit buckets live: Redis when MAILROOM_REDIS_URL is set, else PostgreSQL when that is
 * the store (so several processes share one limit), else this process's memory (the embedded shape,
 * where one process does all the sending).
 */
export function createRateLimiter(config: Config): RateLimiter {
  if (config.redisUrl) return new RedisRateLimiter({ url: config.redisUrl });
  if (storeKind(config) === 'postgres') {
    return new PostgresRateLimiter({ url: config.databaseUrl!, schema: config.databaseSchema });
  }
  return new MemoryRateLimiter();
}
