import type { AddressInfo } from 'node:net';
import type { FastifyBaseLogger, FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import Fastify, { LogController } from 'fastify';
import type { Logger } from 'pino';
import { ApiKeyAuth } from '../api/auth.js';
import { isLoopback } from '../config/load-config.js';
import { type ErrorCode, MailroomError } from '../errors.js';
import { DevInbox } from './dev-inbox.js';
import { registerInboxRoutes } from './inbox-routes.js';

export interface InboxServerOptions {
  readonly host: string;
  /** 0 picks a free port; the chosen one is in `httpUrl`. */
  readonly httpPort: number;
  /** 0 picks a free port; the chosen one is in `smtpUrl` and `inbox.port`. */
  readonly smtpPort: number;
  readonly maxMessages: number;
  readonly maxMessageBytes: number;
  /**
   * MAILROOM_API_KEYS. With keys, the API needs `Authorization: Bearer <key>` and the pages ask the
   * browser for a key (see registerInboxRoutes). Required when `host` is not loopback.
   */
  readonly apiKeys?: readonly string[];
  readonly logger: Logger;
}

export interface InboxServer {
  readonly inbox: DevInbox;
  /** e.g. `http://127.0.0.1:8025`; the pages are at `${httpUrl}/inbox`. */
  readonly httpUrl: string;
  /** e.g. `smtp://127.0.0.1:1025`. */
  readonly smtpUrl: string;
  close(): Promise<void>;
}

/** Runs the dev inbox on its own (`mailroom inbox`): its SMTP server plus an HTTP server for its pages and API. */
export async function startInboxServer(options: InboxServerOptions): Promise<InboxServer> {
  const auth = new ApiKeyAuth(options.apiKeys ?? []);
  if (!auth.enabled && !isLoopback(options.host)) {
    // loadConfig refuses this too; checked again here because the inbox shows every message it holds.
    throw new MailroomError(
      'CONFIG_INVALID',
      `Invalid configuration:\n  MAILROOM_HOST=${options.host}: a non-loopback address needs MAILROOM_API_KEYS, or anyone on the network could read the dev inbox`,
    );
  }
  const inbox = new DevInbox({
    host: options.host,
    smtpPort: options.smtpPort,
    maxMessages: options.maxMessages,
    maxMessageBytes: options.maxMessageBytes,
    logger: options.logger,
  });
  await inbox.start();
  let app: FastifyInstance | undefined;
  try {
    app = await createInboxApp(inbox, auth, options.logger);
    await app.listen({ host: options.host, port: options.httpPort });
  } catch (err) {
    await app?.close();
    await inbox.close();
    throw err;
  }
  const httpApp = app;
  const httpUrl = formatUrl('http', options.host, (httpApp.server.address() as AddressInfo).port);
  const smtpUrl = formatUrl('smtp', options.host, inbox.port);
  options.logger.info({ httpUrl, smtpUrl }, `dev inbox at ${httpUrl}/inbox, SMTP at ${smtpUrl}`);
  return {
    inbox,
    httpUrl,
    smtpUrl,
    async close() {
      await Promise.all([httpApp.close(), inbox.close()]);
    },
  };
}

async function createInboxApp(inbox: DevInbox, auth: ApiKeyAuth, logger: Logger): Promise<FastifyInstance> {
  const app = Fastify({
    // Typed as the base logger so the instance is a plain FastifyInstance, as registerInboxRoutes takes.
    loggerInstance: logger.child({ component: 'inbox-http' }) as FastifyBaseLogger,
    // The list page refreshes itself every 5 s: logging each request would drown the log.
    logController: new LogController({ disableRequestLogging: true }),
  });
  app.setErrorHandler(handleError);
  app.setNotFoundHandler((request, reply) => {
    reply
      .code(404)
      .send({ error: { code: 'NOT_FOUND', message: `No route ${request.method} ${request.url}.` } });
  });
  app.get('/health', { schema: { hide: true } }, async () => ({ status: 'ok' }));
  app.get('/', { schema: { hide: true } }, async (_request, reply) => reply.redirect('/inbox'));
  await registerInboxRoutes(app, inbox, auth);
  return app;
}

function handleError(error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  if (error instanceof MailroomError) {
    reply.code(error.status).send({ error: { code: error.code, message: error.message } });
    return;
  }
  if (error.validation) {
    reply.code(400).send({ error: { code: 'VALIDATION_FAILED', message: error.message } });
    return;
  }
  const status =
    error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
  if (status === 500) request.log.error({ err: error }, 'dev inbox request failed');
  const message = status === 500 ? 'An unexpected error; the log has the detail.' : error.message;
  reply.code(status).send({ error: { code: errorCodeFor(status), message } });
}

function errorCodeFor(status: number): ErrorCode {
  if (status === 404) return 'NOT_FOUND';
  if (status === 413) return 'PAYLOAD_TOO_LARGE';
  if (status === 415) return 'UNSUPPORTED_MEDIA_TYPE';
  return status < 500 ? 'VALIDATION_FAILED' : 'INTERNAL';
}

/** Unspecified addresses become `localhost`: a URL to click on, not the socket address. */
function formatUrl(scheme: string, host: string, port: number): string {
  const reachable = host === '0.0.0.0' || host === '::' || host === '' ? 'localhost' : host;
  const bracketed = reachable.includes(':') ? `[${reachable}]` : reachable;
  return `${scheme}://${bracketed}:${port}`;
}
