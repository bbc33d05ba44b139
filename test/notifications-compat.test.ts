import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { simpleParser } from 'mailparser';
import { startTestApp, type TestApp } from './support/test-app.js';

/** Shapes of the Email Microservice (shared/reference/email-microservice.md). */
const ENVELOPE_KEYS = ['data', 'error', 'message', 'meta', 'success'];
const ITEM_KEYS = [
  'attempts',
  'created_at',
  'request_id',
  'status',
  'template_code',
  'to_email',
  'updated_at',
  'user_id',
];
const STAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$/;

interface Envelope<T> {
  success: boolean;
  message: string;
  data: T;
  error: unknown;
  meta: unknown;
}

describe('Email Microservice compatibility', () => {
  let t: TestApp;
  const template = `welcome_email_${Date.now()}`;
  before(async () => {
    t = await startTestApp({ MAILROOM_FROM: 'Acme <noreply@acme.test>' });
    const created = await t.request('POST', '/v1/templates', {
      code: template,
      subject: '{{subject}}',
      html: '<p>Hi {{name}}, verify at <a href="{{link}}">this link</a></p>',
    });
    assert.equal(created.statusCode, 201, created.body);
  });
  after(() => t.stop());

  function notification(overrides: Record<string, unknown> = {}) {
    return {
      notification_type: 'email',
      user_id: randomUUID(),
      template_code: template,
      variables: {
        name: 'John Doe',
        email: 'john@example.com',
        link: 'https://example.com/verify',
        subject: 'Welcome!',
      },
      request_id: `req-${randomUUID()}`,
      priority: 10,
      metadata: { campaign_id: 'campaign-123' },
      ...overrides,
    };
  }

  async function queue(body: Record<string, unknown>) {
    const response = await t.request('POST', '/api/v1/notifications/', body);
    assert.equal(response.statusCode, 202, response.body);
    return response.json() as Envelope<{ request_id: string; task_id: string; status: string }>;
  }

  test('POST queues a templated email: 202 in their envelope; it is delivered; GET shows it delivered', async () => {
    const body = notification();
    const answer = await queue(body);
    assert.deepEqual(Object.keys(answer).sort(), ENVELOPE_KEYS);
    assert.deepEqual(answer, {
      success: true,
      message: 'Notification queued for processing',
      data: { request_id: body.request_id, task_id: answer.data.task_id, status: 'queued' },
      error: null,
      meta: null,
    });
    const view = await t.waitForStatus(answer.data.task_id, 'sent');
    assert.equal(view['priority'], 'high');
    const mail = await simpleParser(t.sink.messages().find((m) => m.messageId === view.message_id)!.raw);
    assert.equal(mail.subject, 'Welcome!');
    assert.equal(mail.to && !Array.isArray(mail.to) ? mail.to.value[0]?.name : '', 'John Doe');
    assert.match(String(mail.html), /Hi John Doe, verify at <a href="https:\/\/example.com\/verify">/);

    const status = await t.request('GET', `/api/v1/notifications/${body.request_id}/`);
    assert.equal(status.statusCode, 200, status.body);
    const shown = status.json() as Envelope<Record<string, unknown>>;
    assert.deepEqual(Object.keys(shown).sort(), ENVELOPE_KEYS);
    assert.equal(shown.message, 'Notification status retrieved');
    assert.deepEqual(Object.keys(shown.data).sort(), [...ITEM_KEYS, 'error'].sort());
    assert.equal(shown.data['status'], 'delivered');
    assert.equal(shown.data['user_id'], body.user_id);
    assert.equal(shown.data['to_email'], 'john@example.com');
    assert.equal(shown.data['template_code'], template);
    assert.equal(shown.data['attempts'], 1);
    assert.equal(shown.data['error'], null);
    assert.match(String(shown.data['created_at']), STAMP);
  });

  test('request_id is the idempotency key: the same request again is the same task', async () => {
    const body = notification();
    const first = await queue(body);
    const again = await queue(body);
    assert.equal(again.data.task_id, first.data.task_id);
    const other = await t.request('POST', '/api/v1/notifications/', { ...body, priority: 1 });
    assert.equal(other.statusCode, 409, other.body);
    assert.equal((other.json() as Envelope<null>).success, false);
  });

  test('list filters by user_id and status, pages with their meta', async () => {
    const user = randomUUID();
    const tasks: string[] = [];
    for (let i = 0; i < 3; i++) tasks.push((await queue(notification({ user_id: user }))).data.task_id);
    for (const id of tasks) await t.waitForStatus(id, 'sent');
    await queue(notification()); // another user's

    const page1 = await t.request(
      'GET',
      `/api/v1/notifications/list/?user_id=${user}&status=delivered&limit=2&page=1`,
    );
    assert.equal(page1.statusCode, 200, page1.body);
    const listed = page1.json() as Envelope<Record<string, unknown>[]>;
    assert.deepEqual(Object.keys(listed).sort(), ENVELOPE_KEYS);
    assert.equal(listed.message, 'Retrieved 2 notifications');
    assert.equal(listed.data.length, 2);
    assert.deepEqual(Object.keys(listed.data[0]!).sort(), [...ITEM_KEYS, 'error'].sort());
    assert.ok(listed.data.every((item) => item['user_id'] === user && item['status'] === 'delivered'));
    assert.deepEqual(listed.meta, {
      total: 3,
      limit: 2,
      page: 1,
      total_pages: 2,
      has_next: true,
      has_previous: false,
    });

    const page2 = (
      await t.request('GET', `/api/v1/notifications/list/?user_id=${user}&limit=2&page=2`)
    ).json() as Envelope<unknown[]>;
    assert.equal(page2.data.length, 1);
    assert.deepEqual(page2.meta, {
      total: 3,
      limit: 2,
      page: 2,
      total_pages: 2,
      has_next: false,
      has_previous: true,
    });
    const none = (
      await t.request('GET', `/api/v1/notifications/list/?user_id=${user}&status=failed`)
    ).json() as Envelope<unknown[]>;
    assert.deepEqual(none.data, []);
    assert.equal((await t.request('GET', '/api/v1/notifications/list/?status=sent')).statusCode, 400);
  });

  test('refusals: 400 in their envelope naming field and rule; unknown request_id is 404', async () => {
    const missing = await t.request(
      'POST',
      '/api/v1/notifications/',
      notification({ variables: { email: 'john@example.com' } }),
    );
    assert.equal(missing.statusCode, 400, missing.body);
    const body = missing.json() as Envelope<null> & {
      error: { code: string; details: { field: string; rule: string }[] };
    };
    assert.equal(body.success, false);
    assert.equal(body.error.code, 'VALIDATION_FAILED');
    assert.ok(
      body.error.details.some((p) => p.field === 'variables.name' && p.rule === 'required'),
      missing.body,
    );

    const wrong = await t.request(
      'POST',
      '/api/v1/notifications/',
      notification({ notification_type: 'sms', priority: 'high', variables: { name: 'x' } }),
    );
    const fields = (
      wrong.json() as { error: { details: { field: string; rule: string }[] } }
    ).error.details.map((p) => `${p.field}/${p.rule}`);
    assert.deepEqual(fields.sort(), ['notification_type/enum', 'priority/type', 'variables.email/required']);

    const badAddress = await t.request(
      'POST',
      '/api/v1/notifications/',
      notification({ variables: { name: 'x', email: 'nope', link: 'l', subject: 's' } }),
    );
    assert.ok(
      (badAddress.json() as { error: { details: { field: string }[] } }).error.details.some(
        (p) => p.field === 'variables.email',
      ),
    );

    const unknown = await t.request('GET', '/api/v1/notifications/req-none/');
    assert.equal(unknown.statusCode, 404);
    assert.equal((unknown.json() as Envelope<null>).success, false);
  });

  test('GET /health/ in their envelope', async () => {
    const response = await t.request('GET', '/health/');
    assert.equal(response.statusCode, 200);
    const health = response.json() as Envelope<Record<string, unknown>>;
    assert.deepEqual(Object.keys(health).sort(), ENVELOPE_KEYS);
    assert.equal(health.message, 'Service is healthy');
    assert.deepEqual(Object.keys(health.data).sort(), ['service', 'status', 'timestamp', 'version']);
    assert.equal(health.data['status'], 'healthy');
    assert.match(String(health.data['timestamp']), STAMP);
  });
});
