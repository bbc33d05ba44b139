/**
 * The event log: every job transition the Store committed, in commit order, for live status
 * streams and webhooks. Events are the rows of a job's history (`JobEvent`) with a store-wide id
 * that grows with each commit, so a client that lost its connection resumes after the last id it saw.
 */
import type { JobEventType } from '../domain/email.js';

export interface LoggedEvent {
  /** Store-wide and increasing, as a decimal string (PostgreSQL's bigint ids pass 2^53 in theory). */
  readonly id: string;
  readonly jobId: string;
  readonly type: JobEventType;
  readonly at: number;
  readonly attempt: number;
  readonly detail: Readonly<Record<string, unknown>>;
  /** The job's tags and metadata, which never change: what subscribers filter and correlate on. */
  readonly tags: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
  readonly messageId: string;
}

export interface EventLog {
  /**
   * True when ids are handed out in commit order (SQLite: one writer), so an event with a lower id
   * than one already seen is one already seen. False on PostgreSQL, where a transaction may commit
   * events with lower ids after another's: `eventsAfter` then also returns those.
   */
  readonly idsFollowCommits: boolean;
  /**
   * What a reader that has seen event `afterId` (and everything that committed before it) has not
   * seen yet, by id, at most `limit`: every event with a greater id and, where ids do not follow
   * commits, those with lower ids from transactions that were still running when `afterId` was
   * written. So it may repeat a few events already seen (readers deduplicate by id), never miss one.
   */
  eventsAfter(afterId: string, limit: number): Promise<LoggedEvent[]>;
  /** The given events (those that exist), oldest first. */
  eventsByIds(ids: readonly string[]): Promise<LoggedEvent[]>;
  /** The newest event's id, '0' when there is none. */
  lastEventId(): Promise<string>;
}

/**
 * Events as they commit, in whatever process committed them: what live status streams listen to.
 * Listeners get batches in commit order; a listener that throws is logged by the caller, not here.
 */
export interface EventFeed {
  start(): Promise<void>;
  close(): Promise<void>;
  /**
   * `interrupted`: the feed lost events it cannot hand on (it was cut off for too long); a listener
   * serving clients should end them, so they resume from the log with their own last id.
   */
  subscribe(listener: (events: readonly LoggedEvent[]) => void, interrupted?: () => void): () => void;
}

/** Compares two event ids (decimal strings without leading zeros). */
export function compareEventIds(a: string, b: string): number {
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

/** The largest id a store hands out: PostgreSQL's bigint (SQLite's INTEGER is the same 64 bits). */
const MAX_EVENT_ID = '9223372036854775807';

/** True for a well-formed event id (what a client may send as Last-Event-ID), within bigint range. */
export function isEventId(value: string): boolean {
  return /^(0|[1-9][0-9]{0,18})$/.test(value) && compareEventIds(value, MAX_EVENT_ID) <= 0;
}
