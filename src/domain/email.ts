/**
 * Mailroom's domain types.
 *
 * Glossary (also in docs/glossary.md):
 * - **email**: what a producer asks Mailroom to send: sender, recipients, subject, body, headers.
 * - **job**: the durable record of one email inside Mailroom: its status, attempts and event history.
 *   A job's id is also the email's id in the API.
 * - **attempt**: one try at handing a job's message to a transport. Attempts are counted when a worker
 *   claims the job, so a worker that dies mid-send has spent one.
 * - **delivery**: a broker handing a job's message to a worker; the same job may be delivered more than once.
 * - **lease**: a worker's time-limited claim on a job, identified by a token; a late result under a stale token
 *   is rejected.
 * - **transport**: the way out of Mailroom (SMTP relay, dev inbox, later SES).
 * - **broker**: carries job messages from the API to workers (embedded, later RabbitMQ, NATS JetStream).
 * - **dead letter**: a job that ended `failed` for good, kept with a reason code so it can be replayed.
 */

import type { TraceContext } from '../telemetry/trace-context.js';

export const PRIORITIES = ['high', 'normal', 'low'] as const;
export type Priority = (typeof PRIORITIES)[number];

/** Lower rank is served first. */
export const PRIORITY_RANK: Record<Priority, number> = { high: 0, normal: 1, low: 2 };
export const PRIORITY_BY_RANK: readonly Priority[] = PRIORITIES;

export const JOB_STATUSES = [
  'queued',
  'scheduled',
  'processing',
  'deferred',
  'sent',
  'failed',
  'cancelled',
] as const;
export type JobStatus = (typeof JOB_STATUSES)[number];

/** Statuses from which a job still moves on by itself. */
export const ACTIVE_STATUSES: readonly JobStatus[] = ['queued', 'scheduled', 'processing', 'deferred'];
export const CANCELLABLE_STATUSES: readonly JobStatus[] = ['queued', 'scheduled', 'deferred'];

/** Why a job was dead-lettered. Stable codes: users filter and replay by them. */
export const DEAD_LETTER_REASONS = ['max_attempts', 'invalid_message'] as const;
export type DeadLetterReason = (typeof DEAD_LETTER_REASONS)[number];

/** A mailbox: an address and an optional display name. Both already validated. */
export interface Mailbox {
  readonly address: string;
  readonly name?: string;
}

/** The content of an email, validated and normalised. */
export interface EmailContent {
  readonly from: Mailbox;
  readonly to: readonly Mailbox[];
  readonly cc: readonly Mailbox[];
  readonly bcc: readonly Mailbox[];
  readonly replyTo: readonly Mailbox[];
  readonly subject: string;
  readonly text?: string;
  readonly html?: string;
  /** Custom headers, names as given, values free of CR/LF/NUL. */
  readonly headers: Readonly<Record<string, string>>;
  /** Absent when the email has none (so stored emails without any keep their JSON). */
  readonly attachments?: readonly Attachment[];
}

/**
 * A file sent with an email. The content is held as the client sent it: canonical base64, checked
 * at the API, so the MIME builder only folds it into lines and never decodes or reads anything.
 */
export interface Attachment {
  /** A file name, not a path: no CR, LF, NUL or other control characters, no / or \. */
  readonly filename: string;
  /** `type/subtype`, e.g. `application/pdf`. */
  readonly contentType: string;
  /** Canonical base64 (RFC 4648, padded, one line). */
  readonly content: string;
  /** Present for an inline part, referenced from the HTML as `cid:<contentId>`. */
  readonly contentId?: string;
}

/** Everything needed to create a job, prepared by the API before the store commits it. */
export interface NewJob {
  readonly id: string;
  readonly content: EmailContent;
  readonly tags: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
  readonly priority: Priority;
  /** Epoch ms; absent means "now". */
  readonly sendAt?: number;
  readonly messageId: string;
  readonly createdAt: number;
  /** Present when the request carried an Idempotency-Key. */
  readonly idempotency?: IdempotencyClaim;
  /** The trace the job continues (tracing on): saved in its first event's detail. */
  readonly traceContext?: TraceContext;
}

export interface IdempotencyClaim {
  /** Who the key belongs to (an API key's fingerprint, or '' on an open loopback server). */
  readonly scope: string;
  readonly key: string;
  /** SHA-256 of the canonical request, to tell "same request" from "same key, other body". */
  readonly requestHash: string;
  /** Keys older than this (epoch ms) no longer count. */
  readonly notBefore: number;
}

export interface Job {
  readonly id: string;
  readonly status: JobStatus;
  readonly priority: Priority;
  readonly attempts: number;
  readonly content: EmailContent;
  readonly tags: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
  readonly messageId: string;
  readonly createdAt: number;
  readonly updatedAt: number;
  readonly sendAt?: number;
  readonly lastError?: string;
  readonly deadLetterReason?: DeadLetterReason;
  readonly deadLetteredAt?: number;
}

export const JOB_EVENT_TYPES = [...JOB_STATUSES, 'dead_lettered', 'replayed', 'released'] as const;
export type JobEventType = (typeof JOB_EVENT_TYPES)[number];

/** One transition in a job's history. */
export interface JobEvent {
  readonly type: JobEventType;
  readonly at: number;
  readonly attempt: number;
  readonly detail: Readonly<Record<string, unknown>>;
}

export interface JobWithEvents extends Job {
  readonly events: readonly JobEvent[];
}
