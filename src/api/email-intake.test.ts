import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { pino } from 'pino';
import { validateSendEmail } from '../domain/validate-email.js';
import { SqliteStore } from '../store/sqlite/sqlite-store.js';
import type { Store } from '../store/store.js';
import { type AcceptRequest, EmailIntake, type IntakeOptions } from './email-intake.js';

const dataDir = mkdtempSync(join(tmpdir(), 'mailroom-intake-'));
after(() => rmSync(dataDir, { recursive: true, force: true }));

function request(to: string): AcceptRequest {
  const result = validateSendEmail(
    { from: 'app@example.com', to, subject: 'Hi', text: 'Hello' },
    { maxRecipients: 50, maxMessageBytes: 1_000_000, now: Date.now(), maxScheduleAheadMs: 60_000 },
  );
  assert.ok(result.ok);
  return { email: result.value, scope: '', canonicalBody: {} };
}

/**
 * An intake on a real SQLite file whose first group commit does not finish until `release()`:
 * what a PostgreSQL commit cut at COMMIT does while the store asks whether it happened.
 */
async function withStuckFirstCommit(name: string, options: Partial<IntakeOptions>) {
  const real = new SqliteStore(join(dataDir, `${name}.db`));
  await real.migrate();
  let release!: () => void;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  let commits = 0;
  const store = new Proxy(real, {
    get(target, property, receiver) {
      if (property !== 'createJobs') return Reflect.get(target, property, receiver);
      return async (...args: Parameters<Store['createJobs']>) => {
        if (commits++ === 0) await gate;
        return target.createJobs(...args);
      };
    },
  });
  const intake = new EmailIntake(
    store,
    () => {},
    { maxBacklog: 1000, idempotencyTtlMs: 60_000, concurrentCommits: 1, ...options },
    pino({ level: 'silent' }),
  );
  return { intake, release, close: () => real.close() };
}

test('commitStallMs: a commit still running past it lets the next group commit go ahead', async () => {
  const { intake, release, close } = await withStuckFirstCommit('stall', { commitStallMs: 50 });
  const first = intake.accept(request('first@example.com'));
  // Sent once the first commit has started, so it cannot join that group.
  await new Promise((resolve) => setImmediate(resolve));
  const second = await intake.accept(request('second@example.com'));
  assert.equal(second.status, 'queued', 'the second request committed while the first was stuck');
  release();
  assert.equal((await first).status, 'queued', 'the stuck commit still gives its own requests its outcome');
  await close();
});

test('without commitStallMs, a stuck commit holds the next one until it ends (SQLite: one writer)', async () => {
  const { intake, release, close } = await withStuckFirstCommit('held', {});
  const first = intake.accept(request('first@example.com'));
  await new Promise((resolve) => setImmediate(resolve));
  let secondDone = false;
  const second = intake.accept(request('second@example.com')).then((accepted) => {
    secondDone = true;
    return accepted;
  });
  // Bounded: long enough for the 50 ms of the test above many times over.
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(secondDone, false, 'the second commit waited for the first');
  release();
  assert.equal((await first).status, 'queued');
  assert.equal((await second).status, 'queued');
  await close();
});
