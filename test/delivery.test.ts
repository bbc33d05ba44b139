import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { SAMPLE_EMAIL, startTestApp, type TestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';

describe('delivery through a real SMTP server on loopback', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp({ MAILROOM_MAX_ATTEMPTS: '3' });
  });
  after(() => t.stop());
  beforeEach(() => t.sink.setBehaviour('accept'));

  test('an accepted email is sent once, with its deterministic Message-ID and a full history', async () => {
    const id = await t.send(SAMPLE_EMAIL);
    const view = await t.waitForStatus(id, 'sent');
    assert.equal(view.attempts, 1);
    assert.deepEqual(
      view.events.map((event) => event.type),
      ['queued', 'processing', 'sent'],
    );
    const sent = view.events.at(-1)!;
    assert.equal(sent.detail.smtpCode, 250);
    const received = t.sink.messages().filter((message) => message.messageId === view.message_id);
    assert.equal(received.length, 1);
    assert.match(view.message_id, new RegExp(`^<${id}@acme\\.test>$`));
    const raw = received[0]!.raw.toString();
    assert.match(raw, /Subject: Your receipt/);
    assert.deepEqual(received[0]!.envelope.to, ['alice@example.com']);
  });

  test('bcc recipients are in the envelope but not in the headers', async () => {
    const id = await t.send({ ...SAMPLE_EMAIL, bcc: 'hidden@example.com', cc: 'carol@example.com' });
    const view = await t.waitForStatus(id, 'sent');
    const message = t.sink.messages().find((m) => m.messageId === view.message_id)!;
    assert.deepEqual([...message.envelope.to].sort(), [
      'alice@example.com',
      'carol@example.com',
      'hidden@example.com',
    ]);
    assert.doesNotMatch(message.raw.toString(), /hidden@example\.com/);
  });

  test('a 4xx reply defers with backoff, then the retry is sent', async () => {
    let failures = 0;
    await t.sink.setBehaviour(() => (failures++ < 1 ? 'tempfail' : 'accept'));
    const id = await t.send(SAMPLE_EMAIL);
    const view = await t.waitForStatus(id, 'sent');
    assert.equal(view.attempts, 2);
    const types = view.events.map((event) => event.type);
    assert.deepEqual(types, ['queued', 'processing', 'deferred', 'processing', 'sent']);
    const deferred = view.events[2]!;
    assert.equal(deferred.detail.smtpCode, 451);
    assert.equal(deferred.detail.code, 'SMTP_TRANSIENT');
    assert.ok(typeof deferred.detail.retry_at === 'string');
    // The retry waited at least half the base delay (50 ms): no hot loop.
    assert.ok(Date.parse(view.events[3]!.at) - Date.parse(deferred.at) >= 25);
  });

  test('a 5xx reply fails at once, without a dead letter', async () => {
    await t.sink.setBehaviour('permfail');
    const id = await t.send(SAMPLE_EMAIL);
    const view = await t.waitForStatus(id, 'failed');
    assert.equal(view.attempts, 1);
    assert.equal(view.dead_letter_reason, null);
    assert.match(view.last_error ?? '', /550/);
    assert.equal(view.events.at(-1)!.detail.code, 'SMTP_PERMANENT');
  });

  test('a dropped connection is transient; exhausted attempts are dead-lettered and can be replayed', async () => {
    await t.sink.setBehaviour('drop');
    const id = await t.send(SAMPLE_EMAIL);
    const failed = await t.waitForStatus(id, 'failed');
    assert.equal(failed.attempts, 3);
    assert.equal(failed.dead_letter_reason, 'max_attempts');
    assert.deepEqual(
      failed.events.map((event) => event.type),
      ['queued', 'processing', 'deferred', 'processing', 'deferred', 'processing', 'failed', 'dead_lettered'],
    );

    const list = (await t.request('GET', '/v1/dead-letters?reason=max_attempts')).json() as {
      data: { id: string }[];
    };
    assert.ok(list.data.some((item) => item.id === id));

    await t.sink.setBehaviour('accept');
    const replay = await t.request('POST', `/v1/dead-letters/${id}/replay`);
    assert.equal(replay.statusCode, 202);
    const sent = await t.waitForStatus(id, 'sent');
    assert.equal(sent.id, id);
    const types = sent.events.map((event) => event.type);
    assert.deepEqual(types.slice(-3), ['replayed', 'processing', 'sent']);
    assert.equal(types.filter((type) => type === 'deferred').length, 2, 'the earlier history is kept');
  });

  test('a stalled relay times out and is retried, not waited on forever', async () => {
    let stalls = 0;
    await t.sink.setBehaviour(() => (stalls++ < 1 ? 'stall' : 'accept'));
    const id = await t.send(SAMPLE_EMAIL);
    const view = await t.waitForStatus(id, 'sent', 15_000);
    const deferred = view.events.find((event) => event.type === 'deferred');
    assert.ok(deferred, 'the stalled attempt was deferred');
    assert.match(String(deferred.detail.message), /timeout|ETIMEDOUT/i);
  });

  test('replay of all dead letters, filtered by reason', async () => {
    await t.sink.setBehaviour('tempfail-rcpt');
    const ids = [await t.send(SAMPLE_EMAIL), await t.send(SAMPLE_EMAIL)];
    for (const id of ids) await t.waitForStatus(id, 'failed');
    await t.sink.setBehaviour('accept');
    const response = await t.request('POST', '/v1/dead-letters/replay', { reason: 'max_attempts' });
    assert.equal(response.statusCode, 202);
    const body = response.json() as { replayed: number; ids: string[] };
    for (const id of ids) assert.ok(body.ids.includes(id));
    for (const id of ids) await t.waitForStatus(id, 'sent');
    const left = (await t.request('GET', '/v1/dead-letters')).json() as { data: unknown[] };
    assert.equal(left.data.length, 0);
  });

  test('high priority overtakes a backlog of low priority', async () => {
    await t.sink.setBehaviour('stall');
    // Fill every in-flight slot with stalled sends so the rest wait in the queue.
    const blockers = await Promise.all(
      Array.from({ length: 40 }, () => t.send({ ...SAMPLE_EMAIL, priority: 'low' })),
    );
    const low = await Promise.all(
      Array.from({ length: 10 }, () => t.send({ ...SAMPLE_EMAIL, priority: 'low' })),
    );
    const high = await t.send({ ...SAMPLE_EMAIL, priority: 'high' });
    // On a network broker, a 202 means committed, not yet published: the high email must reach the
    // broker before the stalled sends end and free their slots, or the lows take them first.
    await t.waitForPublished();
    await t.sink.setBehaviour('accept');
    await t.waitForStatus(high, 'sent', 15_000);
    for (const id of [...blockers, ...low]) await t.waitForStatus(id, 'sent', 15_000);
    const order = t.sink.messages().map((message) => message.messageId);
    const position = (id: string) => order.findIndex((messageId) => messageId.startsWith(`<${id}@`));
    const highAt = position(high);
    const lowPositions = low.map(position);
    assert.ok(
      lowPositions.filter((at) => at < highAt).length === 0,
      `high (at ${highAt}) went before every waiting low one (${lowPositions.join(',')})`,
    );
  });

  test('a scheduled email waits for send_at, then goes within a second', async () => {
    const sendAt = Date.now() + 1500;
    const response = await t.request('POST', '/v1/emails', {
      ...SAMPLE_EMAIL,
      send_at: new Date(sendAt).toISOString(),
    });
    assert.equal(response.statusCode, 202);
    const { id, status } = response.json() as { id: string; status: string };
    assert.equal(status, 'scheduled');
    const view = await t.waitForStatus(id, 'sent', 5000);
    const sentAt = Date.parse(view.events.at(-1)!.at);
    assert.ok(sentAt >= sendAt, 'not before send_at');
    assert.ok(sentAt - sendAt < 1000, `within a second of send_at (${sentAt - sendAt} ms)`);
  });

  test('cancel stops a scheduled email; a sent one cannot be cancelled', async () => {
    const response = await t.request('POST', '/v1/emails', {
      ...SAMPLE_EMAIL,
      send_at: new Date(Date.now() + 60_000).toISOString(),
    });
    const { id } = response.json() as { id: string };
    const cancel = await t.request('POST', `/v1/emails/${id}/cancel`);
    assert.equal(cancel.statusCode, 200);
    assert.equal((cancel.json() as { status: string }).status, 'cancelled');
    const again = await t.request('POST', `/v1/emails/${id}/cancel`);
    assert.equal(again.statusCode, 409);
    assert.equal((again.json() as { error: { code: string } }).error.code, 'INVALID_STATE');

    const sentId = await t.send(SAMPLE_EMAIL);
    await t.waitForStatus(sentId, 'sent');
    assert.equal((await t.request('POST', `/v1/emails/${sentId}/cancel`)).statusCode, 409);
    assert.equal(
      (await t.request('POST', '/v1/emails/00000000-0000-7000-8000-000000000000/cancel')).statusCode,
      404,
    );
  });

  test('the dev-inbox-free process reports ready with every component', async () => {
    const ready = await t.request('GET', '/ready');
    assert.equal(ready.statusCode, 200);
    const body = ready.json() as { components: Record<string, { ok: boolean }> };
    assert.deepEqual(Object.keys(body.components).sort(), [
      'broker',
      'circuit_breaker',
      'store',
      'transport',
      'worker',
    ]);
    // The breaker is reported, never a reason to be unready.
    assert.deepEqual(body.components.circuit_breaker, { ok: true, detail: 'smtp: closed' });
    await waitFor('no jobs in flight', () => t.app.worker!.activeCount === 0);
  });
});
