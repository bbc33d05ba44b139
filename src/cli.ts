// First: with OTEL_EXPORTER_OTLP_ENDPOINT set it starts tracing before pg, amqplib and http load.
import './telemetry/preload.js';
import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import dotenv from 'dotenv';
import type { Logger } from 'pino';
import { type AppRoles, buildApp } from './app.js';
import type { Config } from './config/config-schema.js';
import { loadConfig, storeKind } from './config/load-config.js';
import { MailroomError } from './errors.js';
import { startInboxServer } from './inbox/inbox-server.js';
import { createLogger } from './logging/logger.js';
import { createStore } from './select-adapters.js';
import { serviceTags } from './telemetry/service-tags.js';

const USAGE = `Usage: mailroom <command> [options]

Commands:
  start                         API, worker and (SMTP without MAILROOM_SMTP_URL) the dev inbox, in one process
  api                           the HTTP API alone (scaled out: needs MAILROOM_DATABASE_URL=postgres://…)
  worker                        a worker alone (scaled out: needs MAILROOM_DATABASE_URL=postgres://…)
  migrate                       create or update the store's tables, then exit
  inbox                         the dev inbox alone: SMTP on MAILROOM_INBOX_SMTP_PORT, pages on MAILROOM_INBOX_HTTP_PORT
  send --to A --subject S --text T [--html H] [--from F]
                                send an email through the API at MAILROOM_URL
  status <id>                   an email's status and history
  dlq list [--reason R]         dead letters
  dlq replay <id> | --all [--reason R]
                                queue dead letters again
  help                          this text

Configuration comes from the environment and an optional .env file; see docs/configuration.md.`;

async function main(argv: string[]): Promise<number> {
  if (existsSync('.env')) dotenv.config({ path: '.env', quiet: true });
  const [command, ...rest] = argv;
  switch (command) {
    case 'start':
      return runServer({ api: true, worker: true }).catch(explainStartupError([['MAILROOM_PORT', 'port']]));
    case 'api':
      return runServer({ api: true, worker: false }).catch(explainStartupError([['MAILROOM_PORT', 'port']]));
    case 'worker':
      return runServer({ api: false, worker: true }).catch(
        explainStartupError([
          ['MAILROOM_METRICS_PORT', 'metricsPort'],
          ['MAILROOM_INBOX_SMTP_PORT', 'inboxSmtpPort'],
        ]),
      );
    case 'migrate':
      return migrate();
    case 'inbox':
      return runInbox().catch(
        explainStartupError([
          ['MAILROOM_INBOX_HTTP_PORT', 'inboxHttpPort'],
          ['MAILROOM_INBOX_SMTP_PORT', 'inboxSmtpPort'],
        ]),
      );
    case 'send':
      return send(rest);
    case 'status':
      return status(rest);
    case 'dlq':
      return deadLetters(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      console.log(USAGE);
      return 0;
    default:
      console.error(`Unknown command "${command}".\n\n${USAGE}`);
      return 2;
  }
}

type StartupError = NodeJS.ErrnoException & { port?: number; address?: string };

const LISTEN_ERRORS = new Set(['EADDRINUSE', 'EACCES', 'EADDRNOTAVAIL', 'ENOTFOUND']);
const FILE_ERRORS = new Set(['ENOENT', 'ENOTDIR', 'EEXIST', 'EACCES', 'EPERM', 'EROFS', 'ENOSPC', 'EISDIR']);

/**
 * Start-up failures caused by a configured value become configuration errors naming the variable,
 * like every other wrong value: a socket that cannot listen (port taken, address not on this host),
 * or a store file that cannot be created or opened. Any other error passes through unchanged.
 */
function explainStartupError(
  ports: readonly [env: string, key: 'port' | 'metricsPort' | 'inboxHttpPort' | 'inboxSmtpPort'][],
) {
  return (error: unknown): never => {
    const { code = '', syscall, port, address } = error as StartupError;
    const reason = (error as Error).message || code;
    const invalid = (line: string) =>
      new MailroomError('CONFIG_INVALID', `Invalid configuration:\n  ${line}`);
    const config = loadConfig();
    if (syscall === 'listen' || syscall === 'getaddrinfo') {
      if (!LISTEN_ERRORS.has(code)) throw error;
      if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND')
        throw invalid(
          `MAILROOM_HOST=${JSON.stringify(config.host)}: expected an address of this host (${reason})`,
        );
      const [env, key] = ports.find(([, name]) => config[name] === port) ?? ports[0]!;
      const where = address ? `${address}:${port}` : `port ${port}`;
      const why = code === 'EACCES' ? 'is not permitted' : 'is already in use';
      throw invalid(`${env}=${config[key]}: expected a port this process may listen on; ${where} ${why}`);
    }
    if (code.startsWith('SQLITE_CANTOPEN') || code === 'SQLITE_READONLY' || FILE_ERRORS.has(code)) {
      const variable = config.databaseUrl
        ? `MAILROOM_DATABASE_URL=${JSON.stringify(config.databaseUrl)}`
        : `MAILROOM_DATA_DIR=${JSON.stringify(config.dataDir)}`;
      throw invalid(
        `${variable}: expected a place this process can create and write the database (${reason})`,
      );
    }
    throw error;
  };
}

function setup(): { config: Config; logger: Logger } {
  const config = loadConfig();
  const logger = createLogger({
    level: config.logLevel,
    pretty: config.logPretty ?? process.stdout.isTTY === true,
    tags: { ...serviceTags(config) },
  });
  return { config, logger };
}

async function runServer(roles: AppRoles): Promise<number> {
  const { config, logger } = setup();
  if (!(roles.api && roles.worker) && storeKind(config) === 'sqlite') {
    throw new MailroomError(
      'CONFIG_INVALID',
      'Invalid configuration:\n  MAILROOM_DATABASE_URL: expected postgres://… to run the API and workers as separate processes (they must share a store); with the embedded SQLite store, run `mailroom start`',
    );
  }
  const app = await buildApp(config, logger, roles);
  const starting = app.start();
  // Listen for signals before start() finishes: a SIGTERM during start-up then waits for it and
  // stops gracefully, instead of killing a worker that may already hold claimed jobs.
  const exitCode = waitForSignal(logger, async () => {
    await starting;
    await app.stop();
  });
  const urls = await starting;
  const lines = [
    ...(urls.apiUrl ? [`API      ${urls.apiUrl}  (docs: ${urls.apiUrl}/docs)`] : []),
    ...(roles.worker ? ['Worker   running'] : []),
    ...(urls.opsUrl ? [`Metrics  ${urls.opsUrl}/metrics  (health: ${urls.opsUrl}/ready)`] : []),
    urls.inboxUrl || urls.inboxSmtp
      ? `Inbox    ${urls.inboxUrl ?? '(pages served by `mailroom start` or `mailroom inbox`)'}  (SMTP ${urls.inboxSmtp})`
      : 'Relay    MAILROOM_SMTP_URL',
    `Store    ${storeKind(config)}, broker ${app.broker.name}`,
  ];
  logger.info(
    { api: urls.apiUrl, ops: urls.opsUrl, inbox: urls.inboxUrl, inbox_smtp: urls.inboxSmtp },
    `Mailroom is running\n  ${lines.join('\n  ')}`,
  );
  return exitCode;
}

async function migrate(): Promise<number> {
  const { config, logger } = setup();
  const store = createStore(config);
  try {
    await store.migrate();
    logger.info({ store: storeKind(config) }, 'the store is up to date');
    return 0;
  } finally {
    await store.close();
  }
}

async function runInbox(): Promise<number> {
  const { config, logger } = setup();
  const inbox = await startInboxServer({
    host: config.host,
    httpPort: config.inboxHttpPort,
    smtpPort: config.inboxSmtpPort,
    maxMessages: config.inboxMaxMessages,
    maxMessageBytes: config.maxMessageBytes * 2,
    ...(config.apiKeys && { apiKeys: config.apiKeys }),
    logger,
  });
  logger.info(
    { inbox: inbox.httpUrl, smtp: inbox.smtpUrl },
    `Dev inbox is running: ${inbox.httpUrl} (SMTP ${inbox.smtpUrl})`,
  );
  return waitForSignal(logger, () => inbox.close());
}

/**
 * Resolves with the exit code once a SIGTERM/SIGINT-driven shutdown finished: 0, or 1 if it failed.
 * The first signal starts the graceful shutdown; a second one exits at once with code 1, for an
 * operator who will not wait for the drain (in-flight jobs then come back after their lease, as
 * after kill -9; see docs/failure-modes.md).
 */
function waitForSignal(logger: Logger, shutdown: () => Promise<void>): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: exiting now');
        process.exit(1);
      }
      stopping = true;
      logger.info({ signal }, 'shutting down');
      shutdown().then(
        () => resolve(0),
        (error: unknown) => {
          logger.error({ err: error }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}

async function api(
  path: string,
  init: { method?: string; body?: unknown } = {},
): Promise<{ status: number; body: unknown }> {
  const config = loadConfig();
  const headers: Record<string, string> = { accept: 'application/json' };
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  if (config.apiKey) headers.authorization = `Bearer ${config.apiKey}`;
  // Relative to MAILROOM_URL's path, so an API behind a path prefix (https://host/mailroom) is reached there.
  const base = config.apiUrl.endsWith('/') ? config.apiUrl : `${config.apiUrl}/`;
  const response = await fetch(new URL(path.replace(/^\//, ''), base), {
    method: init.method ?? 'GET',
    headers,
    ...(init.body !== undefined && { body: JSON.stringify(init.body) }),
  });
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {}
  return { status: response.status, body };
}

function printResult(result: { status: number; body: unknown }): number {
  const out = result.status < 400 ? console.log : console.error;
  // A body that is not JSON (a proxy's error page) is shown as it came, not as one escaped string.
  out(typeof result.body === 'string' ? result.body : JSON.stringify(result.body, null, 2));
  return result.status < 400 ? 0 : 1;
}

async function send(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      to: { type: 'string', multiple: true },
      subject: { type: 'string' },
      text: { type: 'string' },
      html: { type: 'string' },
      from: { type: 'string' },
    },
  });
  const body = {
    to: values.to,
    subject: values.subject,
    ...(values.text !== undefined && { text: values.text }),
    ...(values.html !== undefined && { html: values.html }),
    ...(values.from !== undefined && { from: values.from }),
  };
  return printResult(await api('/v1/emails', { method: 'POST', body }));
}

async function status(args: string[]): Promise<number> {
  const [id] = args;
  if (!id) throw new UsageError('status needs an email id: mailroom status <id>');
  return printResult(await api(`/v1/emails/${encodeURIComponent(id)}`));
}

async function deadLetters(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { all: { type: 'boolean' }, reason: { type: 'string' } },
  });
  const [action, id] = positionals;
  if (action === 'list') {
    const query = values.reason ? `?reason=${encodeURIComponent(values.reason)}` : '';
    return printResult(await api(`/v1/dead-letters${query}`));
  }
  if (action === 'replay' && id && values.all)
    throw new UsageError('dlq replay takes an id or --all, not both');
  if (action === 'replay' && id)
    return printResult(await api(`/v1/dead-letters/${encodeURIComponent(id)}/replay`, { method: 'POST' }));
  if (action === 'replay' && values.all) {
    return printResult(
      await api('/v1/dead-letters/replay', {
        method: 'POST',
        body: values.reason ? { reason: values.reason } : {},
      }),
    );
  }
  throw new UsageError(
    'usage: mailroom dlq list [--reason R] | mailroom dlq replay <id> | mailroom dlq replay --all [--reason R]',
  );
}

class UsageError extends Error {}

/** node:util parseArgs refusing the options (unknown option, missing value, stray argument). */
function isParseArgsError(error: unknown): error is Error {
  return error instanceof TypeError && /^ERR_PARSE_ARGS_/.test((error as NodeJS.ErrnoException).code ?? '');
}

main(process.argv.slice(2)).then(
  // Exit explicitly: a pooled socket or a timer must not keep a finished command alive.
  (code) => process.exit(code),
  (error: unknown) => {
    const usage = error instanceof UsageError || isParseArgsError(error);
    if (error instanceof MailroomError || usage) console.error(error.message);
    else if (error instanceof TypeError && /fetch failed/.test(error.message)) {
      console.error(
        `Cannot reach the Mailroom API (MAILROOM_URL): ${(error.cause as Error | undefined)?.message ?? error.message}`,
      );
    } else console.error(error);
    process.exit(usage ? 2 : 1);
  },
);
