/** Rows of the PostgreSQL store's tables, and how they map to domain types. */
import {
  type DeadLetterReason,
  type EmailContent,
  type Job,
  type JobEvent,
  type JobEventType,
  type JobStatus,
  PRIORITY_BY_RANK,
} from '../../domain/email.js';

/** A `jobs` row as pg returns it: json columns parsed, bigint columns as numbers (see database.ts). */
export interface JobRow {
  id: string;
  status: JobStatus;
  priority: number;
  attempts: number;
  run_at: number | null;
  send_at: number | null;
  lease_token: string | null;
  message_id: string;
  content: EmailContent;
  tags: string[];
  metadata: Record<string, string>;
  last_error: string | null;
  dead_letter_reason: string | null;
  dead_lettered_at: number | null;
  created_at: number;
  updated_at: number;
}

export interface EventRow {
  job_id: string;
  type: JobEventType;
  at: number;
  attempt: number;
  detail: Record<string, unknown>;
}

export const FINISHED: ReadonlySet<JobStatus> = new Set(['sent', 'failed', 'cancelled']);

export function toJob(row: JobRow): Job {
  return {
    id: row.id,
    status: row.status,
    priority: PRIORITY_BY_RANK[row.priority] ?? 'normal',
    attempts: row.attempts,
    content: row.content,
    tags: row.tags,
    metadata: row.metadata,
    messageId: row.message_id,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    ...(row.send_at !== null && { sendAt: row.send_at }),
    ...(row.last_error !== null && { lastError: row.last_error }),
    ...(row.dead_letter_reason !== null && { deadLetterReason: row.dead_letter_reason as DeadLetterReason }),
    ...(row.dead_lettered_at !== null && { deadLetteredAt: row.dead_lettered_at }),
  };
}

export function toEvent(row: EventRow): JobEvent {
  return { type: row.type, at: row.at, attempt: row.attempt, detail: row.detail };
}

/**
 * A document for a json column. JSON.stringify escapes every character json accepts, \u0000 and
 * lone surrogates included, so any string the API let through is stored.
 */
export function toJson(value: unknown): string {
  return JSON.stringify(value);
}

/**
 * Text for a text column: PostgreSQL's text cannot hold NUL, and a relay's reply (which becomes
 * `last_error`) is not ours to validate. Failing the whole outcome batch over it would leave its
 * jobs to be sent again.
 */
export function toText(value: string): string {
  return value.includes('\0') ? value.replaceAll('\0', '\uFFFD') : value;
}
