/**
 * The body of the SQLite store's thread: owns the SqliteStore and answers method calls posted by
 * ThreadedSqliteStore. Running here keeps SQLite's synchronous work, fsync included, off the main
 * event loop, which serves HTTP and SMTP meanwhile.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { SqliteStore } from './sqlite-store.js';

export interface StoreCall {
  readonly id: number;
  readonly method: string;
  readonly args: unknown[];
}

export type StoreReply =
  | { readonly id: number; readonly ok: true; readonly result: unknown }
  | {
      readonly id: number;
      readonly ok: false;
      readonly error: { message: string; name: string; code?: string };
    };

const port = parentPort!;
const store = new SqliteStore((workerData as { path: string }).path);
const methods = store as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;

port.on('message', async (call: StoreCall) => {
  let reply: StoreReply;
  try {
    // `webhooks.takeDeliveries`: a method of one of the store's parts.
    const [first, second] = call.method.split('.') as [string, string | undefined];
    const target = second === undefined ? methods : (methods[first] as unknown as typeof methods);
    const method = target?.[second ?? first];
    if (typeof method !== 'function') throw new Error(`no store method ${call.method}`);
    reply = { id: call.id, ok: true, result: await method.apply(target, call.args) };
  } catch (error) {
    const { message, name, code } = error as Error & { code?: string };
    reply = { id: call.id, ok: false, error: { message, name, ...(code !== undefined && { code }) } };
  }
  port.postMessage(reply);
});
