/**
 * Every configuration variable Mailroom reads, with its default, its rule and its documentation.
 * This table is the schema: `loadConfig` reads the environment through it, and a test checks that
 * docs/configuration.md lists exactly these variables with these defaults.
 */

import { parseDomainRates } from '../flow/parse-rates.js';
import { parseChaos } from '../transport/chaos/parse-chaos.js';
import { isWebhookSecret } from '../webhooks/sign-webhook.js';

export const SECOND = 1000;
export const MINUTE = 60 * SECOND;
export const HOUR = 60 * MINUTE;

export interface VariableSpec<T> {
  readonly env: string;
  /** The default as written in the environment; undefined means "unset" is allowed and meaningful. */
  readonly default?: string;
  /** What a valid value looks like, for error messages: "an integer from 1 to 65535". */
  readonly expected: string;
  readonly description: string;
  /** Parses a raw value; returns undefined when the value breaks the rule. */
  readonly parse: (raw: string) => T | undefined;
  /** Marks secrets: never printed, never logged. */
  readonly secret?: boolean;
}

function integer(min: number, max: number) {
  return (raw: string): number | undefined => {
    if (!/^-?\d+$/.test(raw.trim())) return undefined;
    const value = Number(raw.trim());
    return Number.isSafeInteger(value) && value >= min && value <= max ? value : undefined;
  };
}

function decimal(min: number, max: number) {
  return (raw: string): number | undefined => {
    if (!/^\d+(\.\d+)?$/.test(raw.trim())) return undefined;
    const value = Number(raw.trim());
    return value >= min && value <= max ? value : undefined;
  };
}

/**
 * For values with a grammar of their own: the parser throws an Error that names the entry and the
 * rule, and loadConfig reports that message instead of `expected`. Blank means unset.
 */
function throwing<T>(parse: (raw: string) => T) {
  return (raw: string): T | undefined => (raw.trim() === '' ? undefined : parse(raw));
}

function text(maxLength = 2048) {
  return (raw: string): string | undefined => (raw.length <= maxLength ? raw : undefined);
}

function oneOf<const T extends string>(...values: T[]) {
  return (raw: string): T | undefined => values.find((value) => value === raw.trim());
}

function urlWithScheme(...schemes: string[]) {
  return (raw: string): string | undefined => {
    const value = raw.trim();
    if (schemes.includes(value)) return value;
    try {
      const url = new URL(value);
      return schemes.includes(url.protocol.replace(/:$/, '')) ? value : undefined;
    } catch {
      return undefined;
    }
  };
}

/** An http(s) URL with a host: what an HTTP client can be pointed at. */
function httpUrl(raw: string): string | undefined {
  try {
    const url = new URL(raw.trim());
    return ['http:', 'https:'].includes(url.protocol) && url.hostname !== '' ? raw.trim() : undefined;
  } catch {
    return undefined;
  }
}

function databaseUrl(raw: string): string | undefined {
  const value = raw.trim();
  if (/^sqlite:.+/.test(value)) return value;
  return urlWithScheme('postgres', 'postgresql')(value);
}

function queueName(raw: string): string | undefined {
  const value = raw.trim();
  return /^[A-Za-z0-9_.:-]{1,200}$/.test(value) ? value : undefined;
}

function keyList(raw: string): string[] | undefined {
  const keys = raw
    .split(',')
    .map((key) => key.trim())
    .filter((key) => key.length > 0);
  return keys.every((key) => key.length >= 16 && /^[\x21-\x7e]+$/.test(key)) ? keys : undefined;
}

/** A tag value: what Prometheus labels and log fields carry without quoting trouble. */
function label(raw: string): string | undefined {
  const value = raw.trim();
  return /^[A-Za-z0-9_.-]{1,64}$/.test(value) ? value : undefined;
}

function boolean(raw: string): boolean | undefined {
  const value = raw.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(value)) return true;
  if (['0', 'false', 'no', 'off', ''].includes(value)) return false;
  return undefined;
}

const PORT = 'an integer from 0 to 65535';

export const CONFIG_SCHEMA = {
  host: {
    env: 'MAILROOM_HOST',
    default: '127.0.0.1',
    expected: 'a host name or IP address',
    description: 'Address the HTTP API listens on. Any non-loopback address requires MAILROOM_API_KEYS.',
    parse: text(255),
  },
  port: {
    env: 'MAILROOM_PORT',
    default: '3000',
    expected: PORT,
    description: 'Port of the HTTP API (0 picks a free port).',
    parse: integer(0, 65535),
  },
  dataDir: {
    env: 'MAILROOM_DATA_DIR',
    default: './data',
    expected: 'a directory path',
    description:
      'Where the embedded SQLite store lives (`mailroom.db`), unless MAILROOM_DATABASE_URL names a file.',
    parse: text(),
  },
  databaseUrl: {
    env: 'MAILROOM_DATABASE_URL',
    expected: 'sqlite:PATH or postgres://user[:pass]@host[:port]/database',
    description:
      'The store. Default: `sqlite:` + MAILROOM_DATA_DIR/mailroom.db. `postgres://` selects PostgreSQL, which several processes can share.',
    parse: databaseUrl,
    secret: true,
  },
  databaseSchema: {
    env: 'MAILROOM_DATABASE_SCHEMA',
    default: 'mailroom',
    expected: 'a lower-case SQL identifier (letters, digits, _), at most 63 characters',
    description: 'PostgreSQL only: the schema that holds Mailroom’s tables (created by the migrations).',
    parse: (raw: string) => (/^[a-z_][a-z0-9_]{0,62}$/.test(raw.trim()) ? raw.trim() : undefined),
  },
  databasePool: {
    env: 'MAILROOM_DATABASE_POOL',
    default: '10',
    expected: 'an integer from 1 to 200',
    description: 'PostgreSQL only: connections per process.',
    parse: integer(1, 200),
  },
  brokerUrl: {
    env: 'MAILROOM_BROKER_URL',
    default: 'embedded',
    expected:
      '`embedded`, amqp[s]://user:pass@host[:port][/vhost] or nats://[user:pass@]host[:port] (tls:// for NATS over TLS)',
    description:
      'The broker. `embedded` keeps the queue in the store (no external server); `amqp://` selects RabbitMQ and `nats://` NATS JetStream, which need the PostgreSQL store.',
    parse: (raw: string) =>
      raw.trim() === 'embedded' ? 'embedded' : urlWithScheme('amqp', 'amqps', 'nats', 'tls')(raw),
    secret: true,
  },
  amqpQueue: {
    env: 'MAILROOM_AMQP_QUEUE',
    default: 'email_tasks',
    expected: 'a queue name: letters, digits and . _ : -, at most 200 characters',
    description:
      'RabbitMQ only: the work queue (normal priority); `.high` and `.low` are appended for the other priorities, `.delay.<ms>` for retry delays, `.dlx` for the dead-letter exchange.',
    parse: queueName,
  },
  amqpDeadLetterQueue: {
    env: 'MAILROOM_AMQP_DEAD_LETTER_QUEUE',
    default: 'email_failed_queue',
    expected: 'a queue name: letters, digits and . _ : -, at most 200 characters',
    description:
      'RabbitMQ only: where given-up messages go, with the reason and last error in headers (`x-mailroom-reason`, `x-mailroom-error`).',
    parse: queueName,
  },
  natsStream: {
    env: 'MAILROOM_NATS_STREAM',
    default: 'messages',
    expected: 'a stream name: letters, digits, _ and -, at most 200 characters',
    description:
      'NATS only: the JetStream work stream (created if missing, work-queue retention, file storage); `<name>_failed` keeps the dead letters.',
    parse: (raw: string) => (/^[A-Za-z0-9_-]{1,200}$/.test(raw.trim()) ? raw.trim() : undefined),
  },
  natsSubject: {
    env: 'MAILROOM_NATS_SUBJECT',
    default: 'messages.email',
    expected: 'a subject without wildcards: tokens of letters, digits, _ and - joined by dots',
    description:
      'NATS only: the subject of normal-priority messages; `.high` and `.low` are appended for the other priorities, `.failed` for dead letters.',
    parse: (raw: string) =>
      /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(raw.trim()) && raw.trim().length <= 200
        ? raw.trim()
        : undefined,
  },
  natsConsumer: {
    env: 'MAILROOM_NATS_CONSUMER',
    default: 'email-processor',
    expected: 'a consumer name: letters, digits, _ and -, at most 200 characters',
    description:
      'NATS only: the durable pull consumer of normal priority (`-high` and `-low` are appended for the others), shared by every worker.',
    parse: (raw: string) => (/^[A-Za-z0-9_-]{1,200}$/.test(raw.trim()) ? raw.trim() : undefined),
  },
  prefetch: {
    env: 'MAILROOM_PREFETCH',
    default: '64',
    expected: 'an integer from 1 to 10000',
    description:
      'RabbitMQ and NATS: unacknowledged messages a worker process may hold per priority, ahead of its MAILROOM_CONCURRENCY sends.',
    parse: integer(1, 10_000),
  },
  smtpUrl: {
    env: 'MAILROOM_SMTP_URL',
    expected: 'smtp://[user:pass@]host[:port] or smtps://…',
    description:
      'The SMTP relay. Unset: the built-in dev inbox on MAILROOM_INBOX_SMTP_PORT receives everything.',
    parse: urlWithScheme('smtp', 'smtps'),
    secret: true,
  },
  smtpPool: {
    env: 'MAILROOM_SMTP_POOL',
    default: '4',
    expected: 'an integer from 1 to 100',
    description: 'Pooled SMTP connections per worker process.',
    parse: integer(1, 100),
  },
  smtpTimeoutMs: {
    env: 'MAILROOM_SMTP_TIMEOUT_MS',
    default: '20000',
    expected: 'an integer from 100 to 600000',
    description:
      'How long one SMTP step may wait for the relay (connect, greeting, each reply) before it counts as a transient failure.',
    parse: integer(100, 600_000),
  },
  transport: {
    env: 'MAILROOM_TRANSPORT',
    default: 'smtp',
    expected: '`smtp` or `ses`',
    description:
      'How emails leave: `smtp` through MAILROOM_SMTP_URL (or the dev inbox), `ses` through the Amazon SES v2 API in AWS_REGION.',
    parse: oneOf('smtp', 'ses'),
  },
  awsRegion: {
    env: 'AWS_REGION',
    expected: 'an AWS region name: lower-case letters, digits and -, e.g. eu-west-1',
    description:
      'SES only, and then required: the region of the SES account. Credentials are not configured here: the AWS SDK takes them from its default chain.',
    // The SDK's own rule (a host name label); stricter would refuse platforms' values Mailroom
    // does not even use with SMTP, since this variable is often inherited (ECS, Lambda set it).
    parse: (raw: string) => (/^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(raw.trim()) ? raw.trim() : undefined),
  },
  sesEndpoint: {
    env: 'MAILROOM_SES_ENDPOINT',
    expected: 'an http:// or https:// URL',
    description:
      'SES only: another endpoint for the SES v2 API (a VPC endpoint, a local stand-in). Default: the region’s own.',
    parse: httpUrl,
  },
  sesConfigurationSet: {
    env: 'MAILROOM_SES_CONFIGURATION_SET',
    expected: 'a configuration set name: letters, digits, _ and -, at most 64 characters',
    description: 'SES only: the configuration set named on every send (event publishing, dedicated IPs).',
    parse: (raw: string) => (/^[A-Za-z0-9_-]{1,64}$/.test(raw.trim()) ? raw.trim() : undefined),
  },
  sesTimeoutMs: {
    env: 'MAILROOM_SES_TIMEOUT_MS',
    default: '20000',
    expected: 'an integer from 100 to 600000',
    description:
      'SES only: how long one send may take, the AWS SDK’s one quick retry included, before it counts as a transient failure.',
    parse: integer(100, 600_000),
  },
  inboxSmtpPort: {
    env: 'MAILROOM_INBOX_SMTP_PORT',
    default: '1025',
    expected: PORT,
    description: 'SMTP port of the built-in dev inbox.',
    parse: integer(0, 65535),
  },
  inboxHttpPort: {
    env: 'MAILROOM_INBOX_HTTP_PORT',
    default: '8025',
    expected: PORT,
    description:
      'HTTP port of `mailroom inbox` when it runs alone (in `mailroom start` the inbox is served on MAILROOM_PORT).',
    parse: integer(0, 65535),
  },
  inboxMaxMessages: {
    env: 'MAILROOM_INBOX_MAX_MESSAGES',
    default: '1000',
    expected: 'an integer from 1 to 100000',
    description: 'How many messages the dev inbox keeps in memory (oldest dropped first).',
    parse: integer(1, 100_000),
  },
  from: {
    env: 'MAILROOM_FROM',
    default: 'Mailroom <mailroom@localhost>',
    expected: 'an address, optionally with a display name',
    description: 'Sender used when a request gives no `from`.',
    parse: text(512),
  },
  retryBaseMs: {
    env: 'MAILROOM_RETRY_BASE_MS',
    default: '30000',
    expected: 'an integer from 10 to 86400000',
    description: 'First retry delay; each later retry doubles it (with jitter), up to MAILROOM_RETRY_MAX_MS.',
    parse: integer(10, 86_400_000),
  },
  retryMaxMs: {
    env: 'MAILROOM_RETRY_MAX_MS',
    default: '3600000',
    expected: 'an integer from 10 to 604800000',
    description: 'Longest retry delay.',
    parse: integer(10, 604_800_000),
  },
  maxAttempts: {
    env: 'MAILROOM_MAX_ATTEMPTS',
    default: '5',
    expected: 'an integer from 1 to 100',
    description: 'Attempts before a transiently failing job is failed and dead-lettered (`max_attempts`).',
    parse: integer(1, 100),
  },
  leaseMs: {
    env: 'MAILROOM_LEASE_MS',
    default: '60000',
    expected:
      'an integer from 1000 to 3600000, larger than MAILROOM_SMTP_TIMEOUT_MS (MAILROOM_SES_TIMEOUT_MS with SES)',
    description: 'How long a worker owns a claimed job; a crashed worker’s jobs are claimed again after it.',
    parse: integer(1000, 3_600_000),
  },
  concurrency: {
    env: 'MAILROOM_CONCURRENCY',
    default: '32',
    expected: 'an integer from 1 to 1000',
    description: 'Sends in flight per worker process (the SMTP pool size is separate).',
    parse: integer(1, 1000),
  },
  breakerFailures: {
    env: 'MAILROOM_BREAKER_FAILURES',
    default: '5',
    expected: 'an integer from 1 to 1000',
    description:
      'Consecutive transient failures to reach the relay (refused, timed out, dropped) that open the transport’s circuit breaker.',
    parse: integer(1, 1000),
  },
  breakerOpenMs: {
    env: 'MAILROOM_BREAKER_OPEN_MS',
    default: '30000',
    expected: 'an integer from 100 to 3600000',
    description:
      'How long an open breaker holds sends back (jobs wait untried, no attempt spent) before letting probes through.',
    parse: integer(100, 3_600_000),
  },
  breakerHalfOpenMax: {
    env: 'MAILROOM_BREAKER_HALF_OPEN_MAX',
    default: '3',
    expected: 'an integer from 1 to 1000',
    description: 'Probe sends in flight at once while the breaker is half-open.',
    parse: integer(1, 1000),
  },
  breakerSuccesses: {
    env: 'MAILROOM_BREAKER_SUCCESSES',
    default: '2',
    expected: 'an integer from 1 to 1000',
    description: 'Successful probes that close a half-open breaker; one failed probe opens it again.',
    parse: integer(1, 1000),
  },
  ratePerSec: {
    env: 'MAILROOM_RATE_PER_SEC',
    expected: 'a number from 0.001 to 1000000',
    description:
      'Sends per second through the transport, for all workers together (a token bucket; shared through Redis or PostgreSQL when scaled out). Unset: no limit.',
    parse: decimal(0.001, 1_000_000),
  },
  rateBurst: {
    env: 'MAILROOM_RATE_BURST',
    expected: 'an integer from 1 to 1000000',
    description:
      'Sends the transport bucket allows at once after a quiet spell. Default: one second’s worth of MAILROOM_RATE_PER_SEC.',
    parse: integer(1, 1_000_000),
  },
  domainRates: {
    env: 'MAILROOM_DOMAIN_RATES',
    expected: 'entries like gmail.com=20/s,yahoo.com=600/m,*=100/s',
    description:
      'Sends per second, minute or hour for each recipient domain; `*` sets every other domain’s own rate. A throttled domain is held back alone.',
    parse: throwing(parseDomainRates),
  },
  apiRatePerMin: {
    env: 'MAILROOM_API_RATE_PER_MIN',
    expected: 'an integer from 1 to 10000000',
    description:
      'Emails each API key may submit per minute (any burst up to that); over it the API answers 429 with Retry-After. Unset: no limit.',
    parse: integer(1, 10_000_000),
  },
  redisUrl: {
    env: 'MAILROOM_REDIS_URL',
    expected: 'a redis:// or rediss:// URL',
    description:
      'Where scaled-out processes share their rate limits. Unset: in PostgreSQL when the store is PostgreSQL, else in the process.',
    parse: urlWithScheme('redis', 'rediss'),
    secret: true,
  },
  chaos: {
    env: 'MAILROOM_CHAOS',
    expected: 'entries like downtime=300s/30s,error_rate=0.05,latency=200ms',
    description:
      'Fault injection for drills and demos: the transport fails, refuses or slows down as described. Off when unset; announced in the logs and /ready when on.',
    parse: throwing(parseChaos),
  },
  webhooksAllowPrivate: {
    env: 'MAILROOM_WEBHOOKS_ALLOW_PRIVATE',
    default: 'false',
    expected: 'true or false (also 1/0, yes/no)',
    description:
      'Lets webhook URLs reach loopback, private, link-local and metadata addresses. Off: such targets are refused at registration and again when connecting (DNS may change). For tests and closed networks only.',
    parse: boolean,
  },
  statusCallbackUrl: {
    env: 'MAILROOM_STATUS_CALLBACK_URL',
    expected: 'an http:// or https:// URL',
    description:
      'Registers one webhook endpoint (id `status-callback`) for every email event, from the environment; needs MAILROOM_STATUS_CALLBACK_SECRET.',
    parse: httpUrl,
    secret: true,
  },
  statusCallbackSecret: {
    env: 'MAILROOM_STATUS_CALLBACK_SECRET',
    expected: 'whsec_ followed by the base64 of 24 to 64 random bytes',
    description:
      'The signing secret of the MAILROOM_STATUS_CALLBACK_URL endpoint, which its receiver verifies with.',
    parse: (raw) => (isWebhookSecret(raw.trim()) ? raw.trim() : undefined),
    secret: true,
  },
  webhookTimeoutMs: {
    env: 'MAILROOM_WEBHOOK_TIMEOUT_MS',
    default: '10000',
    expected: 'an integer from 100 to 120000',
    description: 'How long a webhook receiver has to answer before the try counts as failed.',
    parse: integer(100, 120_000),
  },
  webhookRetryBaseMs: {
    env: 'MAILROOM_WEBHOOK_RETRY_BASE_MS',
    default: '5000',
    expected: 'an integer from 10 to 3600000',
    description:
      'Delay before the second try of a webhook delivery; it doubles with each try (with jitter, at most 2 h apart).',
    parse: integer(10, 3_600_000),
  },
  webhookRetryWindowMs: {
    env: 'MAILROOM_WEBHOOK_RETRY_WINDOW_MS',
    default: String(24 * HOUR),
    expected: 'an integer from 1000 to 604800000',
    description:
      'How long a webhook delivery is retried after its event. One that runs out fails, and turns its endpoint off unless the endpoint accepted another delivery meanwhile.',
    parse: integer(1000, 7 * 24 * HOUR),
  },
  pollIntervalMs: {
    env: 'MAILROOM_POLL_INTERVAL_MS',
    default: '250',
    expected: 'an integer from 10 to 60000',
    description: 'How often the embedded broker looks for due jobs when nothing wakes it sooner.',
    parse: integer(10, 60_000),
  },
  shutdownTimeoutMs: {
    env: 'MAILROOM_SHUTDOWN_TIMEOUT_MS',
    default: '10000',
    expected: 'an integer from 0 to 600000',
    description:
      'On SIGTERM/SIGINT, how long in-flight sends may take before the rest are released for the next start.',
    parse: integer(0, 600_000),
  },
  maxMessageBytes: {
    env: 'MAILROOM_MAX_MESSAGE_BYTES',
    default: '10485760',
    expected: 'an integer from 1024 to 104857600',
    description: 'Largest accepted email (subject, bodies and headers); larger requests get 413.',
    parse: integer(1024, 104_857_600),
  },
  maxBacklog: {
    env: 'MAILROOM_MAX_BACKLOG',
    default: '1000000',
    expected: 'an integer from 1 to 1000000000',
    description:
      'Active jobs (queued, scheduled, processing, deferred) past which the API answers 503 with Retry-After.',
    parse: integer(1, 1_000_000_000),
  },
  apiKeys: {
    env: 'MAILROOM_API_KEYS',
    expected: 'comma-separated keys of at least 16 printable characters',
    description:
      'Keys accepted in `Authorization: Bearer <key>`. Required when MAILROOM_HOST is not loopback; optional (but enforced if set) on loopback.',
    parse: keyList,
    secret: true,
  },
  logLevel: {
    env: 'LOG_LEVEL',
    default: 'info',
    expected: 'one of fatal, error, warn, info, debug, trace, silent',
    description: 'Log level. Logs are JSON lines, pretty-printed when stdout is a terminal.',
    parse: oneOf('fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'),
  },
  logPretty: {
    env: 'MAILROOM_LOG_PRETTY',
    expected: 'true or false',
    description: 'Force pretty (true) or JSON (false) logs. Default: pretty only when stdout is a terminal.',
    parse: boolean,
  },
  metricsPort: {
    env: 'MAILROOM_METRICS_PORT',
    default: '9464',
    expected: PORT,
    description:
      '`mailroom worker` only: the port of its `/metrics`, `/health` and `/ready` (processes with the API serve them on MAILROOM_PORT).',
    parse: integer(0, 65_535),
  },
  environment: {
    env: 'MAILROOM_ENV',
    expected: 'a label: letters, digits, _ . -, at most 64 characters',
    description:
      'The `env` tag on metrics and logs (e.g. production, staging). DD_ENV is used when this is unset.',
    parse: label,
  },
  ddEnv: {
    env: 'DD_ENV',
    expected: 'a label: letters, digits, _ . -, at most 64 characters',
    description: 'Unified service tagging: the `env` tag, when MAILROOM_ENV is unset.',
    parse: label,
  },
  ddService: {
    env: 'DD_SERVICE',
    default: 'mailroom',
    expected: 'a label: letters, digits, _ . -, at most 64 characters',
    description: 'Unified service tagging: the `service` tag on metrics and logs.',
    parse: label,
  },
  ddVersion: {
    env: 'DD_VERSION',
    expected: 'a label: letters, digits, _ . -, at most 64 characters',
    description:
      'Unified service tagging: the `version` tag on metrics and logs. Default: the package version.',
    parse: label,
  },
  apiUrl: {
    env: 'MAILROOM_URL',
    default: 'http://127.0.0.1:3000',
    expected: 'an http:// or https:// URL',
    description: 'Where the CLI commands `send`, `status` and `dlq` reach the API.',
    parse: urlWithScheme('http', 'https'),
  },
  apiKey: {
    env: 'MAILROOM_API_KEY',
    expected: 'a key',
    description: 'The key the CLI sends as `Authorization: Bearer` (one of the server’s MAILROOM_API_KEYS).',
    parse: text(1024),
    secret: true,
  },
} as const satisfies Record<string, VariableSpec<unknown>>;

export type ConfigSchema = typeof CONFIG_SCHEMA;

/** Standard OpenTelemetry variables: honoured, but read by the SDK, not by Mailroom's schema. */
export { OTEL_VARIABLES } from './otel-variables.js';

type ParsedValue<S> = S extends VariableSpec<infer T> ? T : never;
type HasDefault<S> = S extends { default: string } ? true : false;

/** The validated, frozen configuration. Variables with a default are always present. */
export type Config = {
  readonly [K in keyof ConfigSchema]: HasDefault<ConfigSchema[K]> extends true
    ? ParsedValue<ConfigSchema[K]>
    : ParsedValue<ConfigSchema[K]> | undefined;
};
