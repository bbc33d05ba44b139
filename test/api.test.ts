import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { domainToASCII } from 'node:url';
import type { LightMyRequestResponse } from 'fastify';
import { simpleParser } from 'mailparser';
import { SmtpSink } from './support/smtp-sink.js';
import { type EmailView, SAMPLE_EMAIL, startTestApp, type TestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';

interface Problem {
  field: string;
  rule: string;
  message?: string;
}

interface ErrorBody {
  error: { code: string; message: string; details?: Problem[] };
}

interface ListedEmail {
  id: string;
  status: string;
  to: string[];
  tags: string[];
  created_at: string;
}

interface ListPage {
  data: ListedEmail[];
  next_cursor: string | null;
}

const EMAIL = { to: 'alice@example.com', subject: 'Hello', text: 'Hi there.' };

function errorOf(response: LightMyRequestResponse): ErrorBody['error'] {
  const body = response.json() as ErrorBody;
  assert.equal(typeof body.error, 'object', `an error body: ${response.body}`);
  assert.equal(typeof body.error.message, 'string');
  assert.ok(body.error.message.length > 0, 'the error has a message');
  return body.error;
}

/** Asserts a 400 VALIDATION_FAILED naming every expected [field, rule] pair. */
function assertValidation(response: LightMyRequestResponse, expected: [string, string][]): Problem[] {
  assert.equal(response.statusCode, 400, response.body);
  const error = errorOf(response);
  assert.equal(error.code, 'VALIDATION_FAILED');
  assert.ok(Array.isArray(error.details), `details listed: ${response.body}`);
  for (const [field, rule] of expected) {
    assert.ok(
      error.details.some((problem) => problem.field === field && problem.rule === rule),
      `expected {field: ${JSON.stringify(field)}, rule: ${rule}} in ${JSON.stringify(error.details)}`,
    );
  }
  return error.details;
}

/** Every email the list endpoint shows, following cursors. */
async function listAll(t: TestApp, query = ''): Promise<ListedEmail[]> {
  const emails: ListedEmail[] = [];
  let cursor: string | null = null;
  do {
    const url: string = `/v1/emails?limit=100${query}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
    const response = await t.request('GET', url);
    assert.equal(response.statusCode, 200, response.body);
    const page = response.json() as ListPage;
    emails.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor !== null);
  return emails;
}

async function jobCount(t: TestApp): Promise<number> {
  return (await listAll(t)).length;
}

/** Sends a request that must be refused, and checks that no job was written because of it. */
async function refused(
  t: TestApp,
  body: unknown,
  headers?: Record<string, string>,
  url = '/v1/emails',
): Promise<LightMyRequestResponse> {
  const before = await jobCount(t);
  const response = await t.request('POST', url, body, headers);
  assert.ok(response.statusCode >= 400, `expected a refusal, got ${response.statusCode}: ${response.body}`);
  assert.equal(await jobCount(t), before, 'no job was written for a refused request');
  return response;
}

/** A parsed copy of the one message the sink received with this Message-ID. */
async function receivedMessage(t: TestApp, messageId: string) {
  const found = t.sink.messages().filter((message) => message.messageId === messageId);
  assert.equal(found.length, 1, `exactly one message with Message-ID ${messageId} at the sink`);
  return { message: found[0]!, parsed: await simpleParser(found[0]!.raw) };
}

describe('v1 API', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp({ MAILROOM_FROM: 'Notifications <notify@mailroom.test>' });
  });
  after(() => t.stop());

  describe('bad input is refused with 400 and a named field, and writes no job', () => {
    test('malformed JSON answers INVALID_JSON', async () => {
      const response = await refused(t, '{"to":');
      assert.equal(response.statusCode, 400);
      assert.equal(errorOf(response).code, 'INVALID_JSON');
    });

    test('an empty JSON body answers INVALID_JSON; no body at all is a body of the wrong type', async () => {
      const empty = await refused(t, '');
      assert.equal(empty.statusCode, 400);
      assert.equal(errorOf(empty).code, 'INVALID_JSON');

      const before = await jobCount(t);
      const none = await t.request('POST', '/v1/emails');
      assertValidation(none, [['body', 'type']]);
      assert.equal(await jobCount(t), before);
    });

    test('a body that is not an object: array, string, null', async () => {
      for (const body of ['[]', JSON.stringify([EMAIL]), '"hello"', 'null', '42']) {
        const response = await refused(t, body);
        const details = assertValidation(response, [['body', 'type']]);
        assert.equal(details.length, 1, `one problem for ${body}`);
      }
    });

    test('a body that is not JSON answers 415 UNSUPPORTED_MEDIA_TYPE', async () => {
      const text = await refused(t, JSON.stringify(EMAIL), { 'content-type': 'text/plain' });
      assert.equal(text.statusCode, 415, text.body);
      assert.equal(errorOf(text).code, 'UNSUPPORTED_MEDIA_TYPE');

      const form = await refused(t, 'to=alice%40example.com', {
        'content-type': 'application/x-www-form-urlencoded',
      });
      assert.equal(form.statusCode, 415, form.body);
      assert.equal(errorOf(form).code, 'UNSUPPORTED_MEDIA_TYPE');
    });

    test('an unknown top-level field, with a hint for camelCase', async () => {
      const details = assertValidation(await refused(t, { ...EMAIL, unknown_field: 1 }), [
        ['unknown_field', 'unknown_field'],
      ]);
      assert.equal(details.length, 1);
      const camel = assertValidation(await refused(t, { ...EMAIL, sendAt: '2030-01-01T00:00:00Z' }), [
        ['sendAt', 'unknown_field'],
      ]);
      assert.match(camel[0]!.message ?? '', /send_at/);
    });

    test('ugly addresses are refused with rule email', async () => {
      const domain190 = `${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(58)}.com`;
      const address255 = `${'a'.repeat(64)}@${domain190}`;
      assert.equal(address255.length, 255);
      const cases: [string, RegExp][] = [
        ['a@b@c.com', /more than one "@"/],
        ['"quoted"@x.com', /quoted/],
        ['a(comment)@x.com', /comment/],
        ['a@[127.0.0.1]', /literal/],
        [`${'a'.repeat(65)}@example.com`, /local part is longer than 64/],
        [address255, /longer than 254/],
        ['no-at-sign.example.com', /missing "@"/],
        ['a@localhost.123', /digits/],
        ['a..b@example.com', /two dots/],
        ['Name <a@example.com> trailing', /nothing may follow/],
      ];
      for (const [address, why] of cases) {
        const details = assertValidation(await refused(t, { ...EMAIL, to: address }), [['to', 'email']]);
        assert.match(details[0]!.message ?? '', why, `${address}: ${details[0]!.message}`);
      }
      // In a list, the problem names the index; a good address beside it does not rescue the request.
      assertValidation(await refused(t, { ...EMAIL, to: ['ok@example.com', 'a@b@c.com'] }), [
        ['to[1]', 'email'],
      ]);
      assertValidation(await refused(t, { ...EMAIL, cc: 'a(comment)@x.com', from: 'x@[1.2.3.4]' }), [
        ['cc', 'email'],
        ['from', 'email'],
      ]);
    });

    test('CR, LF and NUL are refused in subject, header values, addresses and header names', async () => {
      for (const bad of ['\r', '\n', '\r\n', '\0']) {
        assertValidation(await refused(t, { ...EMAIL, subject: `Hi${bad}Bcc: evil@example.com` }), [
          ['subject', 'no_crlf'],
        ]);
        assertValidation(await refused(t, { ...EMAIL, headers: { 'X-Campaign': `a${bad}Bcc: x@y.com` } }), [
          ['headers.X-Campaign', 'no_crlf'],
        ]);
        assertValidation(await refused(t, { ...EMAIL, to: `alice@example.com${bad}` }), [['to', 'no_crlf']]);
        assertValidation(await refused(t, { ...EMAIL, to: `Eve${bad}Bcc: x@y.com <eve@example.com>` }), [
          ['to', 'no_crlf'],
        ]);
        assertValidation(await refused(t, { ...EMAIL, headers: { [`X-A${bad}Bcc`]: 'x' } }), [
          [`headers.X-A${bad}Bcc`, 'no_crlf'],
        ]);
      }
      for (const name of ['X Campaign', 'X:Campaign', '', 'X-Ünicode', 'X'.repeat(77)]) {
        assertValidation(await refused(t, { ...EMAIL, headers: { [name]: 'x' } }), [
          [`headers.${name}`, 'header_name'],
        ]);
      }
    });

    test('headers Mailroom sets itself are reserved, in any case', async () => {
      for (const name of ['Bcc', 'bcc', 'From', 'Message-ID', 'Content-Type', 'Subject']) {
        assertValidation(await refused(t, { ...EMAIL, headers: { [name]: 'x@example.com' } }), [
          [`headers.${name}`, 'reserved_header'],
        ]);
      }
    });

    test('an email without a text or html body', async () => {
      const { text: _text, ...noBody } = EMAIL;
      assertValidation(await refused(t, noBody), [['text', 'body_required']]);
      assertValidation(await refused(t, { ...noBody, text: '', html: '' }), [['text', 'body_required']]);
      assertValidation(await refused(t, { ...noBody, text: 42 }), [
        ['text', 'type'],
        ['text', 'body_required'],
      ]);
    });

    test('more than 50 recipients across to, cc and bcc', async () => {
      const addresses = (prefix: string, n: number) =>
        Array.from({ length: n }, (_, i) => `${prefix}${i}@example.com`);
      const details = assertValidation(
        await refused(t, {
          ...EMAIL,
          to: addresses('to', 20),
          cc: addresses('cc', 20),
          bcc: addresses('bcc', 11),
        }),
        [['to', 'max_recipients']],
      );
      assert.match(details[0]!.message ?? '', /51/);
    });

    test('a priority outside the enum', async () => {
      assertValidation(await refused(t, { ...EMAIL, priority: 'urgent' }), [['priority', 'enum']]);
      assertValidation(await refused(t, { ...EMAIL, priority: 1 }), [['priority', 'type']]);
    });

    test('a send_at that is not a date-time with a timezone', async () => {
      for (const sendAt of [
        'tomorrow',
        '2030-01-01',
        '2030-01-01T10:00:00',
        '2030-02-30T10:00:00Z',
        '2030-01-01T24:00:00Z',
        '1735689600',
      ]) {
        assertValidation(await refused(t, { ...EMAIL, send_at: sendAt }), [['send_at', 'datetime']]);
      }
      assertValidation(await refused(t, { ...EMAIL, send_at: 1735689600 }), [['send_at', 'type']]);
    });

    test('a send_at further ahead than the server allows', async () => {
      const farAhead = new Date(Date.now() + 400 * 24 * 3600 * 1000).toISOString();
      assertValidation(await refused(t, { ...EMAIL, send_at: farAhead }), [['send_at', 'too_far_ahead']]);
    });

    test('several problems in one request are all reported', async () => {
      const response = await refused(t, {
        to: 'a@b@c.com',
        cc: 'carol@example.com\r\n',
        subject: '',
        priority: 'urgent',
        send_at: 'soon',
        headers: { Bcc: 'hidden@example.com', 'X Bad': 'y' },
        tags: ['ok', 'not ok'],
        extra: true,
      });
      const details = assertValidation(response, [
        ['to', 'email'],
        ['cc', 'no_crlf'],
        ['subject', 'min_length'],
        ['text', 'body_required'],
        ['priority', 'enum'],
        ['send_at', 'datetime'],
        ['headers.Bcc', 'reserved_header'],
        ['headers.X Bad', 'header_name'],
        ['tags[1]', 'pattern'],
        ['extra', 'unknown_field'],
      ]);
      assert.equal(details.length, 10, JSON.stringify(details));
      assert.match(errorOf(response).message, /and 9 more/);
    });

    test('missing to and subject are required', async () => {
      assertValidation(await refused(t, { text: 'x' }), [
        ['to', 'required'],
        ['subject', 'required'],
      ]);
      assertValidation(await refused(t, { ...EMAIL, to: [] }), [['to', 'required']]);
    });

    test('GET /v1/emails/:id of an unknown id is 404 NOT_FOUND', async () => {
      const id = '00000000-0000-7000-8000-000000000000';
      const response = await t.request('GET', `/v1/emails/${id}`);
      assert.equal(response.statusCode, 404);
      const error = errorOf(response);
      assert.equal(error.code, 'NOT_FOUND');
      assert.ok(error.message.includes(id), error.message);
      const tooLong = await t.request('GET', `/v1/emails/${'x'.repeat(65)}`);
      assertValidation(tooLong, [['id', 'maxLength']]);
    });

    test('an unknown route is 404 NOT_FOUND in the same shape', async () => {
      const response = await t.request('GET', '/v1/nothing-here');
      assert.equal(response.statusCode, 404);
      assert.equal(errorOf(response).code, 'NOT_FOUND');
    });
  });

  describe('accepted emails', () => {
    test('a unicode subject, body and IDN domain go through intact', async () => {
      const subject = 'Grüße — 你好 🎉 “quoted”';
      const text = 'Ünïcödé ✓ 😀\nSecond line — ок.';
      const id = await t.send({ to: 'Zoë Ünï <zoe@exämple.com>', subject, text });
      const view = await t.waitForStatus(id, 'sent');
      const ascii = domainToASCII('exämple.com');
      assert.equal(ascii, 'xn--exmple-cua.com');
      assert.deepEqual(view.to, [`"Zoë Ünï" <zoe@${ascii}>`]);
      assert.equal(view.subject, subject);
      const { message, parsed } = await receivedMessage(t, view.message_id);
      // The message goes out with the ASCII (punycode) domain; the sink's SMTP server shows it decoded.
      assert.match(message.raw.toString(), new RegExp(`^To: .*<zoe@${ascii.replace(/\./g, '\\.')}>`, 'm'));
      assert.deepEqual(message.envelope.to, ['zoe@exämple.com']);
      assert.equal(parsed.subject, subject);
      assert.equal(parsed.text?.trimEnd(), text);
      assert.equal(parsed.to && !Array.isArray(parsed.to) ? parsed.to.value[0]?.name : undefined, 'Zoë Ünï');
    });

    test('from defaults to MAILROOM_FROM when omitted', async () => {
      const id = await t.send(EMAIL);
      const view = await t.waitForStatus(id, 'sent');
      assert.equal(view.from, '"Notifications" <notify@mailroom.test>');
      assert.match(view.message_id, /@mailroom\.test>$/);
      const { message, parsed } = await receivedMessage(t, view.message_id);
      assert.equal(message.envelope.from, 'notify@mailroom.test');
      assert.deepEqual(parsed.from?.value, [{ address: 'notify@mailroom.test', name: 'Notifications' }]);
    });

    test('limits are inclusive: 50 recipients and a 254-octet address are accepted', async () => {
      const to = Array.from({ length: 49 }, (_, i) => `r${i}@example.com`);
      // The sink's SMTP server takes addresses up to 253 octets, so the delivered one is 253 long.
      const address253 = `${'a'.repeat(64)}@${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(56)}.com`;
      assert.equal(address253.length, 253);
      const id = await t.send({ ...EMAIL, to, bcc: address253 });
      const view = await t.waitForStatus(id, 'sent');
      const { message } = await receivedMessage(t, view.message_id);
      assert.equal(message.envelope.to.length, 50);
      assert.ok(message.envelope.to.includes(address253));

      const address254 = `${'a'.repeat(64)}@${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(57)}.com`;
      assert.equal(address254.length, 254);
      const response = await t.request('POST', '/v1/emails', {
        ...EMAIL,
        to: address254,
        send_at: new Date(Date.now() + 3600_000).toISOString(),
      });
      assert.equal(response.statusCode, 202, response.body);
      const scheduled = (
        await t.request('GET', `/v1/emails/${(response.json() as { id: string }).id}`)
      ).json() as EmailView;
      assert.deepEqual(scheduled.to, [address254]);
    });
  });

  describe('Idempotency-Key', () => {
    test('the same key and body twice: one job, one message, the repeat marked as replayed', async () => {
      const before = await jobCount(t);
      const body = { ...EMAIL, subject: 'idem-twice' };
      const headers = { 'idempotency-key': 'order-1001' };
      const first = await t.request('POST', '/v1/emails', body, headers);
      const second = await t.request('POST', '/v1/emails', body, headers);
      assert.equal(first.statusCode, 202, first.body);
      assert.equal(second.statusCode, 202, second.body);
      const id = (first.json() as { id: string }).id;
      assert.equal((second.json() as { id: string }).id, id);
      assert.equal(first.headers['idempotent-replayed'], undefined);
      assert.equal(second.headers['idempotent-replayed'], 'true');
      assert.equal(await jobCount(t), before + 1);

      const view = await t.waitForStatus(id, 'sent');
      await receivedMessage(t, view.message_id);
      // After the send, the key still answers with the same job (now sent).
      const third = await t.request('POST', '/v1/emails', body, headers);
      assert.equal(third.statusCode, 202);
      assert.deepEqual(third.json(), { id, status: 'queued' });
      assert.equal(await jobCount(t), before + 1);
      assert.equal(t.sink.messages().filter((message) => message.messageId === view.message_id).length, 1);
    });

    test('the same key with a different body is 409 IDEMPOTENCY_CONFLICT', async () => {
      const headers = { 'idempotency-key': 'order-1002' };
      const id = await t.send({ ...EMAIL, subject: 'idem-conflict' }, headers);
      const response = await refused(t, { ...EMAIL, subject: 'idem-conflict, changed' }, headers);
      assert.equal(response.statusCode, 409);
      const error = errorOf(response);
      assert.equal(error.code, 'IDEMPOTENCY_CONFLICT');
      assert.ok(error.message.includes(id), error.message);
    });

    test('key order in the JSON does not make a different request', async () => {
      const headers = { 'idempotency-key': 'order-1003' };
      const before = await jobCount(t);
      const first = await t.request(
        'POST',
        '/v1/emails',
        '{"to":"alice@example.com","subject":"idem-order","text":"x","metadata":{"a":"1","b":"2"}}',
        headers,
      );
      const second = await t.request(
        'POST',
        '/v1/emails',
        '{"metadata":{"b":"2","a":"1"},"text":"x","subject":"idem-order","to":"alice@example.com"}',
        headers,
      );
      assert.equal(first.statusCode, 202, first.body);
      assert.equal(second.statusCode, 202, second.body);
      assert.equal((second.json() as { id: string }).id, (first.json() as { id: string }).id);
      assert.equal(second.headers['idempotent-replayed'], 'true');
      assert.equal(await jobCount(t), before + 1);
    });

    test('20 concurrent identical requests with one key make one job and one message', async () => {
      const before = await jobCount(t);
      const body = { ...EMAIL, subject: 'idem-concurrent' };
      const responses = await Promise.all(
        Array.from({ length: 20 }, () =>
          t.request('POST', '/v1/emails', body, { 'idempotency-key': 'order-concurrent' }),
        ),
      );
      for (const response of responses) assert.equal(response.statusCode, 202, response.body);
      const ids = new Set(responses.map((response) => (response.json() as { id: string }).id));
      assert.equal(ids.size, 1, `one id for all: ${[...ids].join(', ')}`);
      const replayed = responses.filter((response) => response.headers['idempotent-replayed'] === 'true');
      assert.equal(replayed.length, 19);
      assert.equal(await jobCount(t), before + 1);

      const view = await t.waitForStatus([...ids][0]!, 'sent');
      await receivedMessage(t, view.message_id);
      await waitFor('the worker to be idle', () => t.app.worker!.activeCount === 0);
      const withSubject = t.sink.messages().filter((message) => message.raw.includes('idem-concurrent'));
      assert.equal(withSubject.length, 1);
    });

    test('a key longer than 256 characters is refused; 256 is accepted', async () => {
      const response = await refused(t, EMAIL, { 'idempotency-key': 'k'.repeat(257) });
      assertValidation(response, [['Idempotency-Key', 'max_length']]);
      const control = await refused(t, EMAIL, { 'idempotency-key': 'bad\u0001key' });
      assertValidation(control, [['Idempotency-Key', 'max_length']]);
      const before = await jobCount(t);
      await t.send({ ...EMAIL, subject: 'idem-256' }, { 'idempotency-key': 'k'.repeat(256) });
      assert.equal(await jobCount(t), before + 1);
    });

    test('a different key makes a different job', async () => {
      const body = { ...EMAIL, subject: 'idem-different' };
      const a = await t.send(body, { 'idempotency-key': 'order-a' });
      const b = await t.send(body, { 'idempotency-key': 'order-b' });
      const none = await t.send(body);
      assert.notEqual(a, b);
      assert.notEqual(none, a);
      assert.notEqual(none, b);
    });
  });

  describe('docs, health and dead letters', () => {
    test('GET /docs/json is an OpenAPI document with the v1 routes', async () => {
      const response = await t.request('GET', '/docs/json');
      assert.equal(response.statusCode, 200);
      const doc = response.json() as { openapi: string; paths: Record<string, Record<string, unknown>> };
      assert.match(doc.openapi, /^3\./);
      assert.ok(doc.paths['/v1/emails'], 'documents /v1/emails');
      assert.ok(doc.paths['/v1/emails']!['post'], 'documents POST /v1/emails');
      assert.ok(doc.paths['/v1/emails/{id}'], 'documents /v1/emails/{id}');
      assert.ok(doc.paths['/api/emails'], 'documents the compatibility route');
    });

    test('GET /docs serves the documentation page', async () => {
      let response = await t.request('GET', '/docs');
      if (response.statusCode === 302) {
        const location = String(response.headers.location);
        assert.match(location, /docs/);
        response = await t.request('GET', location.startsWith('/') ? location : `/docs/${location}`);
      }
      assert.equal(response.statusCode, 200);
      assert.match(String(response.headers['content-type']), /text\/html/);
      assert.match(response.body, /swagger/i);
    });

    test('/health and /ready', async () => {
      const health = await t.request('GET', '/health');
      assert.equal(health.statusCode, 200);
      assert.deepEqual(health.json(), { status: 'ok' });
      const ready = await t.request('GET', '/ready');
      assert.equal(ready.statusCode, 200);
      const body = ready.json() as { status: string; components: Record<string, { ok: boolean }> };
      assert.equal(body.status, 'ready');
      for (const name of ['store', 'broker', 'worker', 'transport'])
        assert.equal(body.components[name]?.ok, true, `${name}: ${JSON.stringify(body.components[name])}`);
    });

    test('replaying an unknown dead letter is 404; a bad replay-all body is 400', async () => {
      const id = '00000000-0000-7000-8000-000000000001';
      const one = await t.request('POST', `/v1/dead-letters/${id}/replay`);
      assert.equal(one.statusCode, 404);
      assert.equal(errorOf(one).code, 'NOT_FOUND');

      const unknown = await t.request('POST', '/v1/dead-letters/replay', { reasons: 'max_attempts' });
      const details = assertValidation(unknown, [['reasons', 'unknown_field']]);
      assert.equal(details.length, 1);
      assertValidation(await t.request('POST', '/v1/dead-letters/replay', { reason: 'bored' }), [
        ['reason', 'enum'],
      ]);
      assertValidation(await t.request('POST', '/v1/dead-letters/replay', { since: 'yesterday' }), [
        ['since', 'datetime'],
      ]);
      assertValidation(await t.request('POST', '/v1/dead-letters/replay', '[]'), [['body', 'type']]);
      const nothing = await t.request('POST', '/v1/dead-letters/replay', {});
      assert.equal(nothing.statusCode, 202);
      assert.deepEqual(nothing.json(), { replayed: 0, ids: [] });
    });
  });
});

describe('v1 API with MAILROOM_MAX_MESSAGE_BYTES=2048', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp({ MAILROOM_MAX_MESSAGE_BYTES: '2048' });
  });
  after(() => t.stop());

  test('an email over the limit but under the HTTP body limit is 413 PAYLOAD_TOO_LARGE', async () => {
    const response = await refused(t, { ...SAMPLE_EMAIL, html: undefined, text: 'x'.repeat(3000) });
    assert.equal(response.statusCode, 413, response.body);
    const error = errorOf(response);
    assert.equal(error.code, 'PAYLOAD_TOO_LARGE');
    assert.ok(
      error.details?.some((problem) => problem.field === 'body' && problem.rule === 'too_large'),
      JSON.stringify(error.details),
    );
  });

  test('the limit counts UTF-8 bytes, not characters', async () => {
    // 700 characters, 2100 bytes.
    const response = await refused(t, { ...EMAIL, text: '€'.repeat(700) });
    assert.equal(response.statusCode, 413, response.body);
    assert.equal(errorOf(response).code, 'PAYLOAD_TOO_LARGE');
    await t.send({ ...EMAIL, text: '€'.repeat(600) });
  });

  test('a request far over the HTTP body limit is 413 PAYLOAD_TOO_LARGE', async () => {
    const response = await refused(t, { ...EMAIL, text: 'x'.repeat(3 * 1024 * 1024) });
    assert.equal(response.statusCode, 413, response.body);
    assert.equal(errorOf(response).code, 'PAYLOAD_TOO_LARGE');
  });

  test('an email under the limit is accepted and delivered', async () => {
    const id = await t.send({ ...EMAIL, text: 'y'.repeat(1500) });
    const view = await t.waitForStatus(id, 'sent');
    const found = t.sink.messages().filter((message) => message.messageId === view.message_id);
    assert.equal(found.length, 1);
    const parsed = await simpleParser(found[0]!.raw);
    assert.equal(parsed.text?.trimEnd(), 'y'.repeat(1500));
  });
});

describe('GET /v1/emails filters and pages', () => {
  let t: TestApp;
  /** In creation order. */
  const ids: Record<string, string> = {};
  let mark = '';
  const inAnHour = () => new Date(Date.now() + 3600_000).toISOString();

  const listIds = async (query: string): Promise<string[]> => {
    const response = await t.request('GET', `/v1/emails?${query}`);
    assert.equal(response.statusCode, 200, response.body);
    const page = response.json() as ListPage;
    assert.equal(page.next_cursor, null, `one page for ${query}`);
    return page.data.map((email) => email.id);
  };
  const named = (...names: string[]) => names.map((name) => ids[name]!);

  before(async () => {
    t = await startTestApp();
    await t.sink.setBehaviour((ctx) => (ctx.rcpt === 'ivan@example.com' ? 'permfail' : 'accept'));
    ids.a1 = await t.send({ ...EMAIL, to: 'alice@example.com', tags: ['welcome'] });
    ids.a2 = await t.send({
      ...EMAIL,
      to: 'bob@example.com',
      cc: 'Carol <Carol@Example.com>',
      tags: ['receipt'],
    });
    ids.a3 = await t.send({
      ...EMAIL,
      to: 'dave@example.com',
      bcc: 'eve@example.com',
      tags: ['receipt', 'eu'],
      send_at: inAnHour(),
    });
    const latest = Math.max(...(await listAll(t)).map((email) => Date.parse(email.created_at)));
    await waitFor('the clock to pass the first emails', () => Date.now() > latest);
    mark = new Date().toISOString();
    ids.b4 = await t.send({ ...EMAIL, to: 'frank@example.com', tags: ['welcome'], send_at: inAnHour() });
    ids.b5 = await t.send({ ...EMAIL, to: 'grace@example.com', send_at: inAnHour() });
    ids.b6 = await t.send({ ...EMAIL, to: 'heidi@example.com', tags: ['receipt'] });
    ids.b7 = await t.send({ ...EMAIL, to: 'ivan@example.com' });
    for (const name of ['b4', 'b5']) {
      const cancel = await t.request('POST', `/v1/emails/${ids[name]}/cancel`);
      assert.equal(cancel.statusCode, 200, cancel.body);
    }
    for (const name of ['a1', 'a2', 'b6']) await t.waitForStatus(ids[name]!, 'sent');
    await t.waitForStatus(ids.b7!, 'failed');
  });
  after(() => t.stop());

  test('without filters: every email, newest first', async () => {
    const all = await listAll(t);
    assert.deepEqual(
      all.map((email) => email.id),
      named('b7', 'b6', 'b5', 'b4', 'a3', 'a2', 'a1'),
    );
    const times = all.map((email) => Date.parse(email.created_at));
    assert.deepEqual(
      times,
      [...times].sort((x, y) => y - x),
    );
  });

  test('status=', async () => {
    assert.deepEqual(await listIds('status=sent'), named('b6', 'a2', 'a1'));
    assert.deepEqual(await listIds('status=scheduled'), named('a3'));
    assert.deepEqual(await listIds('status=cancelled'), named('b5', 'b4'));
    assert.deepEqual(await listIds('status=failed'), named('b7'));
    assert.deepEqual(await listIds('status=queued'), []);
  });

  test('to= matches any recipient (to, cc, bcc), case-insensitively', async () => {
    assert.deepEqual(await listIds('to=alice@example.com'), named('a1'));
    assert.deepEqual(await listIds(`to=${encodeURIComponent('CAROL@EXAMPLE.COM')}`), named('a2'));
    assert.deepEqual(await listIds(`to=${encodeURIComponent('Eve@Example.com')}`), named('a3'));
    assert.deepEqual(await listIds('to=nobody@example.com'), []);
  });

  test('tag=', async () => {
    assert.deepEqual(await listIds('tag=receipt'), named('b6', 'a3', 'a2'));
    assert.deepEqual(await listIds('tag=welcome'), named('b4', 'a1'));
    assert.deepEqual(await listIds('tag=eu'), named('a3'));
    assert.deepEqual(await listIds('tag=none'), []);
  });

  test('since= (inclusive) and until= (exclusive), alone and combined', async () => {
    const at = encodeURIComponent(mark);
    assert.deepEqual(await listIds(`since=${at}`), named('b7', 'b6', 'b5', 'b4'));
    assert.deepEqual(await listIds(`until=${at}`), named('a3', 'a2', 'a1'));
    assert.deepEqual(await listIds(`since=${at}&tag=receipt`), named('b6'));
    assert.deepEqual(await listIds(`until=${at}&status=sent`), named('a2', 'a1'));
    assert.deepEqual(await listIds(`since=${at}&until=${at}`), []);
  });

  test('limit=2 with next_cursor visits every email once, newest first, and ends with null', async () => {
    const seen: string[] = [];
    const sizes: number[] = [];
    let cursor: string | null = null;
    do {
      const url: string = `/v1/emails?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
      const response = await t.request('GET', url);
      assert.equal(response.statusCode, 200, response.body);
      const page = response.json() as ListPage;
      sizes.push(page.data.length);
      seen.push(...page.data.map((email) => email.id));
      cursor = page.next_cursor;
      assert.ok(sizes.length < 10, 'paging ends');
    } while (cursor !== null);
    assert.deepEqual(sizes, [2, 2, 2, 1]);
    assert.deepEqual(seen, named('b7', 'b6', 'b5', 'b4', 'a3', 'a2', 'a1'));
  });

  test('paging with a filter; a last full page has no cursor', async () => {
    const first = (await t.request('GET', '/v1/emails?tag=receipt&limit=2')).json() as ListPage;
    assert.deepEqual(
      first.data.map((email) => email.id),
      named('b6', 'a3'),
    );
    assert.equal(typeof first.next_cursor, 'string');
    const second = (
      await t.request(
        'GET',
        `/v1/emails?tag=receipt&limit=2&cursor=${encodeURIComponent(first.next_cursor!)}`,
      )
    ).json() as ListPage;
    assert.deepEqual(
      second.data.map((email) => email.id),
      named('a2'),
    );
    assert.equal(second.next_cursor, null);
    assert.deepEqual(await listIds('status=sent&limit=3'), named('b6', 'a2', 'a1'));
  });

  test('bad query values are 400 with the field named', async () => {
    const cases: [string, string][] = [
      ['limit=0', 'limit'],
      ['limit=abc', 'limit'],
      ['limit=101', 'limit'],
      ['limit=-1', 'limit'],
      ['status=bogus', 'status'],
      ['since=yesterday', 'since'],
      ['until=2030-01-01', 'until'],
      [`to=${'a'.repeat(255)}`, 'to'],
    ];
    for (const [query, field] of cases) {
      const response = await t.request('GET', `/v1/emails?${query}`);
      assert.equal(response.statusCode, 400, `${query}: ${response.body}`);
      const error = errorOf(response);
      assert.equal(error.code, 'VALIDATION_FAILED', query);
      assert.ok(
        error.details?.some((problem) => problem.field === field),
        `${query} names ${field}: ${JSON.stringify(error.details)}`,
      );
    }
    assertValidation(await t.request('GET', '/v1/emails?colour=red'), [['colour', 'unknown_field']]);
  });

  test('a cursor this API did not make is 400', async () => {
    const forged = Buffer.from('12:not-a-uuid', 'utf8').toString('base64url');
    for (const cursor of ['garbage', '!!!', forged, '']) {
      const details = assertValidation(
        await t.request('GET', `/v1/emails?cursor=${encodeURIComponent(cursor)}`),
        [['cursor', 'cursor']],
      );
      assert.equal(details.length, 1, JSON.stringify(details));
    }
    // GET /v1/dead-letters has no paging: a cursor there is an unknown field, not ignored.
    assertValidation(await t.request('GET', '/v1/dead-letters?cursor=garbage'), [
      ['cursor', 'unknown_field'],
    ]);
  });
});

describe('the backlog limit', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp({ MAILROOM_MAX_BACKLOG: '3' }, new SmtpSink({ behaviour: 'stall' }));
  });
  after(() => t.stop());

  test('past MAILROOM_MAX_BACKLOG active jobs, POST answers 503 BACKLOG_FULL with Retry-After', async () => {
    const accepted: string[] = [];
    for (let i = 0; i < 3; i++) accepted.push(await t.send({ ...EMAIL, subject: `backlog ${i}` }));
    await t.sink.waitForAttempts('stall', 1, 5000);
    const full = await waitFor('the backlog to be full', async () => {
      const response = await t.request('POST', '/v1/emails', EMAIL);
      if (response.statusCode === 202) accepted.push((response.json() as { id: string }).id);
      assert.ok(accepted.length <= 4, `accepted ${accepted.length} jobs with a backlog limit of 3`);
      return response.statusCode === 503 ? response : undefined;
    });
    const error = errorOf(full);
    assert.equal(error.code, 'BACKLOG_FULL');
    assert.equal(full.headers['retry-after'], '5');
    assert.equal((await listAll(t)).length, accepted.length, 'the refused request wrote no job');

    // The compatibility route is held back the same way.
    const compat = await t.request('POST', '/api/emails', { to: 'a@example.com', subject: 's', body: 'b' });
    assert.equal(compat.statusCode, 503);
    assert.equal(errorOf(compat).code, 'BACKLOG_FULL');

    // Reads still work while the backlog is full.
    const view = (await t.request('GET', `/v1/emails/${accepted[0]}`)).json() as EmailView;
    assert.equal(view.id, accepted[0]);
  });
});
