/**
 * The webhook part of the Store: endpoints, and deliveries as a durable queue.
 *
 * Deliveries are not written by application code: the store adds one for every enabled endpoint
 * subscribed to an event in the same transaction that commits the event (a trigger on the event
 * table), so a committed transition can never miss its webhook, whatever process made it.
 */
import type {
  DeliveryAttempt,
  NewWebhookEndpoint,
  WebhookDelivery,
  WebhookEndpoint,
  WebhookEndpointChange,
  WebhookEventType,
} from '../domain/webhook.js';
import type { LoggedEvent } from './event-log.js';

/** A delivery a dispatcher took: hidden from other dispatchers until `hold` passes. */
export interface DueDelivery {
  readonly id: string;
  /** This try's number (1 for the first): the token a result is recorded under. */
  readonly attempt: number;
  readonly createdAt: number;
  readonly eventType: WebhookEventType;
  readonly endpoint: {
    readonly id: string;
    readonly url: string;
    readonly secret: string;
    readonly enabled: boolean;
  };
  readonly event: LoggedEvent;
  /** The email's recipients (To) and subject, for the payload. */
  readonly to: readonly string[];
  readonly subject: string;
}

export type DeliveryNext =
  | { readonly kind: 'delivered' }
  | { readonly kind: 'retry'; readonly at: number }
  /**
   * No more tries. `disableEndpoint` also turns the endpoint off (with `reason`) and ends its other
   * pending deliveries, unless `unlessDeliveredSince` is given and some try reached the endpoint
   * with a 2xx at or after that time.
   */
  | {
      readonly kind: 'failed';
      readonly disableEndpoint?: { readonly reason: string; readonly unlessDeliveredSince?: number };
    };

export interface DeliveryResult {
  readonly deliveryId: string;
  readonly endpointId: string;
  readonly attempt: number;
  readonly outcome: DeliveryAttempt;
  readonly next: DeliveryNext;
}

/** How a take shares the slots among endpoints (see `WebhookStore.takeDeliveries`). */
export interface FairTake {
  readonly perEndpoint: number;
  /** Endpoints that get none in this take: the dispatcher has as many of theirs in flight as it allows. */
  readonly skip: readonly string[];
}

export interface WebhookStore {
  /** False (nothing written) when the id is taken. */
  createEndpoint(endpoint: NewWebhookEndpoint): Promise<boolean>;
  /** Creates or replaces (url, events, secret) the endpoint with this id, enabled. */
  putEndpoint(endpoint: NewWebhookEndpoint): Promise<void>;
  getEndpoint(id: string): Promise<WebhookEndpoint | undefined>;
  /** Oldest first. */
  listEndpoints(): Promise<WebhookEndpoint[]>;
  /** Enabling clears the disabled reason. Undefined when there is no such endpoint. */
  updateEndpoint(
    id: string,
    change: WebhookEndpointChange,
    now: number,
  ): Promise<WebhookEndpoint | undefined>;
  /** Deletes the endpoint with its deliveries. False when there was none. */
  deleteEndpoint(id: string): Promise<boolean>;
  /**
   * Takes up to `limit` deliveries that are due, oldest due first, counting a try for each and
   * hiding them for `holdMs` (a dispatcher that dies leaves them to be taken again). With `fair`,
   * at most `perEndpoint` of one endpoint's, and none of the endpoints in `skip`: one receiver that
   * is down (its tries waiting out the timeout) cannot fill every slot and hold back the others.
   */
  takeDeliveries(now: number, limit: number, holdMs: number, fair?: FairTake): Promise<DueDelivery[]>;
  /** Records tries; a result whose `attempt` is no longer the delivery's (a stale dispatcher) is dropped. */
  recordDeliveries(results: readonly DeliveryResult[]): Promise<void>;
  /** An endpoint's deliveries, newest first, ids below `before` when given; each with its last tries. */
  listDeliveries(endpointId: string, limit: number, before?: string): Promise<WebhookDelivery[]>;
  /** Deletes finished deliveries (and their tries) created before `before`. Returns how many. */
  pruneDeliveries(before: number): Promise<number>;
}
