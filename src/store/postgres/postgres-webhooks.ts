import type {
  DeliveryAttempt,
  NewWebhookEndpoint,
  WebhookDelivery,
  WebhookEndpoint,
  WebhookEndpointChange,
  WebhookEventType,
} from '../../domain/webhook.js';
import {
  type AttemptRow,
  type DeliveryRow,
  deliveryState,
  type EndpointRow,
  LOG_TRIES,
  toAttempt,
  toDelivery,
  toEndpoint,
} from '../webhook-rows.js';
import type { DeliveryResult, DueDelivery, FairTake, WebhookStore } from '../webhook-store.js';
import type { Database, Sql } from './database.js';
import { PG_EVENT_COLUMNS, type PgEventRow, toLoggedEvent } from './postgres-events.js';

/** Ids are selected as text (DELIVERY_COLUMNS): a bigint could outgrow a JavaScript number. */
type PgDeliveryRow = DeliveryRow & { id: string; event_id: string };

const DELIVERY_COLUMNS =
  'id::text AS id, endpoint_id, event_id::text AS event_id, event_type, job_id, status, attempts, next_attempt_at, created_at';

const INSERT_ENDPOINT = `INSERT INTO webhook_endpoints
  (id, url, events, description, secret, enabled, source, created_at, updated_at)
  VALUES ($1, $2, $3, $4, $5, true, $6, $7, $7)`;

/**
 * Webhook endpoints and the delivery queue on PostgreSQL (see webhook-store.ts). Several
 * dispatchers share the queue: taking uses FOR UPDATE SKIP LOCKED, and a result is recorded only
 * under the try number it was taken with.
 */
export class PostgresWebhooks implements WebhookStore {
  constructor(private readonly db: Database) {}

  async createEndpoint(endpoint: NewWebhookEndpoint): Promise<boolean> {
    const result = await this.db.write(
      `${INSERT_ENDPOINT} ON CONFLICT (id) DO NOTHING`,
      endpointValues(endpoint),
      'durable',
    );
    return (result.rowCount ?? 0) > 0;
  }

  async putEndpoint(endpoint: NewWebhookEndpoint): Promise<void> {
    await this.db.write(
      `${INSERT_ENDPOINT} ON CONFLICT (id) DO UPDATE SET url = excluded.url, events = excluded.events,
         description = excluded.description, secret = excluded.secret, enabled = true,
         disabled_reason = NULL, updated_at = excluded.updated_at`,
      endpointValues(endpoint),
      'durable',
    );
  }

  async getEndpoint(id: string): Promise<WebhookEndpoint | undefined> {
    const { rows } = await this.db.query<EndpointRow>('SELECT * FROM webhook_endpoints WHERE id = $1', [id]);
    return rows[0] && toEndpoint(rows[0]);
  }

  async listEndpoints(): Promise<WebhookEndpoint[]> {
    const { rows } = await this.db.query<EndpointRow>(
      'SELECT * FROM webhook_endpoints ORDER BY created_at, id',
    );
    return rows.map(toEndpoint);
  }

  updateEndpoint(
    id: string,
    change: WebhookEndpointChange,
    now: number,
  ): Promise<WebhookEndpoint | undefined> {
    return this.db.transaction(async (sql) => {
      const { rows } = await sql.query<EndpointRow>(
        `UPDATE webhook_endpoints SET
           url = COALESCE($2, url), events = COALESCE($3, events), description = COALESCE($4, description),
           enabled = COALESCE($5, enabled),
           disabled_reason = CASE WHEN COALESCE($5, enabled) THEN NULL ELSE COALESCE(disabled_reason, 'disabled') END,
           updated_at = $6
         WHERE id = $1 RETURNING *`,
        [
          id,
          change.url ?? null,
          change.events ?? null,
          change.description ?? null,
          change.enabled ?? null,
          now,
        ],
      );
      const row = rows[0];
      if (!row) return undefined;
      if (!row.enabled) await endPending(sql, id, 'endpoint disabled', now);
      return toEndpoint(row);
    });
  }

  async deleteEndpoint(id: string): Promise<boolean> {
    // Deliveries and their tries go with it (ON DELETE CASCADE).
    const result = await this.db.write('DELETE FROM webhook_endpoints WHERE id = $1', [id], 'durable');
    return (result.rowCount ?? 0) > 0;
  }

  async takeDeliveries(now: number, limit: number, holdMs: number, fair?: FairTake): Promise<DueDelivery[]> {
    // Per endpoint, its oldest due (one index range each, few endpoints), then the oldest of those.
    const { rows } = await this.db.write<PgDeliveryRow & { url: string; secret: string; enabled: boolean }>(
      `WITH due AS (
         SELECT d.id FROM webhook_endpoints e
         CROSS JOIN LATERAL (
           SELECT id, next_attempt_at FROM webhook_deliveries
            WHERE endpoint_id = e.id AND next_attempt_at <= $1
            ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED
         ) d
         WHERE e.id <> ALL ($5::text[])
         ORDER BY d.next_attempt_at LIMIT $2
       ),
       taken AS (
         UPDATE webhook_deliveries d SET attempts = d.attempts + 1, next_attempt_at = $3
         FROM due WHERE d.id = due.id
         RETURNING d.*
       )
       SELECT t.id::text AS id, t.endpoint_id, t.event_id::text AS event_id, t.event_type, t.job_id, t.status,
              t.attempts, t.next_attempt_at, t.created_at, e.url, e.secret, e.enabled
         FROM taken t JOIN webhook_endpoints e ON e.id = t.endpoint_id
        ORDER BY t.next_attempt_at, t.id`,
      [now, limit, now + holdMs, fair?.perEndpoint ?? limit, fair?.skip ?? []],
      'light',
    );
    if (rows.length === 0) return [];
    const events = await this.db.query<
      PgEventRow & { to_list: { address: string }[] | null; subject: string | null }
    >(
      `SELECT ${PG_EVENT_COLUMNS.replace('j.message_id', "j.message_id, j.content->'to' AS to_list, j.content->>'subject' AS subject")}
        WHERE e.id = ANY($1::bigint[])`,
      [rows.map((row) => row.event_id)],
    );
    const byId = new Map(events.rows.map((row) => [row.id, row]));
    return rows.flatMap((row) => {
      const event = byId.get(row.event_id);
      if (!event) return [];
      return [
        {
          id: row.id,
          attempt: row.attempts,
          createdAt: Number(row.created_at),
          eventType: row.event_type as WebhookEventType,
          endpoint: { id: row.endpoint_id, url: row.url, secret: row.secret, enabled: row.enabled },
          event: toLoggedEvent(event),
          to: (event.to_list ?? []).map((mailbox) => mailbox.address),
          subject: event.subject ?? '',
        },
      ];
    });
  }

  async recordDeliveries(results: readonly DeliveryResult[]): Promise<void> {
    if (results.length === 0) return;
    await this.db.transaction(async (sql) => {
      for (const result of results) await recordOne(sql, result);
    }, 'light');
  }

  async listDeliveries(endpointId: string, limit: number, before?: string): Promise<WebhookDelivery[]> {
    const { rows } = await this.db.query<PgDeliveryRow>(
      `SELECT ${DELIVERY_COLUMNS} FROM webhook_deliveries
        WHERE endpoint_id = $1 AND ($2::bigint IS NULL OR id < $2::bigint) ORDER BY id DESC LIMIT $3`,
      [endpointId, before ?? null, limit],
    );
    if (rows.length === 0) return [];
    const tries = await this.db.query<AttemptRow & { delivery_id: string }>(
      `SELECT delivery_id::text AS delivery_id, at, status_code, error, duration_ms FROM (
         SELECT a.*, row_number() OVER (PARTITION BY delivery_id ORDER BY at DESC) AS n
           FROM webhook_attempts a WHERE delivery_id = ANY($1::bigint[])
       ) numbered WHERE n <= $2 ORDER BY at DESC`,
      [rows.map((row) => row.id), LOG_TRIES],
    );
    const logs = new Map<string, DeliveryAttempt[]>();
    for (const row of tries.rows) {
      const log = logs.get(row.delivery_id) ?? [];
      log.push(toAttempt(row));
      logs.set(row.delivery_id, log);
    }
    return rows.map((row) => toDelivery(row, logs.get(row.id) ?? []));
  }

  async pruneDeliveries(before: number): Promise<number> {
    const result = await this.db.write(
      'DELETE FROM webhook_deliveries WHERE created_at < $1 AND next_attempt_at IS NULL',
      [before],
      'light',
    );
    return result.rowCount ?? 0;
  }
}

async function recordOne(
  sql: Sql,
  { deliveryId, endpointId, attempt, outcome, next }: DeliveryResult,
): Promise<void> {
  const { status, nextAttemptAt } = deliveryState(next);
  const updated = await sql.query(
    `UPDATE webhook_deliveries SET status = $3, next_attempt_at = $4
      WHERE id = $1 AND attempts = $2 AND status = 'pending'`,
    [deliveryId, attempt, status, nextAttemptAt],
  );
  if (!updated.rowCount) return; // a stale dispatcher's late result
  await sql.query(
    'INSERT INTO webhook_attempts (delivery_id, at, status_code, error, duration_ms) VALUES ($1, $2, $3, $4, $5)',
    [
      deliveryId,
      outcome.at,
      outcome.statusCode ?? null,
      outcome.error ?? null,
      Math.round(outcome.durationMs),
    ],
  );
  if (next.kind === 'failed' && next.disableEndpoint) {
    const { reason, unlessDeliveredSince } = next.disableEndpoint;
    const disabled = await sql.query(
      `UPDATE webhook_endpoints e SET enabled = false, disabled_reason = $2, updated_at = $3 WHERE e.id = $1 AND e.enabled
         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id
                          WHERE d.endpoint_id = e.id AND a.at >= $4 AND a.status_code BETWEEN 200 AND 299)`,
      [endpointId, reason, outcome.at, unlessDeliveredSince ?? Number.MAX_SAFE_INTEGER],
    );
    if (disabled.rowCount) await endPending(sql, endpointId, `endpoint disabled: ${reason}`, outcome.at);
  }
}

/** Fails an endpoint's pending deliveries (it was turned off): they stay in its log. */
async function endPending(sql: Sql, endpointId: string, reason: string, now: number): Promise<void> {
  await sql.query(
    `WITH ended AS (
       UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL
        WHERE endpoint_id = $1 AND status = 'pending' RETURNING id
     )
     INSERT INTO webhook_attempts (delivery_id, at, status_code, error, duration_ms)
     SELECT id, $3, NULL, $2, 0 FROM ended`,
    [endpointId, reason, now],
  );
}

function endpointValues(endpoint: NewWebhookEndpoint): unknown[] {
  return [
    endpoint.id,
    endpoint.url,
    endpoint.events,
    endpoint.description ?? null,
    endpoint.secret,
    endpoint.source,
    endpoint.createdAt,
  ];
}
