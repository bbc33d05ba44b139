// Brings in @fastify/swagger's `tags`/`summary`/`hide` fields of the route schema type.
import type {} from '@fastify/swagger';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ApiKeyAuth } from '../api/auth.js';
import type { DevInbox } from './dev-inbox.js';
import {
  INBOX_PAGE_CSP,
  renderInboxListPage,
  renderInboxMessagePage,
  renderNotFoundPage,
} from './inbox-pages.js';

export const DEFAULT_LIST_LIMIT = 50;
export const MAX_LIST_LIMIT = 1000;
/** The HTML list shows fewer rows than the API allows: it is re-rendered every 5 s. */
const PAGE_LIST_LIMIT = 200;

const TAGS = ['inbox'];

const idParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 64 } },
} as const;

interface IdParams {
  id: string;
}

interface ListQuery {
  limit?: number;
}

/** Sent with a refused page request, so that the browser asks for the key. */
const PAGE_CHALLENGE = 'Basic realm="Mailroom dev inbox", charset="UTF-8"';

/**
 * Adds the dev inbox API (`/v1/inbox/...`) and its HTML pages (`/inbox`, `/inbox/:id`,
 * `/inbox/:id/raw`) to `app`.
 *
 * When `auth` has keys, every route needs one, wherever the routes are mounted: the API as
 * `Authorization: Bearer <key>`, like every /v1 route; the pages, which a browser opens, also as the
 * password of HTTP Basic authentication (the browser asks for it). Basic is accepted on the pages
 * only: they are read-only GETs, so a browser resending the credentials cross-site can change
 * nothing, and the pages cannot be framed (frame-ancestors 'none'). Loopback gets no exemption: a
 * reverse proxy on the same host would make every request look local.
 */
export async function registerInboxRoutes(
  app: FastifyInstance,
  inbox: DevInbox,
  auth: ApiKeyAuth,
): Promise<void> {
  const api = {
    onRequest: async (request: FastifyRequest) => {
      auth.authenticate(request);
    },
  };
  const page = {
    onRequest: async (request: FastifyRequest, reply: FastifyReply) => {
      try {
        auth.authenticateBrowser(request);
      } catch (error) {
        void reply.header('www-authenticate', PAGE_CHALLENGE);
        throw error;
      }
    },
  };
  /** The JSON link on a message page only works in a browser when no key is needed. */
  const pageOptions = { apiLinks: !auth.enabled };

  app.get<{ Querystring: ListQuery }>(
    '/v1/inbox/messages',
    {
      ...api,
      schema: {
        tags: TAGS,
        summary: 'List messages in the dev inbox, newest first',
        querystring: {
          type: 'object',
          properties: {
            limit: { type: 'integer', minimum: 1, maximum: MAX_LIST_LIMIT, default: DEFAULT_LIST_LIMIT },
          },
        },
      },
    },
    async (request) => ({ data: inbox.list(request.query.limit ?? DEFAULT_LIST_LIMIT) }),
  );

  app.get<{ Params: IdParams }>(
    '/v1/inbox/messages/:id',
    {
      ...api,
      schema: {
        tags: TAGS,
        summary: 'Get one dev inbox message with its text and HTML parts',
        params: idParams,
      },
    },
    async (request, reply) => {
      const message = await inbox.get(request.params.id);
      return message ?? sendNotFound(reply, request.params.id);
    },
  );

  app.get<{ Params: IdParams }>(
    '/v1/inbox/messages/:id/raw',
    {
      ...api,
      schema: {
        tags: TAGS,
        summary: 'Get the raw RFC 5322 source of a dev inbox message',
        params: idParams,
      },
    },
    async (request, reply) => {
      const raw = inbox.raw(request.params.id);
      if (!raw) return sendNotFound(reply, request.params.id);
      return sendRaw(reply, request.params.id, raw);
    },
  );

  app.delete(
    '/v1/inbox/messages',
    { ...api, schema: { tags: TAGS, summary: 'Delete every message in the dev inbox' } },
    async (_request, reply) => {
      inbox.clear();
      return reply.code(204).send();
    },
  );

  app.get('/inbox', { ...page, schema: { hide: true } }, async (_request, reply) =>
    sendPage(reply, 200, renderInboxListPage(inbox.list(PAGE_LIST_LIMIT), inbox.count())),
  );

  app.get<{ Params: IdParams }>(
    '/inbox/:id',
    { ...page, schema: { hide: true, params: idParams } },
    async (request, reply) => {
      const { id } = request.params;
      const message = await inbox.get(id);
      const raw = inbox.raw(id);
      if (!message || !raw) return sendPage(reply, 404, renderNotFoundPage(id));
      return sendPage(reply, 200, renderInboxMessagePage(message, raw, pageOptions));
    },
  );

  /** The raw source for the message page's links: behind the page's authentication, not the API's. */
  app.get<{ Params: IdParams }>(
    '/inbox/:id/raw',
    { ...page, schema: { hide: true, params: idParams } },
    async (request, reply) => {
      const { id } = request.params;
      const raw = inbox.raw(id);
      if (!raw) return sendPage(reply, 404, renderNotFoundPage(id));
      return sendRaw(reply.header('cache-control', 'no-store'), id, raw);
    },
  );
}

function sendRaw(reply: FastifyReply, id: string, raw: Buffer): FastifyReply {
  return reply
    .header('content-type', 'message/rfc822')
    .header('content-disposition', `inline; filename="message-${id}.eml"`)
    .header('x-content-type-options', 'nosniff')
    .header('content-security-policy', "default-src 'none'")
    .send(raw);
}

function sendNotFound(reply: FastifyReply, id: string): FastifyReply {
  return reply
    .code(404)
    .send({ error: { code: 'NOT_FOUND', message: `No message ${id} in the dev inbox.` } });
}

function sendPage(reply: FastifyReply, status: number, html: string): FastifyReply {
  return reply
    .code(status)
    .header('content-type', 'text/html; charset=utf-8')
    .header('content-security-policy', INBOX_PAGE_CSP)
    .header('x-content-type-options', 'nosniff')
    .header('referrer-policy', 'no-referrer')
    .header('cache-control', 'no-store')
    .send(html);
}
