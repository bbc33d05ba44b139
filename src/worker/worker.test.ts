import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { SmtpSink } from '../../test/support/smtp-sink.js';
import { waitFor } from '../../test/support/wait-for.js';
import { EmbeddedBroker } from '../broker/embedded/embedded-broker.js';
import type { NewJob } from '../domain/email.js';
import { messageIdFor } from '../mime/message-id.js';
import { SqliteStore } from '../store/sqlite/sqlite-store.js';
import type { Store } from '../store/store.js';
import { SmtpTransport } from '../transport/smtp/smtp-transport.js';
import { Worker } from './worker.js';

const logger = pino({ level: 'silent' });
const sink = new SmtpSink();
let dataDir: string;

before(async () => {
  await sink.start();
  dataDir = mkdtempSync(join(tmpdir(), 'mailroom-worker-'));
});
after(async () => {
  await sink.close();
  rmSync(dataDir, { recursive: true, force: true });
});

function newJob(id: string): NewJob {
  return {
    id,
    content: {
      from: { address: 'noreply@acme.test' },
      to: [{ address: 'alice@example.com' }],
      cc: [],
      bcc: [],
      replyTo: [],
      subject: 'Store trouble',
      text: 'hello',
      headers: {},
    },
    tags: [],
    metadata: {},
    priority: 'normal',
    messageId: messageIdFor(id, 'noreply@acme.test'),
    createdAt: Date.now(),
  };
}

/** The real store, except that the named method throws the first `failures` times it is called. */
function failingFirst(store: Store, method: keyof Store, failures: number): Store {
  let left = failures;
  return new Proxy(store, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver);
      if (name !== method || typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        if (left-- > 0) return Promise.reject(new Error(`injected ${String(method)} failure`));
        return value.apply(target, args);
      };
    },
  });
}

for (const method of ['claimJobs', 'recordOutcomes'] as const) {
  test(`a ${method} that throws gives the delivery back, and the job is sent after all`, async () => {
    const real = new SqliteStore(join(dataDir, `${method}.db`));
    await real.migrate();
    const store = failingFirst(real, method, 1);
    const broker = new EmbeddedBroker(store, { pollIntervalMs: 20, logger });
    const transport = new SmtpTransport({ url: `smtp://127.0.0.1:${sink.port}`, pool: 1, timeoutMs: 2000 });
    // A short lease: after a failed outcome write the job is still leased and comes back when it expires.
    const worker = new Worker(
      store,
      broker,
      transport,
      { leaseMs: 500, concurrency: 4, maxAttempts: 5, retryBaseMs: 50, retryMaxMs: 100 },
      logger,
    );
    const id = `0190a1b2-c3d4-7e5f-8a9b-${method === 'claimJobs' ? '000000000001' : '000000000002'}`;
    try {
      await real.createJobs([newJob(id)]);
      await worker.start();
      await waitFor('the job sent', async () => (await real.getJob(id))?.status === 'sent', 8000);
      await waitFor('no delivery in flight', () => worker.activeCount === 0, 2000);
      const job = await real.getJob(id);
      assert.equal(job?.status, 'sent');
      // A failed outcome write happens after the relay accepted: that is the duplicate window.
      const copies = sink.messages().filter((m) => m.messageId === messageIdFor(id, 'noreply@acme.test'));
      assert.equal(copies.length, method === 'claimJobs' ? 1 : 2);
    } finally {
      await worker.stop(1000);
      await broker.close();
      await transport.close();
      await real.close();
    }
  });
}

/** The real store, except that the named method answers `delayMs` late (a store busy syncing). */
function slow(store: Store, method: keyof Store, delayMs: number): Store {
  return new Proxy(store, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver);
      if (name !== method || typeof value !== 'function') return value;
      return async (...args: unknown[]) => {
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        return value.apply(target, args);
      };
    },
  });
}

test('stop with no time left still releases a job whose claim was being written', async () => {
  const real = new SqliteStore(join(dataDir, 'slow-claim.db'));
  await real.migrate();
  const store = slow(real, 'claimJobs', 300);
  const broker = new EmbeddedBroker(store, { pollIntervalMs: 20, logger });
  const transport = new SmtpTransport({ url: `smtp://127.0.0.1:${sink.port}`, pool: 1, timeoutMs: 2000 });
  const worker = new Worker(
    store,
    broker,
    transport,
    { leaseMs: 60_000, concurrency: 4, maxAttempts: 5, retryBaseMs: 50, retryMaxMs: 100 },
    logger,
  );
  const id = '0190a1b2-c3d4-7e5f-8a9b-000000000003';
  try {
    await real.createJobs([newJob(id)]);
    await worker.start();
    await waitFor('the claim under way', () => worker.activeCount === 1, 2000);
    await worker.stop(0);
    const job = await real.getJob(id);
    // Released at once for the next start, not left `processing` until a 60 s lease runs out.
    assert.equal(job?.status, 'queued');
    assert.equal(job?.events.at(-1)?.detail.reason, 'shutdown');
  } finally {
    await broker.close();
    await transport.close();
    await real.close();
  }
});

test('a consumer stopped while it looks for due jobs hands out nothing', async () => {
  const real = new SqliteStore(join(dataDir, 'slow-poll.db'));
  await real.migrate();
  let entered!: () => void;
  const pollEntered = new Promise<void>((resolve) => {
    entered = resolve;
  });
  let returned!: () => void;
  const pollReturned = new Promise<void>((resolve) => {
    returned = resolve;
  });
  const store = new Proxy(real, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver);
      if (name !== 'findDueJobs') return value;
      return async (...args: Parameters<Store['findDueJobs']>) => {
        entered();
        await new Promise((resolve) => setTimeout(resolve, 100));
        const due = await target.findDueJobs(...args);
        setImmediate(returned); // after the consumer has seen the answer
        return due;
      };
    },
  });
  const broker = new EmbeddedBroker(store, { pollIntervalMs: 20, logger });
  try {
    await real.createJobs([newJob('0190a1b2-c3d4-7e5f-8a9b-000000000004')]);
    const handed: string[] = [];
    const consumer = await broker.consume((delivery) => handed.push(delivery.message.jobId), {
      prefetch: 4,
    });
    await pollEntered;
    await consumer.stop();
    await pollReturned;
    assert.deepEqual(handed, []);
  } finally {
    await broker.close();
    await real.close();
  }
});
