import type { FastifyRequest } from 'fastify';
import { tracing } from './tracing.js';

/**
 * A fastify `onRequest` hook (added only with tracing on): names the http instrumentation's server
 * span after the route template (`POST /v1/emails`, never the raw URL with its ids) and sets
 * `http.route`.
 */
export async function nameServerSpan(request: FastifyRequest): Promise<void> {
  const route = request.routeOptions.url;
  const span = tracing()?.activeSpan();
  if (!span || route === undefined) return;
  span.updateName(`${request.method} ${route}`);
  span.setAttribute('http.route', route);
}
