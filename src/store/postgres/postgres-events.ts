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
 * How far below a resume point `eventsAfter` looks for events of transactions that were still
 * running when it was written: they took their ids before it, and Mailroom's transactions are
 * short, so a few thousand ids cover them; the bound keeps the read one primary-key range.
 */
const LATE_COMMIT_LOOKBACK_IDS = 10_000;

/**
 * The event log on PostgreSQL. Ids come from a sequence, so they are not in commit order across
 * concurrent transactions: a transaction holding lower ids can commit after one holding higher
 * ids. Each event row keeps its transaction id and the oldest transaction running when it was
 * written (migration 5), which is what `eventsAfter` needs to return late commits too.
 * PostgresEventFeed follows NOTIFY, which comes in commit order.
 */
export class PostgresEvents implements EventLog {
  readonly idsFollowCommits = false;

  constructor(private readonly db: Database) {}

  async eventsAfter(afterId: string, limit: number): Promise<LoggedEvent[]> {
    // An event that commits after the one at afterId with a lower id belongs to another
    // transaction that was running when that one was written, so its tx_id >= that one's tx_xmin.
    // (The same transaction's events committed with it: the reader has them.)
    const { rows } = await this.db.query<PgEventRow>(
      `WITH seen AS (SELECT tx_id, tx_xmin FROM job_events WHERE id = $1::bigint)
       SELECT ${PG_EVENT_COLUMNS}
        WHERE e.id > $1::bigint - $3::bigint
          AND (e.id > $1::bigint
               OR (e.id < $1::bigint
                   AND EXISTS (SELECT 1 FROM seen WHERE e.tx_id >= seen.tx_xmin AND e.tx_id <> seen.tx_id)))
        ORDER BY e.id LIMIT $2`,
      [afterId, limit, LATE_COMMIT_LOOKBACK_IDS],
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
/** After a reconnect, the most events it reads (in pages) to catch up; past that its listeners are told. */
const CATCH_UP_LIMIT = 10_000;
const CATCH_UP_PAGE = 1000;
/** Ids handed on lately, so a catch-up (which may repeat a few) hands none on twice. */
const RECENT_IDS = 20_000;
/**
 * How often the LISTEN connection is asked a question, and how long it has to answer: a connection
 * that died without a word (a failover, a NAT timeout) would otherwise leave the feed silent.
 */
const PROBE_INTERVAL_MS = 15_000;
const PROBE_TIMEOUT_MS = 5000;

interface Listener {
  readonly events: (events: readonly LoggedEvent[]) => void;
  readonly interrupted: (() => void) | undefined;
}

/**
 * Follows the events every process commits: one connection LISTENs on the schema's channel, which
 * migration 5's trigger NOTIFYs with the new event ids as each transaction commits (PostgreSQL
 * delivers notifications in commit order). The ids of one turn are read in one query and handed to
 * listeners in order. The connection is probed every 15 s; when it drops, the feed reconnects with
 * backoff and catches up from the log on what committed meanwhile (late commits with lower ids
 * included, none handed on twice); if that is more than CATCH_UP_LIMIT, listeners are told they
 * were interrupted instead.
 */
export class PostgresEventFeed implements EventFeed {
  private readonly listeners = new Set<Listener>();
  private client: pg.Client | undefined;
  private closed = false;
  private pendingIds: string[] = [];
  /** Reads run one after another, so batches reach listeners in commit order. */
  private reading: Promise<void> = Promise.resolve();
  private newestSeen = '0';
  private readonly recent = new Set<string>();
  private reconnectDelay = RECONNECT_MIN_MS;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private probeTimer: NodeJS.Timeout | undefined;
  /** Connections already given up on: 'error' and 'end' may both report one. */
  private readonly lostClients = new WeakSet<pg.Client>();

  constructor(private readonly options: PostgresEventFeedOptions) {}

  private get channel(): string {
    return `job_events.${this.options.schema}`;
  }

  async start(): Promise<void> {
    this.newestSeen = await this.options.log.lastEventId();
    await this.connect();
    this.probeTimer = setInterval(() => this.probe(), PROBE_INTERVAL_MS);
    this.probeTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.probeTimer);
    this.listeners.clear();
    await this.client?.end().catch(() => {});
    await this.reading;
  }

  subscribe(listener: (events: readonly LoggedEvent[]) => void, interrupted?: () => void): () => void {
    const entry: Listener = { events: listener, interrupted };
    this.listeners.add(entry);
    return () => this.listeners.delete(entry);
  }

  private async connect(): Promise<void> {
    const client = new pg.Client({
      connectionString: this.options.url,
      connectionTimeoutMillis: this.options.connectTimeoutMs,
      keepAlive: true,
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

  private probe(): void {
    const client = this.client;
    if (!client) return;
    let timer: NodeJS.Timeout | undefined;
    const silent = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`the event feed connection did not answer within ${PROBE_TIMEOUT_MS} ms`)),
        PROBE_TIMEOUT_MS,
      );
    });
    Promise.race([client.query('SELECT 1'), silent])
      .catch((error: unknown) => this.lost(client, error))
      .finally(() => clearTimeout(timer));
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
    if (this.client) this.enqueue(() => this.catchUp());
  }

  /** What committed while the connection was down, from the log; told as an interruption past the limit. */
  private async catchUp(): Promise<LoggedEvent[]> {
    const missed: LoggedEvent[] = [];
    let cursor = this.newestSeen;
    while (missed.length < CATCH_UP_LIMIT) {
      const page = await this.options.log.eventsAfter(cursor, CATCH_UP_PAGE);
      missed.push(...page.filter((event) => !this.recent.has(event.id)));
      const last = page.at(-1)?.id;
      if (page.length < CATCH_UP_PAGE || last === undefined || compareEventIds(last, cursor) <= 0)
        return missed;
      cursor = last;
    }
    this.newestSeen = await this.options.log.lastEventId();
    for (const { interrupted } of this.listeners) interrupted?.();
    return [];
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
      // Nobody to read them for; still seen, so a catch-up after a reconnect starts here.
      this.remember(ids);
      return;
    }
    // In the order notified (commit order), which ids need not follow.
    const position = new Map(ids.map((id, index) => [id, index]));
    this.enqueue(async () =>
      (await this.options.log.eventsByIds(ids)).sort((a, b) => position.get(a.id)! - position.get(b.id)!),
    );
  }

  private remember(ids: readonly string[]): void {
    for (const id of ids) {
      if (compareEventIds(id, this.newestSeen) > 0) this.newestSeen = id;
      this.recent.add(id);
    }
    // A Set iterates in insertion order: the oldest go first.
    for (const id of this.recent) {
      if (this.recent.size <= RECENT_IDS) break;
      this.recent.delete(id);
    }
  }

  private enqueue(read: () => Promise<LoggedEvent[]>): void {
    this.reading = this.reading.then(async () => {
      try {
        const events = await read();
        if (events.length === 0) return;
        this.remember(events.map((event) => event.id));
        for (const listener of this.listeners) listener.events(events);
      } catch (error) {
        this.options.onError?.(error);
      }
    });
  }
}
