import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { Webhook } from 'standardwebhooks';
import { SAMPLE_EMAIL, startTestApp, type TestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';
import { verifyStandardWebhook, WebhookReceiver } from './support/webhook-receiver.js';

const CALLBACK_SECRET = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;

interface Endpoint {
  id: string;
  url: string;
  events: string[];
  enabled: boolean;
  disabled_reason: string | null;
  source: string;
  secret?: string;
}

interface Delivery {
  id: string;
  event_type: string;
  email_id: string;
  status: string;
  attempts: number;
  log: { status_code: number | null; error: string | null }[];
}

/** Webhooks through the API, delivered to a real HTTP receiver on loopback. */
describe('webhooks', () => {
  let t: TestApp;
  const receiver = new WebhookReceiver();

  before(async () => {
    await receiver.start();
    t = await startTestApp({
      MAILROOM_WEBHOOKS_ALLOW_PRIVATE: '1',
      MAILROOM_WEBHOOK_RETRY_BASE_MS: '50',
      MAILROOM_WEBHOOK_RETRY_WINDOW_MS: '1500',
      MAILROOM_STATUS_CALLBACK_URL: receiver.url('/callback'),
      MAILROOM_STATUS_CALLBACK_SECRET: CALLBACK_SECRET,
    });
  });
  after(async () => {
    await t.stop();
    await receiver.close();
  });

  async function register(path: string, extra: Record<string, unknown> = {}): Promise<Endpoint> {
    const response = await t.request('POST', '/v1/webhooks', { url: receiver.url(path), ...extra });
    assert.equal(response.statusCode, 201, response.body);
    return response.json() as Endpoint;
  }

  async function deliveries(id: string): Promise<Delivery[]> {
    const response = await t.request('GET', `/v1/webhooks/${id}/deliveries?limit=100`);
    assert.equal(response.statusCode, 200, response.body);
    return (response.json() as { data: Delivery[] }).data;
  }

  async function endpoint(id: string): Promise<Endpoint> {
    return (await t.request('GET', `/v1/webhooks/${id}`)).json() as Endpoint;
  }

  test('registration returns a whsec_ secret once; reads never show it', async () => {
    const created = await register('/registration', { description: 'orders service' });
    assert.match(created.secret!, /^whsec_[A-Za-z0-9+/]{43}=$/);
    assert.deepEqual(created.events, [
      'email.queued',
      'email.scheduled',
      'email.sent',
      'email.deferred',
      'email.failed',
      'email.cancelled',
    ]);
    assert.equal(created.enabled, true);
    const read = await endpoint(created.id);
    assert.equal(read.secret, undefined);
    assert.equal(read.url, receiver.url('/registration'));
    const listed = (await t.request('GET', '/v1/webhooks')).json() as { data: Endpoint[] };
    assert.ok(listed.data.some((entry) => entry.id === created.id && entry.secret === undefined));
    assert.equal((await t.request('DELETE', `/v1/webhooks/${created.id}`)).statusCode, 204);
    assert.equal((await t.request('GET', `/v1/webhooks/${created.id}`)).statusCode, 404);
    assert.equal((await t.request('DELETE', `/v1/webhooks/${created.id}`)).statusCode, 404);
  });

  test('bad registrations name the field and the rule', async () => {
    const cases: [unknown, string, string][] = [
      [{}, 'url', 'required'],
      [{ url: 'ftp://example.com/hook' }, 'url', 'http_url'],
      [{ url: 'not a url' }, 'url', 'http_url'],
      [{ url: 'https://user:pw@example.com/hook' }, 'url', 'no_credentials'],
      [{ url: 'https://example.com/hook', events: ['email.opened'] }, 'events[0]', 'one_of'],
      [{ url: 'https://example.com/hook', events: [] }, 'events', 'non_empty_array'],
      [{ url: 'https://example.com/hook', extra: 1 }, 'extra', 'unknown_field'],
      [[1, 2], '(body)', 'object'],
    ];
    for (const [body, field, rule] of cases) {
      const response = await t.request('POST', '/v1/webhooks', body);
      assert.equal(response.statusCode, 400, `${JSON.stringify(body)}: ${response.body}`);
      const details = (response.json() as { error: { details: { field: string; rule: string }[] } }).error
        .details;
      assert.ok(
        details.some((d) => d.field === field && d.rule === rule),
        `${JSON.stringify(body)}: expected ${field}/${rule} in ${response.body}`,
      );
    }
  });

  test('events are signed per Standard Webhooks: an independent verifier and the spec’s library agree', async () => {
    const created = await register('/signed');
    const id = await t.send({ ...SAMPLE_EMAIL, tags: ['receipt'], metadata: { order: '42' } });
    await t.waitForStatus(id, 'sent');
    const hooks = await waitFor('queued and sent webhooks', () => {
      const mine = receiver.at('/signed').filter((hook) => hook.json.data.email_id === id);
      return mine.length >= 2 ? mine : undefined;
    });
    assert.deepEqual(hooks.map((hook) => hook.json.type).sort(), ['email.queued', 'email.sent']);
    const library = new Webhook(created.secret!);
    for (const hook of hooks) {
      assert.ok(verifyStandardWebhook(created.secret!, hook.headers, hook.body), 'independent verifier');
      assert.deepEqual(library.verify(hook.body, hook.headers as Record<string, string>), hook.json);
      assert.equal(hook.headers['webhook-id'], `evt_${hook.json.data.event_id}`);
      assert.equal(hook.headers['content-type'], 'application/json');
      // The wrong secret must fail: the check above is not vacuous.
      assert.equal(verifyStandardWebhook(CALLBACK_SECRET, hook.headers, hook.body), false);
      assert.equal(verifyStandardWebhook(created.secret!, hook.headers, `${hook.body} `), false);
    }
    const sent = hooks.find((hook) => hook.json.type === 'email.sent')!.json;
    assert.equal(sent.data.status, 'sent');
    assert.deepEqual(sent.data.to, ['alice@example.com']);
    assert.equal(sent.data.subject, SAMPLE_EMAIL.subject);
    assert.deepEqual(sent.data.tags, ['receipt']);
    assert.deepEqual(sent.data.metadata, { order: '42' });
    // The relay's reply, as in the email's history.
    assert.equal(sent.data.detail.smtpCode, 250);
    assert.match(String(sent.data.detail.response), /^250/);
    assert.match(sent.timestamp, /^\d{4}-\d\d-\d\dT/);
  });

  test('an endpoint gets only the events it subscribed to', async () => {
    await register('/only-sent', { events: ['email.sent'] });
    const id = await t.send(SAMPLE_EMAIL);
    await t.waitForStatus(id, 'sent');
    await waitFor('the sent webhook', () =>
      receiver.at('/only-sent').some((hook) => hook.json.data.email_id === id),
    );
    // The callback endpoint got queued for the same email: the other event was committed by then.
    await waitFor('the callback queued webhook', () =>
      receiver
        .at('/callback')
        .some((hook) => hook.json.data.email_id === id && hook.json.type === 'email.queued'),
    );
    const mine = receiver.at('/only-sent').filter((hook) => hook.json.data.email_id === id);
    assert.deepEqual(
      mine.map((hook) => hook.json.type),
      ['email.sent'],
    );
  });

  test('failed tries are retried with the same webhook-id until the receiver accepts; the log shows each', async () => {
    const triesById = new Map<string, number>();
    receiver.answer('/flaky', ({ headers }) => {
      const id = String(headers['webhook-id']);
      const tries = (triesById.get(id) ?? 0) + 1;
      triesById.set(id, tries);
      return tries <= 2 ? 503 : 200;
    });
    const created = await register('/flaky', { events: ['email.sent'] });
    const id = await t.send(SAMPLE_EMAIL);
    await t.waitForStatus(id, 'sent');
    const delivery = await waitFor('a delivered delivery after retries', async () =>
      (await deliveries(created.id)).find((d) => d.email_id === id && d.status === 'delivered'),
    );
    assert.equal(delivery.attempts, 3);
    assert.deepEqual(
      delivery.log.map((attempt) => attempt.status_code),
      [200, 503, 503],
    );
    assert.match(delivery.log[1]!.error!, /HTTP 503: nope 503/);
    const hooks = receiver.at('/flaky').filter((hook) => hook.json.data.email_id === id);
    assert.equal(hooks.length, 3);
    assert.equal(new Set(hooks.map((hook) => hook.headers['webhook-id'])).size, 1);
  });

  test('410 Gone turns the endpoint off at once; enabling it again resumes deliveries', async () => {
    receiver.answer('/gone', 410);
    const created = await register('/gone', { events: ['email.queued'] });
    const first = await t.send(SAMPLE_EMAIL);
    const off = await waitFor('the endpoint to be disabled', async () => {
      const read = await endpoint(created.id);
      return read.enabled ? undefined : read;
    });
    assert.equal(off.disabled_reason, 'gone');
    const firstTries = receiver.at('/gone').filter((hook) => hook.json.data.email_id === first).length;
    assert.equal(firstTries, 1, 'no retry after 410');

    const second = await t.send(SAMPLE_EMAIL);
    await t.waitForStatus(second, 'sent');
    await waitFor('the callback to hear of the second email', () =>
      receiver.at('/callback').some((hook) => hook.json.data.email_id === second),
    );
    assert.equal(receiver.at('/gone').filter((hook) => hook.json.data.email_id === second).length, 0);

    receiver.answer('/gone', 200);
    const patched = await t.request('PATCH', `/v1/webhooks/${created.id}`, { enabled: true });
    assert.equal(patched.statusCode, 200, patched.body);
    assert.equal((patched.json() as Endpoint).disabled_reason, null);
    const third = await t.send(SAMPLE_EMAIL);
    await waitFor('a delivery after re-enabling', () =>
      receiver.at('/gone').some((hook) => hook.json.data.email_id === third && hook.status === 200),
    );
  });

  test('an endpoint that keeps failing past the retry window is turned off', async () => {
    receiver.answer('/down', 500);
    const created = await register('/down', { events: ['email.queued'] });
    const id = await t.send(SAMPLE_EMAIL);
    const off = await waitFor(
      'the failing endpoint to be disabled',
      async () => {
        const read = await endpoint(created.id);
        return read.enabled ? undefined : read;
      },
      10_000,
    );
    assert.equal(off.disabled_reason, 'failing');
    const [delivery] = (await deliveries(created.id)).filter((d) => d.email_id === id);
    assert.equal(delivery!.status, 'failed');
    assert.ok(delivery!.attempts >= 3, `retried before giving up (${delivery!.attempts} tries)`);
    assert.ok(delivery!.log.every((attempt) => attempt.status_code === 500));
  });

  test('MAILROOM_STATUS_CALLBACK_URL registers one endpoint for every event, signed with its secret', async () => {
    const callback = await endpoint('status-callback');
    assert.equal(callback.source, 'env');
    assert.equal(callback.enabled, true);
    assert.equal(callback.url, receiver.url('/callback'));
    const id = await t.send({ ...SAMPLE_EMAIL, send_at: new Date(Date.now() + 60_000).toISOString() });
    assert.equal((await t.request('POST', `/v1/emails/${id}/cancel`)).statusCode, 200);
    const hooks = await waitFor('scheduled and cancelled callbacks', () => {
      const mine = receiver.at('/callback').filter((hook) => hook.json.data.email_id === id);
      return mine.length >= 2 ? mine : undefined;
    });
    assert.deepEqual(hooks.map((hook) => hook.json.type).sort(), ['email.cancelled', 'email.scheduled']);
    for (const hook of hooks) assert.ok(verifyStandardWebhook(CALLBACK_SECRET, hook.headers, hook.body));
  });
});

/** Webhook targets on loopback, private, link-local and metadata addresses are refused. */
/** An HTTP server on loopback that takes requests and never answers them, until closed. */
async function startStallingServer() {
  let open = 0;
  let mostOpen = 0;
  const server = createServer((request) => {
    open++;
    mostOpen = Math.max(mostOpen, open);
    request.on('close', () => open--);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: (path: string) => `http://127.0.0.1:${(server.address() as AddressInfo).port}${path}`,
    get open() {
      return open;
    },
    get mostOpen() {
      return mostOpen;
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('a receiver that never answers', () => {
  test('holds a few of the dispatcher’s slots, never the queue: another endpoint is served meanwhile', async () => {
    const stalling = await startStallingServer();
    const receiver = new WebhookReceiver();
    await receiver.start();
    // Tries wait out a long timeout, so the stalled ones are still open when the healthy one goes.
    const t = await startTestApp({
      MAILROOM_WEBHOOKS_ALLOW_PRIVATE: '1',
      MAILROOM_WEBHOOK_TIMEOUT_MS: '60000',
    });
    try {
      const register = async (url: string) => {
        const response = await t.request('POST', '/v1/webhooks', { url, events: ['email.queued'] });
        assert.equal(response.statusCode, 201, response.body);
      };
      // 24 deliveries for the stalled endpoint, all older than the healthy endpoint's one: a take
      // by age alone would give the stalled endpoint every one of the 16 slots.
      await register(stalling.url('/stall'));
      for (let i = 0; i < 24; i++) await t.send({ ...SAMPLE_EMAIL, subject: `stall ${i}` });
      await waitFor('the stalled endpoint’s first tries', () => stalling.open > 0);
      await register(receiver.url('/healthy'));
      const id = await t.send(SAMPLE_EMAIL);
      await waitFor('the healthy endpoint’s webhook', () =>
        receiver.at('/healthy').some((hook) => hook.json.data.email_id === id),
      );
      assert.ok(stalling.open > 0, 'the stalled tries were still waiting for an answer');
      assert.ok(
        stalling.mostOpen <= 7,
        `at most 4 (+3 taken before they count) at once: ${stalling.mostOpen}`,
      );
    } finally {
      // Closing the stalling server first ends its tries at once, so the app stops without waiting.
      await stalling.close();
      await t.stop();
      await receiver.close();
    }
  });
});

describe('webhook address checks', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp();
  });
  after(() => t.stop());

  test('registration refuses non-public targets, by address and by name', async () => {
    const targets = [
      'http://127.0.0.1/hook',
      'http://127.1.2.3:8080/hook',
      'http://[::1]/hook',
      'http://[::ffff:127.0.0.1]/hook',
      'http://10.0.0.5/hook',
      'http://172.16.3.4/hook',
      'http://192.168.1.10/hook',
      'http://169.254.169.254/latest/meta-data/',
      'http://[fd00:ec2::254]/hook',
      'http://0.0.0.0/hook',
      'http://100.64.0.1/hook',
      'http://localhost/hook',
      'http://localhost./hook',
    ];
    for (const url of targets) {
      const response = await t.request('POST', '/v1/webhooks', { url });
      assert.equal(response.statusCode, 400, `${url}: ${response.body}`);
      const details = (response.json() as { error: { details: { field: string; rule: string }[] } }).error
        .details;
      assert.deepEqual(
        details.map((d) => [d.field, d.rule]),
        [['url', 'public_address']],
        url,
      );
    }
    const patched = await t.request('PATCH', '/v1/webhooks/anything', { url: 'http://10.1.1.1/' });
    assert.equal(patched.statusCode, 400);
  });
});
