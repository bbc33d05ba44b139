import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { Ajv } from 'ajv';
import addFormats from 'ajv-formats';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import type { Logger } from 'pino';
import { MailroomError } from '../errors.js';
import { registerInboxRoutes } from '../inbox/inbox-routes.js';
import { nameServerSpan } from '../telemetry/http-spans.js';
import { tracing } from '../telemetry/tracing.js';
import { VERSION } from '../version.js';
import type { ApiContext } from './api-context.js';
import { handleError } from './error-handler.js';
import { registerCompatRoutes } from './routes/compat-routes.js';
import { registerDeadLetterRoutes } from './routes/dead-letter-routes.js';
import { registerEmailRoutes } from './routes/email-routes.js';
import { registerEventStreamRoutes } from './routes/event-stream-routes.js';
import { registerHealthRoutes } from './routes/health-routes.js';
import { registerNotificationCompatRoutes } from './routes/notification-compat-routes.js';
import { registerSystemRoutes } from './routes/system-routes.js';
import { registerTemplateRoutes } from './routes/template-routes.js';
import { registerWebhookRoutes } from './routes/webhook-routes.js';

/** Routes that need an API key when keys are configured. */
const PROTECTED_PREFIXES = ['/v1/', '/api/'];
/**
 * Read-only streams a browser opens (EventSource, WebSocket), which cannot send a Bearer header:
 * they also take the API key as HTTP Basic credentials (see ApiKeyAuth.authenticateBrowser).
 */
const BROWSER_STREAMS = new Set(['/v1/events', '/v1/events/ws']);
/** Routes answered even while shutting down, so orchestrators can watch it happen. */
const ALWAYS_OPEN = new Set(['/health', '/ready', '/metrics', '/health/']);

/**
 * Assembles the HTTP API. It does not listen: `app.inject()` drives it in tests, and the composition
 * root calls `listen`.
 */
export async function buildServer(ctx: ApiContext, logger: Logger): Promise<FastifyInstance> {
  const app: FastifyInstance = Fastify({
    // Typed as fastify's logger interface so routes are plain FastifyInstance, not pino-specific.
    loggerInstance: logger as FastifyBaseLogger,
    // A line per request at thousands per second costs more than it tells; errors are logged.
    logController: new LogController({ disableRequestLogging: true }),
    // JSON escaping can double the size of an HTML body; the email's own size is checked after parsing.
    bodyLimit: ctx.config.maxMessageBytes * 2 + 1024 * 1024,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
  });
  // Only JSON bodies: fastify's default text/plain parser would hand a string to the routes (400, not 415).
  app.removeContentTypeParser('text/plain');
  configureValidation(app);
  app.setErrorHandler(handleError);
  app.setNotFoundHandler((request, reply) => {
    void reply
      .status(404)
      .send({ error: { code: 'NOT_FOUND', message: `No route ${request.method} ${request.url}.` } });
  });
  // RED metrics by route template (never the raw URL: ids would make a series each).
  app.addHook('onResponse', async (request, reply) => {
    ctx.metrics.httpAnswered(
      request.routeOptions.url ?? 'unmatched',
      request.method,
      reply.statusCode,
      reply.elapsedTime / 1000,
    );
  });
  // Tracing on: the HTTP server span (from the http instrumentation) is named by route, as
  // `POST /v1/emails`, with `http.route`: the instrumentation alone only knows the method.
  if (tracing()) app.addHook('onRequest', nameServerSpan);
  app.decorateRequest('authScope', '');
  app.addHook('onRequest', async (request) => {
    const path = request.url.split('?', 1)[0] ?? '';
    if (ctx.isDraining() && !ALWAYS_OPEN.has(path)) {
      throw new MailroomError(
        'SHUTTING_DOWN',
        'Mailroom is shutting down; retry on another instance or shortly.',
      );
    }
    if (BROWSER_STREAMS.has(path)) request.authScope = ctx.auth.authenticateBrowser(request);
    else if (PROTECTED_PREFIXES.some((prefix) => path.startsWith(prefix)))
      request.authScope = ctx.auth.authenticate(request);
  });

  await app.register(swagger, {
    openapi: {
      info: {
        title: 'Mailroom',
        version: VERSION,
        description: 'Transactional email delivery: accept, queue durably, deliver, track.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: ctx.auth.enabled ? [{ bearer: [] }] : [],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });

  await registerHealthRoutes(app, ctx);
  await registerEmailRoutes(app, ctx);
  await registerTemplateRoutes(app, ctx);
  await registerDeadLetterRoutes(app, ctx);
  await registerCompatRoutes(app, ctx);
  await registerNotificationCompatRoutes(app, ctx);
  await registerSystemRoutes(app, ctx);
  await registerWebhookRoutes(app, ctx);
  if (ctx.live) await registerEventStreamRoutes(app, ctx, ctx.live);
  if (ctx.inbox) await registerInboxRoutes(app, ctx.inbox, ctx.auth);
  return app;
}

/**
 * What a process without the API (`mailroom worker`) serves for its operators: `/metrics`, `/health`,
 * `/ready` and its flow control (`/v1/system/breakers`, `/v1/system/limits`), on MAILROOM_METRICS_PORT.
 * Read-only and without API keys, like a metrics endpoint: bind it where only operators reach it.
 */
export async function buildOpsServer(ctx: ApiContext, logger: Logger): Promise<FastifyInstance> {
  const app: FastifyInstance = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    forceCloseConnections: 'idle',
  });
  await registerHealthRoutes(app, ctx);
  await registerSystemRoutes(app, ctx);
  return app;
}

/**
 * Bodies are checked by Mailroom's own validators (every problem, named by field and rule), so the
 * body schemas serve the OpenAPI document only. Query strings, params and headers go through Ajv,
 * with type coercion, and without silently dropping unknown fields (fastify's default would).
 */
function configureValidation(app: FastifyInstance): void {
  const ajv = new Ajv({
    coerceTypes: true,
    useDefaults: true,
    removeAdditional: false,
    allErrors: true,
    strict: false,
  });
  addFormats.default(ajv);
  app.setValidatorCompiler(({ schema, httpPart }) => {
    if (httpPart === 'body') return () => true;
    return ajv.compile(schema);
  });
}
