import pino, { type Logger } from 'pino';

export interface LoggerOptions {
  readonly level: string;
  /** Pretty lines for a person at a terminal; JSON lines otherwise. */
  readonly pretty: boolean;
  /** Unified tags on every line, the same as on metrics: service, env, version. */
  readonly tags?: Readonly<Record<string, string | undefined>>;
}

/** Paths that may carry secrets; pino replaces them before a line is written. */
const REDACT = [
  'req.headers.authorization',
  'headers.authorization',
  'authorization',
  'apiKey',
  'apiKeys',
  'smtpUrl',
  'databaseUrl',
  'brokerUrl',
  'url',
  '*.url',
  'connectionString',
  'password',
  'pass',
  '*.password',
  '*.pass',
];

export function createLogger(options: LoggerOptions): Logger {
  return pino({
    level: options.level,
    base: { service: 'mailroom', ...definedOnly(options.tags ?? {}) },
    redact: { paths: REDACT, censor: '[redacted]' },
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
  });
}

function definedOnly(tags: Readonly<Record<string, string | undefined>>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(tags).filter((entry): entry is [string, string] => entry[1] !== undefined),
  );
}
