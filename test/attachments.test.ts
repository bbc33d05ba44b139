import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { simpleParser } from 'mailparser';
import { startTestApp, type TestApp } from './support/test-app.js';

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

const EMAIL = { to: 'alice@example.com', subject: 'Your documents', text: 'Attached.' };
const PDF = {
  filename: 'report.pdf',
  content_type: 'application/pdf',
  content: randomBytes(64).toString('base64'),
};

interface Problem {
  field: string;
  rule: string;
}

describe('attachments through the API to the SMTP sink', () => {
  let t: TestApp;
  before(async () => {
    // 1 MiB for the whole email: large enough for a real file, small enough to test the limit.
    t = await startTestApp({ MAILROOM_MAX_MESSAGE_BYTES: String(1024 * 1024) });
  });
  after(() => t.stop());

  async function jobCount(): Promise<number> {
    const page = (await t.request('GET', '/v1/emails?limit=100')).json() as { data: unknown[] };
    return page.data.length;
  }

  async function deliveredMessage(id: string) {
    const view = await t.waitForStatus(id, 'sent');
    const found = t.sink.messages().filter((message) => message.messageId === view.message_id);
    assert.equal(found.length, 1);
    // keepCidLinks: mailparser would otherwise turn cid: references into data: URLs.
    return simpleParser(found[0]!.raw, { keepCidLinks: true });
  }

  test('files, an inline image and non-ASCII names arrive byte for byte', async () => {
    const logo = randomBytes(20_000);
    const archive = randomBytes(700_000);
    const names = ['Übersicht für Jörg — März 2026.zip', '报告.pdf', 'a "quoted" name.txt'];
    const id = await t.send({
      ...EMAIL,
      html: '<p>Hello <img src="cid:logo@acme.test" alt="logo"></p>',
      attachments: [
        {
          filename: 'logo.png',
          content_type: 'image/png',
          content: logo.toString('base64'),
          content_id: 'logo@acme.test',
        },
        { filename: names[0], content_type: 'application/zip', content: archive.toString('base64') },
        { filename: names[1], content_type: 'application/pdf', content: PDF.content },
        { filename: names[2], content_type: 'text/plain', content: '' },
      ],
    });
    const parsed = await deliveredMessage(id);
    assert.equal(parsed.text, 'Attached.');
    assert.match(String(parsed.html), /cid:logo@acme\.test/);
    const [image, zip, pdf, empty] = parsed.attachments;
    assert.equal(parsed.attachments.length, 4);

    assert.equal(image?.contentType, 'image/png');
    assert.equal(image?.contentId, '<logo@acme.test>');
    assert.equal(image?.related, true, 'the inline image is in multipart/related with the HTML');
    assert.equal(sha256(image!.content), sha256(logo));

    assert.equal(zip?.filename, names[0]);
    assert.equal(zip?.contentType, 'application/zip');
    assert.equal(zip?.contentDisposition, 'attachment');
    assert.equal(sha256(zip!.content), sha256(archive));
    assert.equal(pdf?.filename, names[1]);
    assert.equal(sha256(pdf!.content), sha256(Buffer.from(PDF.content, 'base64')));
    assert.equal(empty?.filename, names[2]);
    assert.equal(empty?.size, 0);

    // The API shows the job without echoing megabytes of base64.
    const view = (await t.request('GET', `/v1/emails/${id}`)).body;
    assert.ok(view.length < 10_000, `GET /v1/emails/:id is ${view.length} bytes`);
  });

  test('ugly attachments are refused with field and rule, and nothing is stored', async () => {
    const cases: [unknown, string, string][] = [
      [[{ ...PDF, content: 'not base64!' }], 'attachments[0].content', 'encoding'],
      [[{ ...PDF, content: '/etc/passwd' }], 'attachments[0].content', 'encoding'],
      [[{ ...PDF, content: 'file:///etc/passwd' }], 'attachments[0].content', 'encoding'],
      [[{ ...PDF, content: 'https://example.com/a.pdf' }], 'attachments[0].content', 'encoding'],
      [
        [{ ...PDF, content: `data:application/pdf;base64,${PDF.content}` }],
        'attachments[0].content',
        'encoding',
      ],
      [[PDF, { ...PDF, path: '/etc/passwd' }], 'attachments[1].path', 'unknown_field'],
      [
        [{ filename: 'x.pdf', content_type: 'application/pdf', href: 'https://example.com/x.pdf' }],
        'attachments[0].href',
        'unknown_field',
      ],
      [
        [PDF, PDF, { ...PDF, filename: 'evil.pdf\r\nContent-Type: text/html' }],
        'attachments[2].filename',
        'no_crlf',
      ],
      [[{ ...PDF, filename: 'x.pdf\0' }], 'attachments[0].filename', 'no_crlf'],
      [[{ ...PDF, content_type: 'pdf' }], 'attachments[0].content_type', 'mime_type'],
      [[{ content: PDF.content, content_type: 'application/pdf' }], 'attachments[0].filename', 'required'],
      [[{ filename: 'x.pdf', content_type: 'application/pdf' }], 'attachments[0].content', 'required'],
      [[{ filename: 'x.pdf', content: PDF.content }], 'attachments[0].content_type', 'required'],
      [Array.from({ length: 21 }, () => PDF), 'attachments', 'max_items'],
    ];
    const before = await jobCount();
    for (const [attachments, field, rule] of cases) {
      const response = await t.request('POST', '/v1/emails', { ...EMAIL, attachments });
      assert.equal(response.statusCode, 400, response.body);
      const { error } = response.json() as { error: { code: string; details: Problem[] } };
      assert.equal(error.code, 'VALIDATION_FAILED');
      assert.ok(
        error.details.some((problem) => problem.field === field && problem.rule === rule),
        `${field}/${rule} in ${JSON.stringify(error.details)}`,
      );
    }
    assert.equal(await jobCount(), before, 'no job was written');
  });

  test('attachments count in MAILROOM_MAX_MESSAGE_BYTES, decoded: 413 and nothing stored', async () => {
    const before = await jobCount();
    const half = randomBytes(600 * 1024).toString('base64');
    const response = await t.request('POST', '/v1/emails', {
      ...EMAIL,
      attachments: [
        { ...PDF, content: half },
        { ...PDF, filename: 'b.pdf', content: half },
      ],
    });
    assert.equal(response.statusCode, 413, response.body);
    const { error } = response.json() as { error: { code: string; details: Problem[] } };
    assert.equal(error.code, 'PAYLOAD_TOO_LARGE');
    assert.deepEqual(error.details[0], {
      field: 'body',
      rule: 'too_large',
      message: `subject, bodies, headers and attachments take ${14 + 9 + 2 * 600 * 1024} bytes; at most ${1024 * 1024} are allowed`,
    });
    assert.equal(await jobCount(), before);
  });
});
