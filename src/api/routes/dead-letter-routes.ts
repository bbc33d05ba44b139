import { type Static, Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { DEAD_LETTER_REASONS, type DeadLetterReason } from '../../domain/email.js';
import { type FieldProblem, MailroomError, validationError } from '../../errors.js';
import type { DeadLetterFilter } from '../../store/store.js';
import type { ApiContext } from '../api-context.js';
import { presentJob } from '../present-job.js';

const Reason = Type.Union(DEAD_LETTER_REASONS.map((reason) => Type.Literal(reason)));
const ListQuery = Type.Object(
  {
    reason: Type.Optional(Reason),
    since: Type.Optional(Type.String({ format: 'date-time' })),
    limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
  },
  { additionalProperties: false },
);
const ReplayAllBody = Type.Object(
  { reason: Type.Optional(Reason), since: Type.Optional(Type.String({ format: 'date-time' })) },
  { additionalProperties: false },
);
const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });

/** The most dead letters one replay call moves back to the queue; call again for more. */
const REPLAY_BATCH = 10_000;

export async function registerDeadLetterRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.get<{ Querystring: Static<typeof ListQuery> }>(
    '/v1/dead-letters',
    {
      schema: {
        tags: ['dead letters'],
        summary: 'Failed jobs kept for replay, newest first',
        querystring: ListQuery,
      },
    },
    async (request) => {
      const { reason, since, limit } = request.query;
      const jobs = await ctx.store.listDeadLetters({
        limit,
        ...(reason && { reason }),
        ...(since && { since: Date.parse(since) }),
      });
      return { data: jobs.map((job) => presentJob(job)) };
    },
  );

  app.post<{ Params: Static<typeof IdParams> }>(
    '/v1/dead-letters/:id/replay',
    {
      schema: {
        tags: ['dead letters'],
        summary: 'Queue one dead letter again (same id, history kept)',
        params: IdParams,
      },
    },
    async (request, reply) => {
      const ids = await replay(ctx, { ids: [request.params.id], limit: 1 });
      if (ids.length === 0)
        throw new MailroomError('NOT_FOUND', `No dead letter with id ${request.params.id}.`);
      return reply.status(202).send({ id: ids[0], status: 'queued' });
    },
  );

  app.post(
    '/v1/dead-letters/replay',
    {
      schema: {
        tags: ['dead letters'],
        summary: `Queue dead letters again: all, or those matching reason/since (up to ${REPLAY_BATCH} per call)`,
        body: ReplayAllBody,
      },
    },
    async (request, reply) => {
      const filter = parseReplayBody(request.body);
      const ids = await replay(ctx, { ...filter, limit: REPLAY_BATCH });
      return reply.status(202).send({ replayed: ids.length, ids });
    },
  );
}

async function replay(ctx: ApiContext, filter: DeadLetterFilter): Promise<string[]> {
  const ids = await ctx.store.replayDeadLetters(filter, Date.now());
  if (ids.length > 0) ctx.workAdded();
  return ids;
}

function parseReplayBody(body: unknown): { reason?: DeadLetterReason; since?: number } {
  if (body === undefined || body === null) return {};
  if (typeof body !== 'object' || Array.isArray(body))
    throw validationError([{ field: 'body', rule: 'type' }]);
  const problems: FieldProblem[] = [];
  const filter: { reason?: DeadLetterReason; since?: number } = {};
  for (const [field, value] of Object.entries(body)) {
    if (field === 'reason' && DEAD_LETTER_REASONS.includes(value as DeadLetterReason)) {
      filter.reason = value as DeadLetterReason;
    } else if (field === 'since' && typeof value === 'string' && !Number.isNaN(Date.parse(value))) {
      filter.since = Date.parse(value);
    } else {
      const known = field === 'reason' || field === 'since';
      problems.push({ field, rule: known ? (field === 'reason' ? 'enum' : 'datetime') : 'unknown_field' });
    }
  }
  if (problems.length > 0) throw validationError(problems);
  return filter;
}
