import type Database from 'better-sqlite3';
import type { JobEventType } from '../../domain/email.js';
import type { EventLog, LoggedEvent } from '../event-log.js';

interface EventRow {
  id: number;
  job_id: string;
  type: string;
  at: number;
  attempt: number;
  detail: string;
  tags: string;
  metadata: string;
  message_id: string;
}

const EVENT_COLUMNS = `e.id, e.job_id, e.type, e.at, e.attempt, e.detail, j.tags, j.metadata, j.message_id
  FROM job_events e JOIN jobs j ON j.id = e.job_id`;

/**
 * The event log on SQLite. One writer at a time means ids are handed out in commit order, so "every
 * event after id N" read at any moment is exactly what committed after N.
 */
export class SqliteEvents implements EventLog {
  readonly idsFollowCommits = true;
  private readonly after: Database.Statement<[number, number], EventRow>;
  private readonly last: Database.Statement<[], { id: number | null }>;

  constructor(private readonly db: Database.Database) {
    this.after = db.prepare(`SELECT ${EVENT_COLUMNS} WHERE e.id > ? ORDER BY e.id LIMIT ?`);
    this.last = db.prepare('SELECT max(id) AS id FROM job_events');
  }

  async eventsAfter(afterId: string, limit: number): Promise<LoggedEvent[]> {
    return this.after.all(Number(afterId), limit).map(toLoggedEvent);
  }

  async eventsByIds(ids: readonly string[]): Promise<LoggedEvent[]> {
    if (ids.length === 0) return [];
    const rows = this.db
      .prepare<number[], EventRow>(
        `SELECT ${EVENT_COLUMNS} WHERE e.id IN (${ids.map(() => '?').join(',')}) ORDER BY e.id`,
      )
      .all(...ids.map(Number));
    return rows.map(toLoggedEvent);
  }

  async lastEventId(): Promise<string> {
    return String(this.last.get()?.id ?? 0);
  }
}

export function toLoggedEvent(row: EventRow): LoggedEvent {
  return {
    id: String(row.id),
    jobId: row.job_id,
    type: row.type as JobEventType,
    at: row.at,
    attempt: row.attempt,
    detail: JSON.parse(row.detail) as Record<string, unknown>,
    tags: JSON.parse(row.tags) as string[],
    metadata: JSON.parse(row.metadata) as Record<string, string>,
    messageId: row.message_id,
  };
}

export { EVENT_COLUMNS as SQLITE_EVENT_COLUMNS, type EventRow as SqliteEventRow };
