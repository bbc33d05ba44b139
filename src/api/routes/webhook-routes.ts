import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { v7 as uuidv7 } from 'uuid';
import { WEBHOOK_EVENT_TYPES, type WebhookDelivery, type WebhookEndpoint } from '../../domain/webhook.js';
import { MailroomError, validationError } from '../../errors.js';
import { newWebhookSecret } from '../../webhooks/sign-webhook.js';
import { validateWebhook } from '../../webhooks/validate-webhook.js';
import type { ApiContext } from '../api-context.js';

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });
const DeliveriesQuery = Type.Object(
  {
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 50 }),
    before: Type.Optional(Type.String({ pattern: '^[1-9][0-9]{0,18}$' })),
  },
  { additionalProperties: false },
);
const WebhookBody = Type.Object({
  url: Type.Optional(Type.String()),
  events: Type.Optional(Type.Array(Type.String({ enum: [...WEBHOOK_EVENT_TYPES] }))),
  description: Type.Optional(Type.String()),
  enabled: Type.Optional(Type.Boolean()),
});

const iso = (epochMs: number) => new Date(epochMs).toISOString();

export function presentEndpoint(endpoint: WebhookEndpoint) {
  return {
    id: endpoint.id,
    url: endpoint.url,
    events: endpoint.events,
    description: endpoint.description ?? null,
    enabled: endpoint.enabled,
    disabled_reason: endpoint.disabledReason ?? null,
    source: endpoint.source,
    created_at: iso(endpoint.createdAt),
    updated_at: iso(endpoint.updatedAt),
  };
}

function presentDelivery(delivery: WebhookDelivery) {
  return {
    id: delivery.id,
    event_id: delivery.eventId,
    event_type: delivery.eventType,
    email_id: delivery.jobId,
    status: delivery.status,
    attempts: delivery.attempts,
    created_at: iso(delivery.createdAt),
    next_attempt_at: delivery.nextAttemptAt === undefined ? null : iso(delivery.nextAttemptAt),
    log: delivery.log.map((attempt) => ({
      at: iso(attempt.at),
      status_code: attempt.statusCode ?? null,
      error: attempt.error ?? null,
      duration_ms: attempt.durationMs,
    })),
  };
}

function notFound(id: string): MailroomError {
  return new MailroomError('NOT_FOUND', `No webhook endpoint ${id}.`);
}

/** `/v1/webhooks`: endpoints told about each email's transitions, signed per Standard Webhooks. */
export async function registerWebhookRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  const rules = { allowPrivate: ctx.config.webhooksAllowPrivate };
  const schema = (summary: string, extra: object = {}) => ({
    schema: { tags: ['webhooks'], summary, ...extra },
  });

  app.post(
    '/v1/webhooks',
    schema('Register a webhook endpoint; the answer holds its signing secret, shown only once', {
      body: WebhookBody,
    }),
    async (request, reply) => {
      const checked = await validateWebhook(request.body, rules);
      if (!checked.ok) throw validationError(checked.problems);
      const now = Date.now();
      const secret = newWebhookSecret();
      const id = uuidv7();
      await ctx.store.webhooks.createEndpoint({
        id,
        url: checked.value.url!,
        events: checked.value.events ?? WEBHOOK_EVENT_TYPES,
        ...(checked.value.description !== undefined && { description: checked.value.description }),
        secret,
        source: 'api',
        createdAt: now,
      });
      const endpoint = await ctx.store.webhooks.getEndpoint(id);
      return reply.status(201).send({ ...presentEndpoint(endpoint!), secret });
    },
  );

  app.get('/v1/webhooks', schema('List webhook endpoints'), async () => ({
    data: (await ctx.store.webhooks.listEndpoints()).map(presentEndpoint),
  }));

  app.get('/v1/webhooks/:id', schema('Get a webhook endpoint', { params: IdParams }), async (request) => {
    const { id } = request.params as { id: string };
    const endpoint = await ctx.store.webhooks.getEndpoint(id);
    if (!endpoint) throw notFound(id);
    return presentEndpoint(endpoint);
  });

  app.patch(
    '/v1/webhooks/:id',
    schema('Change a webhook endpoint: url, events, description, or enabled (turn it back on)', {
      params: IdParams,
      body: WebhookBody,
    }),
    async (request) => {
      const { id } = request.params as { id: string };
      const checked = await validateWebhook(request.body, rules, true);
      if (!checked.ok) throw validationError(checked.problems);
      const endpoint = await ctx.store.webhooks.updateEndpoint(id, checked.value, Date.now());
      if (!endpoint) throw notFound(id);
      return presentEndpoint(endpoint);
    },
  );

  app.delete(
    '/v1/webhooks/:id',
    schema('Delete a webhook endpoint and its delivery log', { params: IdParams }),
    async (request, reply) => {
      const { id } = request.params as { id: string };
      if (!(await ctx.store.webhooks.deleteEndpoint(id))) throw notFound(id);
      return reply.status(204).send();
    },
  );

  app.get(
    '/v1/webhooks/:id/deliveries',
    schema('An endpoint’s deliveries, newest first, each with its last tries', {
      params: IdParams,
      querystring: DeliveriesQuery,
    }),
    async (request) => {
      const { id } = request.params as { id: string };
      const { limit, before } = request.query as { limit: number; before?: string };
      if (!(await ctx.store.webhooks.getEndpoint(id))) throw notFound(id);
      const page = await ctx.store.webhooks.listDeliveries(id, limit + 1, before);
      const data = page.slice(0, limit).map(presentDelivery);
      return { data, next_cursor: page.length > limit ? (data.at(-1)?.id ?? null) : null };
    },
  );
}
