import { messageIdFor } from '../mime/message-id.js';
import type { TraceContext } from '../telemetry/trace-context.js';
import { hashRequest } from '../util/hash-request.js';
import type { NewJob } from './email.js';
import type { ValidatedEmail } from './validate-email.js';

export interface NewJobOptions {
  readonly id: string;
  /** Epoch ms: the job's creation time. */
  readonly now: number;
  /** Present when the request carried an idempotency key. */
  readonly idempotency?: {
    /** Who owns the key: an API key's fingerprint, '' on an open server, 'broker' for broker messages. */
    readonly scope: string;
    readonly key: string;
    /** The request as received, hashed to tell a repeat from another request under the same key. */
    readonly request: unknown;
    readonly ttlMs: number;
  };
  /** The trace the job continues, saved with it (tracing on). */
  readonly traceContext?: TraceContext;
}

/**
 * A validated email as a job to create, the same whichever way it came in (HTTP or the broker):
 * its Message-ID fixed from its id, its idempotency claim when it has a key.
 */
export function newJobFrom(email: ValidatedEmail, options: NewJobOptions): NewJob {
  const { id, now, idempotency } = options;
  return {
    id,
    content: email.content,
    tags: email.tags,
    metadata: email.metadata,
    priority: email.priority,
    ...(email.sendAt !== undefined && { sendAt: email.sendAt }),
    messageId: messageIdFor(id, email.content.from.address),
    createdAt: now,
    ...(options.traceContext && { traceContext: options.traceContext }),
    ...(idempotency && {
      idempotency: {
        scope: idempotency.scope,
        key: idempotency.key,
        requestHash: hashRequest(idempotency.request),
        notBefore: now - idempotency.ttlMs,
      },
    }),
  };
}
