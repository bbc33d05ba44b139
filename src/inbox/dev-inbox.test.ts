import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import nodemailer from 'nodemailer';
import type SMTPTransport from 'nodemailer/lib/smtp-transport/index.js';
import { pino } from 'pino';
import { DevInbox, type InboxSummary } from './dev-inbox.js';
import { parseHeaderBlock } from './parse-header-block.js';
import { RingBuffer } from './ring-buffer.js';

const logger = pino({ level: 'silent' });

function startInbox(overrides: { maxMessages?: number; maxMessageBytes?: number } = {}): Promise<DevInbox> {
  const inbox = new DevInbox({
    host: '127.0.0.1',
    smtpPort: 0,
    maxMessages: overrides.maxMessages ?? 1000,
    maxMessageBytes: overrides.maxMessageBytes ?? 1024 * 1024,
    logger,
  });
  return inbox.start().then(() => inbox);
}

function transportFor(inbox: DevInbox, extra: SMTPTransport.Options = {}): nodemailer.Transporter {
  return nodemailer.createTransport({
    host: '127.0.0.1',
    port: inbox.port,
    secure: false,
    ignoreTLS: true,
    ...extra,
  });
}

describe('DevInbox', () => {
  let inbox: DevInbox;
  let transport: nodemailer.Transporter;

  before(async () => {
    inbox = await startInbox();
    transport = transportFor(inbox);
  });

  after(async () => {
    transport.close();
    await inbox.close();
  });

  test('receives a message and summarizes its headers without parsing the body', async () => {
    inbox.clear();
    const info = await transport.sendMail({
      from: 'Mailroom <noreply@example.com>',
      to: ['"Doe, Jane" <jane@example.com>', 'bob@example.com'],
      subject: 'Welcome aboard',
      text: 'Hello Jane',
      headers: { 'X-Campaign': 'onboarding' },
    });

    assert.equal(inbox.count(), 1);
    const [summary] = inbox.list();
    assert.ok(summary);
    assert.equal(summary.message_id, info.messageId);
    assert.equal(summary.from, 'Mailroom <noreply@example.com>');
    assert.deepEqual(summary.to, ['Doe, Jane <jane@example.com>', 'bob@example.com']);
    assert.equal(summary.subject, 'Welcome aboard');
    assert.equal(summary.headers['x-campaign'], 'onboarding');
    assert.ok(summary.headers['date']);
    assert.ok(summary.size > 0);
    assert.ok(!Number.isNaN(Date.parse(summary.received_at)));
  });

  test('get() parses text and HTML parts on demand and keeps the envelope', async () => {
    inbox.clear();
    await transport.sendMail({
      envelope: { from: 'bounces@example.com', to: ['jane@example.com', 'audit@example.com'] },
      from: 'noreply@example.com',
      to: 'jane@example.com',
      subject: 'Parts',
      text: 'Plain body',
      html: '<p>HTML <b>body</b></p><script>alert(1)</script>',
    });
    const [summary] = inbox.list();
    assert.ok(summary);

    const message = await inbox.get(summary.id);
    assert.ok(message);
    assert.equal(message.text?.trim(), 'Plain body');
    assert.match(message.html ?? '', /<b>body<\/b>/);
    assert.deepEqual(message.envelope, {
      from: 'bounces@example.com',
      to: ['jane@example.com', 'audit@example.com'],
    });
    assert.deepEqual(await inbox.get(summary.id), message);
  });

  test('raw() returns the message source', async () => {
    inbox.clear();
    await transport.sendMail({
      from: 'a@example.com',
      to: 'b@example.com',
      subject: 'Raw',
      text: 'raw body',
    });
    const [summary] = inbox.list();
    assert.ok(summary);
    const raw = inbox.raw(summary.id);
    assert.ok(raw);
    assert.equal(raw.length, summary.size);
    assert.match(raw.toString('utf8'), /^Subject: Raw\r$/m);
    assert.match(raw.toString('utf8'), /raw body/);
  });

  test('decodes RFC 2047 encoded-words in Subject, From and To', async () => {
    inbox.clear();
    await transport.sendMail({
      from: { name: 'Jürgen Groß', address: 'juergen@example.com' },
      to: { name: 'Zoë', address: 'zoe@example.com' },
      subject: 'Grüße ✓',
      text: 'x',
    });
    const [summary] = inbox.list();
    assert.ok(summary);
    assert.match(summary.headers['subject'] ?? '', /^=\?UTF-8\?[BQ]\?/);
    assert.equal(summary.subject, 'Grüße ✓');
    assert.equal(summary.from, 'Jürgen Groß <juergen@example.com>');
    assert.deepEqual(summary.to, ['Zoë <zoe@example.com>']);
  });

  test('lists newest first and honours the limit', async () => {
    inbox.clear();
    for (const n of [1, 2, 3]) {
      await transport.sendMail({ from: 'a@example.com', to: 'b@example.com', subject: `m${n}`, text: 'x' });
    }
    assert.deepEqual(
      inbox.list().map((m) => m.subject),
      ['m3', 'm2', 'm1'],
    );
    assert.deepEqual(
      inbox.list(2).map((m) => m.subject),
      ['m3', 'm2'],
    );
  });

  test('falls back to the envelope when the message has no To header', async () => {
    inbox.clear();
    await transport.sendMail({
      from: 'a@example.com',
      bcc: 'hidden@example.com',
      subject: 'Bcc only',
      text: 'x',
    });
    const [summary] = inbox.list();
    assert.deepEqual(summary?.to, ['hidden@example.com']);
  });

  test('clear() empties the inbox', async () => {
    await transport.sendMail({ from: 'a@example.com', to: 'b@example.com', subject: 'gone', text: 'x' });
    const [summary] = inbox.list();
    assert.ok(summary);
    inbox.clear();
    assert.equal(inbox.count(), 0);
    assert.deepEqual(inbox.list(), []);
    assert.equal(await inbox.get(summary.id), undefined);
    assert.equal(inbox.raw(summary.id), undefined);
  });

  test('unknown ids return undefined', async () => {
    assert.equal(await inbox.get('nope'), undefined);
    assert.equal(inbox.raw('nope'), undefined);
  });

  test('onMessage() notifies listeners until unsubscribed', async () => {
    const seen: InboxSummary[] = [];
    const unsubscribe = inbox.onMessage((message) => seen.push(message));
    await transport.sendMail({ from: 'a@example.com', to: 'b@example.com', subject: 'seen', text: 'x' });
    unsubscribe();
    await transport.sendMail({ from: 'a@example.com', to: 'b@example.com', subject: 'unseen', text: 'x' });
    assert.deepEqual(
      seen.map((m) => m.subject),
      ['seen'],
    );
  });

  test('a throwing listener does not break delivery', async () => {
    const unsubscribe = inbox.onMessage(() => {
      throw new Error('listener bug');
    });
    try {
      const before = inbox.count();
      await transport.sendMail({
        from: 'a@example.com',
        to: 'b@example.com',
        subject: 'still ok',
        text: 'x',
      });
      assert.equal(inbox.count(), before + 1);
    } finally {
      unsubscribe();
    }
  });

  test('accepts any AUTH credentials', async () => {
    const authed = transportFor(inbox, { auth: { user: 'someone', pass: 'anything' } });
    try {
      const info = await authed.sendMail({
        from: 'a@example.com',
        to: 'b@example.com',
        subject: 'authed',
        text: 'x',
      });
      assert.match(info.response, /^250 /);
      assert.equal(inbox.list(1)[0]?.subject, 'authed');
    } finally {
      authed.close();
    }
  });
});

describe('DevInbox limits', () => {
  let inbox: DevInbox;
  let transport: nodemailer.Transporter;

  before(async () => {
    inbox = await startInbox({ maxMessages: 3, maxMessageBytes: 4096 });
    transport = transportFor(inbox);
  });

  after(async () => {
    transport.close();
    await inbox.close();
  });

  test('drops the oldest messages past maxMessages', async () => {
    for (const n of [1, 2, 3, 4, 5]) {
      await transport.sendMail({ from: 'a@example.com', to: 'b@example.com', subject: `m${n}`, text: 'x' });
    }
    assert.equal(inbox.count(), 3);
    const listed = inbox.list();
    assert.deepEqual(
      listed.map((m) => m.subject),
      ['m5', 'm4', 'm3'],
    );
    const ids = listed.map((m) => Number(m.id));
    const evictedId = String(Math.min(...ids) - 1);
    assert.equal(await inbox.get(evictedId), undefined);
    assert.equal(inbox.raw(evictedId), undefined);
  });

  test('refuses a message over maxMessageBytes with 552', async () => {
    const before = inbox.count();
    await assert.rejects(
      transport.sendMail({
        from: 'a@example.com',
        to: 'b@example.com',
        subject: 'big',
        text: 'x'.repeat(10_000),
      }),
      (err: { responseCode?: number }) => err.responseCode === 552,
    );
    assert.equal(inbox.count(), before);
  });
});

describe('DevInbox under load', () => {
  let inbox: DevInbox;
  let transport: nodemailer.Transporter;

  before(async () => {
    inbox = await startInbox();
    transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: inbox.port,
      secure: false,
      ignoreTLS: true,
      pool: true,
      maxConnections: 5,
      maxMessages: Number.POSITIVE_INFINITY,
    });
  });

  after(async () => {
    transport.close();
    await inbox.close();
  });

  test('200 messages sent quickly through a pooled transport all arrive', async () => {
    await Promise.all(
      Array.from({ length: 200 }, (_, n) =>
        transport.sendMail({
          from: 'load@example.com',
          to: 'sink@example.com',
          subject: `load ${n}`,
          text: `#${n}`,
        }),
      ),
    );
    assert.equal(inbox.count(), 200);
    assert.equal(new Set(inbox.list(1000).map((m) => m.subject)).size, 200);
  });
});

describe('parseHeaderBlock', () => {
  test('unfolds continuation lines, joins repeated headers and stops at the body', () => {
    const raw = Buffer.from(
      'Received: from a\r\n\tby b\r\nReceived: from c\r\nSubject: folded\r\n subject\r\nTo: x@example.com\r\n\r\nSubject: not a header\r\n',
    );
    const parsed = parseHeaderBlock(raw);
    assert.equal(parsed.headers['received'], 'from a by b\nfrom c');
    assert.equal(parsed.subject, 'folded subject');
    assert.deepEqual(parsed.to, ['x@example.com']);
    assert.equal(parsed.from, '');
    assert.equal(parsed.messageId, null);
  });

  test('accepts bare LF line endings', () => {
    const parsed = parseHeaderBlock(Buffer.from('Subject: lf\nMessage-ID: <1@x>\n\nbody'));
    assert.equal(parsed.subject, 'lf');
    assert.equal(parsed.messageId, '<1@x>');
  });
});

describe('RingBuffer', () => {
  test('evicts the oldest item and reads newest first', () => {
    const ring = new RingBuffer<number>(3);
    assert.equal(ring.push(1), undefined);
    ring.push(2);
    ring.push(3);
    assert.equal(ring.push(4), 1);
    assert.deepEqual(ring.newestFirst(), [4, 3, 2]);
    assert.deepEqual(ring.newestFirst(2), [4, 3]);
    assert.deepEqual(ring.newestFirst(0), []);
    ring.clear();
    assert.equal(ring.size, 0);
    assert.deepEqual(ring.newestFirst(), []);
  });

  test('rejects a capacity below 1', () => {
    assert.throws(() => new RingBuffer<number>(0), RangeError);
  });
});
