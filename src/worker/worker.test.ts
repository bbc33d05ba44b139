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
import { AdaptiveRates } from '../flow/adaptive-rates.js';
import { CircuitBreaker } from '../flow/circuit-breaker.js';
import { FlowControl } from '../flow/flow-control.js';
import { MemoryRateLimiter } from '../flow/memory-rate-limiter.js';
import { messageIdFor } from '../mime/message-id.js';
import { SqliteStore } from '../store/sqlite/sqlite-store.js';
import type { Store } from '../store/store.js';
import { SmtpTransport } from '../transport/smtp/smtp-transport.js';
import { Worker, type WorkerOptions } from './worker.js';

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

type StoreCall = (...args: unknown[]) => Promise<unknown>;

/** The real store, with `method` routed through `wrap` (which calls `real` to reach the store). */
function intercept(
  store: Store,
  method: keyof Store,
  wrap: (real: StoreCall, args: unknown[]) => Promise<unknown>,
): Store {
  return new Proxy(store, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver);
      if (name !== method || typeof value !== 'function') return value;
      const real: StoreCall = (...args) => value.apply(target, args);
      return (...args: unknown[]) => wrap(real, args);
    },
  });
}

/** The real store, except that `method` throws the first `failures` times it is called. */
function failingFirst(store: Store, method: keyof Store, failures: number): Store {
  let left = failures;
  return intercept(store, method, (real, args) =>
    left-- > 0 ? Promise.reject(new Error(`injected ${method} failure`)) : real(...args),
  );
}

/** The real store, except that `method` answers `delayMs` late (a store busy syncing). */
function slow(store: Store, method: keyof Store, delayMs: number): Store {
  return intercept(store, method, async (real, args) => {
    await sleep(delayMs);
    return real(...args);
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Rig {
  readonly real: SqliteStore;
  readonly broker: EmbeddedBroker;
  readonly transport: SmtpTransport;
  readonly worker: Worker;
  close(): Promise<void>;
}

/**
 * A worker on a real SQLite file (`name`.db) and the test's SMTP sink; `faults` wraps the store the
 * broker and worker see, while the test reads and writes the real one.
 */
async function startRig(
  name: string,
  leaseMs: number,
  faults: (store: Store) => Store,
  log = logger,
  extra: Partial<WorkerOptions> = {},
): Promise<Rig> {
  const real = new SqliteStore(join(dataDir, `${name}.db`));
  await real.migrate();
  const store = faults(real);
  const broker = new EmbeddedBroker(store, { pollIntervalMs: 20, logger });
  const transport = new SmtpTransport({ url: `smtp://127.0.0.1:${sink.port}`, pool: 1, timeoutMs: 2000 });
  const worker = new Worker(
    store,
    broker,
    transport,
    { leaseMs, concurrency: 4, maxAttempts: 5, retryBaseMs: 50, retryMaxMs: 100, ...extra },
    log,
  );
  return {
    real,
    broker,
    transport,
    worker,
    async close() {
      await worker.stop(1000);
      await broker.close();
      await transport.close();
      await real.close();
    },
  };
}

for (const method of ['claimJobs', 'recordOutcomes'] as const) {
  test(`a ${method} that throws gives the delivery back, and the job is sent after all`, async () => {
    // A short lease: after a failed outcome write the job is still leased and comes back when it expires.
    const { real, worker, close } = await startRig(method, 500, (store) => failingFirst(store, method, 1));
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
      await close();
    }
  });
}

test('an outcome write that fails while the lease has time left is retried: the email is sent once', async () => {
  const { real, worker, close } = await startRig('retried-outcome', 5000, (store) =>
    failingFirst(store, 'recordOutcomes', 2),
  );
  const id = '0190a1b2-c3d4-7e5f-8a9b-000000000004';
  try {
    await real.createJobs([newJob(id)]);
    await worker.start();
    await waitFor('the job sent', async () => (await real.getJob(id))?.status === 'sent', 8000);
    const job = await real.getJob(id);
    assert.equal(job?.attempts, 1);
    const copies = sink.messages().filter((m) => m.messageId === messageIdFor(id, 'noreply@acme.test'));
    assert.equal(copies.length, 1);
  } finally {
    await close();
  }
});

test('while sending, the worker logs its rate once a second; idle, it says nothing', async () => {
  const lines: Record<string, unknown>[] = [];
  const capture = pino({ level: 'info' }, { write: (line: string) => lines.push(JSON.parse(line)) });
  const { real, worker, close } = await startRig('throughput', 5000, (store) => store, capture);
  const throughput = () => lines.filter((line) => line.msg === 'throughput');
  try {
    const ids = ['0190a1b2-c3d4-7e5f-8a9b-000000000010', '0190a1b2-c3d4-7e5f-8a9b-000000000011'];
    await real.createJobs(ids.map((id) => newJob(id)));
    await worker.start();
    // Both sends usually land in one line; if they straddle a tick, in two.
    const sent = () => throughput().reduce((sum, line) => sum + Number(line.sent_per_sec), 0);
    await waitFor('throughput lines adding up to both sends', () => sent() === 2, 3000);
    const seen = throughput();
    assert.ok(seen.length <= 2);
    for (const line of seen) {
      assert.equal(line.failed_per_sec, 0);
      assert.equal(typeof line.in_flight, 'number');
    }
    // Nothing more to send: no more lines over the next two intervals.
    await new Promise((resolve) => setTimeout(resolve, 2200));
    assert.equal(throughput().length, seen.length);
  } finally {
    await close();
  }
});

test('stop with no time left still releases a job whose claim was being written', async () => {
  const { real, worker, close } = await startRig('slow-claim', 60_000, (store) =>
    slow(store, 'claimJobs', 300),
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
    await close();
  }
});

test('a consumer stopped while it looks for due jobs hands out nothing', async () => {
  let entered!: () => void;
  const pollEntered = new Promise<void>((resolve) => {
    entered = resolve;
  });
  let returned!: () => void;
  const pollReturned = new Promise<void>((resolve) => {
    returned = resolve;
  });
  const { real, broker, close } = await startRig('slow-poll', 60_000, (store) =>
    intercept(store, 'findDueJobs', async (real, args) => {
      entered();
      await sleep(100);
      const due = await real(...args);
      setImmediate(returned); // after the consumer has seen the answer
      return due;
    }),
  );
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
    await close();
  }
});

test('a job waiting in place for a rate-limit token when shutdown begins is given back, never sent late', async () => {
  const flow = new FlowControl({
    breaker: new CircuitBreaker('smtp', { failures: 5, openMs: 30_000, halfOpenMax: 3, successes: 2 }),
    limiter: new MemoryRateLimiter(),
    adaptive: new AdaptiveRates(),
    // One send a second, and room to wait in place for the next three tokens.
    transportRate: { ratePerSec: 1, burst: 1 },
    transportMaxWaitMs: 5_000,
    domainRates: { byDomain: new Map() },
    logger,
  });
  const rig = await startRig('flow-shutdown', 10_000, (store) => store, logger, { flow });
  sink.reset();
  const ids = [
    '01a20000-0000-7000-8000-00000000f001',
    '01a20000-0000-7000-8000-00000000f002',
    '01a20000-0000-7000-8000-00000000f003',
  ];
  await rig.real.createJobs(ids.map(newJob));
  await rig.worker.start();
  await waitFor('the first email sent', () => sink.messages().length === 1);
  await waitFor('the others waiting for tokens', () => rig.worker.activeCount === 2);
  // The drain ends before their tokens come: they are given back for the next start.
  await rig.worker.stop(100);
  await sleep(2_500);
  assert.equal(sink.messages().length, 1, 'nothing is sent after the drain gave the jobs back');
  for (const id of ids.slice(1)) {
    const job = await rig.real.getJob(id);
    assert.equal(job?.status, 'queued', id);
    assert.equal(job?.attempts, 0, id);
  }
  await rig.close();
});
