import type { EventFeed, EventLog, LoggedEvent } from './event-log.js';

/** How many events one read takes; a busier log is read again at once. */
const READ_LIMIT = 1000;

/**
 * An event feed that reads the log's new events every `intervalMs` while anyone listens. Right for
 * a store whose ids are handed out in commit order (SQLite: one writer), where "after the last id
 * read" misses nothing. 50 ms keeps a transition's way to a live client well under 100 ms for the
 * cost of one indexed read, which finds nothing while the system is idle. A listener hears what
 * commits after it subscribed, and perhaps a little before (up to one interval); to resume from an
 * older event, read the log.
 */
export class PollingEventFeed implements EventFeed {
  private readonly listeners = new Set<(events: readonly LoggedEvent[]) => void>();
  private cursor = '0';
  private timer: NodeJS.Timeout | undefined;
  private reading = false;

  constructor(
    private readonly log: EventLog,
    private readonly intervalMs = 50,
    private readonly onError: (error: unknown) => void = () => {},
  ) {}

  async start(): Promise<void> {
    this.cursor = await this.log.lastEventId();
    this.timer = setInterval(() => void this.read(), this.intervalMs);
    this.timer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    this.listeners.clear();
  }

  subscribe(listener: (events: readonly LoggedEvent[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private async read(): Promise<void> {
    if (this.reading) return;
    this.reading = true;
    try {
      // Nobody listens: keep the cursor at the log's end (max(id), no rows read or parsed), so a
      // listener that comes gets what commits from then on, not a backlog nobody wanted.
      if (this.listeners.size === 0) {
        this.cursor = await this.log.lastEventId();
        return;
      }
      for (;;) {
        const events = await this.log.eventsAfter(this.cursor, READ_LIMIT);
        if (events.length === 0) break;
        this.cursor = events[events.length - 1]!.id;
        for (const listener of this.listeners) listener(events);
        if (events.length < READ_LIMIT) break;
      }
    } catch (error) {
      this.onError(error);
    } finally {
      this.reading = false;
    }
  }
}
