import pg from 'pg';
import type { JobEventType } from '../../domain/email.js';
import { compareEventIds, type EventFeed, type EventLog, type LoggedEvent } from '../event-log.js';
import type { Database } from './database.js';

export interface PgEventRow {
  id: string;
  job_id: string;
  type: string;
  at: number;
  attempt: number;
  detail: Record<string, unknown>;
  tags: string[];
  metadata: Record<string, string>;
  message_id: string;
}

/** Ids as text: a bigint identity could outgrow a JavaScript number. */
export const PG_EVENT_COLUMNS = `e.id::text AS id, e.job_id, e.type, e.at, e.attempt, e.detail, j.tags, j.metadata, j.message_id
  FROM job_events e JOIN jobs j ON j.id = e.job_id`;

/**
 * The event log on PostgreSQL. Ids come from a sequence, so they are not in commit order across
 * concurrent transactions: "after id N" is right for resuming (a client that saw N), but a feed
 * cannot follow the log that way without missing late commits. PostgresEventFeed follows NOTIFY.
 */
export class PostgresEvents implements EventLog {
  constructor(private readonly db: Database) {}

  async eventsAfter(afterId: string, limit: number): Promise<LoggedEvent[]> {
    const { rows } = await this.db.query<PgEventRow>(
      `SELECT ${PG_EVENT_COLUMNS} WHERE e.id > $1::bigint ORDER BY e.id LIMIT $2`,
      [afterId, limit],
    );
    return rows.map(toLoggedEvent);
  }

  async eventsByIds(ids: readonly string[]): Promise<LoggedEvent[]> {
    if (ids.length === 0) return [];
    const { rows } = await this.db.query<PgEventRow>(
      `SELECT ${PG_EVENT_COLUMNS} WHERE e.id = ANY($1::bigint[]) ORDER BY e.id`,
      [ids],
    );
    return rows.map(toLoggedEvent);
  }

  async lastEventId(): Promise<string> {
    const { rows } = await this.db.query<{ id: string | null }>('SELECT max(id)::text AS id FROM job_events');
    return rows[0]?.id ?? '0';
  }
}

export function toLoggedEvent(row: PgEventRow): LoggedEvent {
  return {
    id: row.id,
    jobId: row.job_id,
    type: row.type as JobEventType,
    at: Number(row.at),
    attempt: row.attempt,
    detail: row.detail,
    tags: row.tags,
    metadata: row.metadata,
    messageId: row.message_id,
  };
}

export interface PostgresEventFeedOptions {
  readonly url: string;
  readonly schema: string;
  readonly log: EventLog;
  readonly connectTimeoutMs: number;
  readonly onError?: (error: unknown) => void;
}

const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 5000;
/** After a reconnect, how many events it reads to catch up on what was NOTIFYed meanwhile. */
const CATCH_UP_LIMIT = 1000;

/**
 * Follows the events every process commits: one connection LISTENs on the schema's channel, which
 * migration 5's trigger NOTIFYs with the new event ids as each transaction commits (PostgreSQL
 * delivers notifications in commit order). The ids of one turn are read in one query and handed to
 * listeners in order. When the connection drops it reconnects with backoff and catches up on
 * events after the newest it had seen (best effort: an event of a transaction that committed late
 * with a lower id than that is not caught up).
 */
export class PostgresEventFeed implements EventFeed {
  private readonly listeners = new Set<(events: readonly LoggedEvent[]) => void>();
  private client: pg.Client | undefined;
  private closed = false;
  private pendingIds: string[] = [];
  /** Reads run one after another, so batches reach listeners in commit order. */
  private reading: Promise<void> = Promise.resolve();
  private newestSeen = '0';
  private reconnectDelay = RECONNECT_MIN_MS;
  private reconnectTimer: NodeJS.Timeout | undefined;
  /** Connections already given up on: 'error' and 'end' may both report one. */
  private readonly lostClients = new WeakSet<pg.Client>();

  constructor(private readonly options: PostgresEventFeedOptions) {}

  private get channel(): string {
    return `job_events.${this.options.schema}`;
  }

  async start(): Promise<void> {
    this.newestSeen = await this.options.log.lastEventId();
    await this.connect();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    this.listeners.clear();
    await this.client?.end().catch(() => {});
    await this.reading;
  }

  subscribe(listener: (events: readonly LoggedEvent[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private async connect(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.options.url,
      connectionTimeoutMillis: this.options.connectTimeoutMs,
      // Names the schema, so an operator (or a test) can tell which deployment a connection serves.
      application_name: `mailroom-events ${this.options.schema}`,
    });
    client.on('notification', (message) => {
      if (message.channel === this.channel && message.payload) this.receive(message.payload.split(','));
    });
    client.on('error', (error) => this.lost(client, error));
    client.on('end', () => this.lost(client, new Error('the event feed connection ended')));
    try {
      await client.connect();
      // The schema name passed checkSchemaName: a plain identifier; the channel is quoted whole.
      await client.query(`LISTEN "${this.channel}"`);
    } catch (error) {
      this.lost(client, error);
      return;
    }
    this.client = client;
    this.reconnectDelay = RECONNECT_MIN_MS;
  }

  private lost(client: pg.Client, error: unknown): void {
    if (this.closed || this.lostClients.has(client)) return;
    this.lostClients.add(client);
    if (this.client === client) this.client = undefined;
    client.removeAllListeners('end');
    client.end().catch(() => {});
    this.options.onError?.(error);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.reconnect(), this.reconnectDelay);
    this.reconnectTimer.unref();
    this.reconnectDelay = Math.min(this.reconnectDelay * 2, RECONNECT_MAX_MS);
  }

  private async reconnect(): Promise<void> {
    if (this.closed) return;
    await this.connect();
    if (this.client) this.enqueue(() => this.options.log.eventsAfter(this.newestSeen, CATCH_UP_LIMIT));
  }

  private receive(ids: string[]): void {
    const first = this.pendingIds.length === 0;
    this.pendingIds.push(...ids);
    // Notifications that arrive in the same turn share one read.
    if (first) setImmediate(() => this.flush());
  }

  private flush(): void {
    const ids = this.pendingIds;
    this.pendingIds = [];
    if (this.listeners.size === 0) {
      // Nobody to read them for; still the newest seen, so a catch-up after a reconnect starts here.
      for (const id of ids) if (compareEventIds(id, this.newestSeen) > 0) this.newestSeen = id;
      return;
    }
    // In the order notified (commit order), which ids need not follow.
    const position = new Map(ids.map((id, index) => [id, index]));
    this.enqueue(async () =>
      (await this.options.log.eventsByIds(ids)).sort((a, b) => position.get(a.id)! - position.get(b.id)!),
    );
  }

  private enqueue(read: () => Promise<LoggedEvent[]>): void {
    this.reading = this.reading.then(async () => {
      try {
        const events = await read();
        if (events.length === 0) return;
        for (const { id } of events) if (compareEventIds(id, this.newestSeen) > 0) this.newestSeen = id;
        for (const listener of this.listeners) listener(events);
      } catch (error) {
        this.options.onError?.(error);
      }
    });
  }
}
