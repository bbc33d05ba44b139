import websocket from '@fastify/websocket';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { JOB_EVENT_TYPES } from '../../domain/email.js';
import { MailroomError } from '../../errors.js';
import { eventMessage } from '../../live/event-message.js';
import type { LiveFilter, LiveHub } from '../../live/live-hub.js';
import { isEventId, type LoggedEvent } from '../../store/event-log.js';
import type { ApiContext } from '../api-context.js';

const EVENT_NAMES = JOB_EVENT_TYPES.map((type) => `email.${type}`);

const StreamQuery = Type.Object(
  {
    email_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    tag: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
    type: Type.Optional(
      Type.String({ maxLength: 1024, description: `Comma-separated: ${EVENT_NAMES.join(', ')}` }),
    ),
    last_event_id: Type.Optional(Type.String({ pattern: '^(0|[1-9][0-9]{0,18})$' })),
  },
  { additionalProperties: false },
);

interface StreamQueryValue {
  email_id?: string;
  tag?: string;
  type?: string;
  last_event_id?: string;
}

/** Unsent bytes past which a client counts as too slow and is dropped (it resumes with Last-Event-ID). */
const MAX_BUFFERED_BYTES = 1024 * 1024;
const SSE_HEARTBEAT_MS = 15_000;
const WS_PING_MS = 30_000;

/**
 * Live status: `GET /v1/events` (Server-Sent Events) and `GET /v1/events/ws` (WebSocket), each
 * transition as it commits, in any process, filtered by email id, tag and type. Both resume after
 * an event id: SSE's Last-Event-ID header (browsers send it when they reconnect), or
 * `?last_event_id=` on either.
 */
export async function registerEventStreamRoutes(
  app: FastifyInstance,
  ctx: ApiContext,
  hub: LiveHub,
): Promise<void> {
  await app.register(websocket, { options: { maxPayload: 4096 } });

  app.get(
    '/v1/events',
    {
      schema: {
        tags: ['live status'],
        summary: 'Server-Sent Events: each transition as it commits (event: email.<type>, id: event id)',
        querystring: StreamQuery,
      },
    },
    async (request, reply) => {
      const { filter, afterId } = parseStream(request);
      reply.hijack();
      const raw = reply.raw;
      raw.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
      });
      // `retry` tells the browser how soon to reconnect; the comment flushes the headers at once.
      raw.write('retry: 2000\n: following mailroom events\n\n');
      const heartbeat = setInterval(() => raw.write(': ping\n\n'), SSE_HEARTBEAT_MS);
      const stop = hub.follow({
        filter,
        ...(afterId !== undefined && { afterId }),
        send: (events) => {
          raw.write(events.map(sseFrame).join(''));
          return raw.writableLength <= MAX_BUFFERED_BYTES;
        },
        gap: (after) =>
          raw.write(`event: mailroom.gap\ndata: ${JSON.stringify({ skipped_after: after })}\n\n`),
        end: (reason) => {
          raw.end(`event: mailroom.closing\ndata: ${JSON.stringify({ reason })}\n\n`);
        },
      });
      ctx.metrics.liveClientsChanged('sse', 1);
      raw.on('close', () => {
        clearInterval(heartbeat);
        stop();
        ctx.metrics.liveClientsChanged('sse', -1);
      });
    },
  );

  app.get(
    '/v1/events/ws',
    {
      websocket: true,
      schema: {
        tags: ['live status'],
        summary: 'WebSocket: each transition as it commits, one JSON message per event',
        querystring: StreamQuery,
      },
    },
    async (socket: WebSocket, request) => {
      let stream: ReturnType<typeof parseStream>;
      try {
        stream = parseStream(request);
      } catch (error) {
        socket.close(1008, (error as Error).message.slice(0, 120));
        return;
      }
      const ping = setInterval(() => socket.ping(), WS_PING_MS);
      const stop = hub.follow({
        filter: stream.filter,
        ...(stream.afterId !== undefined && { afterId: stream.afterId }),
        send: (events) => {
          for (const event of events) socket.send(JSON.stringify(eventMessage(event)));
          return socket.bufferedAmount <= MAX_BUFFERED_BYTES;
        },
        gap: (after) => socket.send(JSON.stringify({ type: 'mailroom.gap', data: { skipped_after: after } })),
        // 1013 "try again later": the client reconnects with ?last_event_id= to resume.
        end: (reason) => socket.close(1013, reason.slice(0, 120)),
      });
      ctx.metrics.liveClientsChanged('websocket', 1);
      socket.on('close', () => {
        clearInterval(ping);
        stop();
        ctx.metrics.liveClientsChanged('websocket', -1);
      });
      // Clients have nothing to say; anything they send is ignored.
      socket.on('message', () => {});
    },
  );
}

function sseFrame(event: LoggedEvent): string {
  const message = eventMessage(event);
  return `id: ${event.id}\nevent: ${message.type}\ndata: ${JSON.stringify(message)}\n\n`;
}

/** The filter and resume point of a stream request; throws VALIDATION_FAILED naming the field. */
function parseStream(request: FastifyRequest): { filter: LiveFilter; afterId?: string } {
  const query = request.query as StreamQueryValue;
  const header = request.headers['last-event-id'];
  const lastEventId = query.last_event_id ?? (typeof header === 'string' ? header.trim() : undefined);
  if (lastEventId !== undefined && lastEventId !== '' && !isEventId(lastEventId)) {
    throw new MailroomError(
      'VALIDATION_FAILED',
      'Last-Event-ID: expected an event id (digits) from this stream.',
      [{ field: 'Last-Event-ID', rule: 'event_id' }],
    );
  }
  let types: Set<string> | undefined;
  if (query.type !== undefined) {
    types = new Set(
      query.type
        .split(',')
        .map((name) => name.trim())
        .filter(Boolean),
    );
    const unknown = [...types].filter((name) => !EVENT_NAMES.includes(name));
    if (unknown.length > 0 || types.size === 0) {
      throw new MailroomError(
        'VALIDATION_FAILED',
        `type: expected a comma-separated list of ${EVENT_NAMES.join(', ')}.`,
        [{ field: 'type', rule: 'one_of', message: `unknown: ${unknown.join(', ') || '(empty)'}` }],
      );
    }
  }
  const filter: LiveFilter = {
    ...(query.email_id !== undefined && { emailId: query.email_id }),
    ...(query.tag !== undefined && { tag: query.tag }),
    ...(types && { types }),
  };
  return { filter, ...(lastEventId !== undefined && lastEventId !== '' && { afterId: lastEventId }) };
}
