import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { JobEvent, JobStatus } from '../../domain/email.js';
import { validateCompatEmail } from '../../domain/validate-email.js';
import type { ApiContext } from '../api-context.js';
import { acceptEmail } from './email-routes.js';

/** Status names of the Distributed Email Sender, for its users' dashboards and scripts. */
const COMPAT_STATUS: Record<JobStatus, string> = {
  queued: 'queued',
  scheduled: 'queued',
  deferred: 'queued',
  processing: 'processing',
  sent: 'completed',
  failed: 'failed',
  cancelled: 'failed',
};

const HistoryQuery = Type.Object(
  { limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }) },
  { additionalProperties: false },
);

/** Routes shaped like the Distributed Email Sender's API (see shared/reference), on the same jobs. */
export async function registerCompatRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.post(
    '/api/emails',
    {
      schema: {
        tags: ['compatibility'],
        summary: 'Distributed Email Sender: submit `{to, subject, body}`',
        body: Type.Object(
          { to: Type.String(), subject: Type.String(), body: Type.String() },
          { additionalProperties: false },
        ),
      },
    },
    async (request, reply) =>
      acceptEmail(
        ctx,
        request,
        reply,
        validateCompatEmail(request.body, ctx.validation()),
        ({ id, status }) => ({
          message: 'Email job submitted successfully',
          job_id: id,
          status: COMPAT_STATUS[status as JobStatus] ?? status,
        }),
      ),
  );

  app.get<{ Querystring: { limit: number } }>(
    '/api/jobs/history',
    {
      schema: {
        tags: ['compatibility'],
        summary: 'Distributed Email Sender: job history',
        querystring: HistoryQuery,
      },
    },
    async (request) => {
      const page = await ctx.store.listJobs({ limit: request.query.limit });
      const histories = await ctx.store.eventsFor(page.items.map((job) => job.id));
      const jobs = page.items.map((job) => ({
        job_id: job.id,
        to: job.content.to.map((mailbox) => mailbox.address).join(', '),
        subject: job.content.subject,
        status: COMPAT_STATUS[job.status],
        created_at: new Date(job.createdAt).toISOString(),
        updated_at: new Date(job.updatedAt).toISOString(),
        retry_count: Math.max(0, job.attempts - 1),
        history: (histories.get(job.id) ?? []).map(compatHistoryEntry),
      }));
      return { total: jobs.length, jobs };
    },
  );
}

function compatHistoryEntry(event: JobEvent) {
  const status = event.type in COMPAT_STATUS ? COMPAT_STATUS[event.type as JobStatus] : event.type;
  const detail = event.detail as { message?: string; response?: string };
  const message = event.type === 'queued' ? 'Job queued' : (detail.message ?? detail.response ?? '');
  return { status, timestamp: new Date(event.at).toISOString(), message };
}
