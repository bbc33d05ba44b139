// Brings in @fastify/swagger's `tags`/`summary`/`hide` fields of the route schema type.
import type {} from '@fastify/swagger';
import type { FastifyInstance, FastifyReply } from 'fastify';
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

/** Adds the dev inbox API (`/v1/inbox/...`) and its HTML pages (`/inbox`, `/inbox/:id`) to `app`. */
export async function registerInboxRoutes(app: FastifyInstance, inbox: DevInbox): Promise<void> {
  app.get<{ Querystring: ListQuery }>(
    '/v1/inbox/messages',
    {
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
      schema: {
        tags: TAGS,
        summary: 'Get the raw RFC 5322 source of a dev inbox message',
        params: idParams,
      },
    },
    async (request, reply) => {
      const raw = inbox.raw(request.params.id);
      if (!raw) return sendNotFound(reply, request.params.id);
      return reply
        .header('content-type', 'message/rfc822')
        .header('content-disposition', `inline; filename="message-${request.params.id}.eml"`)
        .header('x-content-type-options', 'nosniff')
        .header('content-security-policy', "default-src 'none'")
        .send(raw);
    },
  );

  app.delete(
    '/v1/inbox/messages',
    { schema: { tags: TAGS, summary: 'Delete every message in the dev inbox' } },
    async (_request, reply) => {
      inbox.clear();
      return reply.code(204).send();
    },
  );

  app.get('/inbox', { schema: { hide: true } }, async (_request, reply) =>
    sendPage(reply, 200, renderInboxListPage(inbox.list(PAGE_LIST_LIMIT), inbox.count())),
  );

  app.get<{ Params: IdParams }>(
    '/inbox/:id',
    { schema: { hide: true, params: idParams } },
    async (request, reply) => {
      const { id } = request.params;
      const message = await inbox.get(id);
      const raw = inbox.raw(id);
      if (!message || !raw) return sendPage(reply, 404, renderNotFoundPage(id));
      return sendPage(reply, 200, renderInboxMessagePage(message, raw));
    },
  );
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
