/**
 * /ready's store component probes the real database file: a write lock held elsewhere and a removed
 * data directory make Mailroom not ready, with a detail that says why; it recovers when the lock goes.
 */
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { startTestApp, type TestApp } from './support/test-app.js';

interface Readiness {
  status: string;
  components: Record<string, { ok: boolean; detail?: string }>;
}

async function ready(t: TestApp): Promise<{ statusCode: number; body: Readiness }> {
  const response = await t.request('GET', '/ready');
  return { statusCode: response.statusCode, body: response.json() as Readiness };
}

describe('/ready probes the real database file', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp();
  });
  after(() => t.stop());

  test('ready while the file is writable', async () => {
    const { statusCode, body } = await ready(t);
    assert.equal(statusCode, 200, JSON.stringify(body));
    assert.deepEqual(body.components.store, { ok: true });
  });

  test('another connection holding the write lock makes the store not ready, until it lets go', async () => {
    const other = new Database(join(t.dataDir, 'mailroom.db'));
    try {
      other.pragma('busy_timeout = 5000');
      other.exec('BEGIN IMMEDIATE');
      const started = Date.now();
      const { statusCode, body } = await ready(t);
      assert.equal(statusCode, 503, JSON.stringify(body));
      assert.equal(body.status, 'not_ready');
      assert.equal(body.components.store?.ok, false);
      assert.match(body.components.store?.detail ?? '', /locked/);
      assert.match(body.components.store?.detail ?? '', /SQLITE_BUSY/);
      assert.ok(Date.now() - started < 4000, 'the probe gives up well before the 5 s busy timeout');
      other.exec('ROLLBACK');
      const again = await ready(t);
      assert.equal(again.statusCode, 200, JSON.stringify(again.body));
    } finally {
      if (other.inTransaction) other.exec('ROLLBACK');
      other.close();
    }
  });

  test('the probe leaves no transaction open: sends still go through', async () => {
    const id = await t.send({ to: 'alice@example.com', subject: 'after the probe', text: 'x' });
    await t.waitForStatus(id, 'sent');
  });

  // Runs last: the data directory is gone afterwards (t.stop() copes with that).
  test('a removed data directory makes the store not ready, naming the file', async () => {
    rmSync(t.dataDir, { recursive: true, force: true });
    const { statusCode, body } = await ready(t);
    assert.equal(statusCode, 503, JSON.stringify(body));
    assert.equal(body.components.store?.ok, false);
    assert.match(body.components.store?.detail ?? '', /mailroom\.db is missing/);
  });
});
