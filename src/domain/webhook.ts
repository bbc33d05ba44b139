/**
 * Webhook endpoints and their deliveries: what Mailroom tells an application about its emails,
 * signed per the Standard Webhooks spec (https://www.standardwebhooks.com).
 */

/** The events an endpoint may subscribe to: one per job transition an application acts on. */
export const WEBHOOK_EVENT_TYPES = [
  'email.queued',
  'email.scheduled',
  'email.sent',
  'email.deferred',
  'email.failed',
  'email.cancelled',
] as const;
export type WebhookEventType = (typeof WEBHOOK_EVENT_TYPES)[number];

/** `api` endpoints are registered over HTTP; the `env` one comes from MAILROOM_STATUS_CALLBACK_URL. */
export type WebhookSource = 'api' | 'env';

export interface WebhookEndpoint {
  readonly id: string;
  readonly url: string;
  readonly events: readonly WebhookEventType[];
  readonly description?: string;
  readonly enabled: boolean;
  /** Why Mailroom turned it off: `gone` (the receiver answered 410) or `failing` (retries ran out). */
  readonly disabledReason?: string;
  readonly source: WebhookSource;
  readonly createdAt: number;
  readonly updatedAt: number;
}

export interface NewWebhookEndpoint {
  readonly id: string;
  readonly url: string;
  readonly events: readonly WebhookEventType[];
  readonly description?: string;
  /** `whsec_<base64>`: what the receiver verifies signatures with. */
  readonly secret: string;
  readonly source: WebhookSource;
  readonly createdAt: number;
}

export interface WebhookEndpointChange {
  readonly url?: string;
  readonly events?: readonly WebhookEventType[];
  readonly description?: string;
  readonly enabled?: boolean;
}

export const DELIVERY_STATUSES = ['pending', 'delivered', 'failed'] as const;
export type DeliveryStatus = (typeof DELIVERY_STATUSES)[number];

/** One try at POSTing a delivery. */
export interface DeliveryAttempt {
  readonly at: number;
  /** The receiver's HTTP status; absent when no answer came (refused, timed out, blocked). */
  readonly statusCode?: number;
  readonly error?: string;
  readonly durationMs: number;
}

/** One event for one endpoint, and how getting it there went. */
export interface WebhookDelivery {
  readonly id: string;
  readonly endpointId: string;
  readonly eventId: string;
  readonly eventType: WebhookEventType;
  readonly jobId: string;
  readonly status: DeliveryStatus;
  readonly attempts: number;
  readonly createdAt: number;
  /** When the next try is due; absent once delivered or failed. */
  readonly nextAttemptAt?: number;
  /** Newest first. */
  readonly log: readonly DeliveryAttempt[];
}

/** The webhook event of a job event type, if applications can subscribe to it. */
export function webhookEventOf(eventType: string): WebhookEventType | undefined {
  const name = `email.${eventType}`;
  return (WEBHOOK_EVENT_TYPES as readonly string[]).includes(name) ? (name as WebhookEventType) : undefined;
}
