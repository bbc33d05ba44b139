import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { EventFeed, EventLog } from '../event-log.js';
import { PollingEventFeed } from '../polling-event-feed.js';
import type { Store } from '../store.js';
import type { WebhookStore } from '../webhook-store.js';
import type { StoreCall, StoreReply } from './sqlite-store-thread.js';

/**
 * The thread holds almost nothing between calls (each batch is cloned in, written, and dropped), so a
 * small young generation is enough; V8's default sizes it like a main thread's, which showed as
 * tens of MB of resident memory under load.
 */
const STORE_THREAD_LIMITS = { maxYoungGenerationSizeMb: 8 };

/**
 * Built, the thread's file is .js. Run from source (tests, `tsx`), it is .ts, and the thread must
 * register tsx's loader itself: Node 20 does not pass `--import` hooks on to worker threads.
 */
function startThread(path: string): Worker {
  const extension = extname(fileURLToPath(import.meta.url));
  const script = new URL(`./sqlite-store-thread${extension}`, import.meta.url);
  if (extension !== '.ts')
    return new Worker(script, { workerData: { path }, resourceLimits: STORE_THREAD_LIMITS });
  // Resolved here, not in the thread: an eval'd thread resolves bare names from the working directory,
  // which need not be this checkout (`node --import tsx /path/to/src/cli.ts` run from elsewhere).
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import(${JSON.stringify(tsxApi)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(script.href)}); });`;
  return new Worker(bootstrap, { eval: true, workerData: { path }, resourceLimits: STORE_THREAD_LIMITS });
}

type Pending = { resolve: (value: unknown) => void; reject: (error: Error) => void };

/**
 * The SQLite store behind the Store port, run in its own thread (see sqlite-store-thread.ts).
 * better-sqlite3 blocks while SQLite works and while the disk syncs; here that blocks the store's
 * thread, not the event loop that answers HTTP and talks SMTP. Calls are batches already, so one
 * message each way per batch is all the threading costs.
 */
export class ThreadedSqliteStore implements Store {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private failure: Error | undefined;

  constructor(path: string) {
    this.worker = startThread(path);
    this.worker.on('message', (reply: StoreReply) => this.settle(reply));
    this.worker.on('error', (error) => this.failAll(asError(error)));
    this.worker.on('exit', (code) => this.failAll(new Error(`the store thread exited (code ${code})`)));
  }

  async close(): Promise<void> {
    if (this.failure) return;
    // Closing inside the thread syncs outstanding light commits before the thread ends.
    await this.call('close', []);
    await this.worker.terminate();
  }

  migrate = () => this.call('migrate', []) as ReturnType<Store['migrate']>;
  health = () => this.call('health', []) as ReturnType<Store['health']>;
  createJobs: Store['createJobs'] = (...args) =>
    this.call('createJobs', args) as ReturnType<Store['createJobs']>;
  getJob: Store['getJob'] = (...args) => this.call('getJob', args) as ReturnType<Store['getJob']>;
  listJobs: Store['listJobs'] = (...args) => this.call('listJobs', args) as ReturnType<Store['listJobs']>;
  eventsFor: Store['eventsFor'] = (...args) => this.call('eventsFor', args) as ReturnType<Store['eventsFor']>;
  cancelJob: Store['cancelJob'] = (...args) => this.call('cancelJob', args) as ReturnType<Store['cancelJob']>;
  findDueJobs: Store['findDueJobs'] = (...args) =>
    this.call('findDueJobs', args) as ReturnType<Store['findDueJobs']>;
  nextDueAt: Store['nextDueAt'] = () => this.call('nextDueAt', []) as ReturnType<Store['nextDueAt']>;
  claimJobs: Store['claimJobs'] = (...args) => this.call('claimJobs', args) as ReturnType<Store['claimJobs']>;
  recordOutcomes: Store['recordOutcomes'] = (...args) =>
    this.call('recordOutcomes', args) as ReturnType<Store['recordOutcomes']>;
  listDeadLetters: Store['listDeadLetters'] = (...args) =>
    this.call('listDeadLetters', args) as ReturnType<Store['listDeadLetters']>;
  replayDeadLetters: Store['replayDeadLetters'] = (...args) =>
    this.call('replayDeadLetters', args) as ReturnType<Store['replayDeadLetters']>;
  countActive: Store['countActive'] = () => this.call('countActive', []) as ReturnType<Store['countActive']>;
  countJobs: Store['countJobs'] = () => this.call('countJobs', []) as ReturnType<Store['countJobs']>;
  pruneIdempotencyKeys: Store['pruneIdempotencyKeys'] = (...args) =>
    this.call('pruneIdempotencyKeys', args) as ReturnType<Store['pruneIdempotencyKeys']>;
  createTemplate: Store['createTemplate'] = (...args) =>
    this.call('createTemplate', args) as ReturnType<Store['createTemplate']>;
  updateTemplate: Store['updateTemplate'] = (...args) =>
    this.call('updateTemplate', args) as ReturnType<Store['updateTemplate']>;
  getTemplate: Store['getTemplate'] = (...args) =>
    this.call('getTemplate', args) as ReturnType<Store['getTemplate']>;
  listTemplates: Store['listTemplates'] = (...args) =>
    this.call('listTemplates', args) as ReturnType<Store['listTemplates']>;
  listTemplateVersions: Store['listTemplateVersions'] = (...args) =>
    this.call('listTemplateVersions', args) as ReturnType<Store['listTemplateVersions']>;
  deleteTemplate: Store['deleteTemplate'] = (...args) =>
    this.call('deleteTemplate', args) as ReturnType<Store['deleteTemplate']>;

  readonly events: EventLog = this.part<EventLog>('events', ['eventsAfter', 'eventsByIds', 'lastEventId']);
  readonly webhooks: WebhookStore = this.part<WebhookStore>('webhooks', [
    'createEndpoint',
    'putEndpoint',
    'getEndpoint',
    'listEndpoints',
    'updateEndpoint',
    'deleteEndpoint',
    'takeDeliveries',
    'recordDeliveries',
    'listDeliveries',
    'pruneDeliveries',
  ]);

  openEventFeed(onError?: (error: unknown) => void): EventFeed {
    return new PollingEventFeed(this.events, undefined, onError);
  }

  /** A proxy for one of the thread's store parts: `part.method(...)` calls `name.method` there. */
  private part<T>(name: string, methods: readonly (keyof T & string)[]): T {
    return Object.fromEntries(
      methods.map((method) => [method, (...args: unknown[]) => this.call(`${name}.${method}`, args)]),
    ) as T;
  }

  private call(method: string, args: unknown[]): Promise<unknown> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      const call: StoreCall = { id, method, args };
      this.worker.postMessage(call);
    });
  }

  private settle(reply: StoreReply): void {
    const pending = this.pending.get(reply.id);
    if (!pending) return;
    this.pending.delete(reply.id);
    if (reply.ok) pending.resolve(reply.result);
    else pending.reject(Object.assign(new Error(reply.error.message), reply.error));
  }

  private failAll(error: Error): void {
    this.failure ??= error;
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
  }
}

/**
 * What reaches the 'error' event is a structured clone. An Error subclass whose message is not an own
 * enumerable property (better-sqlite3's SqliteError) arrives as a bare `{ code }`: make it an Error
 * again, with a message that says at least what failed.
 */
function asError(value: unknown): Error {
  if (value instanceof Error) return value;
  const { code, message } = (value ?? {}) as { code?: unknown; message?: unknown };
  const text =
    typeof message === 'string' && message !== ''
      ? message
      : `the store thread failed to start${typeof code === 'string' ? ` (${code})` : ''}`;
  return Object.assign(new Error(text), typeof code === 'string' ? { code } : {});
}
