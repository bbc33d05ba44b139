import { type Static, Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { JOB_STATUSES } from '../../domain/email.js';
import {
  type ValidatedEmail,
  type ValidationResult,
  validateSendEmail,
} from '../../domain/validate-email.js';
import { MailroomError, validationError } from '../../errors.js';
import { decodeCursor } from '../../store/cursor.js';
import type { ApiContext } from '../api-context.js';
import { readIdempotencyKey } from '../idempotency-key.js';
import { presentJob } from '../present-job.js';
import { expandTemplate } from '../template-send.js';
import { registerBatchRoutes } from './batch-routes.js';
import { SendEmailBody } from './email-schemas.js';

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });

const ListQuery = Type.Object(
  {
    status: Type.Optional(Type.Union(JOB_STATUSES.map((s) => Type.Literal(s)))),
    to: Type.Optional(Type.String({ maxLength: 254 })),
    tag: Type.Optional(Type.String({ maxLength: 64 })),
    since: Type.Optional(Type.String({ format: 'date-time' })),
    until: Type.Optional(Type.String({ format: 'date-time' })),
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
    cursor: Type.Optional(Type.String({ maxLength: 200 })),
  },
  { additionalProperties: false },
);

export async function registerEmailRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.post(
    '/v1/emails',
    {
      schema: {
        tags: ['emails'],
        summary: 'Send an email',
        description:
          'Answers 202 once the job is durably committed. Idempotency-Key (≤ 256 chars): a repeat within 24 h returns the original answer; the same key with another body is 409.',
        headers: Type.Object({ 'idempotency-key': Type.Optional(Type.String()) }),
        body: SendEmailBody,
      },
    },
    async (request, reply) => {
      // Before the template is loaded and rendered: that work is what a flood would cost.
      await ctx.apiRateLimit?.check(request.authScope);
      const expanded = await expandTemplate(ctx.store, request.body, ctx.config.maxMessageBytes);
      if (!expanded.ok) return acceptEmail(ctx, request, reply, expanded, undefined, { rateChecked: true });
      const validated = validateSendEmail(expanded.body, ctx.validation());
      return acceptEmail(ctx, request, reply, validated, undefined, { rateChecked: true });
    },
  );

  await registerBatchRoutes(app, ctx);

  app.get<{ Params: Static<typeof IdParams> }>(
    '/v1/emails/:id',
    { schema: { tags: ['emails'], summary: 'An email’s status and full event history', params: IdParams } },
    async (request) => {
      const job = await ctx.store.getJob(request.params.id);
      if (!job) throw new MailroomError('NOT_FOUND', `No email with id ${request.params.id}.`);
      return presentJob(job, job.events);
    },
  );

  app.get<{ Querystring: Static<typeof ListQuery> }>(
    '/v1/emails',
    { schema: { tags: ['emails'], summary: 'List emails, newest first', querystring: ListQuery } },
    async (request) => {
      const { status, to, tag, since, until, limit, cursor } = request.query;
      if (cursor !== undefined && !decodeCursor(cursor)) {
        throw validationError([
          { field: 'cursor', rule: 'cursor', message: 'is not a cursor from this API' },
        ]);
      }
      const page = await ctx.store.listJobs({
        limit,
        ...(status && { status }),
        ...(to && { to }),
        ...(tag && { tag }),
        ...(since && { since: Date.parse(since) }),
        ...(until && { until: Date.parse(until) }),
        ...(cursor && { cursor }),
      });
      return { data: page.items.map((job) => presentJob(job)), next_cursor: page.nextCursor ?? null };
    },
  );

  app.post<{ Params: Static<typeof IdParams> }>(
    '/v1/emails/:id/cancel',
    {
      schema: { tags: ['emails'], summary: 'Cancel a queued, scheduled or deferred email', params: IdParams },
    },
    async (request) => {
      const result = await ctx.store.cancelJob(request.params.id, Date.now());
      if (result.kind === 'not_found')
        throw new MailroomError('NOT_FOUND', `No email with id ${request.params.id}.`);
      if (result.kind === 'invalid_state') {
        throw new MailroomError(
          'INVALID_STATE',
          `The email is ${result.status}; only queued, scheduled or deferred emails can be cancelled.`,
        );
      }
      return presentJob(result.job);
    },
  );
}

/** Shared by every route that accepts an email: validation result → durable job → 202. */
export async function acceptEmail(
  ctx: ApiContext,
  request: FastifyRequest,
  reply: FastifyReply,
  validated: ValidationResult<ValidatedEmail>,
  present: (accepted: { id: string; status: string }) => unknown = ({ id, status }) => ({ id, status }),
  options: { readonly rateChecked?: boolean } = {},
) {
  // Before validation: a client sending malformed requests in a loop is held to the limit too.
  if (!options.rateChecked) await ctx.apiRateLimit?.check(request.authScope);
  if (!validated.ok) {
    const error = validationError(validated.problems);
    if (validated.tooLarge) throw new MailroomError('PAYLOAD_TOO_LARGE', error.message, validated.problems);
    throw error;
  }
  const key = readIdempotencyKey(request);
  const accepted = await ctx.intake.accept({
    email: validated.value,
    scope: request.authScope,
    canonicalBody: request.body,
    ...(key !== undefined && { idempotencyKey: key }),
  });
  if (accepted.replayed) void reply.header('idempotent-replayed', 'true');
  return reply.status(202).send(present(accepted));
}
