import { JOB_STATUSES, type JobStatus } from '../domain/email.js';
import type { LoggedEvent } from '../store/event-log.js';

/**
 * What subscribers receive for one transition, on every channel (SSE, WebSocket, webhooks): the
 * Standard Webhooks payload shape, `{type, timestamp, data}`.
 */
export interface EventMessage {
  /** `email.<event>`: email.queued, email.processing, email.sent, … */
  readonly type: string;
  /** When the transition happened (ISO 8601). */
  readonly timestamp: string;
  readonly data: {
    readonly email_id: string;
    /** Store-wide, increasing: the SSE id and what Last-Event-ID resumes after. */
    readonly event_id: string;
    /** The email's status after this transition; absent for `released` (it depends on the job). */
    readonly status?: JobStatus;
    readonly attempt: number;
    readonly message_id: string;
    readonly tags: readonly string[];
    readonly metadata: Readonly<Record<string, string>>;
    /** SMTP reply, error code and the like, as in the email's event history. */
    readonly detail: Readonly<Record<string, unknown>>;
    /** Webhooks only: the email's To addresses and subject. */
    readonly to?: readonly string[];
    readonly subject?: string;
  };
}

const STATUS_AFTER: Readonly<Record<string, JobStatus>> = {
  ...Object.fromEntries(JOB_STATUSES.map((status) => [status, status])),
  dead_lettered: 'failed',
  replayed: 'queued',
};

export function eventMessage(
  event: LoggedEvent,
  email?: { readonly to: readonly string[]; readonly subject: string },
): EventMessage {
  const status = STATUS_AFTER[event.type];
  return {
    type: `email.${event.type}`,
    timestamp: new Date(event.at).toISOString(),
    data: {
      email_id: event.jobId,
      event_id: event.id,
      ...(status !== undefined && { status }),
      attempt: event.attempt,
      message_id: event.messageId,
      tags: event.tags,
      metadata: event.metadata,
      detail: event.detail,
      ...(email && { to: email.to, subject: email.subject }),
    },
  };
}
