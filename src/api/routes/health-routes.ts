import type { FastifyInstance } from 'fastify';
import type { ComponentHealth } from '../../transport/transport.js';
import type { ApiContext } from '../api-context.js';

export async function registerHealthRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.get(
    '/health',
    { schema: { tags: ['health'], summary: 'Liveness: the process answers' } },
    async () => ({
      status: 'ok',
    }),
  );

  app.get(
    '/metrics',
    { schema: { tags: ['health'], summary: 'Prometheus metrics of this process (text exposition format)' } },
    async (_request, reply) => reply.type(ctx.metrics.contentType).send(await ctx.metrics.render()),
  );

  app.get(
    '/ready',
    {
      schema: {
        tags: ['health'],
        summary: 'Readiness: store writable, broker up, worker running, transport reachable (503 when not)',
      },
    },
    async (_request, reply) => {
      const components: Record<string, ComponentHealth> = {
        store: await safely(() => ctx.store.health()),
        broker: await safely(() => ctx.broker.health()),
      };
      const worker = ctx.workerHealth();
      if (worker) components.worker = worker;
      if (ctx.transport) components.transport = await safely(() => ctx.transport!.health());
      if (ctx.flow) {
        // Reported, not judged: an open breaker means the relay is down, and the API should still
        // take email meanwhile; the transport check above already says whether it answers.
        const breaker = ctx.flow.breakerSnapshot();
        components.circuit_breaker = {
          ok: true,
          detail: `${breaker.transport}: ${breaker.state.replace('_', '-')}`,
        };
      }
      if (ctx.chaos)
        components.chaos = { ok: true, detail: `fault injection is ON (MAILROOM_CHAOS): ${ctx.chaos}` };
      if (ctx.isDraining()) components.server = { ok: false, detail: 'shutting down' };
      const ready = Object.values(components).every((component) => component.ok);
      return reply.status(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not_ready', components });
    },
  );
}

async function safely(check: () => Promise<ComponentHealth>): Promise<ComponentHealth> {
  try {
    return await check();
  } catch (error) {
    return { ok: false, detail: (error as Error).message };
  }
}
