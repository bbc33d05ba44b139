import pino, { type Logger } from 'pino';
import { tracing } from '../telemetry/tracing.js';

export interface LoggerOptions {
  readonly level: string;
  /** Pretty lines for a person at a terminal; JSON lines otherwise. */
  readonly pretty: boolean;
  /** Unified tags on every line, the same as on metrics: service, env, version. */
  readonly tags?: Readonly<Record<string, string | undefined>>;
  /** Where lines go; stdout when absent (tests pass a stream to read them). */
  readonly destination?: pino.DestinationStream;
}

/** Paths that may carry secrets; pino replaces them before a line is written. */
const REDACT = [
  'req.headers.authorization',
  'headers.authorization',
  'authorization',
  '*.authorization',
  'apiKey',
  'apiKeys',
  '*.apiKeys',
  'smtpUrl',
  '*.smtpUrl',
  'databaseUrl',
  '*.databaseUrl',
  'brokerUrl',
  '*.brokerUrl',
  'redisUrl',
  '*.redisUrl',
  'statusCallbackUrl',
  'url',
  '*.url',
  'connectionString',
  'password',
  'pass',
  '*.password',
  '*.pass',
  // Webhook signing secrets.
  'secret',
  '*.secret',
  'statusCallbackSecret',
  '*.statusCallbackSecret',
];

/** `scheme://user:password@` in free text (an error's message or stack): the credentials go. */
const URL_CREDENTIALS = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/@:]+:[^\s/@]+@/gi;

/**
 * pino's error serializer, with credentials in URLs scrubbed from the message and stack: redaction
 * works on paths, and a driver's error may quote the URL it was given.
 */
function serializeError(error: unknown): unknown {
  const serialized = pino.stdSerializers.err(error as Error) as unknown as Record<string, unknown>;
  if (typeof serialized !== 'object' || serialized === null) return serialized;
  for (const field of ['message', 'stack'] as const) {
    const value = serialized[field];
    if (typeof value === 'string') serialized[field] = value.replace(URL_CREDENTIALS, '$1[redacted]@');
  }
  return serialized;
}

export function createLogger(options: LoggerOptions): Logger {
  const settings: pino.LoggerOptions = {
    level: options.level,
    base: { service: 'mailroom', ...definedOnly(options.tags ?? {}) },
    redact: { paths: REDACT, censor: '[redacted]' },
    serializers: { err: serializeError },
    // Tracing on: lines logged inside a span (a request, a job's delivery) name its trace and span.
    // Decided once here, so that with tracing off no line pays for the lookup.
    ...(tracing() && { mixin: traceIds }),
    ...(options.pretty && {
      transport: {
        target: 'pino-pretty',
        options: {
          colorize: true,
          translateTime: 'SYS:HH:MM:ss.l',
          ignore: 'pid,hostname,service,env,version',
        },
      },
    }),
  };
  return options.destination ? pino(settings, options.destination) : pino(settings);
}

function definedOnly(tags: Readonly<Record<string, string | undefined>>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(tags).filter((entry): entry is [string, string] => entry[1] !== undefined),
  );
}

function traceIds(): Record<string, string> {
  return tracing()?.activeIds() ?? {};
}
