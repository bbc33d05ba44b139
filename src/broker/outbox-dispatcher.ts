import type { Logger } from 'pino';
import type { Outbox, OutboxEntry } from '../store/store.js';
import { publishInTraces } from '../telemetry/job-spans.js';
import { tracing } from '../telemetry/tracing.js';
import type { Broker } from './broker.js';

export interface DispatcherOptions {
  /** Entries published per broker round trip (one batch of publisher confirms). */
  readonly batchSize: number;
  /**
   * How long a taken entry stays hidden from other dispatchers. Past it, an entry whose publish was
   * never confirmed (this process died, or the broker failed) is taken and published again.
   */
  readonly holdMs: number;
  /** How often to look for entries when nothing wakes the dispatcher: scheduled jobs come due. */
  readonly pollIntervalMs: number;
  /** How often to run the outbox sweep, the safety net for messages lost outside Mailroom. */
  readonly sweepIntervalMs: number;
  /** A processing or deferred job this long overdue is assumed to have lost its message. */
  readonly staleAfterMs: number;
  /**
   * A publish not confirmed within this long counts as failed (a half-open connection can stall a
   * confirm until heartbeats notice). Its entries are published again after their hold.
   */
  readonly publishTimeoutMs: number;
  readonly logger: Logger;
}

export const DEFAULT_DISPATCHER_OPTIONS: Omit<DispatcherOptions, 'logger'> = {
  batchSize: 256,
  holdMs: 10_000,
  pollIntervalMs: 500,
  sweepIntervalMs: 30_000,
  staleAfterMs: 5 * 60_000,
  publishTimeoutMs: 15_000,
};

/** After a failed publish, wait this long (doubling up to the max) before trying again. */
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10_000;

/**
 * Publishes committed jobs to a network broker through the Store's outbox, closing the gap between
 * "committed" (the 202) and "published": the API commits a job and its outbox entry in one
 * transaction; this loop takes entries, publishes them with publisher confirms, and completes them.
 * Every process with a Store runs one; entries taken by a process that dies come back after the
 * hold, so a committed job is always published at least once (a second copy is harmless: the
 * worker's claim turns it into a no-op).
 */
export class OutboxDispatcher {
  private running = false;
  private wakeRequested = false;
  private loop: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private wakeUp: (() => void) | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private failingSince: number | undefined;

  constructor(
    private readonly outbox: Outbox,
    private readonly broker: Broker,
    private readonly options: DispatcherOptions,
  ) {}

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
    this.sweepTimer = setInterval(() => void this.sweep(), this.options.sweepIntervalMs);
    this.sweepTimer.unref();
  }

  /** New entries were committed in this process: publish them now rather than at the next poll. */
  notify(): void {
    this.wakeRequested = true;
    this.wakeUp?.();
  }

  /** Stops after the batch in flight is confirmed; entries not yet taken stay for any dispatcher. */
  async stop(): Promise<void> {
    this.running = false;
    clearInterval(this.sweepTimer);
    this.wakeUp?.();
    await this.loop;
  }

  private async run(): Promise<void> {
    let backoffMs = BACKOFF_MIN_MS;
    while (this.running) {
      this.wakeRequested = false;
      let published: number;
      try {
        published = await this.publishBatch();
        backoffMs = BACKOFF_MIN_MS;
        if (published > 0) this.recovered();
      } catch (error) {
        this.failed(error);
        // Commits keep waking us during an outage; the backoff must not give way to them.
        await this.sleep(backoffMs, { wakeable: false });
        backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
        continue;
      }
      // A full batch means more are probably waiting; otherwise wait for a commit or the poll.
      if (published < this.options.batchSize && !this.wakeRequested) {
        await this.sleep(this.options.pollIntervalMs);
      }
    }
  }

  /** Takes one batch, publishes it, completes it. Returns how many entries it published. */
  private async publishBatch(): Promise<number> {
    const entries = await this.outbox.take(Date.now(), this.options.batchSize, this.options.holdMs);
    if (entries.length === 0) return 0;
    const ids = entries.map((entry) => entry.jobId);
    try {
      const t = tracing();
      const messages = entries.map(toMessage);
      await withTimeout(
        t
          ? publishInTraces(t, this.broker.name, messages, (traced) => this.broker.publish(traced))
          : this.broker.publish(messages),
        this.options.publishTimeoutMs,
        `the broker did not confirm ${entries.length} publishes within ${this.options.publishTimeoutMs} ms`,
      );
    } catch (error) {
      // Due again at once, so they go out as soon as the broker is back rather than after the hold.
      // Best effort: if this fails too, the hold brings them back anyway.
      await this.outbox.release(ids, Date.now()).catch(() => {});
      throw error;
    }
    await this.outbox.complete(ids);
    return entries.length;
  }

  private async sweep(): Promise<void> {
    try {
      const added = await this.outbox.sweep(Date.now() - this.options.staleAfterMs, 1000);
      if (added > 0) {
        this.options.logger.warn(
          { jobs: added },
          'outbox sweep: republishing overdue jobs whose message was lost outside Mailroom',
        );
        this.notify();
      }
    } catch (error) {
      this.options.logger.warn({ err: error }, 'outbox sweep failed; it runs again shortly');
    }
  }

  /** Logs the first failure of an outage, not every retry. */
  private failed(error: unknown): void {
    if (this.failingSince !== undefined) return;
    this.failingSince = Date.now();
    this.options.logger.warn(
      { err: error },
      'outbox: publishing failed; committed jobs wait in the outbox and are retried with backoff',
    );
  }

  private recovered(): void {
    if (this.failingSince === undefined) return;
    this.options.logger.info({ down_ms: Date.now() - this.failingSince }, 'outbox: publishing works again');
    this.failingSince = undefined;
  }

  /** Waits `ms`, or less when notified (if `wakeable`) or stopped. */
  private sleep(ms: number, { wakeable } = { wakeable: true }): Promise<void> {
    if (!this.running || (wakeable && this.wakeRequested)) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(this.timer);
        this.wakeUp = undefined;
        resolve();
      };
      this.wakeUp = () => {
        if (wakeable || !this.running) done();
      };
      this.timer = setTimeout(done, ms);
      this.timer.unref();
    });
  }
}

function withTimeout<T>(work: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

function toMessage(entry: OutboxEntry) {
  return { jobId: entry.jobId, priority: entry.priority, headers: entry.headers };
}
