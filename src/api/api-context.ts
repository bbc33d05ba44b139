import type { Broker } from '../broker/broker.js';
import type { Config } from '../config/config-schema.js';
import type { ValidationContext } from '../domain/validate-email.js';
import type { FlowControl } from '../flow/flow-control.js';
import type { DevInbox } from '../inbox/dev-inbox.js';
import type { LiveHub } from '../live/live-hub.js';
import type { Store } from '../store/store.js';
import type { Metrics } from '../telemetry/metrics.js';
import type { ComponentHealth, Transport } from '../transport/transport.js';
import type { ApiRateLimit } from './api-rate-limit.js';
import type { ApiKeyAuth } from './auth.js';
import type { EmailIntake } from './email-intake.js';

/** What the HTTP routes need from the running application. */
export interface ApiContext {
  readonly config: Config;
  readonly store: Store;
  readonly broker: Broker;
  readonly transport: Transport | undefined;
  readonly intake: EmailIntake;
  readonly auth: ApiKeyAuth;
  readonly inbox: DevInbox | undefined;
  /** MAILROOM_API_RATE_PER_MIN, when set. */
  readonly apiRateLimit: ApiRateLimit | undefined;
  /** The worker's circuit breaker and rate limits; undefined when this process runs no worker. */
  readonly flow: FlowControl | undefined;
  /** This process's Prometheus registry, served at /metrics. */
  readonly metrics: Metrics;
  /** Live status streams (SSE, WebSocket); undefined on processes without the API. */
  readonly live: LiveHub | undefined;
  /** MAILROOM_CHAOS in words, when fault injection is on. */
  readonly chaos: string | undefined;
  /** Jobs were committed (replayed, say): publish or pick them up now rather than at the next poll. */
  workAdded(): void;
  /** Limits and defaults for validating one request, `now` included. */
  validation(): ValidationContext;
  /** The worker's state for /ready; undefined when this process runs no worker. */
  workerHealth(): ComponentHealth | undefined;
  /** True once shutdown has begun: new work is refused with 503. */
  isDraining(): boolean;
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The caller's API-key fingerprint ('' when the server runs without keys). */
    authScope: string;
  }
}
