/**
 * Webhook rows as both stores read them, mapped to the domain once. The adapters differ only in
 * how a column arrives (SQLite: integers and 0/1, the events column as text; PostgreSQL: bigints
 * that may come as strings, booleans, text[]): each hands rows over in this shape.
 */
import type {
  DeliveryAttempt,
  DeliveryStatus,
  WebhookDelivery,
  WebhookEndpoint,
  WebhookEventType,
  WebhookSource,
} from '../domain/webhook.js';
import type { DeliveryNext } from './webhook-store.js';

/** How many of a delivery's tries its log shows. */
export const LOG_TRIES = 20;

export interface EndpointRow {
  id: string;
  url: string;
  events: readonly string[];
  description: string | null;
  enabled: boolean;
  disabled_reason: string | null;
  source: string;
  created_at: number | string;
  updated_at: number | string;
}

export interface DeliveryRow {
  id: number | string;
  endpoint_id: string;
  event_id: number | string;
  event_type: string;
  job_id: string;
  status: string;
  attempts: number;
  next_attempt_at: number | string | null;
  created_at: number | string;
}

export interface AttemptRow {
  at: number | string;
  status_code: number | null;
  error: string | null;
  duration_ms: number;
}

/** The delivery's status and next try once a result is recorded. */
export function deliveryState(next: DeliveryNext): { status: DeliveryStatus; nextAttemptAt: number | null } {
  if (next.kind === 'retry') return { status: 'pending', nextAttemptAt: next.at };
  return { status: next.kind, nextAttemptAt: null };
}

export function toEndpoint(row: EndpointRow): WebhookEndpoint {
  return {
    id: row.id,
    url: row.url,
    events: row.events as WebhookEventType[],
    ...(row.description !== null && { description: row.description }),
    enabled: row.enabled,
    ...(row.disabled_reason !== null && { disabledReason: row.disabled_reason }),
    source: row.source as WebhookSource,
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

export function toDelivery(row: DeliveryRow, log: DeliveryAttempt[]): WebhookDelivery {
  return {
    id: String(row.id),
    endpointId: row.endpoint_id,
    eventId: String(row.event_id),
    eventType: row.event_type as WebhookEventType,
    jobId: row.job_id,
    status: row.status as DeliveryStatus,
    attempts: row.attempts,
    createdAt: Number(row.created_at),
    ...(row.next_attempt_at !== null && { nextAttemptAt: Number(row.next_attempt_at) }),
    log,
  };
}

export function toAttempt(row: AttemptRow): DeliveryAttempt {
  return {
    at: Number(row.at),
    ...(row.status_code !== null && { statusCode: row.status_code }),
    ...(row.error !== null && { error: row.error }),
    durationMs: row.duration_ms,
  };
}
