import type { Logger } from 'pino';
import { compareEventIds, type EventFeed, type EventLog, type LoggedEvent } from '../store/event-log.js';

/** What one client follows; every given condition must hold. */
export interface LiveFilter {
  readonly emailId?: string;
  readonly tag?: string;
  /** `email.sent` and the like; absent: every type. */
  readonly types?: ReadonlySet<string>;
}

export interface LiveClient {
  readonly filter: LiveFilter;
  /**
   * The client's Last-Event-ID: it first gets the stored events after it. Absent: only events that
   * reach the feed from now on. (Not "after the log's newest id": on PostgreSQL ids are not in
   * commit order, and a transaction with a lower id may still commit; the feed has it in order.)
   */
  readonly afterId?: string;
  /** Sends events in order. False when the client cannot keep up: the hub drops it. */
  send(events: readonly LoggedEvent[]): boolean;
  /** The replay stopped at REPLAY_LIMIT: events between `after` and the live stream were skipped. */
  gap(after: string): void;
  /** The hub is done with the client (too slow, or shutting down). */
  end(reason: string): void;
}

/** At most this many stored events are read to replay a resuming client; past them it gets a gap. */
const REPLAY_LIMIT = 10_000;
const REPLAY_PAGE = 500;
/**
 * How long a resumed client's replayed ids are remembered, to drop the feed's copies of them: the
 * feed may run a little behind the log the replay read (a poll interval, a NOTIFY round trip).
 */
const REPLAYED_MEMORY_MS = 10_000;

export function matches(filter: LiveFilter, event: LoggedEvent): boolean {
  return (
    (filter.emailId === undefined || event.jobId === filter.emailId) &&
    (filter.tag === undefined || event.tags.includes(filter.tag)) &&
    (filter.types === undefined || filter.types.has(`email.${event.type}`))
  );
}

/**
 * Fans the store's event feed out to live clients (SSE and WebSocket), each with its filter. A new
 * client gets live events as they come. A resuming one (Last-Event-ID) first gets the stored events
 * after that id, while live events that arrive meanwhile wait; then the waiting ones (less any
 * already replayed), then live events as they come. The hub listens to the feed only while it has
 * clients.
 */
export class LiveHub {
  private readonly clients = new Map<
    LiveClient,
    { buffer: LoggedEvent[] | undefined; replayed: Set<string> }
  >();
  private unsubscribe: (() => void) | undefined;

  constructor(
    private readonly feed: EventFeed,
    private readonly log: EventLog,
    private readonly logger: Logger,
  ) {}

  get size(): number {
    return this.clients.size;
  }

  /** Starts following for a client; call the returned function when it goes away. */
  follow(client: LiveClient): () => void {
    const state = {
      buffer: client.afterId === undefined ? undefined : ([] as LoggedEvent[]),
      replayed: new Set<string>(),
    };
    this.clients.set(client, state);
    this.unsubscribe ??= this.feed.subscribe(
      (events) => this.publish(events),
      () => this.closeAll('the event feed was interrupted: reconnect with Last-Event-ID to resume'),
    );
    if (client.afterId !== undefined) void this.replay(client, client.afterId);
    return () => this.drop(client);
  }

  /** Ends every client (shutdown): their streams close, and they reconnect elsewhere with Last-Event-ID. */
  closeAll(reason: string): void {
    for (const client of [...this.clients.keys()]) {
      this.drop(client);
      client.end(reason);
    }
  }

  private drop(client: LiveClient): void {
    this.clients.delete(client);
    if (this.clients.size === 0) {
      this.unsubscribe?.();
      this.unsubscribe = undefined;
    }
  }

  private publish(events: readonly LoggedEvent[]): void {
    for (const [client, state] of this.clients) {
      const wanted = events.filter((event) => matches(client.filter, event) && !state.replayed.has(event.id));
      if (wanted.length === 0) continue;
      if (state.buffer) state.buffer.push(...wanted);
      else this.deliver(client, wanted);
    }
  }

  private deliver(client: LiveClient, events: readonly LoggedEvent[]): void {
    let sent = false;
    try {
      sent = client.send(events);
    } catch (error) {
      this.logger.debug({ err: error }, 'live client send failed');
    }
    if (!sent && this.clients.has(client)) {
      this.drop(client);
      client.end('too slow: reconnect with Last-Event-ID to resume');
    }
  }

  private async replay(client: LiveClient, afterId: string): Promise<void> {
    const state = this.clients.get(client);
    if (!state) return;
    let cursor = afterId;
    try {
      for (let read = 0; read < REPLAY_LIMIT; read += REPLAY_PAGE) {
        const page = await this.log.eventsAfter(cursor, REPLAY_PAGE);
        if (!this.clients.has(client)) return;
        if (page.length === 0) break;
        const last = page[page.length - 1]!.id;
        if (compareEventIds(last, cursor) > 0) cursor = last;
        // Where ids do not follow commits a page may repeat events of the one before: once each.
        const wanted = page.filter((event) => matches(client.filter, event) && !state.replayed.has(event.id));
        for (const event of wanted) state.replayed.add(event.id);
        if (wanted.length > 0) this.deliver(client, wanted);
        if (page.length < REPLAY_PAGE) break;
        if (read + REPLAY_PAGE >= REPLAY_LIMIT) client.gap(cursor);
      }
    } catch (error) {
      this.logger.warn({ err: error }, 'live status replay failed');
      this.drop(client);
      client.end('could not read the event log');
      return;
    }
    if (!this.clients.has(client)) return;
    // Live events that came during the replay. Where ids follow commits, one at or below afterId
    // is one the client had; elsewhere it may be a late commit, which it has not seen.
    const waiting = (state.buffer ?? []).filter(
      (event) =>
        !state.replayed.has(event.id) &&
        (!this.log.idsFollowCommits || compareEventIds(event.id, afterId) > 0),
    );
    state.buffer = undefined;
    setTimeout(() => state.replayed.clear(), REPLAYED_MEMORY_MS).unref();
    if (waiting.length > 0) this.deliver(client, waiting);
  }
}
