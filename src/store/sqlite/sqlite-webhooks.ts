import type Database from 'better-sqlite3';
import type {
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
  LOG_TRIES,
  toAttempt,
  toDelivery,
  toEndpoint as toDomainEndpoint,
} from '../webhook-rows.js';
import type { DeliveryResult, DueDelivery, FairTake, WebhookStore } from '../webhook-store.js';
import { SQLITE_EVENT_COLUMNS, type SqliteEventRow, toLoggedEvent } from './sqlite-events.js';

/** SQLite returns integers as numbers. */
type SqliteDeliveryRow = DeliveryRow & { id: number; event_id: number; created_at: number };

/** A webhook_endpoints row as SQLite returns it (see migration 3). */
interface EndpointRow {
  id: string;
  url: string;
  events: string;
  description: string | null;
  secret: string;
  enabled: number;
  disabled_reason: string | null;
  source: string;
  created_at: number;
  updated_at: number;
}

/** Runs work in a transaction: `durable` ones are fsync'd before they return. */
export type SqliteCommit = <T>(durable: boolean, work: () => T) => T;

/** Webhook endpoints and the delivery queue on SQLite (see webhook-store.ts). */
export class SqliteWebhooks implements WebhookStore {
  /** The statements dispatchers run every poll and for every delivery, compiled once. */
  private readonly hot: ReturnType<typeof prepareHot>;

  constructor(
    private readonly db: Database.Database,
    private readonly commit: SqliteCommit,
  ) {
    this.hot = prepareHot(db);
  }

  async createEndpoint(endpoint: NewWebhookEndpoint): Promise<boolean> {
    return this.commit(true, () => {
      const result = this.db
        .prepare(
          `INSERT INTO webhook_endpoints (id, url, events, description, secret, enabled, source, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
        )
        .run(...endpointValues(endpoint));
      return result.changes > 0;
    });
  }

  async putEndpoint(endpoint: NewWebhookEndpoint): Promise<void> {
    this.commit(true, () => {
      this.db
        .prepare(
          `INSERT INTO webhook_endpoints (id, url, events, description, secret, enabled, source, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET url = excluded.url, events = excluded.events,
             description = excluded.description, secret = excluded.secret, enabled = 1,
             disabled_reason = NULL, updated_at = excluded.updated_at`,
        )
        .run(...endpointValues(endpoint));
    });
  }

  async getEndpoint(id: string): Promise<WebhookEndpoint | undefined> {
    const row = this.db
      .prepare<[string], EndpointRow>('SELECT * FROM webhook_endpoints WHERE id = ?')
      .get(id);
    return row && toEndpoint(row);
  }

  async listEndpoints(): Promise<WebhookEndpoint[]> {
    return this.db
      .prepare<[], EndpointRow>('SELECT * FROM webhook_endpoints ORDER BY created_at, id')
      .all()
      .map(toEndpoint);
  }

  async updateEndpoint(
    id: string,
    change: WebhookEndpointChange,
    now: number,
  ): Promise<WebhookEndpoint | undefined> {
    return this.commit(true, () => {
      const row = this.db
        .prepare<[string], EndpointRow>('SELECT * FROM webhook_endpoints WHERE id = ?')
        .get(id);
      if (!row) return undefined;
      const enabled = change.enabled ?? row.enabled === 1;
      this.db
        .prepare(
          `UPDATE webhook_endpoints SET url = ?, events = ?, description = ?, enabled = ?, disabled_reason = ?,
             updated_at = ? WHERE id = ?`,
        )
        .run(
          change.url ?? row.url,
          change.events ? eventsColumn(change.events) : row.events,
          change.description ?? row.description,
          enabled ? 1 : 0,
          enabled ? null : (row.disabled_reason ?? 'disabled'),
          now,
          id,
        );
      if (!enabled) this.endPending(id, 'endpoint disabled', now);
      return toEndpoint(
        this.db.prepare<[string], EndpointRow>('SELECT * FROM webhook_endpoints WHERE id = ?').get(id)!,
      );
    });
  }

  async deleteEndpoint(id: string): Promise<boolean> {
    return this.commit(true, () => {
      this.db
        .prepare(
          'DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id FROM webhook_deliveries WHERE endpoint_id = ?)',
        )
        .run(id);
      this.db.prepare('DELETE FROM webhook_deliveries WHERE endpoint_id = ?').run(id);
      return this.db.prepare('DELETE FROM webhook_endpoints WHERE id = ?').run(id).changes > 0;
    });
  }

  async takeDeliveries(now: number, limit: number, holdMs: number, fair?: FairTake): Promise<DueDelivery[]> {
    // Dispatchers ask several times a second: answer "nothing due" with a read, not a transaction.
    if (!this.hot.anyDue.get(now)) return [];
    return this.commit(false, () => {
      const taken = this.hot.take.all({
        hold: now + holdMs,
        now,
        perEndpoint: fair?.perEndpoint ?? limit,
        skip: JSON.stringify(fair?.skip ?? []),
        limit,
      });
      return taken.flatMap((row) => this.describe(row));
    });
  }

  async recordDeliveries(results: readonly DeliveryResult[]): Promise<void> {
    if (results.length === 0) return;
    this.commit(false, () => {
      for (const result of results) this.recordOne(result);
    });
  }

  async listDeliveries(endpointId: string, limit: number, before?: string): Promise<WebhookDelivery[]> {
    const rows = this.db
      .prepare<[string, number, number], SqliteDeliveryRow>(
        'SELECT * FROM webhook_deliveries WHERE endpoint_id = ? AND id < ? ORDER BY id DESC LIMIT ?',
      )
      .all(endpointId, before === undefined ? Number.MAX_SAFE_INTEGER : Number(before), limit);
    const tries = this.db.prepare<[number, number], AttemptRow>(
      'SELECT * FROM webhook_attempts WHERE delivery_id = ? ORDER BY at DESC LIMIT ?',
    );
    return rows.map((row) => toDelivery(row, tries.all(row.id, LOG_TRIES).map(toAttempt)));
  }

  async pruneDeliveries(before: number): Promise<number> {
    return this.commit(false, () => {
      const finished = 'SELECT id FROM webhook_deliveries WHERE created_at < ? AND next_attempt_at IS NULL';
      this.db.prepare(`DELETE FROM webhook_attempts WHERE delivery_id IN (${finished})`).run(before);
      return this.db.prepare(`DELETE FROM webhook_deliveries WHERE id IN (${finished})`).run(before).changes;
    });
  }

  /** What a dispatcher needs to send a delivery: its endpoint, event and the email's To and subject. */
  private describe(row: SqliteDeliveryRow): DueDelivery[] {
    const endpoint = this.hot.endpoint.get(row.endpoint_id);
    const event = this.hot.eventWithEmail.get(row.event_id);
    if (!endpoint || !event) return [];
    const to = (JSON.parse(event.to_list ?? '[]') as { address: string }[]).map((mailbox) => mailbox.address);
    return [
      {
        id: String(row.id),
        attempt: row.attempts,
        createdAt: row.created_at,
        eventType: row.event_type as WebhookEventType,
        endpoint: {
          id: endpoint.id,
          url: endpoint.url,
          secret: endpoint.secret,
          enabled: endpoint.enabled === 1,
        },
        event: toLoggedEvent(event),
        to,
        subject: event.subject ?? '',
      },
    ];
  }

  private recordOne({ deliveryId, endpointId, attempt, outcome, next }: DeliveryResult): void {
    const id = Number(deliveryId);
    const current = this.hot.tryState.get(id);
    if (!current || current.attempts !== attempt || current.status !== 'pending') return;
    this.hot.insertTry.run(
      id,
      outcome.at,
      outcome.statusCode ?? null,
      outcome.error ?? null,
      Math.round(outcome.durationMs),
    );
    const { status, nextAttemptAt } = deliveryState(next);
    this.hot.settle.run(status, nextAttemptAt, id);
    if (next.kind === 'failed' && next.disableEndpoint) {
      const { reason, unlessDeliveredSince } = next.disableEndpoint;
      const disabled = this.db
        .prepare(
          `UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE id = ? AND enabled = 1
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id
                              WHERE d.endpoint_id = webhook_endpoints.id AND a.at >= ?
                                AND a.status_code BETWEEN 200 AND 299)`,
        )
        .run(reason, outcome.at, endpointId, unlessDeliveredSince ?? Number.MAX_SAFE_INTEGER);
      if (disabled.changes > 0) this.endPending(endpointId, `endpoint disabled: ${reason}`, outcome.at);
    }
  }

  /** Fails an endpoint's pending deliveries (it was turned off): they stay in its log. */
  private endPending(endpointId: string, reason: string, now: number): void {
    const pending = this.db
      .prepare<[string], { id: number }>(
        "SELECT id FROM webhook_deliveries WHERE endpoint_id = ? AND status = 'pending'",
      )
      .all(endpointId);
    const note = this.db.prepare(
      'INSERT INTO webhook_attempts (delivery_id, at, status_code, error, duration_ms) VALUES (?, ?, NULL, ?, 0)',
    );
    for (const { id } of pending) note.run(id, now, reason);
    this.db
      .prepare(
        "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL WHERE endpoint_id = ? AND status = 'pending'",
      )
      .run(endpointId);
  }
}

function prepareHot(db: Database.Database) {
  return {
    anyDue: db.prepare<[number], { id: number }>(
      'SELECT id FROM webhook_deliveries WHERE next_attempt_at <= ? LIMIT 1',
    ),
    // Per endpoint, its oldest due (one index range each, few endpoints), then the oldest of those.
    take: db.prepare<
      [{ hold: number; now: number; perEndpoint: number; skip: string; limit: number }],
      SqliteDeliveryRow
    >(
      `UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = @hold
        WHERE id IN (
          SELECT d.id FROM webhook_endpoints e
            JOIN webhook_deliveries d ON d.id IN (
              SELECT id FROM webhook_deliveries
               WHERE endpoint_id = e.id AND next_attempt_at <= @now
               ORDER BY next_attempt_at LIMIT @perEndpoint)
           WHERE e.id NOT IN (SELECT value FROM json_each(@skip))
           ORDER BY d.next_attempt_at LIMIT @limit)
        RETURNING *`,
    ),
    endpoint: db.prepare<[string], EndpointRow>('SELECT * FROM webhook_endpoints WHERE id = ?'),
    eventWithEmail: db.prepare<[number], SqliteEventRow & { to_list: string | null; subject: string | null }>(
      `SELECT ${SQLITE_EVENT_COLUMNS.replace('j.message_id', "j.message_id, json_extract(j.content, '$.to') AS to_list, json_extract(j.content, '$.subject') AS subject")}
        WHERE e.id = ?`,
    ),
    tryState: db.prepare<[number], { attempts: number; status: string }>(
      'SELECT attempts, status FROM webhook_deliveries WHERE id = ?',
    ),
    insertTry: db.prepare(
      'INSERT INTO webhook_attempts (delivery_id, at, status_code, error, duration_ms) VALUES (?, ?, ?, ?, ?)',
    ),
    settle: db.prepare('UPDATE webhook_deliveries SET status = ?, next_attempt_at = ? WHERE id = ?'),
  };
}

/** ` email.sent email.failed `: one instr() finds a type (see migration 3). */
function eventsColumn(events: readonly WebhookEventType[]): string {
  return ` ${events.join(' ')} `;
}

function endpointValues(endpoint: NewWebhookEndpoint) {
  return [
    endpoint.id,
    endpoint.url,
    eventsColumn(endpoint.events),
    endpoint.description ?? null,
    endpoint.secret,
    endpoint.source,
    endpoint.createdAt,
    endpoint.createdAt,
  ] as const;
}

function toEndpoint(row: EndpointRow): WebhookEndpoint {
  return toDomainEndpoint({
    ...row,
    events: row.events.trim().split(' ').filter(Boolean),
    enabled: row.enabled === 1,
  });
}
