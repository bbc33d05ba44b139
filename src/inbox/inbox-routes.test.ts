import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import Fastify from 'fastify';
import nodemailer from 'nodemailer';
import { pino } from 'pino';
import { ApiKeyAuth } from '../api/auth.js';
import { DevInbox, type InboxMessage, type InboxSummary } from './dev-inbox.js';
import { registerInboxRoutes } from './inbox-routes.js';
import { startInboxServer } from './inbox-server.js';

const logger = pino({ level: 'silent' });

const HOSTILE_SUBJECT = '<script>alert(1)</script> & "quotes"';
const HOSTILE_HTML =
  '<h1>Hi</h1><script>alert("pwned")</script><img src="https://tracker.example/p.gif" onerror="alert(2)">';

describe('inbox routes', () => {
  let inbox: DevInbox;
  let app: FastifyInstance;
  let transport: nodemailer.Transporter;

  before(async () => {
    inbox = new DevInbox({
      host: '127.0.0.1',
      smtpPort: 0,
      maxMessages: 1000,
      maxMessageBytes: 1024 * 1024,
      logger,
    });
    await inbox.start();
    app = Fastify();
    await registerInboxRoutes(app, inbox, new ApiKeyAuth([]));
    await app.ready();
    transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: inbox.port,
      secure: false,
      ignoreTLS: true,
    });
  });

  after(async () => {
    transport.close();
    await app.close();
    await inbox.close();
  });

  beforeEach(() => inbox.clear());

  function sendHostile(): Promise<unknown> {
    return transport.sendMail({
      from: 'Attacker <evil@example.com>',
      to: 'victim@example.com',
      subject: HOSTILE_SUBJECT,
      text: 'Text part <b>not bold</b>',
      html: HOSTILE_HTML,
    });
  }

  async function onlyId(): Promise<string> {
    const [summary] = inbox.list(1);
    assert.ok(summary);
    return summary.id;
  }

  test('GET /v1/inbox/messages lists newest first with a limit', async () => {
    for (const n of [1, 2, 3]) {
      await transport.sendMail({ from: 'a@example.com', to: 'b@example.com', subject: `m${n}`, text: 'x' });
    }
    const all = await app.inject({ method: 'GET', url: '/v1/inbox/messages' });
    assert.equal(all.statusCode, 200);
    const body = all.json<{ data: InboxSummary[] }>();
    assert.deepEqual(
      body.data.map((m) => m.subject),
      ['m3', 'm2', 'm1'],
    );
    assert.deepEqual(body.data[0]?.to, ['b@example.com']);
    assert.equal(typeof body.data[0]?.headers['message-id'], 'string');

    const limited = await app.inject({ method: 'GET', url: '/v1/inbox/messages?limit=2' });
    assert.deepEqual(
      limited.json<{ data: InboxSummary[] }>().data.map((m) => m.subject),
      ['m3', 'm2'],
    );
  });

  test('GET /v1/inbox/messages rejects a limit over 1000', async () => {
    const response = await app.inject({ method: 'GET', url: '/v1/inbox/messages?limit=1001' });
    assert.equal(response.statusCode, 400);
  });

  test('GET /v1/inbox/messages/:id returns the parsed message', async () => {
    await sendHostile();
    const id = await onlyId();
    const response = await app.inject({ method: 'GET', url: `/v1/inbox/messages/${id}` });
    assert.equal(response.statusCode, 200);
    const message = response.json<InboxMessage>();
    assert.equal(message.id, id);
    assert.equal(message.subject, HOSTILE_SUBJECT);
    assert.equal(message.from, 'Attacker <evil@example.com>');
    assert.equal(message.html, HOSTILE_HTML);
    assert.equal(message.text?.trim(), 'Text part <b>not bold</b>');
    assert.deepEqual(message.envelope, { from: 'evil@example.com', to: ['victim@example.com'] });
  });

  test('GET /v1/inbox/messages/:id/raw returns the source as message/rfc822', async () => {
    await sendHostile();
    const id = await onlyId();
    const response = await app.inject({ method: 'GET', url: `/v1/inbox/messages/${id}/raw` });
    assert.equal(response.statusCode, 200);
    assert.match(String(response.headers['content-type']), /^message\/rfc822/);
    assert.equal(response.headers['x-content-type-options'], 'nosniff');
    assert.deepEqual(response.rawPayload, inbox.raw(id));
  });

  test('unknown ids answer 404 NOT_FOUND', async () => {
    for (const url of ['/v1/inbox/messages/999999', '/v1/inbox/messages/999999/raw']) {
      const response = await app.inject({ method: 'GET', url });
      assert.equal(response.statusCode, 404, url);
      assert.equal(response.json<{ error: { code: string } }>().error.code, 'NOT_FOUND');
    }
    const page = await app.inject({ method: 'GET', url: '/inbox/%3Cscript%3E' });
    assert.equal(page.statusCode, 404);
    assert.match(String(page.headers['content-type']), /^text\/html/);
    assert.ok(!page.body.includes('<script>'));
    assert.ok(page.body.includes('&lt;script&gt;'));
  });

  test('DELETE /v1/inbox/messages clears the inbox', async () => {
    await transport.sendMail({ from: 'a@example.com', to: 'b@example.com', subject: 'bye', text: 'x' });
    const response = await app.inject({ method: 'DELETE', url: '/v1/inbox/messages' });
    assert.equal(response.statusCode, 204);
    assert.equal(inbox.count(), 0);
    const list = await app.inject({ method: 'GET', url: '/v1/inbox/messages' });
    assert.deepEqual(list.json(), { data: [] });
  });

  test('GET /inbox lists messages with escaped content and refreshes itself', async () => {
    await sendHostile();
    const id = await onlyId();
    const response = await app.inject({ method: 'GET', url: '/inbox' });
    assert.equal(response.statusCode, 200);
    assert.match(String(response.headers['content-type']), /^text\/html; charset=utf-8/);
    assert.match(String(response.headers['content-security-policy']), /default-src 'none'/);
    assert.ok(response.body.includes('<meta http-equiv="refresh" content="5">'));
    assert.ok(response.body.includes(`href="/inbox/${id}"`));
    assert.ok(!response.body.includes('<script>'));
    assert.ok(response.body.includes('&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;'));
    assert.ok(response.body.includes('Attacker &lt;evil@example.com&gt;'));
  });

  test('GET /inbox/:id renders the HTML part in a sandboxed iframe under a strict CSP', async () => {
    await sendHostile();
    const id = await onlyId();
    const response = await app.inject({ method: 'GET', url: `/inbox/${id}` });
    assert.equal(response.statusCode, 200);

    const csp = String(response.headers['content-security-policy']);
    for (const directive of [
      "default-src 'none'",
      "style-src 'unsafe-inline'",
      'img-src data:',
      "base-uri 'none'",
      "form-action 'none'",
    ]) {
      assert.ok(csp.includes(directive), directive);
    }
    assert.ok(!csp.includes('script-src'));
    assert.equal(response.headers['x-content-type-options'], 'nosniff');
    assert.equal(response.headers['referrer-policy'], 'no-referrer');

    const body = response.body;
    assert.ok(!body.includes('<script'), 'no live script tag anywhere on the page');
    assert.ok(!/<img /.test(body), 'no live img tag from the message');

    const iframes = body.match(/<iframe [^>]*>/g) ?? [];
    assert.equal(iframes.length, 1);
    const iframe = iframes[0] ?? '';
    assert.match(iframe, /^<iframe sandbox srcdoc="/);
    assert.ok(!iframe.includes('allow-'), 'sandbox grants nothing');
    const srcdoc = /srcdoc="([^"]*)"/.exec(iframe)?.[1] ?? '';
    assert.equal(unescapeAttribute(srcdoc), HOSTILE_HTML);

    assert.ok(body.includes('&lt;script&gt;alert(1)&lt;/script&gt;'), 'subject shown as text');
    assert.ok(body.includes('Text part &lt;b&gt;not bold&lt;/b&gt;'), 'text part shown as text');
    assert.ok(body.includes('<h2>Raw source</h2>'));
    assert.ok(body.includes('<h2>Headers</h2>'));
  });

  test('GET /inbox/:id handles a text-only message and an encoded-word subject', async () => {
    await transport.sendMail({
      from: 'a@example.com',
      to: 'b@example.com',
      subject: 'Grüße ✓',
      text: 'plain only',
    });
    const id = await onlyId();
    const response = await app.inject({ method: 'GET', url: `/inbox/${id}` });
    assert.equal(response.statusCode, 200);
    assert.ok(response.body.includes('<h1>Grüße ✓</h1>'));
    assert.ok(response.body.includes('No HTML part.'));
    assert.ok(!response.body.includes('<iframe'));
  });
});

describe('startInboxServer', () => {
  let server: Awaited<ReturnType<typeof startInboxServer>>;

  before(async () => {
    server = await startInboxServer({
      host: '127.0.0.1',
      httpPort: 0,
      smtpPort: 0,
      maxMessages: 10,
      maxMessageBytes: 1024 * 1024,
      logger,
    });
  });

  after(async () => {
    await server.close();
  });

  test('reports its URLs and serves health, the redirect and the inbox', async () => {
    assert.match(server.httpUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(server.smtpUrl, `smtp://127.0.0.1:${server.inbox.port}`);

    const health = await fetch(`${server.httpUrl}/health`);
    assert.deepEqual(await health.json(), { status: 'ok' });

    const root = await fetch(`${server.httpUrl}/`, { redirect: 'manual' });
    assert.equal(root.status, 302);
    assert.equal(root.headers.get('location'), '/inbox');

    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: server.inbox.port,
      ignoreTLS: true,
    });
    await transport.sendMail({
      from: 'a@example.com',
      to: 'b@example.com',
      subject: 'standalone',
      text: 'x',
    });
    transport.close();
    const list = await fetch(`${server.httpUrl}/v1/inbox/messages`);
    const body = (await list.json()) as { data: InboxSummary[] };
    assert.deepEqual(
      body.data.map((m) => m.subject),
      ['standalone'],
    );
  });

  test('answers errors in the Mailroom error shape', async () => {
    const invalid = await fetch(`${server.httpUrl}/v1/inbox/messages?limit=0`);
    assert.equal(invalid.status, 400);
    assert.equal(((await invalid.json()) as { error: { code: string } }).error.code, 'VALIDATION_FAILED');

    const missing = await fetch(`${server.httpUrl}/nowhere`);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { error: { code: string } }).error.code, 'NOT_FOUND');
  });
});

function unescapeAttribute(value: string): string {
  return value
    .replaceAll('&quot;', '"')
    .replaceAll('&#39;', "'")
    .replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>')
    .replaceAll('&amp;', '&');
}
