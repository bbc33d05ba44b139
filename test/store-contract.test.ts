/**
 * The Store contract: one suite, run over every adapter (SQLite in its thread, PostgreSQL in a schema
 * of its own), so the API and the worker can count on the same answers from each. It calls the port
 * directly, with explicit clocks; what the API and the worker make of the answers is tested elsewhere.
 * Each test gets a fresh store. PostgreSQL-only behaviour (the outbox, losing connections) follows.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, beforeEach, describe, test } from 'node:test';
import pg from 'pg';
import type { EmailContent, IdempotencyClaim, JobStatus, NewJob } from '../src/domain/email.js';
import type { TemplateContent } from '../src/domain/template.js';
import type { WebhookEventType } from '../src/domain/webhook.js';
import { compareEventIds } from '../src/store/event-log.js';
import { MIGRATIONS } from '../src/store/postgres/migrations.js';
import { PostgresStore, type PostgresStoreOptions } from '../src/store/postgres/postgres-store.js';
import { ThreadedSqliteStore } from '../src/store/sqlite/threaded-sqlite-store.js';
import type { ClaimResult, Outcome, Store } from '../src/store/store.js';
import { closedPort, silentServer } from './support/dead-servers.js';
import { POSTGRES_URL, serviceAvailable } from './support/services.js';

/** The suite's clock: every time is explicit, far from the real one. */
const T0 = 1_900_000_000_000;
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;

interface StoreFixture {
  readonly store: Store;
  dispose(): Promise<void>;
}

function content(recipients: { to?: string[]; cc?: string[]; bcc?: string[] } = {}): EmailContent {
  const mailboxes = (addresses: string[] = []) => addresses.map((address) => ({ address }));
  return {
    from: { address: 'sender@example.com', name: 'Sender' },
    to: mailboxes(recipients.to ?? ['alice@example.com']),
    cc: mailboxes(recipients.cc),
    bcc: mailboxes(recipients.bcc),
    replyTo: [],
    subject: 'Your receipt',
    text: 'Thanks.',
    headers: {},
  };
}

function newJob(overrides: Partial<NewJob> = {}): NewJob {
  const id = overrides.id ?? randomUUID();
  return {
    id,
    content: content(),
    tags: [],
    metadata: {},
    priority: 'normal',
    messageId: `<${id}@example.com>`,
    createdAt: T0,
    ...overrides,
  };
}

function key(keyValue: string, requestHash: string, notBefore = 0, scope = 'api-key-1'): IdempotencyClaim {
  return { scope, key: keyValue, requestHash, notBefore };
}

async function create(store: Store, ...jobs: NewJob[]): Promise<void> {
  for (const result of await store.createJobs(jobs)) assert.equal(result.kind, 'created');
}

/** Claims a job that must be claimable; returns its lease token. */
async function claim(store: Store, jobId: string, now: number, leaseMs = MINUTE, workerId = 'worker-1') {
  const [result] = await store.claimJobs([{ jobId, workerId, leaseMs }], now);
  assert.equal(result?.kind, 'claimed', `claim of ${jobId}: ${JSON.stringify(result)}`);
  return (result as Extract<ClaimResult, { kind: 'claimed' }>).leaseToken;
}

async function record(store: Store, jobId: string, leaseToken: string, outcome: Outcome, now: number) {
  assert.deepEqual(await store.recordOutcomes([{ jobId, leaseToken, outcome }], now), [true]);
}

/** A job brought to `status` through the port, at T0. */
async function jobIn(store: Store, status: JobStatus, overrides: Partial<NewJob> = {}): Promise<NewJob> {
  const job = newJob(status === 'scheduled' ? { sendAt: T0 + HOUR, ...overrides } : overrides);
  await create(store, job);
  if (status === 'queued' || status === 'scheduled') return job;
  if (status === 'cancelled') {
    assert.equal((await store.cancelJob(job.id, T0)).kind, 'cancelled');
    return job;
  }
  const token = await claim(store, job.id, T0);
  const outcomes: Partial<Record<JobStatus, Outcome>> = {
    sent: { kind: 'sent', detail: { smtpCode: 250 } },
    deferred: { kind: 'deferred', retryAt: T0 + HOUR, detail: { code: 'SMTP_TRANSIENT' } },
    failed: { kind: 'failed', detail: { code: 'SMTP_PERMANENT' } },
  };
  const outcome = outcomes[status];
  if (outcome) await record(store, job.id, token, outcome, T0);
  return job;
}

async function eventTypes(store: Store, id: string): Promise<string[]> {
  return ((await store.getJob(id))?.events ?? []).map((event) => event.type);
}

const byId = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function storeContract(
  name: string,
  makeStore: () => Promise<StoreFixture>,
  options: { skip?: boolean } = {},
) {
  describe(`Store contract: ${name}`, { skip: options.skip ?? false }, () => {
    let store: Store;
    let fixture: StoreFixture;
    beforeEach(async () => {
      fixture = await makeStore();
      store = fixture.store;
    });
    afterEach(() => fixture.dispose());

    describe('createJobs', () => {
      test('creates queued and scheduled jobs, each with its first event', async () => {
        const now = newJob({
          priority: 'high',
          tags: ['welcome', 'welcome', 'b2b'],
          metadata: { user: '42' },
        });
        const later = newJob({ sendAt: T0 + MINUTE });
        const past = newJob({ sendAt: T0 - 1000 });
        assert.deepEqual(await store.createJobs([now, later, past]), [
          { kind: 'created', id: now.id, status: 'queued' },
          { kind: 'created', id: later.id, status: 'scheduled' },
          { kind: 'created', id: past.id, status: 'queued' },
        ]);
        assert.deepEqual(await store.getJob(now.id), {
          id: now.id,
          status: 'queued',
          priority: 'high',
          attempts: 0,
          content: now.content,
          tags: ['welcome', 'welcome', 'b2b'],
          metadata: { user: '42' },
          messageId: now.messageId,
          createdAt: T0,
          updatedAt: T0,
          events: [{ type: 'queued', at: T0, attempt: 0, detail: {} }],
        });
        const scheduled = await store.getJob(later.id);
        assert.equal(scheduled?.status, 'scheduled');
        assert.equal(scheduled?.sendAt, T0 + MINUTE);
        assert.deepEqual(scheduled?.events, [
          { type: 'scheduled', at: T0, attempt: 0, detail: { send_at: new Date(T0 + MINUTE).toISOString() } },
        ]);
        const overdue = await store.getJob(past.id);
        assert.equal(overdue?.sendAt, T0 - 1000);
        assert.deepEqual(
          overdue?.events.map((event) => event.type),
          ['queued'],
        );
      });

      test('content comes back exactly: header order, NUL characters and lone surrogates in the body', async () => {
        const job = newJob({
          content: {
            ...content({ to: ['Alice@Example.com'], cc: ['carol@example.com'], bcc: ['hidden@example.com'] }),
            subject: 'Grüße ✉',
            text: 'before\u0000after \ud800 unpaired',
            html: '<p>\u0000</p>',
            headers: { 'X-Zeta': '1', 'X-A': '2', 'X-A-Much-Longer-Name': '3' },
          },
        });
        await create(store, job);
        const stored = await store.getJob(job.id);
        assert.deepEqual(stored?.content, job.content);
        assert.deepEqual(Object.keys(stored?.content.headers ?? {}), [
          'X-Zeta',
          'X-A',
          'X-A-Much-Longer-Name',
        ]);
      });

      test('an idempotency key seen with the same request is a duplicate with the status first answered', async () => {
        const first = newJob({ sendAt: T0 + MINUTE, idempotency: key('k1', 'hash-a') });
        await create(store, first);
        await store.cancelJob(first.id, T0 + 1);
        const again = newJob({ createdAt: T0 + 2, idempotency: key('k1', 'hash-a') });
        assert.deepEqual(await store.createJobs([again]), [
          { kind: 'duplicate', id: first.id, status: 'scheduled' },
        ]);
        assert.equal(await store.getJob(again.id), undefined);
      });

      test('a key seen with another request is a conflict; the same key in another scope is free', async () => {
        const first = newJob({ idempotency: key('k1', 'hash-a') });
        await create(store, first);
        const other = newJob({ idempotency: key('k1', 'hash-b') });
        const otherScope = newJob({ idempotency: key('k1', 'hash-b', 0, 'api-key-2') });
        assert.deepEqual(await store.createJobs([other, otherScope]), [
          { kind: 'conflict', id: first.id },
          { kind: 'created', id: otherScope.id, status: 'queued' },
        ]);
        assert.equal(await store.getJob(other.id), undefined);
      });

      test('a key older than notBefore no longer counts: the request makes a new job, which owns the key', async () => {
        const first = newJob({ idempotency: key('k1', 'hash-a') });
        await create(store, first);
        const atTheLimit = newJob({ createdAt: T0 + 5, idempotency: key('k1', 'hash-a', T0) });
        assert.deepEqual(await store.createJobs([atTheLimit]), [
          { kind: 'duplicate', id: first.id, status: 'queued' },
        ]);
        const late = newJob({ createdAt: T0 + HOUR, idempotency: key('k1', 'hash-b', T0 + 1) });
        assert.deepEqual(await store.createJobs([late]), [
          { kind: 'created', id: late.id, status: 'queued' },
        ]);
        const repeat = newJob({ createdAt: T0 + HOUR + 1, idempotency: key('k1', 'hash-b', T0 + 1) });
        assert.deepEqual(await store.createJobs([repeat]), [
          { kind: 'duplicate', id: late.id, status: 'queued' },
        ]);
      });

      test('requests sharing a key in one batch: the first creates, the others repeat it or conflict', async () => {
        const a = newJob({ sendAt: T0 + MINUTE, idempotency: key('k1', 'hash-a') });
        const b = newJob({ idempotency: key('k1', 'hash-a') });
        const c = newJob({ idempotency: key('k1', 'hash-b') });
        const plain = newJob();
        assert.deepEqual(await store.createJobs([a, b, c, plain]), [
          { kind: 'created', id: a.id, status: 'scheduled' },
          { kind: 'duplicate', id: a.id, status: 'scheduled' },
          { kind: 'conflict', id: a.id },
          { kind: 'created', id: plain.id, status: 'queued' },
        ]);
        assert.equal(await store.countActive(), 2);
      });

      test('a job whose id exists is a duplicate with its stored status, and the rest of the batch commits', async () => {
        const first = newJob();
        await create(store, first);
        await store.cancelJob(first.id, T0 + 1);
        const republished = newJob({
          id: first.id,
          createdAt: T0 + 2,
          content: content({ to: ['x@example.com'] }),
        });
        const fresh = newJob();
        assert.deepEqual(await store.createJobs([republished, fresh]), [
          { kind: 'duplicate', id: first.id, status: 'cancelled' },
          { kind: 'created', id: fresh.id, status: 'queued' },
        ]);
        const stored = await store.getJob(first.id);
        assert.deepEqual(stored?.content, first.content, 'the stored job is not overwritten');
        assert.deepEqual(await eventTypes(store, first.id), ['queued', 'cancelled']);
        assert.equal((await store.getJob(fresh.id))?.status, 'queued');
      });

      test('concurrent requests with one key make exactly one job', async () => {
        const requests = Array.from({ length: 6 }, () => newJob({ idempotency: key('k1', 'hash-a') }));
        const results = (await Promise.all(requests.map((job) => store.createJobs([job])))).flat();
        const created = results.filter((result) => result.kind === 'created');
        assert.equal(created.length, 1, JSON.stringify(results));
        for (const result of results) {
          if (result.kind !== 'created') {
            assert.deepEqual(result, { kind: 'duplicate', id: created[0]!.id, status: 'queued' });
          }
        }
        assert.equal(await store.countActive(), 1);
      });

      test('concurrent batches sharing keys in opposite orders both complete, one job per key', async () => {
        for (let round = 0; round < 5; round++) {
          const keys = ['a', 'b', 'c'].map((name) => `round-${round}-${name}`);
          const batch = (order: string[]) => order.map((k) => newJob({ idempotency: key(k, 'hash') }));
          const results = await Promise.all([
            store.createJobs(batch(keys)),
            store.createJobs(batch([...keys].reverse())),
          ]);
          assert.equal(results.flat().filter((result) => result.kind === 'created').length, 3);
        }
        assert.equal(await store.countActive(), 15);
      });

      test('countJobs counts every status (0 for none) and the dead letters', async () => {
        const empty = await store.countJobs();
        assert.deepEqual(
          Object.values(empty.byStatus),
          Object.values(empty.byStatus).map(() => 0),
        );
        for (const status of [
          'queued',
          'queued',
          'scheduled',
          'processing',
          'deferred',
          'sent',
          'failed',
          'cancelled',
        ] as const)
          await jobIn(store, status);
        const dead = await jobIn(store, 'processing');
        const [claimed] = await store.claimJobs([{ jobId: dead.id, workerId: 'w', leaseMs: 1 }], T0 + HOUR);
        assert.equal(claimed?.kind, 'claimed');
        await record(
          store,
          dead.id,
          claimed?.kind === 'claimed' ? claimed.leaseToken : '',
          { kind: 'failed', deadLetter: 'max_attempts', detail: { code: 'MAX_ATTEMPTS' } },
          T0 + HOUR,
        );
        const counts = await store.countJobs();
        assert.deepEqual(counts.byStatus, {
          queued: 2,
          scheduled: 1,
          processing: 1,
          deferred: 1,
          sent: 1,
          failed: 2,
          cancelled: 1,
        });
        assert.equal(counts.deadLetters, 1);
      });

      test('getJob of an unknown id is undefined', async () => {
        assert.equal(await store.getJob(randomUUID()), undefined);
      });
    });

    describe('listJobs', () => {
      test('filters by status, recipient (any case; to, cc or bcc), tag and creation time', async () => {
        const a = newJob({
          createdAt: T0,
          content: content({ to: ['Alice@Example.com'] }),
          tags: ['welcome'],
        });
        const b = newJob({
          createdAt: T0 + 10,
          content: content({ to: ['bob@example.com'], cc: ['alice@example.com'] }),
          tags: ['receipt'],
        });
        const c = newJob({
          createdAt: T0 + 20,
          content: content({ to: ['carol@example.com'], bcc: ['ALICE@example.com'] }),
          tags: ['welcome', 'receipt'],
        });
        const d = newJob({
          createdAt: T0 + 30,
          sendAt: T0 + HOUR,
          content: content({ to: ['dave@example.com'] }),
        });
        await create(store, a, b, c, d);
        await store.cancelJob(b.id, T0 + 40);
        const ids = async (filter: Partial<Parameters<Store['listJobs']>[0]>) =>
          (await store.listJobs({ limit: 50, ...filter })).items.map((job) => job.id);

        assert.deepEqual(await ids({}), [d.id, c.id, b.id, a.id]);
        assert.deepEqual(await ids({ status: 'cancelled' }), [b.id]);
        assert.deepEqual(await ids({ status: 'scheduled' }), [d.id]);
        assert.deepEqual(await ids({ status: 'queued' }), [c.id, a.id]);
        assert.deepEqual(await ids({ to: 'aLiCe@example.COM' }), [c.id, b.id, a.id]);
        assert.deepEqual(await ids({ to: 'bob@example.com' }), [b.id]);
        assert.deepEqual(await ids({ to: 'nobody@example.com' }), []);
        assert.deepEqual(await ids({ tag: 'welcome' }), [c.id, a.id]);
        assert.deepEqual(await ids({ tag: 'Welcome' }), [], 'tags match exactly');
        assert.deepEqual(await ids({ since: T0 + 10 }), [d.id, c.id, b.id]);
        assert.deepEqual(await ids({ until: T0 + 20 }), [b.id, a.id]);
        assert.deepEqual(await ids({ since: T0 + 10, until: T0 + 30 }), [c.id, b.id]);
        assert.deepEqual(await ids({ to: 'alice@example.com', tag: 'receipt', status: 'queued' }), [c.id]);
      });

      test('pages newest first without gaps or repeats, across equal creation times and new arrivals', async () => {
        // Groups of four share a millisecond: the cursor must break ties by id.
        const jobs = Array.from({ length: 23 }, (_, i) =>
          newJob({ createdAt: T0 + Math.floor(i / 4), tags: i % 2 === 0 ? ['even'] : [] }),
        );
        await create(store, ...jobs);
        const newestFirst = (list: NewJob[]) =>
          [...list].sort((x, y) => y.createdAt - x.createdAt || byId(y.id, x.id)).map((job) => job.id);

        const seen: string[] = [];
        let cursor: string | undefined;
        let pages = 0;
        do {
          const page = await store.listJobs({ limit: 5, ...(cursor && { cursor }) });
          seen.push(...page.items.map((job) => job.id));
          cursor = page.nextCursor;
          pages++;
          // A job created while a client pages does not shift the pages it has not read yet.
          if (pages === 1) await create(store, newJob({ createdAt: T0 + HOUR }));
        } while (cursor);
        assert.deepEqual(seen, newestFirst(jobs));
        assert.equal(pages, 5);

        const first = await store.listJobs({ limit: 4, tag: 'even' });
        const rest = await store.listJobs({ limit: 50, tag: 'even', cursor: first.nextCursor! });
        assert.equal(rest.nextCursor, undefined);
        assert.deepEqual(
          [...first.items, ...rest.items].map((job) => job.id),
          newestFirst(jobs.filter((job) => job.tags.includes('even'))),
        );
      });
    });

    test('eventsFor: each history oldest first, and an empty one for an unknown id', async () => {
      const a = newJob();
      const b = newJob();
      await create(store, a, b);
      const token = await claim(store, a.id, T0 + 1);
      await record(
        store,
        a.id,
        token,
        { kind: 'deferred', retryAt: T0 + MINUTE, detail: { code: 'X' } },
        T0 + 2,
      );
      const unknown = randomUUID();
      const events = await store.eventsFor([a.id, b.id, unknown]);
      assert.deepEqual([...events.keys()].sort(byId), [a.id, b.id, unknown].sort(byId));
      assert.deepEqual(
        events.get(a.id)?.map((event) => [event.type, event.at, event.attempt]),
        [
          ['queued', T0, 0],
          ['processing', T0 + 1, 1],
          ['deferred', T0 + 2, 1],
        ],
      );
      assert.deepEqual(
        events.get(b.id)?.map((event) => event.type),
        ['queued'],
      );
      assert.deepEqual(events.get(unknown), []);
    });

    describe('cancelJob', () => {
      for (const status of ['queued', 'scheduled', 'deferred'] as const) {
        test(`cancels a ${status} job: an event, and it is no longer due or active`, async () => {
          const job = await jobIn(store, status);
          const attempts = status === 'deferred' ? 1 : 0;
          const result = await store.cancelJob(job.id, T0 + 500);
          assert.equal(result.kind, 'cancelled');
          const cancelled = (result as Extract<typeof result, { kind: 'cancelled' }>).job;
          assert.equal(cancelled.status, 'cancelled');
          assert.equal(cancelled.updatedAt, T0 + 500);
          assert.equal(cancelled.attempts, attempts);
          assert.deepEqual((await store.getJob(job.id))?.events.at(-1), {
            type: 'cancelled',
            at: T0 + 500,
            attempt: attempts,
            detail: { previous_status: status },
          });
          assert.equal(await store.countActive(), 0);
          assert.deepEqual(await store.findDueJobs(T0 + 10 * HOUR, 10, new Set()), []);
          assert.equal(await store.nextDueAt(), undefined);
        });
      }

      for (const status of ['processing', 'sent', 'failed', 'cancelled'] as const) {
        test(`refuses a ${status} job and writes nothing`, async () => {
          const job = await jobIn(store, status);
          const before = await store.getJob(job.id);
          assert.deepEqual(await store.cancelJob(job.id, T0 + 500), { kind: 'invalid_state', status });
          assert.deepEqual(await store.getJob(job.id), before);
        });
      }

      test('knows no unknown id', async () => {
        assert.deepEqual(await store.cancelJob(randomUUID(), T0), { kind: 'not_found' });
      });
    });

    describe('findDueJobs and nextDueAt', () => {
      test('due jobs only, high priority first, oldest first within a priority, honouring exclude and limit', async () => {
        const low = newJob({ priority: 'low', createdAt: T0 });
        const normalLater = newJob({ priority: 'normal', createdAt: T0 + 20 });
        const normal = newJob({ priority: 'normal', createdAt: T0 + 10 });
        const high = newJob({ priority: 'high', createdAt: T0 + 30 });
        const highScheduled = newJob({ priority: 'high', sendAt: T0 + MINUTE });
        await create(store, low, normalLater, normal, high, highScheduled);
        const now = T0 + 100;
        assert.deepEqual(await store.findDueJobs(now, 10, new Set()), [
          { id: high.id, priority: 'high' },
          { id: normal.id, priority: 'normal' },
          { id: normalLater.id, priority: 'normal' },
          { id: low.id, priority: 'low' },
        ]);
        assert.deepEqual(
          (await store.findDueJobs(now, 2, new Set())).map((due) => due.id),
          [high.id, normal.id],
        );
        assert.deepEqual(
          (await store.findDueJobs(now, 2, new Set([high.id, normal.id]))).map((due) => due.id),
          [normalLater.id, low.id],
        );
        assert.deepEqual(
          (await store.findDueJobs(T0 + MINUTE, 2, new Set())).map((due) => due.id),
          [high.id, highScheduled.id],
        );
      });

      test('processing jobs once their lease expired, deferred jobs once their retry time came', async () => {
        const leased = newJob();
        const deferred = newJob();
        await create(store, leased, deferred);
        await claim(store, leased.id, T0, 1000);
        const token = await claim(store, deferred.id, T0);
        await record(store, deferred.id, token, { kind: 'deferred', retryAt: T0 + 500, detail: {} }, T0);
        await jobIn(store, 'sent');
        assert.deepEqual(await store.findDueJobs(T0 + 499, 10, new Set()), []);
        assert.deepEqual(
          (await store.findDueJobs(T0 + 500, 10, new Set())).map((due) => due.id),
          [deferred.id],
        );
        assert.deepEqual(
          (await store.findDueJobs(T0 + 1000, 10, new Set())).map((due) => due.id),
          [deferred.id, leased.id],
        );
      });

      test('nextDueAt: the earliest run_at of any live job, whatever its priority', async () => {
        assert.equal(await store.nextDueAt(), undefined);
        const low = newJob({ priority: 'low', sendAt: T0 + 50 });
        const high = newJob({ priority: 'high', sendAt: T0 + 90 });
        const normal = newJob({ createdAt: T0 + 70 });
        await create(store, low, high, normal);
        await jobIn(store, 'sent');
        assert.equal(await store.nextDueAt(), T0 + 50);
        await store.cancelJob(low.id, T0 + 1);
        assert.equal(await store.nextDueAt(), T0 + 70);
        await claim(store, normal.id, T0 + 70, 1000);
        assert.equal(await store.nextDueAt(), T0 + 90);
      });
    });

    describe('claimJobs', () => {
      test('claims a due job: processing, an attempt spent, a lease, and an event', async () => {
        const job = newJob();
        await create(store, job);
        const [result] = await store.claimJobs(
          [{ jobId: job.id, workerId: 'worker-1', leaseMs: 30_000 }],
          T0 + 5,
        );
        assert.equal(result?.kind, 'claimed');
        const claimed = result as Extract<ClaimResult, { kind: 'claimed' }>;
        assert.ok(claimed.leaseToken.length >= 16);
        assert.equal(claimed.job.status, 'processing');
        assert.equal(claimed.job.attempts, 1);
        assert.equal(claimed.job.updatedAt, T0 + 5);
        assert.deepEqual(claimed.job.content, job.content);
        const stored = await store.getJob(job.id);
        assert.equal(stored?.status, 'processing');
        assert.deepEqual(stored?.events.at(-1), {
          type: 'processing',
          at: T0 + 5,
          attempt: 1,
          detail: { worker: 'worker-1' },
        });
        assert.deepEqual(await store.findDueJobs(T0 + 5 + 29_999, 10, new Set()), []);
        assert.equal(await store.nextDueAt(), T0 + 5 + 30_000);
      });

      test('busy for a live lease or a job not due yet, finished for a finished job, not_found for an unknown id', async () => {
        const leased = newJob();
        await create(store, leased);
        await claim(store, leased.id, T0, 30_000);
        const scheduled = await jobIn(store, 'scheduled');
        const deferred = await jobIn(store, 'deferred');
        const sent = await jobIn(store, 'sent');
        const cancelled = await jobIn(store, 'cancelled');
        const failed = await jobIn(store, 'failed');
        const jobs = [leased, scheduled, deferred, sent, cancelled, failed];
        const before = await store.eventsFor(jobs.map((job) => job.id));
        const requests = [...jobs.map((job) => job.id), randomUUID()].map((jobId) => ({
          jobId,
          workerId: 'worker-2',
          leaseMs: MINUTE,
        }));
        assert.deepEqual(await store.claimJobs(requests, T0 + 10), [
          { kind: 'busy', status: 'processing', retryAt: T0 + 30_000 },
          { kind: 'busy', status: 'scheduled', retryAt: T0 + HOUR },
          { kind: 'busy', status: 'deferred', retryAt: T0 + HOUR },
          { kind: 'finished', status: 'sent' },
          { kind: 'finished', status: 'cancelled' },
          { kind: 'finished', status: 'failed' },
          { kind: 'not_found' },
        ]);
        assert.deepEqual(await store.eventsFor(jobs.map((job) => job.id)), before);
      });

      test('reclaims a job whose lease expired: another attempt, LEASE_EXPIRED, and the old lease is stale', async () => {
        const job = newJob();
        await create(store, job);
        const oldToken = await claim(store, job.id, T0, 1000, 'worker-1');
        const newToken = await claim(store, job.id, T0 + 1000, MINUTE, 'worker-2');
        const stored = await store.getJob(job.id);
        assert.equal(stored?.attempts, 2);
        assert.deepEqual(stored?.events.at(-1), {
          type: 'processing',
          at: T0 + 1000,
          attempt: 2,
          detail: { worker: 'worker-2', code: 'LEASE_EXPIRED' },
        });
        const sent: Outcome = { kind: 'sent', detail: {} };
        assert.deepEqual(
          await store.recordOutcomes([{ jobId: job.id, leaseToken: oldToken, outcome: sent }], T0 + 1001),
          [false],
        );
        assert.deepEqual(await store.getJob(job.id), stored);
        await record(store, job.id, newToken, sent, T0 + 1002);
      });

      test('of two concurrent claims of one job exactly one wins; the other is busy until the lease ends', async () => {
        const job = newJob();
        await create(store, job);
        const results = await Promise.all(
          ['worker-1', 'worker-2'].map(
            async (workerId) =>
              (await store.claimJobs([{ jobId: job.id, workerId, leaseMs: 30_000 }], T0 + 1))[0]!,
          ),
        );
        assert.deepEqual(results.map((result) => result.kind).sort(), ['busy', 'claimed']);
        assert.deepEqual(
          results.find((result) => result.kind === 'busy'),
          { kind: 'busy', status: 'processing', retryAt: T0 + 1 + 30_000 },
        );
        assert.equal((await store.getJob(job.id))?.attempts, 1);
        assert.deepEqual(await eventTypes(store, job.id), ['queued', 'processing']);
      });

      test('one batch claims some jobs and refuses others, each request answered for its own job', async () => {
        const fresh = newJob();
        const expired = newJob();
        const leased = newJob();
        await create(store, fresh, expired, leased);
        await claim(store, expired.id, T0, MINUTE);
        await claim(store, leased.id, T0, HOUR);
        const sent = await jobIn(store, 'sent');
        const results = await store.claimJobs(
          [leased, fresh, sent, expired].map((job) => ({
            jobId: job.id,
            workerId: 'worker-2',
            leaseMs: MINUTE,
          })),
          T0 + 2 * MINUTE,
        );
        assert.deepEqual(
          results.map((result) => result.kind),
          ['busy', 'claimed', 'finished', 'claimed'],
        );
        const [, freshClaim, , expiredClaim] = results as Extract<ClaimResult, { kind: 'claimed' }>[];
        assert.notEqual(freshClaim!.leaseToken, expiredClaim!.leaseToken);
        assert.deepEqual(
          [freshClaim!.job.attempts, expiredClaim!.job.attempts, freshClaim!.job.status],
          [1, 2, 'processing'],
        );
        const events = await store.eventsFor([fresh.id, expired.id, leased.id]);
        assert.deepEqual(events.get(fresh.id)!.at(-1)!.detail, { worker: 'worker-2' });
        assert.deepEqual(events.get(expired.id)!.at(-1)!.detail, {
          worker: 'worker-2',
          code: 'LEASE_EXPIRED',
        });
        assert.equal(events.get(leased.id)!.length, 2, 'the busy job got no event');
      });

      test('a job asked for twice in one batch is claimed once', async () => {
        const job = newJob();
        await create(store, job);
        const request = { jobId: job.id, workerId: 'worker-1', leaseMs: 1000 };
        const results = await store.claimJobs([request, request], T0);
        assert.deepEqual(
          results.map((result) => result.kind),
          ['claimed', 'busy'],
        );
        assert.deepEqual(results[1], { kind: 'busy', status: 'processing', retryAt: T0 + 1000 });
        assert.equal((await store.getJob(job.id))?.attempts, 1);
      });

      test('withTraceContext: a claim returns the context saved at acceptance, on the one-statement and the long way', async () => {
        const context = { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' };
        const [traced, plain] = [newJob({ traceContext: context }), newJob()];
        await create(store, traced, plain);
        const ask = (jobId: string, withTraceContext: boolean) => ({
          jobId,
          workerId: 'worker-1',
          leaseMs: 1000,
          withTraceContext,
        });
        const [first, second] = await store.claimJobs([ask(traced.id, true), ask(plain.id, true)], T0);
        assert.deepEqual(first?.kind === 'claimed' && first.traceContext, context);
        assert.equal(
          second?.kind === 'claimed' && second.traceContext,
          undefined,
          'none saved, none returned',
        );
        // Not asked for: not read.
        const again = newJob({ traceContext: context });
        await create(store, again);
        const [unasked] = await store.claimJobs([ask(again.id, false)], T0);
        assert.equal(unasked?.kind === 'claimed' && unasked.traceContext, undefined);
        // A batch that asks for one job twice takes the long way, and still reads it.
        const twice = newJob({ traceContext: context });
        await create(store, twice);
        const [claimed, busy] = await store.claimJobs([ask(twice.id, true), ask(twice.id, true)], T0);
        assert.deepEqual(claimed?.kind === 'claimed' && claimed.traceContext, context);
        assert.equal(busy?.kind, 'busy');
      });
    });

    describe('recordOutcomes', () => {
      test('sent: finished, no longer due, the detail in the history', async () => {
        const job = newJob();
        await create(store, job);
        const token = await claim(store, job.id, T0 + 1);
        const detail = { smtpCode: 250, response: '250 2.0.0 queued as 12345' };
        await record(store, job.id, token, { kind: 'sent', detail }, T0 + 10);
        const stored = await store.getJob(job.id);
        assert.equal(stored?.status, 'sent');
        assert.equal(stored?.attempts, 1);
        assert.equal(stored?.updatedAt, T0 + 10);
        assert.equal(stored?.lastError, undefined);
        assert.deepEqual(stored?.events.at(-1), { type: 'sent', at: T0 + 10, attempt: 1, detail });
        assert.equal(await store.countActive(), 0);
        assert.equal(await store.nextDueAt(), undefined);
        assert.deepEqual(await store.claimJobs([{ jobId: job.id, workerId: 'w', leaseMs: 1 }], T0 + HOUR), [
          { kind: 'finished', status: 'sent' },
        ]);
      });

      test('deferred: due again at its retry time, with the error kept', async () => {
        const job = newJob();
        await create(store, job);
        const token = await claim(store, job.id, T0);
        const detail = { code: 'SMTP_TRANSIENT', message: '421 try again later', smtpCode: 421 };
        await record(store, job.id, token, { kind: 'deferred', retryAt: T0 + 5000, detail }, T0 + 10);
        const stored = await store.getJob(job.id);
        assert.equal(stored?.status, 'deferred');
        assert.equal(stored?.lastError, '421 try again later');
        assert.deepEqual(stored?.events.at(-1), {
          type: 'deferred',
          at: T0 + 10,
          attempt: 1,
          detail: { ...detail, retry_at: new Date(T0 + 5000).toISOString() },
        });
        assert.deepEqual(await store.findDueJobs(T0 + 4999, 10, new Set()), []);
        assert.deepEqual(await store.findDueJobs(T0 + 5000, 10, new Set()), [
          { id: job.id, priority: 'normal' },
        ]);
        assert.deepEqual(await store.claimJobs([{ jobId: job.id, workerId: 'w', leaseMs: 1 }], T0 + 100), [
          { kind: 'busy', status: 'deferred', retryAt: T0 + 5000 },
        ]);
        await claim(store, job.id, T0 + 5000);
        const retried = await store.getJob(job.id);
        assert.equal(retried?.attempts, 2);
        assert.deepEqual(retried?.events.at(-1)?.detail, { worker: 'worker-1' });
      });

      test('failed with a dead letter: failed, dead-lettered with its reason, after the failed event', async () => {
        const job = newJob();
        await create(store, job);
        const token = await claim(store, job.id, T0);
        const detail = { code: 'MAX_ATTEMPTS', message: 'attempts exhausted' };
        await record(store, job.id, token, { kind: 'failed', detail, deadLetter: 'max_attempts' }, T0 + 20);
        const stored = await store.getJob(job.id);
        assert.equal(stored?.status, 'failed');
        assert.equal(stored?.deadLetterReason, 'max_attempts');
        assert.equal(stored?.deadLetteredAt, T0 + 20);
        assert.equal(stored?.lastError, 'attempts exhausted');
        assert.deepEqual(stored?.events.slice(-2), [
          { type: 'failed', at: T0 + 20, attempt: 1, detail },
          { type: 'dead_lettered', at: T0 + 20, attempt: 1, detail: { reason: 'max_attempts' } },
        ]);
        assert.deepEqual(
          (await store.listDeadLetters({ limit: 10 })).map((dead) => dead.id),
          [job.id],
        );
        assert.equal(await store.countActive(), 0);
      });

      test('failed without a dead letter is final but no dead letter', async () => {
        const job = await jobIn(store, 'failed');
        const stored = await store.getJob(job.id);
        assert.equal(stored?.deadLetterReason, undefined);
        assert.equal(stored?.deadLetteredAt, undefined);
        assert.deepEqual(await eventTypes(store, job.id), ['queued', 'processing', 'failed']);
        assert.deepEqual(await store.listDeadLetters({ limit: 10 }), []);
      });

      test('released untried: the attempt is given back (queued, or deferred after earlier attempts), due at once', async () => {
        const first = newJob();
        const second = await jobIn(store, 'deferred');
        await create(store, first);
        const token = await claim(store, first.id, T0 + 1);
        const detail = { code: 'SHUTDOWN', reason: 'shutdown' };
        await record(store, first.id, token, { kind: 'released', detail, attemptSpent: false }, T0 + 50);
        const released = await store.getJob(first.id);
        assert.equal(released?.status, 'queued');
        assert.equal(released?.attempts, 0);
        assert.deepEqual(released?.events.at(-1), { type: 'released', at: T0 + 50, attempt: 1, detail });

        const again = await claim(store, second.id, T0 + HOUR);
        await record(
          store,
          second.id,
          again,
          { kind: 'released', detail, attemptSpent: false },
          T0 + HOUR + 1,
        );
        const secondStored = await store.getJob(second.id);
        assert.equal(secondStored?.status, 'deferred');
        assert.equal(secondStored?.attempts, 1);
        assert.deepEqual(
          (await store.findDueJobs(T0 + HOUR + 1, 10, new Set())).map((due) => due.id),
          [first.id, second.id],
        );
      });

      test('released untried until a time (flow control): not due before it, retry_at in the history', async () => {
        const job = newJob();
        await create(store, job);
        const token = await claim(store, job.id, T0);
        const detail = { code: 'CIRCUIT_OPEN', transport: 'smtp' };
        const outcome = { kind: 'released', detail, attemptSpent: false, retryAt: T0 + 30_000 } as const;
        await record(store, job.id, token, outcome, T0 + 50);
        const stored = await store.getJob(job.id);
        assert.equal(stored?.status, 'queued');
        assert.equal(stored?.attempts, 0);
        assert.deepEqual(stored?.events.at(-1), {
          type: 'released',
          at: T0 + 50,
          attempt: 1,
          detail: { ...detail, retry_at: new Date(T0 + 30_000).toISOString() },
        });
        assert.deepEqual(await store.findDueJobs(T0 + 29_999, 10, new Set()), []);
        assert.equal(
          (await store.claimJobs([{ jobId: job.id, workerId: 'w', leaseMs: 1000 }], T0 + 100))[0]?.kind,
          'busy',
        );
        assert.deepEqual(await store.findDueJobs(T0 + 30_000, 10, new Set()), [
          { id: job.id, priority: 'normal' },
        ]);
      });

      test('released with the attempt spent: deferred, the attempt counted, due at once', async () => {
        const job = newJob();
        await create(store, job);
        const token = await claim(store, job.id, T0);
        await record(
          store,
          job.id,
          token,
          { kind: 'released', detail: { reason: 'shutdown_timeout' }, attemptSpent: true },
          T0 + 50,
        );
        const stored = await store.getJob(job.id);
        assert.equal(stored?.status, 'deferred');
        assert.equal(stored?.attempts, 1);
        assert.deepEqual(await store.findDueJobs(T0 + 50, 10, new Set()), [
          { id: job.id, priority: 'normal' },
        ]);
      });

      test('a stale, wrong or unknown lease writes nothing, and does not stop the rest of the batch', async () => {
        const job = newJob();
        const other = newJob();
        await create(store, job, other);
        const token = await claim(store, job.id, T0);
        const otherToken = await claim(store, other.id, T0);
        const before = await store.getJob(job.id);
        const sent: Outcome = { kind: 'sent', detail: {} };
        assert.deepEqual(
          await store.recordOutcomes(
            [
              { jobId: job.id, leaseToken: 'not-the-token', outcome: sent },
              { jobId: randomUUID(), leaseToken: token, outcome: sent },
              { jobId: other.id, leaseToken: otherToken, outcome: sent },
              { jobId: other.id, leaseToken: otherToken, outcome: { kind: 'failed', detail: {} } },
            ],
            T0 + 10,
          ),
          [false, false, true, false],
        );
        assert.deepEqual(await store.getJob(job.id), before);
        assert.equal((await store.getJob(other.id))?.status, 'sent');
        assert.deepEqual(await eventTypes(store, other.id), ['queued', 'processing', 'sent']);
      });

      test('one batch of outcomes for different jobs: each under its own lease, its events in order', async () => {
        const [sent, failed, released, stale] = [newJob(), newJob(), newJob(), newJob()];
        await create(store, sent, failed, released, stale);
        const tokens = new Map<string, string>();
        for (const job of [sent, failed, released, stale]) tokens.set(job.id, await claim(store, job.id, T0));
        const applied = await store.recordOutcomes(
          [
            {
              jobId: failed.id,
              leaseToken: tokens.get(failed.id)!,
              outcome: { kind: 'failed', detail: { code: 'X' }, deadLetter: 'max_attempts' },
            },
            { jobId: stale.id, leaseToken: 'not-the-token', outcome: { kind: 'sent', detail: {} } },
            {
              jobId: sent.id,
              leaseToken: tokens.get(sent.id)!,
              outcome: { kind: 'sent', detail: { smtpCode: 250 } },
            },
            { jobId: randomUUID(), leaseToken: tokens.get(sent.id)!, outcome: { kind: 'sent', detail: {} } },
            {
              jobId: released.id,
              leaseToken: tokens.get(released.id)!,
              outcome: { kind: 'released', detail: {}, attemptSpent: false },
            },
          ],
          T0 + 10,
        );
        assert.deepEqual(applied, [true, false, true, false, true]);
        assert.deepEqual(await eventTypes(store, failed.id), [
          'queued',
          'processing',
          'failed',
          'dead_lettered',
        ]);
        const failedJob = (await store.getJob(failed.id))!;
        assert.deepEqual(
          [failedJob.status, failedJob.deadLetterReason, failedJob.deadLetteredAt],
          ['failed', 'max_attempts', T0 + 10],
        );
        assert.equal((await store.getJob(sent.id))?.status, 'sent');
        const releasedJob = (await store.getJob(released.id))!;
        assert.deepEqual([releasedJob.status, releasedJob.attempts], ['queued', 0]);
        assert.equal((await store.getJob(stale.id))?.status, 'processing');
        assert.deepEqual(await eventTypes(store, stale.id), ['queued', 'processing']);
      });

      test("a relay's reply holding a NUL character is recorded", async () => {
        const job = newJob();
        await create(store, job);
        const token = await claim(store, job.id, T0);
        const detail = {
          code: 'SMTP_TRANSIENT',
          message: '451 odd\u0000reply',
          response: '451 odd\u0000reply',
        };
        await record(store, job.id, token, { kind: 'deferred', retryAt: T0 + MINUTE, detail }, T0 + 1);
        const stored = await store.getJob(job.id);
        assert.equal(stored?.status, 'deferred');
        assert.deepEqual(stored?.events.at(-1)?.detail, {
          ...detail,
          retry_at: new Date(T0 + MINUTE).toISOString(),
        });
      });
    });

    describe('dead letters', () => {
      /** A job failed and dead-lettered at `at`, after `attempts` attempts. */
      async function deadLetter(reason: 'max_attempts' | 'invalid_message', at: number, attempts = 1) {
        const job = newJob();
        await create(store, job);
        for (let attempt = 1; attempt < attempts; attempt++) {
          const token = await claim(store, job.id, T0 + attempt);
          await record(
            store,
            job.id,
            token,
            { kind: 'deferred', retryAt: T0 + attempt, detail: {} },
            T0 + attempt,
          );
        }
        const token = await claim(store, job.id, T0 + attempts);
        await record(store, job.id, token, { kind: 'failed', detail: { code: 'X' }, deadLetter: reason }, at);
        return job.id;
      }

      test('lists them newest first, filtered by reason, time and ids', async () => {
        const d1 = await deadLetter('max_attempts', T0 + 100);
        const d2 = await deadLetter('invalid_message', T0 + 200);
        const d3 = await deadLetter('max_attempts', T0 + 300);
        const failed = await jobIn(store, 'failed');
        const ids = async (filter: Partial<Parameters<Store['listDeadLetters']>[0]>) =>
          (await store.listDeadLetters({ limit: 10, ...filter })).map((job) => job.id);
        assert.deepEqual(await ids({}), [d3, d2, d1]);
        assert.deepEqual(await ids({ reason: 'max_attempts' }), [d3, d1]);
        assert.deepEqual(await ids({ since: T0 + 200 }), [d3, d2]);
        assert.deepEqual(await ids({ ids: [d1, d2, failed.id, randomUUID()] }), [d2, d1]);
        assert.deepEqual(await ids({ ids: [] }), []);
        assert.deepEqual(await ids({ limit: 1 }), [d3]);
        const [listed] = await store.listDeadLetters({ limit: 1 });
        assert.equal(listed?.deadLetteredAt, T0 + 300);
        assert.equal(listed?.status, 'failed');
      });

      test('replay keeps id and history, queues with a fresh attempt budget, oldest first', async () => {
        const d1 = await deadLetter('max_attempts', T0 + 100, 2);
        const d2 = await deadLetter('invalid_message', T0 + 200);
        const d3 = await deadLetter('max_attempts', T0 + 300);
        const historyBefore = (await store.getJob(d1))!.events;

        assert.deepEqual(await store.replayDeadLetters({ reason: 'max_attempts', limit: 10 }, T0 + 1000), [
          d1,
          d3,
        ]);
        const replayed = await store.getJob(d1);
        assert.equal(replayed?.status, 'queued');
        assert.equal(replayed?.attempts, 0);
        assert.equal(replayed?.deadLetterReason, undefined);
        assert.equal(replayed?.deadLetteredAt, undefined);
        assert.equal(replayed?.updatedAt, T0 + 1000);
        assert.deepEqual(replayed?.events, [
          ...historyBefore,
          {
            type: 'replayed',
            at: T0 + 1000,
            attempt: 0,
            detail: { previous_reason: 'max_attempts', previous_attempts: 2 },
          },
        ]);
        assert.deepEqual(
          (await store.listDeadLetters({ limit: 10 })).map((job) => job.id),
          [d2],
        );
        assert.deepEqual(
          (await store.findDueJobs(T0 + 1000, 10, new Set())).map((due) => due.id).sort(byId),
          [d1, d3].sort(byId),
        );
        await claim(store, d1, T0 + 1000);
        assert.equal((await store.getJob(d1))?.attempts, 1);

        assert.deepEqual(await store.replayDeadLetters({ ids: [d2], limit: 10 }, T0 + 2000), [d2]);
        assert.deepEqual(await store.replayDeadLetters({ limit: 10 }, T0 + 3000), []);
      });

      test('replay honours since and limit', async () => {
        const d1 = await deadLetter('max_attempts', T0 + 100);
        const d2 = await deadLetter('max_attempts', T0 + 200);
        const d3 = await deadLetter('max_attempts', T0 + 300);
        assert.deepEqual(await store.replayDeadLetters({ since: T0 + 200, limit: 1 }, T0 + 1000), [d2]);
        assert.deepEqual(await store.replayDeadLetters({ limit: 10 }, T0 + 1000), [d1, d3]);
      });
    });

    test('countActive counts queued, scheduled, processing and deferred jobs, not finished ones', async () => {
      for (const status of [
        'queued',
        'scheduled',
        'processing',
        'deferred',
        'sent',
        'failed',
        'cancelled',
      ] as const) {
        await jobIn(store, status);
      }
      assert.equal(await store.countActive(), 4);
    });

    test('pruneIdempotencyKeys deletes keys older than the cutoff; a pruned key makes a new job', async () => {
      const old = newJob({ createdAt: T0, idempotency: key('old', 'hash') });
      const recent = newJob({ createdAt: T0 + 1000, idempotency: key('recent', 'hash') });
      await create(store, old, recent);
      assert.equal(await store.pruneIdempotencyKeys(T0 + 1000), 1);
      const oldAgain = newJob({ createdAt: T0 + 2000, idempotency: key('old', 'hash') });
      const recentAgain = newJob({ createdAt: T0 + 2000, idempotency: key('recent', 'hash') });
      assert.deepEqual(await store.createJobs([oldAgain, recentAgain]), [
        { kind: 'created', id: oldAgain.id, status: 'queued' },
        { kind: 'duplicate', id: recent.id, status: 'queued' },
      ]);
    });

    test('health is ok', async () => {
      assert.deepEqual(await store.health(), { ok: true });
    });

    describe('templates', () => {
      const welcome: TemplateContent = {
        subject: 'Welcome, {{name}}',
        html: '<p>Hi {{name}}</p>',
        requiredVariables: ['name'],
      };
      const welcome2: TemplateContent = {
        subject: 'Hello {{name}}',
        text: 'Hi {{name}}, see {{link}}',
        mjml: '<mjml></mjml>',
        requiredVariables: ['link', 'name'],
      };

      test('createTemplate saves version 1; a taken code writes nothing', async () => {
        assert.deepEqual(await store.createTemplate('welcome', welcome, T0), {
          code: 'welcome',
          version: 1,
          savedAt: T0,
          ...welcome,
        });
        assert.equal(await store.createTemplate('welcome', welcome2, T0 + 1), undefined);
        assert.deepEqual(await store.getTemplate('welcome'), {
          code: 'welcome',
          version: 1,
          savedAt: T0,
          ...welcome,
        });
      });

      test('updateTemplate adds a version; getTemplate returns the newest or the one asked for', async () => {
        await store.createTemplate('welcome', welcome, T0);
        assert.equal(await store.updateTemplate('missing', welcome2, T0), undefined);
        const v2 = await store.updateTemplate('welcome', welcome2, T0 + 1000);
        assert.deepEqual(v2, { code: 'welcome', version: 2, savedAt: T0 + 1000, ...welcome2 });
        assert.deepEqual(await store.getTemplate('welcome'), v2);
        assert.equal((await store.getTemplate('welcome', 1))?.subject, welcome.subject);
        assert.equal(await store.getTemplate('welcome', 3), undefined);
        assert.equal(await store.getTemplate('other'), undefined);
      });

      test('concurrent updates get distinct versions', async () => {
        await store.createTemplate('welcome', welcome, T0);
        const saved = await Promise.all(
          Array.from({ length: 8 }, (_, i) => store.updateTemplate('welcome', welcome2, T0 + i)),
        );
        assert.deepEqual(
          saved.map((v) => v?.version).sort((a, b) => a! - b!),
          [2, 3, 4, 5, 6, 7, 8, 9],
        );
        assert.equal((await store.getTemplate('welcome'))?.version, 9);
      });

      test('listTemplates pages by code with the newest version; listTemplateVersions lists them all', async () => {
        for (const code of ['c', 'a', 'b']) await store.createTemplate(code, welcome, T0);
        await store.updateTemplate('b', welcome2, T0 + 5);
        assert.deepEqual(await store.listTemplates(2), [
          { code: 'a', version: 1, subject: welcome.subject, savedAt: T0 },
          { code: 'b', version: 2, subject: welcome2.subject, savedAt: T0 + 5 },
        ]);
        assert.deepEqual(
          (await store.listTemplates(2, 'b')).map((t) => t.code),
          ['c'],
        );
        assert.deepEqual(await store.listTemplateVersions('b'), [
          { code: 'b', version: 1, subject: welcome.subject, savedAt: T0 },
          { code: 'b', version: 2, subject: welcome2.subject, savedAt: T0 + 5 },
        ]);
        assert.equal(await store.listTemplateVersions('zzz'), undefined);
      });

      test('deleteTemplate removes every version; the code can be used again from version 1', async () => {
        await store.createTemplate('welcome', welcome, T0);
        await store.updateTemplate('welcome', welcome2, T0 + 1);
        assert.equal(await store.deleteTemplate('welcome'), true);
        assert.equal(await store.deleteTemplate('welcome'), false);
        assert.equal(await store.getTemplate('welcome'), undefined);
        assert.equal(await store.getTemplate('welcome', 2), undefined);
        assert.equal(await store.listTemplateVersions('welcome'), undefined);
        assert.equal((await store.createTemplate('welcome', welcome2, T0 + 2))?.version, 1);
        assert.deepEqual(
          (await store.listTemplateVersions('welcome'))?.map((v) => v.version),
          [1],
        );
      });
    });

    describe('event log', () => {
      test("every committed transition, in order, with increasing ids, the job's tags and metadata", async () => {
        const before = await store.events.lastEventId();
        const job = await jobIn(store, 'sent', { tags: ['receipt'], metadata: { order: '7' } });
        const events = await store.events.eventsAfter(before, 100);
        assert.deepEqual(
          events.map((event) => event.type),
          ['queued', 'processing', 'sent'],
        );
        for (const event of events) {
          assert.equal(event.jobId, job.id);
          assert.deepEqual(event.tags, ['receipt']);
          assert.deepEqual(event.metadata, { order: '7' });
          assert.equal(event.messageId, job.messageId);
        }
        assert.equal(events[2]!.detail.smtpCode, 250);
        const ids = events.map((event) => BigInt(event.id));
        assert.ok(ids[0]! > BigInt(before) && ids[0]! < ids[1]! && ids[1]! < ids[2]!);
        assert.equal(await store.events.lastEventId(), events[2]!.id);
        assert.deepEqual(await store.events.eventsAfter(events[2]!.id, 100), []);
        assert.deepEqual(
          (await store.events.eventsAfter(before, 2)).map((event) => event.type),
          ['queued', 'processing'],
        );
        const picked = await store.events.eventsByIds([events[2]!.id, events[0]!.id, '999999999']);
        assert.deepEqual(
          picked.map((event) => event.id),
          [events[0]!.id, events[2]!.id],
        );
      });
    });

    describe('webhooks', () => {
      const secret = `whsec_${Buffer.alloc(32, 1).toString('base64')}`;
      const endpoint = (id: string, events: WebhookEventType[] = ['email.sent', 'email.failed']) => ({
        id,
        url: `https://hooks.example.com/${id}`,
        events: [...events],
        secret,
        source: 'api' as const,
        createdAt: T0,
      });

      test('endpoints: create once, read, list, update, put, delete', async () => {
        assert.equal(await store.webhooks.createEndpoint(endpoint('a')), true);
        assert.equal(await store.webhooks.createEndpoint(endpoint('a')), false);
        const read = await store.webhooks.getEndpoint('a');
        assert.deepEqual(read, {
          id: 'a',
          url: 'https://hooks.example.com/a',
          events: ['email.sent', 'email.failed'],
          enabled: true,
          source: 'api',
          createdAt: T0,
          updatedAt: T0,
        });
        const updated = await store.webhooks.updateEndpoint(
          'a',
          { enabled: false, description: 'x' },
          T0 + 1,
        );
        assert.equal(updated?.enabled, false);
        assert.equal(updated?.disabledReason, 'disabled');
        assert.equal(updated?.description, 'x');
        const again = await store.webhooks.updateEndpoint('a', { enabled: true }, T0 + 2);
        assert.equal(again?.enabled, true);
        assert.equal(again?.disabledReason, undefined);
        assert.equal(await store.webhooks.updateEndpoint('nope', { enabled: true }, T0), undefined);
        await store.webhooks.putEndpoint({ ...endpoint('env', ['email.queued']), source: 'env' });
        await store.webhooks.putEndpoint({
          ...endpoint('env'),
          url: 'https://other.example.com/',
          source: 'env',
        });
        assert.equal((await store.webhooks.getEndpoint('env'))?.url, 'https://other.example.com/');
        assert.deepEqual(
          (await store.webhooks.listEndpoints()).map((e) => e.id),
          ['a', 'env'],
        );
        assert.equal(await store.webhooks.deleteEndpoint('a'), true);
        assert.equal(await store.webhooks.deleteEndpoint('a'), false);
        assert.equal(await store.webhooks.getEndpoint('a'), undefined);
      });

      test('a delivery per subscribed, enabled endpoint, written with the event; taken once while held', async () => {
        await store.webhooks.createEndpoint(endpoint('sent-only', ['email.sent']));
        await store.webhooks.createEndpoint(endpoint('off'));
        await store.webhooks.updateEndpoint('off', { enabled: false }, T0);
        const job = await jobIn(store, 'sent');
        const taken = await store.webhooks.takeDeliveries(T0, 10, MINUTE);
        assert.equal(taken.length, 1);
        const [delivery] = taken;
        assert.equal(delivery!.eventType, 'email.sent');
        assert.equal(delivery!.endpoint.id, 'sent-only');
        assert.equal(delivery!.endpoint.secret, secret);
        assert.equal(delivery!.attempt, 1);
        assert.equal(delivery!.event.jobId, job.id);
        assert.deepEqual(delivery!.to, ['alice@example.com']);
        assert.equal(delivery!.subject, 'Your receipt');
        // Held: no one else takes it until the hold ends; then it comes back as try 2.
        assert.deepEqual(await store.webhooks.takeDeliveries(T0 + MINUTE - 1, 10, MINUTE), []);
        const retaken = await store.webhooks.takeDeliveries(T0 + MINUTE, 10, MINUTE);
        assert.equal(retaken[0]?.attempt, 2);
        // The first taker's late result is dropped; the current one's is kept.
        const result = (attempt: number, statusCode: number) => ({
          deliveryId: delivery!.id,
          endpointId: 'sent-only',
          attempt,
          outcome: { at: T0 + MINUTE + 5, statusCode, durationMs: 12 },
          next: { kind: 'delivered' as const },
        });
        await store.webhooks.recordDeliveries([result(1, 299)]);
        await store.webhooks.recordDeliveries([result(2, 200)]);
        const [logged] = await store.webhooks.listDeliveries('sent-only', 10);
        assert.equal(logged?.status, 'delivered');
        assert.equal(logged?.attempts, 2);
        assert.equal(logged?.nextAttemptAt, undefined);
        assert.deepEqual(logged?.log, [{ at: T0 + MINUTE + 5, statusCode: 200, durationMs: 12 }]);
        assert.deepEqual(await store.webhooks.takeDeliveries(T0 + HOUR, 10, MINUTE), []);
      });

      test('retry, then failure that turns the endpoint off and ends its other deliveries', async () => {
        await store.webhooks.createEndpoint(endpoint('down', ['email.queued']));
        await jobIn(store, 'queued');
        await jobIn(store, 'queued');
        const [first, second] = await store.webhooks.takeDeliveries(T0, 10, MINUTE);
        assert.ok(first && second);
        await store.webhooks.recordDeliveries([
          {
            deliveryId: first.id,
            endpointId: 'down',
            attempt: 1,
            outcome: { at: T0 + 1, statusCode: 500, error: 'HTTP 500', durationMs: 3 },
            next: { kind: 'retry', at: T0 + 5000 },
          },
        ]);
        assert.deepEqual(await store.webhooks.takeDeliveries(T0 + 4999, 10, 1), []);
        const [again] = await store.webhooks.takeDeliveries(T0 + 5000, 10, MINUTE);
        assert.equal(again?.id, first.id);
        await store.webhooks.recordDeliveries([
          {
            deliveryId: first.id,
            endpointId: 'down',
            attempt: 2,
            outcome: { at: T0 + 6000, error: 'no answer within 10000 ms', durationMs: 10_000 },
            next: { kind: 'failed', disableEndpoint: { reason: 'failing', unlessDeliveredSince: T0 } },
          },
        ]);
        const off = await store.webhooks.getEndpoint('down');
        assert.equal(off?.enabled, false);
        assert.equal(off?.disabledReason, 'failing');
        const log = await store.webhooks.listDeliveries('down', 10);
        assert.deepEqual(
          log.map((d) => [d.id, d.status]),
          [
            [second.id, 'failed'],
            [first.id, 'failed'],
          ],
        );
        assert.match(log[0]!.log[0]!.error!, /endpoint disabled: failing/);
        assert.deepEqual(
          log[1]!.log.map((attempt) => attempt.error),
          ['no answer within 10000 ms', 'HTTP 500'],
        );
        // Off: new events make no deliveries for it.
        await jobIn(store, 'queued');
        assert.deepEqual(await store.webhooks.takeDeliveries(T0 + HOUR, 10, MINUTE), []);
        // Paging the log.
        assert.deepEqual(
          (await store.webhooks.listDeliveries('down', 10, second.id)).map((d) => d.id),
          [first.id],
        );
        assert.equal(await store.webhooks.pruneDeliveries(T0 + 1), 2);
        assert.deepEqual(await store.webhooks.listDeliveries('down', 10), []);
      });

      test('a fair take gives one endpoint at most perEndpoint, and none to the endpoints it skips', async () => {
        for (const id of ['down', 'up', 'busy'])
          await store.webhooks.createEndpoint(endpoint(id, ['email.queued']));
        // Each queued email makes one due delivery per endpoint: 5 due for each.
        for (let i = 0; i < 5; i++) await jobIn(store, 'queued');
        const taken = await store.webhooks.takeDeliveries(T0, 16, MINUTE, { perEndpoint: 2, skip: ['busy'] });
        const byEndpoint = (deliveries: readonly { endpoint: { id: string } }[]) =>
          deliveries.reduce<Record<string, number>>((counts, { endpoint: { id } }) => {
            counts[id] = (counts[id] ?? 0) + 1;
            return counts;
          }, {});
        assert.deepEqual(byEndpoint(taken), { down: 2, up: 2 });
        // The limit still bounds the whole take; without `fair` it is oldest due first, any endpoint.
        assert.equal(
          (await store.webhooks.takeDeliveries(T0, 3, MINUTE, { perEndpoint: 2, skip: [] })).length,
          3,
        );
        assert.equal((await store.webhooks.takeDeliveries(T0, 16, MINUTE)).length, 15 - 4 - 3);
      });

      test('a delivery that runs out does not turn off an endpoint that accepted another since', async () => {
        await store.webhooks.createEndpoint(endpoint('mixed', ['email.queued']));
        await jobIn(store, 'queued');
        await jobIn(store, 'queued');
        const [bad, good] = await store.webhooks.takeDeliveries(T0, 10, MINUTE);
        await store.webhooks.recordDeliveries([
          {
            deliveryId: good!.id,
            endpointId: 'mixed',
            attempt: 1,
            outcome: { at: T0 + 10, statusCode: 204, durationMs: 1 },
            next: { kind: 'delivered' },
          },
          {
            deliveryId: bad!.id,
            endpointId: 'mixed',
            attempt: 1,
            outcome: { at: T0 + 20, statusCode: 400, error: 'HTTP 400', durationMs: 1 },
            next: { kind: 'failed', disableEndpoint: { reason: 'failing', unlessDeliveredSince: T0 } },
          },
        ]);
        assert.equal((await store.webhooks.getEndpoint('mixed'))?.enabled, true);
      });
    });
  });
}

// ---- The adapters -------------------------------------------------------------------------------

const sqliteDir = mkdtempSync(join(tmpdir(), 'mailroom-store-contract-'));
after(() => rmSync(sqliteDir, { recursive: true, force: true }));
let sqliteStores = 0;

storeContract('SQLite', async () => {
  const store = new ThreadedSqliteStore(join(sqliteDir, `store-${++sqliteStores}.db`));
  await store.migrate();
  return { store, dispose: () => store.close() };
});

const postgresUp = await serviceAvailable('PostgreSQL', POSTGRES_URL);
/** Every schema this run makes starts with this, and is dropped after. */
const RUN_PREFIX = `mailroom_test_${randomBytes(4).toString('hex')}`;
let postgresSchemas = 0;
const admin = postgresUp ? new pg.Pool({ connectionString: POSTGRES_URL, max: 2 }) : undefined;

interface PostgresFixture extends StoreFixture {
  readonly store: PostgresStore;
  readonly schema: string;
}

async function postgresStore(options: Partial<PostgresStoreOptions> = {}): Promise<PostgresFixture> {
  const schema = `${RUN_PREFIX}_${++postgresSchemas}`;
  const store = new PostgresStore({ url: POSTGRES_URL, schema, poolSize: 4, ...options });
  await store.migrate();
  return {
    store,
    schema,
    dispose: async () => {
      await store.close();
      await admin!.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    },
  };
}

after(async () => {
  if (!admin) return;
  // A test that failed before its dispose leaves its schema: drop what this run made, nothing else.
  const { rows } = await admin.query<{ nspname: string }>(
    'SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)',
    [`${RUN_PREFIX}_`],
  );
  for (const { nspname } of rows) await admin.query(`DROP SCHEMA IF EXISTS ${nspname} CASCADE`);
  await admin.end();
});

storeContract('PostgreSQL', () => postgresStore(), { skip: !postgresUp });

/** Counts the statements pg sends while `work` runs (BEGIN and COMMIT included). */
async function countStatements<T>(work: () => Promise<T>): Promise<{ result: T; statements: number }> {
  const prototype = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
  const original = prototype.query;
  let statements = 0;
  prototype.query = function (this: unknown, ...args: unknown[]) {
    statements++;
    return original.apply(this, args);
  };
  try {
    return { result: await work(), statements };
  } finally {
    prototype.query = original;
  }
}

type QueryFn = (this: pg.Client, ...args: unknown[]) => Promise<unknown>;

/** Runs `work` with pg.Client's query replaced by `replace(original)`. */
async function withQuery<T>(replace: (original: QueryFn) => QueryFn, work: () => Promise<T>): Promise<T> {
  const prototype = pg.Client.prototype as unknown as { query: QueryFn };
  const original = prototype.query;
  prototype.query = replace(original);
  try {
    return await work();
  } finally {
    prototype.query = original;
  }
}

/** What `work` returned, and the durability levels of the connections its statements ran on. */
async function durabilityOf<T>(work: () => Promise<T>): Promise<{ result: T; levels: string[] }> {
  const seen = new Set<'light' | 'durable'>();
  const result = await withQuery(
    (original) =>
      function (this: pg.Client, ...args: unknown[]) {
        const { options } = (this as unknown as { connectionParameters: { options?: string } })
          .connectionParameters;
        seen.add(options?.includes('synchronous_commit=off') ? 'light' : 'durable');
        return original.apply(this, args);
      },
    work,
  );
  return { result, levels: [...seen] };
}

/**
 * Runs `work` while the first COMMIT's answer is lost as if the connection died: `after` PostgreSQL
 * committed, or `before` (the transaction is rolled back instead).
 */
async function withLostCommitAnswer<T>(when: 'after' | 'before', work: () => Promise<T>): Promise<T> {
  let lost = false;
  return withQuery(
    (original) =>
      function (this: pg.Client, ...args: unknown[]) {
        if (args[0] !== 'COMMIT' || lost) return original.apply(this, args);
        lost = true;
        const sent = original.apply(this, when === 'after' ? args : ['ROLLBACK']);
        return sent.then(() => Promise.reject(new Error('Connection terminated unexpectedly')));
      },
    work,
  );
}

async function rowCounts(schema: string): Promise<Record<string, number>> {
  const { rows } = await admin!.query(
    `SELECT (SELECT count(*)::int FROM ${schema}.jobs) AS jobs, (SELECT count(*)::int FROM ${schema}.job_events) AS job_events,
            (SELECT count(*)::int FROM ${schema}.outbox) AS outbox`,
  );
  return rows[0];
}

describe('PostgreSQL store only', { skip: !postgresUp }, () => {
  describe('outbox', () => {
    let fixture: PostgresFixture;
    let store: PostgresStore;
    beforeEach(async () => {
      fixture = await postgresStore({ outbox: true });
      store = fixture.store;
    });
    afterEach(() => fixture.dispose());

    const outboxRows = async (schema: string) =>
      (await admin!.query(`SELECT count(*)::int AS n FROM ${schema}.outbox`)).rows[0].n as number;

    test('is there only when asked for; without it createJobs writes no entries', async () => {
      const plain = await postgresStore();
      try {
        assert.equal(plain.store.outbox, undefined);
        await create(plain.store, newJob());
        assert.equal(await outboxRows(plain.schema), 0);
      } finally {
        await plain.dispose();
      }
    });

    test('an entry per created job (none for duplicates), high priority first; held entries come back after the hold', async () => {
      const normal = newJob({ idempotency: key('k1', 'hash-a') });
      const high = newJob({ priority: 'high', createdAt: T0 + 1 });
      const low = newJob({ priority: 'low', createdAt: T0 - 1 });
      const scheduled = newJob({ priority: 'high', sendAt: T0 + MINUTE });
      await create(store, normal, high, low, scheduled);
      await store.createJobs([newJob({ idempotency: key('k1', 'hash-a') }), newJob({ id: high.id })]);
      assert.equal(await outboxRows(fixture.schema), 4);

      const outbox = store.outbox!;
      assert.deepEqual(await outbox.take(T0 + 10, 10, 30_000), [
        { jobId: high.id, priority: 'high', headers: {} },
        { jobId: normal.id, priority: 'normal', headers: {} },
        { jobId: low.id, priority: 'low', headers: {} },
      ]);
      assert.deepEqual(await outbox.take(T0 + 11, 10, 30_000), [], 'held');
      assert.deepEqual(
        (await outbox.take(T0 + 10 + 30_000, 2, 30_000)).map((entry) => entry.jobId),
        [high.id, normal.id],
        'back after the hold; the scheduled job is not due yet',
      );
      await outbox.complete([high.id, normal.id, low.id]);
      assert.deepEqual(await outbox.take(T0 + HOUR, 10, 30_000), [
        { jobId: scheduled.id, priority: 'high', headers: {} },
      ]);
      await outbox.complete([scheduled.id]);
      assert.equal(await outboxRows(fixture.schema), 0);
    });

    test('stats: entries due and not held, and the oldest due time; scheduled ones are not counted', async () => {
      const outbox = store.outbox!;
      assert.deepEqual(await outbox.stats(T0), { due: 0 });
      const early = newJob({ createdAt: T0 - 5 });
      const later = newJob({ createdAt: T0 + 3 });
      await create(store, early, later, newJob({ sendAt: T0 + HOUR }));
      assert.deepEqual(await outbox.stats(T0 + 10), { due: 2, oldestDueAt: T0 - 5 });
      // Held by a dispatcher: not due until the hold ends.
      await outbox.take(T0 + 10, 1, 30_000);
      assert.deepEqual(await outbox.stats(T0 + 11), { due: 1, oldestDueAt: T0 + 3 });
    });

    test('concurrent takes never hand out the same entry', async () => {
      const jobs = Array.from({ length: 60 }, (_, i) => newJob({ createdAt: T0 + i }));
      await create(store, ...jobs);
      const outbox = store.outbox!;
      const batches = await Promise.all([1, 2, 3, 4].map(() => outbox.take(T0 + MINUTE, 20, 30_000)));
      const taken = batches.flat().map((entry) => entry.jobId);
      assert.equal(new Set(taken).size, taken.length, 'no entry twice');
      // Whatever a take skipped is still there for the next one, once and only once.
      for (;;) {
        const more = await outbox.take(T0 + MINUTE, 20, 30_000);
        if (more.length === 0) break;
        taken.push(...more.map((entry) => entry.jobId));
      }
      assert.deepEqual([...taken].sort(byId), jobs.map((job) => job.id).sort(byId));
    });

    test('sweep adds entries for overdue active jobs without one, once, and never for finished jobs', async () => {
      const stuck = newJob();
      const retrying = newJob();
      const leasedNow = newJob();
      await create(store, stuck, retrying, leasedNow);
      const queued = await jobIn(store, 'queued');
      const sent = await jobIn(store, 'sent');
      await claim(store, stuck.id, T0, MINUTE);
      const token = await claim(store, retrying.id, T0);
      await record(store, retrying.id, token, { kind: 'deferred', retryAt: T0 + 10_000, detail: {} }, T0);
      await claim(store, leasedNow.id, T0 + 10 * MINUTE, MINUTE);
      const outbox = store.outbox!;
      await outbox.complete([stuck, retrying, leasedNow, queued, sent].map((job) => job.id));

      assert.equal(await outbox.sweep(T0 + 2 * MINUTE, 100), 3);
      assert.equal(await outbox.sweep(T0 + 2 * MINUTE, 100), 0, 'they have entries already');
      assert.deepEqual(
        (await outbox.take(T0 + 2 * MINUTE, 10, 30_000)).map((entry) => entry.jobId),
        [queued.id, retrying.id, stuck.id],
      );
    });

    test('release makes taken entries due again at once', async () => {
      const job = newJob();
      await create(store, job);
      const outbox = store.outbox!;
      assert.equal((await outbox.take(T0 + 10, 10, 60_000)).length, 1);
      assert.deepEqual(await outbox.take(T0 + 20, 10, 60_000), [], 'held');
      await outbox.release([job.id], T0 + 30);
      assert.deepEqual(
        (await outbox.take(T0 + 30, 10, 60_000)).map((entry) => entry.jobId),
        [job.id],
      );
    });

    test('replayDeadLetters adds entries for the replayed jobs', async () => {
      const job = newJob();
      await create(store, job);
      const token = await claim(store, job.id, T0);
      await record(store, job.id, token, { kind: 'failed', detail: {}, deadLetter: 'max_attempts' }, T0);
      await store.outbox!.complete([job.id]);
      await store.replayDeadLetters({ limit: 10 }, T0 + 100);
      assert.deepEqual(await store.outbox!.take(T0 + 100, 10, 1000), [
        { jobId: job.id, priority: 'normal', headers: {} },
      ]);
    });

    test('hot paths take a fixed handful of statements for a batch of 256', async () => {
      const jobs = Array.from({ length: 256 }, (_, i) =>
        newJob({ createdAt: T0 + i, tags: ['t'], idempotency: key(`k${i}`, 'hash') }),
      );
      const created = await countStatements(() => store.createJobs(jobs));
      assert.ok(created.statements <= 4, `createJobs: ${created.statements} statements`);
      // Without keys: BEGIN (sent with the insert), the insert and COMMIT.
      const plain = await countStatements(() =>
        store.createJobs(Array.from({ length: 256 }, (_, i) => newJob({ createdAt: T0 + i, tags: ['t'] }))),
      );
      assert.equal(plain.statements, 3, `createJobs without keys: ${plain.statements} statements`);
      const requests = jobs.map((job) => ({ jobId: job.id, workerId: 'w', leaseMs: MINUTE }));
      const claimed = await countStatements(() => store.claimJobs(requests, T0 + 1000));
      assert.equal(claimed.statements, 1, `claimJobs: ${claimed.statements} statements`);
      const outcomes = claimed.result.map((result, i) => ({
        jobId: jobs[i]!.id,
        leaseToken: (result as Extract<ClaimResult, { kind: 'claimed' }>).leaseToken,
        outcome: { kind: 'sent', detail: {} } as Outcome,
      }));
      const recorded = await countStatements(() => store.recordOutcomes(outcomes, T0 + 2000));
      assert.ok(recorded.result.every(Boolean));
      assert.equal(recorded.statements, 1, `recordOutcomes: ${recorded.statements} statements`);
      const taken = await countStatements(() => store.outbox!.take(T0 + 3000, 256, 1000));
      assert.equal(taken.result.length, 256);
      assert.equal(taken.statements, 1);
      const completed = await countStatements(() => store.outbox!.complete(jobs.map((job) => job.id)));
      assert.equal(completed.statements, 1);
    });

    test('claims, outcomes and the outbox commit lightly; new jobs, cancels and replays durably', async () => {
      const job = newJob();
      const keyed = newJob({ idempotency: key('k', 'hash') });
      assert.deepEqual((await durabilityOf(() => create(store, job))).levels, ['durable']);
      assert.deepEqual((await durabilityOf(() => create(store, keyed))).levels, ['durable']);
      const claimed = await durabilityOf(() => claim(store, job.id, T0));
      assert.deepEqual(claimed.levels, ['light']);
      const failed: Outcome = { kind: 'failed', detail: {}, deadLetter: 'max_attempts' };
      const recorded = await durabilityOf(() => record(store, job.id, claimed.result, failed, T0));
      assert.deepEqual(recorded.levels, ['light']);
      const replayed = await durabilityOf(() => store.replayDeadLetters({ limit: 10 }, T0 + 1));
      assert.deepEqual(replayed.levels, ['durable']);
      assert.deepEqual((await durabilityOf(() => store.cancelJob(keyed.id, T0 + 2))).levels, ['durable']);
      const outbox = store.outbox!;
      const taken = await durabilityOf(() => outbox.take(T0 + 3, 10, 1000));
      assert.deepEqual(taken.levels, ['light']);
      const ids = taken.result.map((entry) => entry.jobId);
      assert.deepEqual((await durabilityOf(() => outbox.release(ids, T0 + 4))).levels, ['light']);
      assert.deepEqual((await durabilityOf(() => outbox.complete(ids))).levels, ['light']);
    });
  });

  describe("createJobs when its COMMIT's answer is lost", () => {
    let fixture: PostgresFixture;
    beforeEach(async () => {
      fixture = await postgresStore({ outbox: true });
    });
    afterEach(() => fixture.dispose());

    test('and it committed: the store finds the new jobs and its results stand', async () => {
      const existing = newJob();
      await create(fixture.store, existing);
      const jobs = [newJob(), newJob({ sendAt: T0 + HOUR }), newJob({ id: existing.id, createdAt: T0 + 5 })];
      const results = await withLostCommitAnswer('after', () => fixture.store.createJobs(jobs));
      assert.deepEqual(results, [
        { kind: 'created', id: jobs[0]!.id, status: 'queued' },
        { kind: 'created', id: jobs[1]!.id, status: 'scheduled' },
        { kind: 'duplicate', id: existing.id, status: 'queued' },
      ]);
      assert.deepEqual(await rowCounts(fixture.schema), { jobs: 3, job_events: 3, outbox: 3 });
    });

    test('and it did not: the call rejects (nothing was accepted) and nothing was written', async () => {
      const existing = newJob();
      await create(fixture.store, existing);
      await assert.rejects(
        withLostCommitAnswer('before', () => fixture.store.createJobs([newJob(), newJob()])),
        /Connection terminated/,
      );
      assert.deepEqual(await rowCounts(fixture.schema), { jobs: 1, job_events: 1, outbox: 1 });
    });
  });

  describe('event log: ids are not in commit order', () => {
    test('eventsAfter the last event seen returns a later commit with a lower id, once; never what was seen', async () => {
      const { store, schema, dispose } = await postgresStore();
      const late = new pg.Client({ connectionString: POSTGRES_URL });
      await late.connect();
      try {
        const slow = newJob();
        await create(store, slow);
        const before = await store.events.lastEventId();
        // A transaction takes an event id and stays open...
        await late.query('BEGIN');
        await late.query(
          `INSERT INTO ${schema}.job_events (job_id, type, at, attempt, detail) VALUES ($1, 'released', $2, 0, '{}')`,
          [slow.id, T0],
        );
        // ...while two jobs commit together with higher ids, and a reader sees them.
        const [b, c] = [newJob(), newJob()];
        await create(store, b, c);
        const seen = await store.events.eventsAfter(before, 100);
        assert.deepEqual(seen.map((event) => event.jobId).sort(), [b.id, c.id].sort());
        await late.query('COMMIT');

        const last = seen.at(-1)!.id;
        const next = await store.events.eventsAfter(last, 100);
        // The late commit, and not the seen events' own transaction (its first event, lower than last).
        assert.deepEqual(
          next.map((event) => [event.jobId, event.type]),
          [[slow.id, 'released']],
        );
        assert.ok(compareEventIds(next[0]!.id, last) < 0, 'its id is below the resume point');
        // A reader that resumes from an event nobody wrote concurrently with gets only newer ones.
        assert.deepEqual(await store.events.eventsAfter(before, 100).then((events) => events.length), 3);
      } finally {
        await late.end();
        await dispose();
      }
    });
  });

  describe('connections', () => {
    test('after the server ends the pool connections, the next calls succeed', async () => {
      const fixture = await postgresStore();
      const { store } = fixture;
      try {
        // Several connections open and idle in the pool.
        await Promise.all([store.countActive(), store.countActive(), store.countActive()]);
        const { rows } = await admin!.query(
          'SELECT pg_terminate_backend(pid) AS ended FROM pg_stat_activity WHERE application_name = $1',
          [`mailroom:${fixture.schema}`],
        );
        assert.ok(rows.length >= 1, 'the pool had connections to end');
        const job = newJob();
        await create(store, job);
        assert.equal((await store.getJob(job.id))?.status, 'queued');
        assert.deepEqual(await store.health(), { ok: true });
      } finally {
        await fixture.dispose();
      }
    });

    test('a connection ended mid-transaction fails that call, writes nothing, and the next call works', async () => {
      const fixture = await postgresStore();
      const { store } = fixture;
      const locker = await admin!.connect();
      try {
        const job = newJob();
        await create(store, job);
        // Hold the job's row so the claim waits inside its transaction, then end its connection.
        await locker.query('BEGIN');
        await locker.query(`SELECT 1 FROM ${fixture.schema}.jobs WHERE id = $1 FOR UPDATE`, [job.id]);
        const claiming = store.claimJobs([{ jobId: job.id, workerId: 'w', leaseMs: MINUTE }], T0);
        const outcome = claiming.then(
          () => 'resolved',
          (error: Error) => error.message,
        );
        await waitForWaitingClaim(fixture.schema);
        await admin!.query(
          `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
           WHERE application_name = $1 AND wait_event_type = 'Lock'`,
          [`mailroom:${fixture.schema}`],
        );
        assert.match(await outcome, /terminat/i);
        await locker.query('ROLLBACK');
        assert.equal((await store.getJob(job.id))?.attempts, 0, 'the claim left nothing behind');
        await claim(store, job.id, T0 + 1);
      } finally {
        await locker.query('ROLLBACK').catch(() => {});
        locker.release();
        await fixture.dispose();
      }
    });

    test('with nothing listening, calls reject at once and health says why', async () => {
      const port = await closedPort();
      const store = new PostgresStore({
        url: `postgres://postgres@127.0.0.1:${port}/test`,
        schema: 'unused',
      });
      try {
        const started = Date.now();
        await assert.rejects(store.createJobs([newJob()]), /ECONNREFUSED/);
        await assert.rejects(store.countActive(), /ECONNREFUSED/);
        const health = await store.health();
        assert.equal(health.ok, false);
        assert.match(health.detail ?? '', /cannot reach PostgreSQL.*ECONNREFUSED/);
        assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);
      } finally {
        await store.close();
      }
    });

    test('a server that accepts and never answers: calls reject after the connect timeout, health sooner', async () => {
      const silent = await silentServer();
      const url = `postgres://postgres@127.0.0.1:${silent.port}/test`;
      const quick = new PostgresStore({ url, schema: 'unused', connectTimeoutMs: 1000 });
      // Its connection attempt outlasts the health probe's own limit, and not by much: close() waits for it.
      const patient = new PostgresStore({ url, schema: 'unused', connectTimeoutMs: 2500 });
      try {
        const started = Date.now();
        const [call, quickHealth, patientHealth] = await Promise.all([
          quick.countActive().then(
            () => 'resolved',
            (error: Error) => error.message,
          ),
          quick.health(),
          patient.health(),
        ]);
        assert.match(call, /timeout/i);
        assert.deepEqual(quickHealth, {
          ok: false,
          detail: 'no connection to PostgreSQL within 1000 ms (server unreachable or not answering)',
        });
        assert.deepEqual(patientHealth, { ok: false, detail: 'PostgreSQL did not answer within 2000 ms' });
        assert.ok(Date.now() - started < 4000, `took ${Date.now() - started} ms`);
      } finally {
        await Promise.all([quick.close(), patient.close()]);
        await silent.stop();
      }
    });

    test('statementTimeoutMs bounds a statement: a claim stuck behind a lock fails instead of waiting', async () => {
      const fixture = await postgresStore({ statementTimeoutMs: 200 });
      const locker = await admin!.connect();
      try {
        const job = newJob();
        await create(fixture.store, job);
        await locker.query('BEGIN');
        await locker.query(`SELECT 1 FROM ${fixture.schema}.jobs WHERE id = $1 FOR UPDATE`, [job.id]);
        await assert.rejects(
          fixture.store.claimJobs([{ jobId: job.id, workerId: 'w', leaseMs: MINUTE }], T0),
          (error: Error & { code?: string }) => error.code === '57014',
        );
        await locker.query('ROLLBACK');
        await claim(fixture.store, job.id, T0 + 1);
      } finally {
        await locker.query('ROLLBACK').catch(() => {});
        locker.release();
        await fixture.dispose();
      }
    });
  });

  describe('migrations and configuration', () => {
    test('several processes migrating one new schema at once: all succeed, each migration applied once', async () => {
      const schema = `${RUN_PREFIX}_${++postgresSchemas}`;
      const stores = [1, 2, 3].map(() => new PostgresStore({ url: POSTGRES_URL, schema, poolSize: 2 }));
      try {
        await Promise.all(stores.map((store) => store.migrate()));
        await stores[0]!.migrate();
        const { rows } = await admin!.query(
          `SELECT version FROM ${schema}.schema_migrations ORDER BY version`,
        );
        assert.deepEqual(
          rows.map((row) => row.version),
          MIGRATIONS.map((migration) => migration.version),
        );
        assert.deepEqual(await stores[1]!.health(), { ok: true });
      } finally {
        await Promise.all(stores.map((store) => store.close()));
        await admin!.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      }
    });

    test('health says so when the schema was never migrated', async () => {
      const store = new PostgresStore({ url: POSTGRES_URL, schema: `${RUN_PREFIX}_never_migrated` });
      try {
        assert.deepEqual(await store.health(), {
          ok: false,
          detail: `schema ${RUN_PREFIX}_never_migrated has no jobs table: not migrated`,
        });
      } finally {
        await store.close();
      }
    });

    test('refuses a schema name that is not a plain identifier, and a URL that would replace search_path', () => {
      for (const schema of [
        'Mailroom',
        'mail-room',
        '1mailroom',
        'a; DROP SCHEMA public',
        '',
        'x'.repeat(64),
      ]) {
        assert.throws(
          () => new PostgresStore({ url: POSTGRES_URL, schema }),
          /invalid PostgreSQL schema name/,
        );
      }
      assert.throws(
        () => new PostgresStore({ url: `${POSTGRES_URL}?options=-c%20search_path%3Dpublic` }),
        /options/,
      );
    });
  });
});

/** Waits until the store's claim is blocked on the row lock (seen from pg_stat_activity). */
async function waitForWaitingClaim(schema: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const { rowCount } = await admin!.query(
      "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
      [`mailroom:${schema}`],
    );
    if (rowCount) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error('the claim never waited for the lock');
}
