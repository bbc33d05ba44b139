import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { validateSendEmail } from '../../domain/validate-email.js';
import { isPlainObject, jsonType } from '../../domain/value-checks.js';
import { type FieldProblem, validationError } from '../../errors.js';
import { acceptBatch, MAX_BATCH_EMAILS } from '../accept-batch.js';
import type { ApiContext } from '../api-context.js';
import { readIdempotencyKey } from '../idempotency-key.js';
import { expandTemplate, templatesOnce } from '../template-send.js';
import { BatchEmailBody } from './email-schemas.js';

const BatchBody = Type.Object(
  { emails: Type.Array(BatchEmailBody, { minItems: 1, maxItems: MAX_BATCH_EMAILS }) },
  { additionalProperties: false },
);

export async function registerBatchRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.post(
    '/v1/emails/batch',
    {
      schema: {
        tags: ['emails'],
        summary: `Send up to ${MAX_BATCH_EMAILS} emails in one request`,
        description:
          'Each email is checked on its own (and rendered, when it names a `template`): `results` answers every one, in order, with `{id, status}` or `{error}`; one bad email does not hold back the others. 202 whenever the body is a well-formed batch (even if every email was refused: read `results`); 400 when the body is not `{emails: [...]}` with 1 to 500 emails. The valid emails commit in one transaction. Each counts against MAILROOM_API_RATE_PER_MIN; BACKLOG_FULL and RATE_LIMITED refuse the whole batch. Idempotency-Key covers the whole batch: the same key and body answer the original results, another body is 409.',
        headers: Type.Object({ 'idempotency-key': Type.Optional(Type.String()) }),
        body: BatchBody,
      },
    },
    async (request, reply) => {
      const { body } = request;
      const emails = isPlainObject(body) && Array.isArray(body['emails']) ? body['emails'] : undefined;
      // Every email counts (a malformed batch counts one): a batch is no way around the per-key limit.
      const count = emails && emails.length <= MAX_BATCH_EMAILS ? Math.max(1, emails.length) : 1;
      await ctx.apiRateLimit?.check(request.authScope, count);
      const problems = batchProblems(body);
      if (problems.length > 0) throw validationError(problems);
      const idempotencyKey = readIdempotencyKey(request);
      const validation = ctx.validation();
      const templates = templatesOnce(ctx.store);
      const items = await Promise.all(
        emails!.map(async (email) => {
          const expanded = await expandTemplate(templates, email, ctx.config.maxMessageBytes);
          return expanded.ok ? validateSendEmail(expanded.body, validation) : expanded;
        }),
      );
      const { results, replayed } = await acceptBatch(ctx.intake, {
        items,
        scope: request.authScope,
        body,
        ...(idempotencyKey !== undefined && { idempotencyKey }),
      });
      if (replayed) void reply.header('idempotent-replayed', 'true');
      return reply.status(202).send({ results });
    },
  );
}

/** Problems with the batch itself; each email's own are answered in its result. */
function batchProblems(body: unknown): FieldProblem[] {
  if (!isPlainObject(body))
    return [{ field: 'body', rule: 'type', message: `must be a JSON object, not ${jsonType(body)}` }];
  const problems: FieldProblem[] = Object.keys(body)
    .filter((key) => key !== 'emails')
    .map((key) => ({
      field: key,
      rule: 'unknown_field',
      message: 'is not a known field; a batch is {"emails": [...]}',
    }));
  const emails = body['emails'];
  if (emails === undefined) problems.push({ field: 'emails', rule: 'required', message: 'is required' });
  else if (!Array.isArray(emails)) {
    problems.push({
      field: 'emails',
      rule: 'type',
      message: `must be an array of emails, not ${jsonType(emails)}`,
    });
  } else if (emails.length === 0) {
    problems.push({ field: 'emails', rule: 'min_length', message: 'must hold at least one email' });
  } else if (emails.length > MAX_BATCH_EMAILS) {
    problems.push({
      field: 'emails',
      rule: 'max_items',
      message: `has ${emails.length} emails; at most ${MAX_BATCH_EMAILS} are allowed per batch`,
    });
  }
  return problems;
}
