import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Job, JobStatus } from '../../domain/email.js';
import { validateSendEmail } from '../../domain/validate-email.js';
import { isPlainObject, jsonType } from '../../domain/value-checks.js';
import { type FieldProblem, MailroomError, validationError } from '../../errors.js';
import { VERSION } from '../../version.js';
import type { ApiContext } from '../api-context.js';
import { expandTemplate } from '../template-send.js';

/**
 * Routes shaped like the Email Microservice's API (shared/reference/email-microservice.md), on the
 * same jobs. `request_id` is the idempotency key; `user_id` and `request_id` are kept as tags
 * (`user:<id>`, `req:<id>`: filterable without a schema change) and, with `template_code`, as
 * metadata. Rendering uses Mailroom's templates (`template_code` names one).
 */

/** Their status names. */
const NOTIFICATION_STATUS: Record<JobStatus, string> = {
  queued: 'pending',
  scheduled: 'pending',
  deferred: 'pending',
  processing: 'processing',
  sent: 'delivered',
  failed: 'failed',
  cancelled: 'failed',
};
const THEIR_STATUSES = ['pending', 'processing', 'delivered', 'failed'] as const;
const FIELDS = new Set([
  'notification_type',
  'user_id',
  'template_code',
  'variables',
  'request_id',
  'priority',
  'metadata',
]);
/** Tag characters, with room for the `user:` / `req:` prefix in a 64-character tag. */
const ID = /^[A-Za-z0-9_.:-]{1,59}$/;
/** The list walks at most this many newest matching jobs to count and page them. */
const LIST_SCAN_LIMIT = 10_000;

const ListQuery = Type.Object(
  {
    user_id: Type.Optional(Type.String({ pattern: ID.source })),
    status: Type.Optional(Type.Union(THEIR_STATUSES.map((s) => Type.Literal(s)))),
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
    page: Type.Integer({ minimum: 1, maximum: 10_000, default: 1 }),
  },
  { additionalProperties: false },
);
const RequestParams = Type.Object({ request_id: Type.String({ pattern: ID.source }) });

/** Their timestamps: UTC, to the second, without a zone suffix (`2025-11-13T10:30:00`). */
const stamp = (epochMs: number) => new Date(epochMs).toISOString().slice(0, 19);

function envelope(message: string, data: unknown, meta: unknown = null) {
  return { success: true, message, data, error: null, meta };
}

/** Errors in their envelope too; the Mailroom error (code, message, details) is `error`. */
function sendError(reply: FastifyReply, error: unknown) {
  if (!(error instanceof MailroomError)) throw error;
  if (error.retryAfterSeconds !== undefined)
    void reply.header('retry-after', String(error.retryAfterSeconds));
  return reply.status(error.status).send({
    success: false,
    message: error.message,
    data: null,
    error: {
      code: error.code,
      message: error.message,
      ...(error.details.length > 0 && { details: error.details }),
    },
    meta: null,
  });
}

/** Their integer priority: 7 and up is high, 3 and below low, the rest (and none) normal. */
function priorityOf(value: number | undefined): 'high' | 'normal' | 'low' {
  if (value === undefined) return 'normal';
  return value >= 7 ? 'high' : value <= 3 ? 'low' : 'normal';
}

function presentNotification(job: Job) {
  return {
    request_id: job.metadata['request_id'] ?? null,
    user_id: job.metadata['user_id'] ?? null,
    to_email: job.content.to[0]?.address ?? null,
    template_code: job.metadata['template_code'] ?? null,
    status: NOTIFICATION_STATUS[job.status],
    attempts: job.attempts,
    error: job.lastError ?? null,
    created_at: stamp(job.createdAt),
    updated_at: stamp(job.updatedAt),
  };
}

/** Checks their body and turns it into a templated `POST /v1/emails` body. */
function translate(body: unknown): {
  problems: FieldProblem[];
  send?: Record<string, unknown>;
  requestId?: string;
} {
  if (!isPlainObject(body))
    return {
      problems: [{ field: 'body', rule: 'type', message: `must be a JSON object, not ${jsonType(body)}` }],
    };
  const problems: FieldProblem[] = [];
  for (const key of Object.keys(body)) {
    if (!FIELDS.has(key))
      problems.push({ field: key, rule: 'unknown_field', message: 'is not a known field' });
  }
  if (body['notification_type'] !== 'email') {
    problems.push({ field: 'notification_type', rule: 'enum', message: 'must be "email"' });
  }
  for (const field of ['user_id', 'request_id'] as const) {
    const value = body[field];
    if (value === undefined) problems.push({ field, rule: 'required', message: 'is required' });
    else if (typeof value !== 'string')
      problems.push({ field, rule: 'type', message: `must be a string, not ${jsonType(value)}` });
    else if (!ID.test(value))
      problems.push({ field, rule: 'pattern', message: '1 to 59 letters, digits and _ . : -' });
  }
  if (typeof body['template_code'] !== 'string') {
    problems.push({
      field: 'template_code',
      rule: body['template_code'] === undefined ? 'required' : 'type',
      message: 'must be a template code',
    });
  }
  const priority = body['priority'];
  if (priority !== undefined && (typeof priority !== 'number' || !Number.isInteger(priority))) {
    problems.push({ field: 'priority', rule: 'type', message: 'must be an integer' });
  }
  const variables = body['variables'];
  if (!isPlainObject(variables)) {
    problems.push({
      field: 'variables',
      rule: variables === undefined ? 'required' : 'type',
      message: 'must be an object with email',
    });
  } else if (typeof variables['email'] !== 'string') {
    problems.push({
      field: 'variables.email',
      rule: 'required',
      message: 'the recipient address is required',
    });
  }
  const metadata = body['metadata'] ?? {};
  if (!isPlainObject(metadata))
    problems.push({ field: 'metadata', rule: 'type', message: 'must be an object' });
  if (problems.length > 0) return { problems };

  const vars = variables as Record<string, unknown>;
  const name = typeof vars['name'] === 'string' && vars['name'] !== '' ? vars['name'] : undefined;
  // Their metadata may hold any JSON; Mailroom's holds strings.
  const ownMetadata = Object.fromEntries(
    Object.entries(metadata as Record<string, unknown>).map(([key, value]) => [
      key,
      typeof value === 'string' ? value : JSON.stringify(value),
    ]),
  );
  const requestId = body['request_id'] as string;
  return {
    problems,
    requestId,
    send: {
      to: [name === undefined ? vars['email'] : `${JSON.stringify(name)} <${vars['email']}>`],
      template: body['template_code'],
      variables: vars,
      priority: priorityOf(priority as number | undefined),
      tags: [`user:${body['user_id']}`, `req:${requestId}`],
      metadata: {
        ...ownMetadata,
        user_id: body['user_id'],
        request_id: requestId,
        template_code: body['template_code'],
      },
    },
  };
}

export async function registerNotificationCompatRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.post(
    '/api/v1/notifications/',
    { schema: { tags: ['compatibility'], summary: 'Email Microservice: queue a templated notification' } },
    async (request, reply) => {
      try {
        await ctx.apiRateLimit?.check(request.authScope);
        const translated = translate(request.body);
        if (!translated.send) throw validationError(translated.problems);
        const expanded = await expandTemplate(ctx.store, translated.send, ctx.config.maxMessageBytes);
        const validated = expanded.ok ? validateSendEmail(expanded.body, ctx.validation()) : expanded;
        if (!validated.ok) {
          // Named as in their request: the recipient is variables.email (with variables.name).
          const problems = validated.problems.map((p) =>
            /^to(\[\d+\])?$/.test(p.field) ? { ...p, field: 'variables.email' } : p,
          );
          const error = validationError(problems);
          if (validated.tooLarge) throw new MailroomError('PAYLOAD_TOO_LARGE', error.message, problems);
          throw error;
        }
        const accepted = await ctx.intake.accept({
          email: validated.value,
          // A scope of its own: a request_id never meets an Idempotency-Key of /v1/emails.
          scope: `notifications:${request.authScope}`,
          canonicalBody: request.body,
          idempotencyKey: translated.requestId!,
        });
        return reply.status(202).send(
          envelope('Notification queued for processing', {
            request_id: translated.requestId,
            task_id: accepted.id,
            status: 'queued',
          }),
        );
      } catch (error) {
        return sendError(reply, error);
      }
    },
  );

  app.get<{
    Querystring: { user_id?: string; status?: (typeof THEIR_STATUSES)[number]; limit: number; page: number };
  }>(
    '/api/v1/notifications/list/',
    {
      schema: {
        tags: ['compatibility'],
        summary: 'Email Microservice: list notifications',
        querystring: ListQuery,
      },
    },
    async (request) => {
      const { user_id, status, limit, page } = request.query;
      // Their paging needs a total: walk the newest matching jobs (by user tag when given), up to a cap.
      const matching: Job[] = [];
      let cursor: string | undefined;
      do {
        const batch = await ctx.store.listJobs({
          limit: 100,
          ...(user_id !== undefined && { tag: `user:${user_id}` }),
          ...(cursor !== undefined && { cursor }),
        });
        for (const job of batch.items) {
          if (job.metadata['request_id'] === undefined) continue; // not sent through this API
          if (status === undefined || NOTIFICATION_STATUS[job.status] === status) matching.push(job);
        }
        cursor = batch.nextCursor;
      } while (cursor !== undefined && matching.length < LIST_SCAN_LIMIT);
      const total = matching.length;
      const items = matching.slice((page - 1) * limit, page * limit).map(presentNotification);
      const totalPages = Math.ceil(total / limit);
      return envelope(`Retrieved ${items.length} notifications`, items, {
        total,
        limit,
        page,
        total_pages: totalPages,
        has_next: page < totalPages,
        has_previous: page > 1,
      });
    },
  );

  app.get<{ Params: { request_id: string } }>(
    '/api/v1/notifications/:request_id/',
    {
      schema: {
        tags: ['compatibility'],
        summary: 'Email Microservice: a notification by request_id',
        params: RequestParams,
      },
    },
    async (request, reply) => {
      const found = await ctx.store.listJobs({ tag: `req:${request.params.request_id}`, limit: 1 });
      const job = found.items[0];
      if (!job)
        return sendError(
          reply,
          new MailroomError('NOT_FOUND', `No notification with request_id ${request.params.request_id}.`),
        );
      return envelope('Notification status retrieved', presentNotification(job));
    },
  );

  app.get(
    '/health/',
    { schema: { tags: ['compatibility'], summary: 'Email Microservice: health' } },
    async (_request, reply) => {
      const health = await ctx.store.health();
      if (!health.ok) {
        return reply.status(503).send({
          success: false,
          message: 'Service is unhealthy',
          data: { status: 'unhealthy', service: 'mailroom', version: VERSION, timestamp: stamp(Date.now()) },
          error: { code: 'STORE_UNAVAILABLE', message: health.detail ?? 'the store does not answer' },
          meta: null,
        });
      }
      return envelope('Service is healthy', {
        status: 'healthy',
        service: 'mailroom',
        version: VERSION,
        timestamp: stamp(Date.now()),
      });
    },
  );
}
