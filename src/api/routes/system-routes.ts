import type { FastifyInstance } from 'fastify';
import type { BreakerSnapshot } from '../../flow/circuit-breaker.js';
import type { ApiContext } from '../api-context.js';

/**
 * What flow control is doing in this process: its transport's circuit breaker and the rate limits in
 * force. A process without a worker (`mailroom api`) has neither and says so; its workers log every
 * breaker transition, and the shared buckets' levels are the same from any process.
 */
export async function registerSystemRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.get(
    '/v1/system/breakers',
    {
      schema: {
        tags: ['system'],
        summary: 'The circuit breaker of each transport this process sends through',
      },
    },
    async () => ({
      breakers: ctx.flow ? [presentBreaker(ctx.flow.breakerSnapshot())] : [],
      ...(!ctx.flow && {
        note: 'this process runs no worker (mailroom api): each mailroom worker serves its own on MAILROOM_METRICS_PORT',
      }),
    }),
  );

  app.get(
    '/v1/system/limits',
    {
      schema: {
        tags: ['system'],
        summary: 'Rate and concurrency limits in force, and the rates lowered after throttling',
      },
    },
    async () => ({
      api: { per_key_per_min: ctx.config.apiRatePerMin ?? null },
      concurrency: ctx.flow ? ctx.config.concurrency : null,
      ...(ctx.config.transport === 'smtp' && { smtp_pool: ctx.config.smtpPool }),
      ...(ctx.flow
        ? await ctx.flow.limitsSnapshot()
        : { note: 'this process runs no worker (mailroom api): send-side limits live in the workers' }),
    }),
  );
}

function presentBreaker(snapshot: BreakerSnapshot) {
  const time = (at: number | undefined) => (at === undefined ? null : new Date(at).toISOString());
  const last = snapshot.lastTransition;
  return {
    transport: snapshot.transport,
    state: snapshot.state,
    consecutive_failures: snapshot.consecutiveFailures,
    probes_in_flight: snapshot.probesInFlight,
    probe_successes: snapshot.probeSuccesses,
    opened_at: time(snapshot.openedAt),
    probe_at: time(snapshot.probeAt),
    transitions: snapshot.transitions,
    last_transition: last ? { from: last.from, to: last.to, at: time(last.at), reason: last.reason } : null,
    settings: {
      failures: snapshot.options.failures,
      open_ms: snapshot.options.openMs,
      half_open_max: snapshot.options.halfOpenMax,
      successes: snapshot.options.successes,
    },
  };
}
