import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import WebSocket from 'ws';
import { setUpScaledOut } from './support/scaled-out-cluster.js';
import { AMQP_URL, POSTGRES_URL, serviceAvailable } from './support/services.js';
import { SseClient, type SseEvent } from './support/sse-client.js';
import { SAMPLE_EMAIL, startTestApp, type TestApp } from './support/test-app.js';
import { TEST_SHAPE } from './support/test-shape.js';
import { waitFor } from './support/wait-for.js';

interface Message {
  type: string;
  timestamp: string;
  data: { email_id: string; event_id: string; status?: string; attempt: number; tags: string[] };
}

const parse = (event: SseEvent) => JSON.parse(event.data) as Message;

/** Collects a WebSocket's messages. */
async function openSocket(
  url: string,
): Promise<{ socket: WebSocket; messages: Message[]; closed: Promise<number> }> {
  const socket = new WebSocket(url);
  const messages: Message[] = [];
  socket.on('message', (data) => messages.push(JSON.parse(String(data)) as Message));
  const closed = new Promise<number>((resolve) => socket.on('close', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    socket.once('open', () => resolve());
    socket.once('error', reject);
  });
  return { socket, messages, closed };
}

/** Live status through the API of one process (the shape MAILROOM_TEST_SHAPE names). */
describe('live status', () => {
  let t: TestApp;
  let base: string;
  before(async () => {
    t = await startTestApp();
    const address = t.app.server!.server.address() as AddressInfo;
    base = `http://127.0.0.1:${address.port}`;
  });
  after(() => t.stop());

  test('SSE pushes each transition of an email, in order, with increasing ids', async () => {
    const tag = `live-${Date.now()}`;
    const stream = new SseClient(`${base}/v1/events?tag=${tag}`);
    await stream.open();
    try {
      assert.equal(stream.status, 200);
      assert.match(String(stream.headers['content-type']), /^text\/event-stream/);
      const id = await t.send({ ...SAMPLE_EMAIL, tags: [tag] });
      await stream.waitForEvents(
        'queued → processing → sent',
        () => stream.matching('email.sent').length === 1,
      );
      const mine = stream.events.filter((event) => parse(event).data.email_id === id);
      assert.deepEqual(
        mine.map((event) => event.event),
        ['email.queued', 'email.processing', 'email.sent'],
      );
      const ids = mine.map((event) => BigInt(event.id!));
      assert.ok(ids[0]! < ids[1]! && ids[1]! < ids[2]!, `ids increase: ${ids.join(', ')}`);
      const sent = parse(mine[2]!);
      assert.equal(sent.data.status, 'sent');
      assert.equal(sent.data.event_id, mine[2]!.id);
      assert.deepEqual(sent.data.tags, [tag]);
      // The stream follows the email's history exactly.
      const history = (await t.request('GET', `/v1/emails/${id}`)).json() as { events: { type: string }[] };
      assert.deepEqual(
        history.events.map((event) => `email.${event.type}`),
        mine.map((event) => event.event),
      );
    } finally {
      stream.close();
    }
  });

  test('filters by email id and type; other emails stay out', async () => {
    const first = await t.send(SAMPLE_EMAIL);
    const stream = new SseClient(`${base}/v1/events?email_id=${first}&type=email.sent,email.failed`);
    await stream.open();
    try {
      const other = await t.send(SAMPLE_EMAIL);
      await t.waitForStatus(other, 'sent');
      await t.waitForStatus(first, 'sent');
      // Its sent event may have committed before the stream opened: resume from 0 for this one.
      const resumed = new SseClient(`${base}/v1/events?email_id=${first}&type=email.sent`, {
        'last-event-id': '0',
      });
      await resumed.open();
      try {
        await resumed.waitForEvents('the sent event replayed', () => resumed.events.length === 1);
        assert.equal(parse(resumed.events[0]!).data.email_id, first);
      } finally {
        resumed.close();
      }
      assert.ok(
        stream.events.every((event) => parse(event).data.email_id === first && event.event === 'email.sent'),
      );
    } finally {
      stream.close();
    }
  });

  test('Last-Event-ID resumes after the last event seen: the missed ones come first, then live ones', async () => {
    const tag = `resume-${Date.now()}`;
    const first = new SseClient(`${base}/v1/events?tag=${tag}`);
    await first.open();
    const a = await t.send({ ...SAMPLE_EMAIL, tags: [tag] });
    await first.waitForEvents('the first queued event', () => first.events.length >= 1);
    const lastSeen = first.events[0]!;
    assert.equal(parse(lastSeen).data.email_id, a);
    first.close();
    await t.waitForStatus(a, 'sent');
    const b = await t.send({ ...SAMPLE_EMAIL, tags: [tag] });
    await t.waitForStatus(b, 'sent');

    const resumed = new SseClient(`${base}/v1/events?tag=${tag}`, { 'last-event-id': lastSeen.id! });
    await resumed.open();
    try {
      await resumed.waitForEvents('the missed events', () => resumed.events.length >= 5);
      const c = await t.send({ ...SAMPLE_EMAIL, tags: [tag] });
      await resumed.waitForEvents('a live event after the replay', () =>
        resumed.events.some((event) => parse(event).data.email_id === c && event.event === 'email.sent'),
      );
      const seen = resumed.events.map(
        (event) =>
          `${parse(event).data.email_id === a ? 'a' : parse(event).data.email_id === b ? 'b' : 'c'}:${event.event}`,
      );
      assert.deepEqual(seen, [
        'a:email.processing',
        'a:email.sent',
        'b:email.queued',
        'b:email.processing',
        'b:email.sent',
        'c:email.queued',
        'c:email.processing',
        'c:email.sent',
      ]);
      assert.equal(
        new Set(resumed.events.map((event) => event.id)).size,
        resumed.events.length,
        'no duplicates',
      );
    } finally {
      resumed.close();
    }
  });

  test('WebSocket carries the same messages', async () => {
    const tag = `ws-${Date.now()}`;
    const { socket, messages } = await openSocket(`${base.replace('http', 'ws')}/v1/events/ws?tag=${tag}`);
    try {
      const id = await t.send({ ...SAMPLE_EMAIL, tags: [tag] });
      await waitFor('three messages', () => messages.length >= 3);
      assert.deepEqual(
        messages.map((message) => [message.data.email_id, message.type]),
        [
          [id, 'email.queued'],
          [id, 'email.processing'],
          [id, 'email.sent'],
        ],
      );
    } finally {
      socket.close();
    }
  });

  test('on PostgreSQL, the feed comes back after its LISTEN connection is killed', {
    skip: TEST_SHAPE === 'embedded',
  }, async () => {
    const schema = t.app.config.databaseSchema;
    const tag = `relisten-${Date.now()}`;
    const stream = new SseClient(`${base}/v1/events?tag=${tag}`);
    await stream.open();
    const admin = new pg.Client({ connectionString: POSTGRES_URL });
    await admin.connect();
    try {
      const killed = await admin.query(
        'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1',
        [`mailroom-events ${schema}`],
      );
      assert.equal(killed.rowCount, 1, 'one LISTEN connection per API process');
      await waitFor('a new LISTEN connection', async () => {
        const found = await admin.query('SELECT 1 FROM pg_stat_activity WHERE application_name = $1', [
          `mailroom-events ${schema}`,
        ]);
        return found.rowCount === 1;
      });
      const id = await t.send({ ...SAMPLE_EMAIL, tags: [tag] });
      await stream.waitForEvents(
        'the events after the reconnect',
        () => stream.matching('email.sent').length === 1,
      );
      assert.deepEqual(
        stream.events.map((event) => [parse(event).data.email_id, event.event]),
        ['email.queued', 'email.processing', 'email.sent'].map((type) => [id, type]),
      );
    } finally {
      stream.close();
      await admin.end();
    }
  });

  test('bad filters and resume points are refused with the field named', async () => {
    for (const [query, field] of [
      ['type=email.opened', 'type'],
      ['last_event_id=abc', 'last_event_id'],
      ['colour=red', 'colour'],
    ] as const) {
      const response = await t.request('GET', `/v1/events?${query}`);
      assert.equal(response.statusCode, 400, `${query}: ${response.body}`);
      assert.match(response.body, new RegExp(field));
    }
    // 19 digits, past bigint: refused up front, not left to fail in the store on every reconnect.
    for (const lastEventId of ['12; DROP', '9223372036854775808', '9999999999999999999']) {
      const header = await t.request('GET', '/v1/events', undefined, { 'last-event-id': lastEventId });
      assert.equal(header.statusCode, 400, lastEventId);
      assert.match(header.body, /Last-Event-ID/);
    }
    const largest = await t.request('GET', '/v1/events?last_event_id=9223372036854775807&type=email.opened');
    assert.match(largest.body, /"field":"type"/, 'the largest bigint passes as a resume point');
  });
});

const available =
  (await serviceAvailable('PostgreSQL', POSTGRES_URL)) && (await serviceAvailable('RabbitMQ', AMQP_URL));

describe('live status across processes', { skip: !available }, () => {
  test('a worker process’s transitions reach SSE and WebSocket clients of an API process', async (t) => {
    const { cluster } = await setUpScaledOut(t);
    const api = await cluster.api();
    const other = await cluster.api();
    await cluster.worker();
    const tag = `cross-${Date.now()}`;
    const stream = new SseClient(`${api.apiUrl}/v1/events?tag=${tag}`);
    await stream.open();
    const { socket, messages } = await openSocket(
      `${other.apiUrl.replace('http', 'ws')}/v1/events/ws?tag=${tag}`,
    );
    try {
      // Accepted by one API process, sent by the worker: both clients hear every step.
      const accepted = await other.request('POST', '/v1/emails', { ...SAMPLE_EMAIL, tags: [tag] });
      assert.equal(accepted.status, 202, JSON.stringify(accepted.body));
      const id = accepted.body.id as string;
      await stream.waitForEvents('sent over SSE', () => stream.matching('email.sent').length === 1, 20_000);
      await waitFor('sent over WebSocket', () => messages.some((m) => m.type === 'email.sent'), 20_000);
      const expected = ['email.queued', 'email.processing', 'email.sent'];
      assert.deepEqual(
        stream.events.map((event) => [parse(event).data.email_id, event.event]),
        expected.map((type) => [id, type]),
      );
      assert.deepEqual(
        messages.map((message) => [message.data.email_id, message.type]),
        expected.map((type) => [id, type]),
      );
    } finally {
      stream.close();
      socket.close();
    }
  });
});
