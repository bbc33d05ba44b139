import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import libmime from 'libmime';
import { simpleParser } from 'mailparser';
import type { EmailContent, Job } from '../domain/email.js';
import { composeMime } from './compose-mime.js';

function job(content: Partial<EmailContent>): Job {
  return {
    id: '0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b',
    status: 'processing',
    priority: 'normal',
    attempts: 1,
    tags: [],
    metadata: {},
    messageId: '<0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b@acme.test>',
    createdAt: Date.UTC(2026, 10, 23, 9, 30, 0),
    updatedAt: Date.UTC(2026, 10, 23, 9, 30, 0),
    content: {
      from: { address: 'noreply@acme.test', name: 'Acme' },
      to: [{ address: 'alice@example.com' }],
      cc: [],
      bcc: [],
      replyTo: [],
      subject: 'Hello',
      headers: {},
      ...content,
    },
  };
}

test('text and html become multipart/alternative that a real parser reads back exactly', async () => {
  const text = 'Hi Alice,\n\nyour order is on its way.\n';
  const html = '<p>Hi <b>Alice</b>,</p><p>your order is on its way.</p>';
  const raw = composeMime(job({ text, html, cc: [{ address: 'carol@example.com', name: 'Carol, Sales' }] }));
  const parsed = await simpleParser(raw);
  assert.equal(parsed.subject, 'Hello');
  assert.equal(parsed.messageId, '<0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b@acme.test>');
  assert.equal(parsed.text, text);
  assert.equal(parsed.html, html);
  assert.deepEqual(parsed.from?.value[0], { address: 'noreply@acme.test', name: 'Acme' });
  assert.equal(parsed.to && !Array.isArray(parsed.to) ? parsed.to.text : '', 'alice@example.com');
  assert.equal(parsed.cc && !Array.isArray(parsed.cc) ? parsed.cc.value[0]?.name : '', 'Carol, Sales');
  assert.equal(parsed.date?.toISOString(), '2026-11-23T09:30:00.000Z');
  assert.match(
    raw.toString(),
    /^Content-Type: multipart\/alternative;\r\n boundary="--_mailroom_0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"\r$/m,
  );
  assert.deepEqual(
    composeMime(job({ text, html })),
    composeMime(job({ text, html })),
    'same job, same bytes',
  );
  assert.doesNotMatch(raw.toString().replace(/\r\n/g, ''), /\n/, 'every line ends in CRLF');
});

test('non-ASCII subject, names, headers and bodies survive the round trip', async () => {
  const subject = 'Grüße aus Köln — ✓ Bestellung 42 🎉 '.repeat(3).trim();
  const text = `Größe: ${'ü'.repeat(300)}\nZweite Zeile`;
  const raw = composeMime(
    job({
      subject,
      text,
      from: { address: 'shop@acme.test', name: 'Bäckerei Müller' },
      headers: { 'X-Campaign': 'Frühling ✿', 'List-Unsubscribe': '<https://acme.test/u/1>' },
    }),
  );
  const source = raw.toString();
  assert.ok(/^[\x00-\x7f]*$/.test(source), 'the message itself is 7-bit ASCII');
  assert.ok(
    source.split('\r\n').every((line) => line.length <= 998),
    'no line over 998 characters',
  );
  const parsed = await simpleParser(raw);
  assert.equal(parsed.subject, subject);
  assert.equal(parsed.text, text);
  assert.equal(parsed.from?.value[0]?.name, 'Bäckerei Müller');
  // mailparser leaves custom headers as written; decoding the encoded-word must give the value back.
  assert.equal(libmime.decodeWords(String(parsed.headers.get('x-campaign'))), 'Frühling ✿');
  assert.match(source, /^List-Unsubscribe: <https:\/\/acme\.test\/u\/1>\r$/m);
});

test('a single part is sent without multipart; a very long ASCII line is quoted-printable', async () => {
  const long = 'x'.repeat(2000);
  const raw = composeMime(job({ html: `<p>${long}</p>` }));
  const source = raw.toString();
  assert.match(source, /^Content-Type: text\/html; charset=utf-8\r$/m);
  assert.match(source, /^Content-Transfer-Encoding: quoted-printable\r$/m);
  assert.doesNotMatch(source, /multipart/);
  const parsed = await simpleParser(raw);
  assert.equal(parsed.html, `<p>${long}</p>`);
});

test('display names with quotes and backslashes are quoted safely', async () => {
  const raw = composeMime(
    job({ text: 'hi', replyTo: [{ address: 'help@acme.test', name: 'Acme "Help" \\ Desk' }] }),
  );
  const parsed = await simpleParser(raw);
  const replyTo = parsed.replyTo && !Array.isArray(parsed.replyTo) ? parsed.replyTo.value[0] : undefined;
  assert.equal(replyTo?.address, 'help@acme.test');
  assert.equal(replyTo?.name, 'Acme "Help" \\ Desk');
});

test('a body that contains the boundary made from the job id gets a random boundary instead', async () => {
  const text = 'a line with ----_mailroom_0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b in it';
  const html = '<p>----_mailroom_0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b--</p>';
  const raw = composeMime(job({ text, html }));
  const boundary = /boundary="([^"]+)"/.exec(raw.toString())?.[1] ?? '';
  assert.match(boundary, /^--_mailroom_[0-9a-f]{32}$/);
  const parsed = await simpleParser(raw);
  assert.equal(parsed.text, text);
  assert.equal(parsed.html, html);
});

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

test('attachments: mixed around alternative, related around the HTML and its inline image', async () => {
  const logo = randomBytes(3000);
  const pdf = randomBytes(1000);
  const empty = Buffer.alloc(0);
  const raw = composeMime(
    job({
      text: 'see attached',
      html: '<p><img src="cid:logo@acme.test"></p>',
      attachments: [
        {
          filename: 'logo.png',
          contentType: 'image/png',
          content: logo.toString('base64'),
          contentId: 'logo@acme.test',
        },
        {
          filename: 'Übersicht für Jörg — März.pdf',
          contentType: 'application/pdf',
          content: pdf.toString('base64'),
        },
        { filename: `a "quoted" ${'long '.repeat(20)}name.txt`, contentType: 'text/plain', content: '' },
      ],
    }),
  );
  const source = raw.toString();
  assert.ok(/^[\x00-\x7f]*$/.test(source), 'the message itself is 7-bit ASCII');
  assert.ok(
    source.split('\r\n').every((line) => line.length <= 998),
    'no line over 998 characters',
  );
  const types = [...source.matchAll(/^Content-Type: (multipart\/\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(types, ['multipart/mixed', 'multipart/alternative', 'multipart/related']);
  assert.match(source, /filename\*0\*=utf-8''/, 'RFC 2231 for the non-ASCII file name');

  const parsed = await simpleParser(raw);
  assert.equal(parsed.text, 'see attached');
  assert.equal(parsed.attachments.length, 3);
  const [image, document, blank] = parsed.attachments;
  assert.equal(image?.contentId, '<logo@acme.test>');
  assert.equal(image?.related, true, 'the image is inside multipart/related');
  assert.equal(image?.contentDisposition, 'inline');
  assert.equal(image?.contentType, 'image/png');
  assert.equal(sha256(image!.content), sha256(logo));
  assert.equal(document?.filename, 'Übersicht für Jörg — März.pdf');
  assert.equal(document?.contentDisposition, 'attachment');
  assert.equal(sha256(document!.content), sha256(pdf));
  assert.equal(blank?.filename, `a "quoted" ${'long '.repeat(20)}name.txt`);
  assert.deepEqual(blank?.content, empty);
});

test('inline parts without an HTML part go into multipart/mixed, still with their Content-ID', async () => {
  const raw = composeMime(
    job({
      text: 'no html',
      attachments: [{ filename: 'a.png', contentType: 'image/png', content: 'AAEC', contentId: 'a@b' }],
    }),
  );
  assert.doesNotMatch(raw.toString(), /multipart\/related/);
  const parsed = await simpleParser(raw);
  assert.equal(parsed.attachments[0]?.contentId, '<a@b>');
  assert.deepEqual(parsed.attachments[0]?.content, Buffer.from([0, 1, 2]));
});
