import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { create, type MessageInitShape, toBinary } from '@bufbuild/protobuf';
import { ExtData, encode as encodeMsgpack } from '@msgpack/msgpack';
import type { DecodeResult, JobMessage } from '../broker/broker.js';
import type { ValidationContext } from '../domain/validate-email.js';
import { EmailJobSchema, Priority as WirePriority } from './gen/email_pb.js';
import { maxBodyBytes, PROTOBUF_CONTENT_TYPE, WireCodec } from './wire-codec.js';

const NOW = Date.parse('2026-03-01T12:00:00Z');
const DAY_MS = 86_400_000;
const TTL_MS = DAY_MS;
const TRACEPARENT = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function validation(overrides: Partial<ValidationContext> = {}): ValidationContext {
  return {
    defaultFrom: 'Mailroom <noreply@mailroom.test>',
    maxRecipients: 50,
    maxMessageBytes: 64 * 1024,
    maxScheduleAheadMs: 366 * DAY_MS,
    now: NOW,
    ...overrides,
  };
}

function codec(overrides: Partial<ValidationContext> = {}): WireCodec {
  return new WireCodec({ validation: () => validation(overrides), idempotencyTtlMs: TTL_MS });
}

const wire = codec();

type EmailJobInit = MessageInitShape<typeof EmailJobSchema>;

function protobuf(init: EmailJobInit): Uint8Array {
  return toBinary(EmailJobSchema, create(EmailJobSchema, init));
}

function json(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

function msgpack(value: unknown): Uint8Array {
  return encodeMsgpack(value);
}

const EMAIL: EmailJobInit = {
  id: 'order-1042.receipt',
  from: 'Shop <shop@example.com>',
  to: ['ada@example.org'],
  subject: 'Your receipt',
  text: 'Thanks!',
};

/** EMAIL in the protobuf JSON mapping, lowerCamelCase. */
const EMAIL_JSON = {
  id: 'order-1042.receipt',
  from: 'Shop <shop@example.com>',
  to: ['ada@example.org'],
  subject: 'Your receipt',
  text: 'Thanks!',
};

function ok(result: DecodeResult): JobMessage {
  if (!result.ok) assert.fail(`expected a message, got ${result.reason}: ${result.error}`);
  return result.message;
}

/** Asserts invalid_message with a problem `field (rule)`. */
function invalid(result: DecodeResult, field: string, rule: string): string {
  if (result.ok) assert.fail(`expected invalid_message for ${field} (${rule}), got a message`);
  assert.equal(result.reason, 'invalid_message', result.error);
  assert.ok(result.error.includes(`${field} (${rule})`), `"${field} (${rule})" not in: ${result.error}`);
  return result.error;
}

function undecodable(result: DecodeResult, ...fragments: string[]): string {
  if (result.ok) assert.fail('expected undecodable, got a message');
  assert.equal(result.reason, 'undecodable', result.error);
  for (const fragment of fragments) {
    assert.ok(result.error.includes(fragment), `"${fragment}" not in: ${result.error}`);
  }
  return result.error;
}

/** A seeded generator (mulberry32), so the random inputs are the same on every run. */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('encode', () => {
  test('a pointer in protobuf: id, priority and the trace context, nothing else', () => {
    const encoded = wire.encode({
      jobId: '0197a3c2-5f1e-7d4a-9b2c-1a2b3c4d5e6f',
      priority: 'high',
      headers: { traceparent: TRACEPARENT, tracestate: 'vendor=abc', 'x-other': 'dropped' },
    });
    assert.equal(encoded.contentType, PROTOBUF_CONTENT_TYPE);
    assert.deepEqual(ok(wire.decode(encoded.body, encoded.contentType)), {
      jobId: '0197a3c2-5f1e-7d4a-9b2c-1a2b3c4d5e6f',
      priority: 'high',
      headers: { traceparent: TRACEPARENT, tracestate: 'vendor=abc' },
    });
  });

  test('every priority round-trips', () => {
    for (const priority of ['high', 'normal', 'low'] as const) {
      const encoded = wire.encode({ jobId: 'job-1', priority, headers: {} });
      assert.equal(ok(wire.decode(encoded.body, encoded.contentType)).priority, priority);
    }
  });

  test('newJob is not encoded: what Mailroom publishes points at a committed job', () => {
    const decoded = ok(wire.decode(protobuf(EMAIL), PROTOBUF_CONTENT_TYPE));
    assert.ok(decoded.newJob);
    const again = wire.encode(decoded);
    const pointer = ok(wire.decode(again.body, again.contentType));
    assert.equal(pointer.newJob, undefined);
    assert.equal(pointer.jobId, 'order-1042.receipt');
  });
});

describe('a new email', () => {
  test('becomes a NewJob as the API builds one', () => {
    const sendAt = NOW + 2 * DAY_MS;
    const message = ok(
      wire.decode(
        protobuf({
          ...EMAIL,
          idempotencyKey: 'receipt:1042',
          cc: ['Bob <bob@example.org>'],
          replyTo: ['support@example.com'],
          html: '<p>Thanks!</p>',
          headers: { 'X-Campaign': 'receipts' },
          tags: ['receipt'],
          metadata: { order: '1042' },
          priority: WirePriority.HIGH,
          sendAt: { seconds: BigInt(sendAt / 1000), nanos: 0 },
          traceContext: { traceparent: TRACEPARENT },
        }),
        PROTOBUF_CONTENT_TYPE,
      ),
    );
    assert.equal(message.jobId, 'order-1042.receipt');
    assert.equal(message.priority, 'high');
    assert.deepEqual(message.headers, { traceparent: TRACEPARENT });
    const job = message.newJob!;
    assert.equal(job.id, 'order-1042.receipt');
    assert.equal(job.messageId, '<order-1042.receipt@example.com>');
    assert.equal(job.createdAt, NOW);
    assert.equal(job.sendAt, sendAt);
    assert.equal(job.priority, 'high');
    assert.deepEqual(job.tags, ['receipt']);
    assert.deepEqual(job.metadata, { order: '1042' });
    assert.deepEqual(job.content, {
      from: { address: 'shop@example.com', name: 'Shop' },
      to: [{ address: 'ada@example.org' }],
      cc: [{ address: 'bob@example.org', name: 'Bob' }],
      bcc: [],
      replyTo: [{ address: 'support@example.com' }],
      subject: 'Your receipt',
      text: 'Thanks!',
      html: '<p>Thanks!</p>',
      headers: { 'X-Campaign': 'receipts' },
    });
    assert.equal(job.idempotency?.scope, 'broker');
    assert.equal(job.idempotency?.key, 'receipt:1042');
    assert.equal(job.idempotency?.notBefore, NOW - TTL_MS);
    assert.match(job.idempotency?.requestHash ?? '', /^[0-9a-f]{64}$/);
  });

  test('an idempotency key without an id: a fresh UUIDv7, the default sender', () => {
    const job = ok(
      wire.decode(
        json({ idempotencyKey: 'k-1', to: ['ada@example.org'], subject: 'Hi', text: 'x' }),
        'application/json',
      ),
    ).newJob!;
    assert.match(job.id, UUID_V7);
    assert.deepEqual(job.content.from, { address: 'noreply@mailroom.test', name: 'Mailroom' });
    assert.equal(job.messageId, `<${job.id}@mailroom.test>`);
    assert.equal(job.priority, 'normal');
  });

  test('an id without a key: no idempotency claim (the id alone makes a republish a no-op)', () => {
    const job = ok(wire.decode(protobuf(EMAIL), PROTOBUF_CONTENT_TYPE)).newJob!;
    assert.equal(job.idempotency, undefined);
  });

  test('the same content hashes the same in every encoding, and other content differently', () => {
    const withKey = { ...EMAIL_JSON, idempotencyKey: 'k', tags: ['a', 'b'], metadata: { y: '2', x: '1' } };
    const hashes = [
      wire.decode(
        protobuf({ ...EMAIL, idempotencyKey: 'k', tags: ['a', 'b'], metadata: { x: '1', y: '2' } }),
        PROTOBUF_CONTENT_TYPE,
      ),
      wire.decode(json(withKey), 'application/json'),
      wire.decode(msgpack(withKey), 'application/msgpack'),
      // A republish carries a trace context of its own: not part of the content.
      wire.decode(json({ ...withKey, traceContext: { traceparent: TRACEPARENT } }), 'application/json'),
    ].map((result) => ok(result).newJob?.idempotency?.requestHash);
    assert.equal(new Set(hashes).size, 1, hashes.join(' '));
    const other = ok(wire.decode(json({ ...withKey, subject: 'Other' }), 'application/json'));
    assert.notEqual(other.newJob?.idempotency?.requestHash, hashes[0]);
  });

  test('send_at in the past means now; priority unspecified means normal', () => {
    const message = ok(
      wire.decode(
        json({ ...EMAIL_JSON, sendAt: '2020-01-01T00:00:00Z', priority: 'PRIORITY_UNSPECIFIED' }),
        'application/json',
      ),
    );
    assert.equal(message.newJob?.sendAt, undefined);
    assert.equal(message.priority, 'normal');
  });

  test('trace context: names in any case; malformed values and other keys are dropped', () => {
    const message = ok(
      wire.decode(
        protobuf({
          ...EMAIL,
          traceContext: { TraceParent: TRACEPARENT, tracestate: 'a\u0001b', baggage: 'k=v' },
        }),
        PROTOBUF_CONTENT_TYPE,
      ),
    );
    assert.deepEqual(message.headers, { traceparent: TRACEPARENT });
    const bad = ok(
      wire.decode(protobuf({ ...EMAIL, traceContext: { traceparent: 'nonsense' } }), PROTOBUF_CONTENT_TYPE),
    );
    assert.deepEqual(bad.headers, {});
  });
});

describe('content types', () => {
  test('protobuf, JSON and MessagePack under every accepted name, parameters and case ignored', () => {
    const cases: [string, Uint8Array][] = [
      ['application/x-protobuf', protobuf(EMAIL)],
      ['application/protobuf', protobuf(EMAIL)],
      ['Application/Vnd.Google.Protobuf; proto=mailroom.v1.EmailJob', protobuf(EMAIL)],
      ['application/json', json(EMAIL_JSON)],
      ['APPLICATION/JSON; charset=utf-8', json(EMAIL_JSON)],
      ['application/msgpack', msgpack(EMAIL_JSON)],
      ['application/x-msgpack', msgpack(EMAIL_JSON)],
      [' application/vnd.msgpack ', msgpack(EMAIL_JSON)],
    ];
    for (const [contentType, body] of cases) {
      const message = ok(wire.decode(body, contentType));
      assert.equal(message.newJob?.content.subject, 'Your receipt', contentType);
    }
  });

  test('JSON takes the original field names as well as lowerCamelCase', () => {
    const body = json({
      id: 'x1',
      reply_to: ['a@example.org'],
      idempotency_key: 'k',
      to: ['b@example.org'],
      subject: 's',
      text: 't',
      send_at: '2026-03-02T00:00:00+01:00',
    });
    const job = ok(wire.decode(body, 'application/json')).newJob!;
    assert.deepEqual(job.content.replyTo, [{ address: 'a@example.org' }]);
    assert.equal(job.idempotency?.key, 'k');
    assert.equal(job.sendAt, Date.parse('2026-03-01T23:00:00Z'));
  });

  test('an unknown content type is undecodable, naming it and the accepted ones', () => {
    undecodable(
      wire.decode(json(EMAIL_JSON), 'text/plain'),
      '"text/plain"',
      'application/json',
      'application/x-protobuf',
      'application/msgpack',
    );
  });

  test('MessagePack bin holding UTF-8 is read as a string', () => {
    const body = msgpack({ ...EMAIL_JSON, subject: new TextEncoder().encode('Bin subject') });
    assert.equal(ok(wire.decode(body, 'application/msgpack')).newJob?.content.subject, 'Bin subject');
  });
});

describe('sniffing, without a content type', () => {
  for (const contentType of [undefined, '', '  ']) {
    test(`reads all three encodings (content type ${JSON.stringify(contentType)})`, () => {
      assert.equal(ok(wire.decode(protobuf(EMAIL), contentType)).newJob?.content.subject, 'Your receipt');
      assert.equal(ok(wire.decode(json(EMAIL_JSON), contentType)).newJob?.content.subject, 'Your receipt');
      assert.equal(ok(wire.decode(msgpack(EMAIL_JSON), contentType)).newJob?.content.subject, 'Your receipt');
    });
  }

  test('JSON after whitespace', () => {
    const body = new TextEncoder().encode(` \r\n\t${JSON.stringify(EMAIL_JSON)}`);
    assert.equal(ok(wire.decode(body, undefined)).newJob?.content.subject, 'Your receipt');
  });

  test('MessagePack with 16 keys or more (a map16 marker)', () => {
    const all = {
      ...EMAIL_JSON,
      idempotencyKey: 'k',
      cc: ['c@example.org'],
      bcc: ['d@example.org'],
      replyTo: ['e@example.org'],
      html: '<p>x</p>',
      headers: { 'X-A': 'b' },
      tags: ['t'],
      metadata: { m: 'n' },
      priority: 'PRIORITY_LOW',
      sendAt: '2026-03-02T00:00:00Z',
      traceContext: { traceparent: TRACEPARENT },
    };
    const body = msgpack(all);
    assert.equal(body[0], 0xde);
    assert.equal(ok(wire.decode(body, undefined)).priority, 'low');
  });

  test('protobuf that looks like JSON or MessagePack at first is still read as protobuf', () => {
    // 0x0A (field 1) then the length 123 = "{": JSON fails, protobuf reads it (and refuses the long id).
    const longId = protobuf({ id: 'a'.repeat(123) });
    assert.deepEqual([...longId.subarray(0, 2)], [0x0a, 0x7b]);
    invalid(wire.decode(longId, undefined), 'id', 'max_length');
    // Field 16 first: its tag 0x82 0x01 is a fixmap whose first key is a number.
    const traceOnly = protobuf({ traceContext: { traceparent: TRACEPARENT } });
    assert.equal(traceOnly[0], 0x82);
    invalid(wire.decode(traceOnly, undefined), 'id', 'required');
  });

  test('bytes no encoding reads: undecodable, saying what was tried', () => {
    undecodable(
      wire.decode(new Uint8Array([0x82, 0xff, 0xff]), undefined),
      'no content type',
      'as msgpack',
      'as protobuf',
    );
    undecodable(wire.decode(new TextEncoder().encode('{"to": '), undefined), 'no content type', 'as json');
  });
});

describe('the MessagePack compatibility shape {uuid, email, subject, body}', () => {
  const LEGACY = {
    uuid: '5b1e2c9a-7f3d-4e8b-9a6c-2d4f8e1b3a7c',
    email: 'ada@example.org',
    subject: 'Your receipt',
    body: '<p>Thanks!</p>',
  };

  test('an email: uuid is the idempotency key, email the one recipient, body the HTML, the default sender', () => {
    for (const contentType of ['application/msgpack', 'application/x-msgpack', undefined]) {
      const message = ok(wire.decode(msgpack(LEGACY), contentType));
      const job = message.newJob!;
      assert.match(job.id, UUID_V7, String(contentType));
      assert.equal(message.jobId, job.id);
      assert.equal(message.priority, 'normal');
      assert.deepEqual(job.content, {
        from: { address: 'noreply@mailroom.test', name: 'Mailroom' },
        to: [{ address: 'ada@example.org' }],
        cc: [],
        bcc: [],
        replyTo: [],
        subject: 'Your receipt',
        html: '<p>Thanks!</p>',
        headers: {},
      });
      assert.equal(job.idempotency?.scope, 'broker');
      assert.equal(job.idempotency?.key, LEGACY.uuid);
      assert.equal(job.idempotency?.notBefore, NOW - TTL_MS);
    }
  });

  test('keys in any order, strings as str or bin; the same as the EmailJob it stands for', () => {
    const reordered = msgpack({
      body: LEGACY.body,
      subject: new TextEncoder().encode(LEGACY.subject),
      email: LEGACY.email,
      uuid: LEGACY.uuid,
    });
    const legacy = ok(wire.decode(reordered, 'application/msgpack')).newJob!;
    const mapped = ok(
      wire.decode(
        msgpack({
          idempotencyKey: LEGACY.uuid,
          to: [LEGACY.email],
          subject: LEGACY.subject,
          html: LEGACY.body,
        }),
        'application/msgpack',
      ),
    ).newJob!;
    // A republish is the same request (a no-op); other content under the same uuid is a conflict.
    assert.equal(legacy.idempotency?.requestHash, mapped.idempotency?.requestHash);
    const other = ok(wire.decode(msgpack({ ...LEGACY, subject: 'Other' }), 'application/msgpack')).newJob!;
    assert.notEqual(other.idempotency?.requestHash, legacy.idempotency?.requestHash);
  });

  test('checked with the API rules, problems named after the shape’s keys', () => {
    invalid(
      wire.decode(msgpack({ ...LEGACY, email: 'ada at example.org' }), 'application/msgpack'),
      'email',
      'email',
    );
    invalid(wire.decode(msgpack({ ...LEGACY, email: '' }), 'application/msgpack'), 'email', 'email');
    invalid(wire.decode(msgpack({ ...LEGACY, uuid: '' }), 'application/msgpack'), 'uuid', 'required');
    invalid(wire.decode(msgpack({ ...LEGACY, uuid: ' padded ' }), 'application/msgpack'), 'uuid', 'pattern');
    invalid(wire.decode(msgpack({ ...LEGACY, body: '' }), 'application/msgpack'), 'body', 'body_required');
    invalid(
      wire.decode(msgpack({ ...LEGACY, subject: 'a\r\nBcc: x@example.org' }), 'application/msgpack'),
      'subject',
      'no_crlf',
    );
  });

  test('values must be strings', () => {
    invalid(
      wire.decode(msgpack({ ...LEGACY, email: ['ada@example.org'] }), 'application/msgpack'),
      'email',
      'type',
    );
    invalid(wire.decode(msgpack({ ...LEGACY, uuid: 42 }), 'application/msgpack'), 'uuid', 'type');
    invalid(wire.decode(msgpack({ ...LEGACY, body: null }), 'application/msgpack'), 'body', 'type');
  });

  test('exactly those four keys: with another key, or one missing, the EmailJob mapping refuses it', () => {
    const extra = invalid(
      wire.decode(msgpack({ ...LEGACY, from: 'shop@example.com' }), 'application/msgpack'),
      'uuid',
      'unknown_field',
    );
    assert.ok(extra.includes('email (unknown_field)'), extra);
    assert.ok(extra.includes('must have exactly those four keys'), extra);
    const { body: _body, ...missing } = LEGACY;
    invalid(wire.decode(msgpack(missing), 'application/msgpack'), 'email', 'unknown_field');
    // Keys that differ only in case are not the shape either.
    invalid(wire.decode(msgpack({ ...missing, Body: 'x' }), 'application/msgpack'), 'Body', 'unknown_field');
  });

  test('MessagePack only: the same object in JSON is refused', () => {
    const error = invalid(wire.decode(json(LEGACY), 'application/json'), 'uuid', 'unknown_field');
    assert.ok(!error.includes('four keys'), error);
  });
});

describe('pointers', () => {
  test('id only (or with priority and trace context): a job already in the store', () => {
    const message = ok(
      wire.decode(protobuf({ id: 'job-7', priority: WirePriority.LOW }), PROTOBUF_CONTENT_TYPE),
    );
    assert.deepEqual(message, { jobId: 'job-7', priority: 'low', headers: {} });
    assert.deepEqual(ok(wire.decode(json({ id: 'job-7' }), 'application/json')), {
      jobId: 'job-7',
      priority: 'normal',
      headers: {},
    });
  });

  test('without an id: invalid (an empty body included)', () => {
    invalid(wire.decode(protobuf({ priority: WirePriority.HIGH }), PROTOBUF_CONTENT_TYPE), 'id', 'required');
    invalid(wire.decode(new Uint8Array(0), PROTOBUF_CONTENT_TYPE), 'id', 'required');
    invalid(wire.decode(json({}), 'application/json'), 'id', 'required');
  });

  test('any other field makes it an email, checked as one', () => {
    const error = invalid(
      wire.decode(protobuf({ id: 'job-7', from: 'a@example.org' }), PROTOBUF_CONTENT_TYPE),
      'to',
      'required',
    );
    assert.ok(error.includes('subject (required)'), error);
    assert.ok(error.includes('text (body_required)'), error);
    invalid(
      wire.decode(protobuf({ id: 'job-7', idempotencyKey: 'k' }), PROTOBUF_CONTENT_TYPE),
      'to',
      'required',
    );
  });

  test('the id rule holds for pointers too', () => {
    invalid(wire.decode(protobuf({ id: '../admin' }), PROTOBUF_CONTENT_TYPE), 'id', 'pattern');
  });
});

describe('ids and idempotency keys', () => {
  test('neither: invalid, and the error says why', () => {
    const error = invalid(
      wire.decode(protobuf({ ...EMAIL, id: '' }), PROTOBUF_CONTENT_TYPE),
      'id',
      'required',
    );
    assert.ok(error.includes('set id or idempotency_key'), error);
    assert.ok(error.includes('at least once'), error);
  });

  test('ids: letters, digits and . _ - from a letter or digit, at most 64', () => {
    for (const id of ['a', 'A.b_c-9', '0197a3c2-5f1e-7d4a-9b2c-1a2b3c4d5e6f', 'x'.repeat(64)]) {
      assert.equal(ok(wire.decode(protobuf({ ...EMAIL, id }), PROTOBUF_CONTENT_TYPE)).jobId, id);
    }
    for (const id of ['a/b', '-a', '.a', 'a..b', 'a.', 'a:b', 'a b', 'é', 'a\r\nb', '<a>']) {
      invalid(wire.decode(protobuf({ ...EMAIL, id }), PROTOBUF_CONTENT_TYPE), 'id', 'pattern');
    }
    invalid(
      wire.decode(protobuf({ ...EMAIL, id: 'x'.repeat(65) }), PROTOBUF_CONTENT_TYPE),
      'id',
      'max_length',
    );
    invalid(
      wire.decode(protobuf({ ...EMAIL, id: 'x'.repeat(200) }), PROTOBUF_CONTENT_TYPE),
      'id',
      'max_length',
    );
  });

  test('keys: the API rule for Idempotency-Key', () => {
    invalid(
      wire.decode(protobuf({ ...EMAIL, idempotencyKey: 'k'.repeat(257) }), PROTOBUF_CONTENT_TYPE),
      'idempotency_key',
      'max_length',
    );
    invalid(
      wire.decode(protobuf({ ...EMAIL, idempotencyKey: 'a\nb' }), PROTOBUF_CONTENT_TYPE),
      'idempotency_key',
      'pattern',
    );
    invalid(
      wire.decode(protobuf({ ...EMAIL, idempotencyKey: ' padded' }), PROTOBUF_CONTENT_TYPE),
      'idempotency_key',
      'pattern',
    );
    assert.ok(
      ok(wire.decode(protobuf({ ...EMAIL, idempotencyKey: 'k'.repeat(256) }), PROTOBUF_CONTENT_TYPE)).newJob,
    );
  });
});

describe('the API rules', () => {
  const decodeJson = (fields: Record<string, unknown>) =>
    wire.decode(json({ ...EMAIL_JSON, ...fields }), 'application/json');

  test('CR/LF/NUL in subject and headers', () => {
    invalid(decodeJson({ subject: 'Hi\r\nBcc: victim@example.org' }), 'subject', 'no_crlf');
    invalid(decodeJson({ headers: { 'X-A': 'a\nb' } }), 'headers.X-A', 'no_crlf');
    invalid(
      wire.decode(protobuf({ ...EMAIL, subject: 'a\u0000b' }), PROTOBUF_CONTENT_TYPE),
      'subject',
      'no_crlf',
    );
  });

  test('51 recipients', () => {
    const to = Array.from({ length: 40 }, (_, i) => `r${i}@example.org`);
    const cc = Array.from({ length: 11 }, (_, i) => `c${i}@example.org`);
    invalid(decodeJson({ to, cc }), 'to', 'max_recipients');
    assert.ok(ok(decodeJson({ to, cc: cc.slice(1) })).newJob);
  });

  test('addresses are parsed strictly', () => {
    invalid(decodeJson({ to: ['ok@example.org', 'nodot@example'] }), 'to[1]', 'email');
    invalid(decodeJson({ from: 'Shop <shop@example.com> trailing' }), 'from', 'email');
    invalid(decodeJson({ cc: ['"quoted"@example.org'] }), 'cc[0]', 'email');
    invalid(decodeJson({ bcc: ['a@[127.0.0.1]'] }), 'bcc[0]', 'email');
  });

  test('reserved headers, tags, metadata', () => {
    invalid(decodeJson({ headers: { Subject: 'x' } }), 'headers.Subject', 'reserved_header');
    invalid(decodeJson({ tags: ['a b'] }), 'tags[0]', 'pattern');
    invalid(decodeJson({ metadata: { k: 'v'.repeat(1025) } }), 'metadata.k', 'max_length');
  });

  test('a body is required', () => {
    invalid(decodeJson({ text: '' }), 'text', 'body_required');
  });

  test('send_at: not too far ahead, and a real date-time', () => {
    invalid(decodeJson({ sendAt: '2027-06-01T00:00:00Z' }), 'send_at', 'too_far_ahead');
    invalid(decodeJson({ sendAt: 'tomorrow' }), 'send_at', 'datetime');
    invalid(decodeJson({ sendAt: 1772366400 }), 'send_at', 'type');
    invalid(
      wire.decode(protobuf({ ...EMAIL, sendAt: { seconds: 10n ** 15n } }), PROTOBUF_CONTENT_TYPE),
      'send_at',
      'datetime',
    );
    invalid(
      wire.decode(protobuf({ ...EMAIL, sendAt: { seconds: 1n, nanos: -1 } }), PROTOBUF_CONTENT_TYPE),
      'send_at',
      'datetime',
    );
  });

  test('priority: a Priority name or number', () => {
    assert.equal(ok(decodeJson({ priority: 3 })).priority, 'low');
    const error = invalid(decodeJson({ priority: 'high' }), 'priority', 'enum');
    assert.ok(error.includes('did you mean PRIORITY_HIGH?'), error);
    invalid(decodeJson({ priority: 9 }), 'priority', 'enum');
    invalid(
      wire.decode(protobuf({ ...EMAIL, priority: 7 as WirePriority }), PROTOBUF_CONTENT_TYPE),
      'priority',
      'enum',
    );
  });

  test('size: content over MAILROOM_MAX_MESSAGE_BYTES, and a body over the read limit', () => {
    const small = codec({ maxMessageBytes: 1024 });
    invalid(
      small.decode(json({ ...EMAIL_JSON, text: 'x'.repeat(2000) }), 'application/json'),
      'body',
      'too_large',
    );
    const limit = maxBodyBytes(1024);
    const huge = new Uint8Array(limit + 1).fill(0x20);
    const error = invalid(small.decode(huge, 'application/json'), 'body', 'too_large');
    assert.ok(error.includes(String(limit)), error);
    invalid(small.decode(huge, undefined), 'body', 'too_large');
  });

  test('many problems: the first ten, and how many more', () => {
    const to = Array.from({ length: 15 }, (_, i) => `bad${i}`);
    const error = invalid(decodeJson({ to }), 'to[0]', 'email');
    assert.match(error, /\(and \d+ more\)$/);
  });
});

describe('ugly inputs', () => {
  test('truncated protobuf', () => {
    const body = protobuf(EMAIL);
    undecodable(
      wire.decode(body.subarray(0, body.length - 3), 'application/x-protobuf'),
      'application/x-protobuf',
      'mailroom.v1.EmailJob',
    );
  });

  test('protobuf with invalid UTF-8 in a string', () => {
    undecodable(
      wire.decode(new Uint8Array([0x42, 0x02, 0xc3, 0x28]), PROTOBUF_CONTENT_TYPE),
      PROTOBUF_CONTENT_TYPE,
    );
  });

  test('protobuf with a field this Mailroom does not know', () => {
    // Field 100, varint 1: the tag is 100 << 3 = 0x320, as a varint 0xA0 0x06.
    const body = new Uint8Array([...protobuf(EMAIL), 0xa0, 0x06, 0x01]);
    invalid(wire.decode(body, PROTOBUF_CONTENT_TYPE), '#100', 'unknown_field');
  });

  test('JSON that does not parse, or is not UTF-8', () => {
    undecodable(
      wire.decode(new TextEncoder().encode('{"to": ['), 'application/json'),
      'application/json',
      'not valid JSON',
    );
    undecodable(wire.decode(new Uint8Array([0x7b, 0xff, 0x7d]), 'application/json'), 'not valid JSON');
  });

  test('JSON that is not an object', () => {
    for (const value of [[], null, 'text', 42]) {
      invalid(wire.decode(json(value), 'application/json'), 'body', 'type');
    }
  });

  test('JSON with wrong types', () => {
    invalid(wire.decode(json({ ...EMAIL_JSON, subject: 42 }), 'application/json'), 'subject', 'type');
    invalid(wire.decode(json({ ...EMAIL_JSON, to: 'ada@example.org' }), 'application/json'), 'to', 'type');
    invalid(
      wire.decode(json({ ...EMAIL_JSON, to: ['ada@example.org', 7] }), 'application/json'),
      'to[1]',
      'type',
    );
    invalid(wire.decode(json({ ...EMAIL_JSON, to: [null] }), 'application/json'), 'to[0]', 'type');
    invalid(wire.decode(json({ ...EMAIL_JSON, headers: ['X-A: b'] }), 'application/json'), 'headers', 'type');
    invalid(
      wire.decode(json({ ...EMAIL_JSON, metadata: { n: 1 } }), 'application/json'),
      'metadata.n',
      'type',
    );
    invalid(wire.decode(json({ ...EMAIL_JSON, text: { html: 'x' } }), 'application/json'), 'text', 'type');
  });

  test('JSON null means "not set"', () => {
    assert.ok(
      ok(wire.decode(json({ ...EMAIL_JSON, html: null, headers: null, cc: null }), 'application/json'))
        .newJob,
    );
  });

  test('JSON with an unknown field, or a field given in both spellings', () => {
    invalid(
      wire.decode(json({ ...EMAIL_JSON, attachments: [] }), 'application/json'),
      'attachments',
      'unknown_field',
    );
    invalid(
      wire.decode(json({ ...EMAIL_JSON, Subject: 'x' }), 'application/json'),
      'Subject',
      'unknown_field',
    );
    invalid(
      wire.decode(json({ ...EMAIL_JSON, reply_to: [], replyTo: [] }), 'application/json'),
      'reply_to',
      'duplicate_field',
    );
  });

  test('__proto__ keys are refused, never silently dropped', () => {
    const top = new TextEncoder().encode(
      `{"__proto__": {"subject": "x"}, ${JSON.stringify(EMAIL_JSON).slice(1)}`,
    );
    invalid(wire.decode(top, 'application/json'), '__proto__', 'unknown_field');
    const inHeaders = new TextEncoder().encode(
      `${JSON.stringify(EMAIL_JSON).slice(0, -1)}, "headers": {"__proto__": "x"}}`,
    );
    invalid(wire.decode(inHeaders, 'application/json'), 'headers.__proto__', 'pattern');
    const inMetadata = protobuf({ ...EMAIL, metadata: { ok: 'yes', ['__proto__']: 'x' } });
    invalid(wire.decode(inMetadata, PROTOBUF_CONTENT_TYPE), 'metadata.__proto__', 'pattern');
    // fixmap(1) { "__proto__": "x" }
    const packed = new Uint8Array([0x81, 0xa9, ...new TextEncoder().encode('__proto__'), 0xa1, 0x78]);
    invalid(wire.decode(packed, 'application/msgpack'), '__proto__', 'pattern');
    assert.equal(Object.hasOwn(Object.prototype, 'subject'), false);
  });

  test('MessagePack with keys that are not strings', () => {
    // fixmap(1) { 1: "x" }, and fixmap(1) { [1]: "x" }
    const numberKey = new Uint8Array([0x81, 0x01, 0xa1, 0x78]);
    undecodable(wire.decode(numberKey, 'application/msgpack'), 'application/msgpack', 'keys must be strings');
    const arrayKey = new Uint8Array([0x81, 0x91, 0x01, 0xa1, 0x78]);
    undecodable(wire.decode(arrayKey, 'application/msgpack'), 'an array', 'keys must be strings');
  });

  test('MessagePack extension types and timestamps where strings belong', () => {
    const ext = msgpack({ ...EMAIL_JSON, subject: new ExtData(5, new Uint8Array([1, 2])) });
    const error = invalid(wire.decode(ext, 'application/msgpack'), 'subject', 'type');
    assert.ok(error.includes('extension (type 5)'), error);
    const date = msgpack({ ...EMAIL_JSON, sendAt: new Date(NOW + DAY_MS) });
    invalid(wire.decode(date, 'application/msgpack'), 'send_at', 'type');
  });

  test('MessagePack with a string that is not UTF-8, and MessagePack that does not parse', () => {
    // fixmap(1) { "subject": str(2) C3 28 }
    const body = new Uint8Array([0x81, 0xa7, ...new TextEncoder().encode('subject'), 0xa2, 0xc3, 0x28]);
    invalid(wire.decode(body, 'application/msgpack'), 'subject', 'type');
    undecodable(wire.decode(new Uint8Array([0x81, 0xa7]), 'application/msgpack'), 'not valid MessagePack');
    undecodable(wire.decode(new Uint8Array(0), 'application/msgpack'), 'application/msgpack');
  });

  test('random bytes never throw, under every content type', () => {
    const next = random(20260301);
    const contentTypes = [undefined, 'application/x-protobuf', 'application/json', 'application/msgpack'];
    let decoded = 0;
    for (let i = 0; i < 2000; i++) {
      const body = new Uint8Array(Math.floor(next() * 64));
      for (let j = 0; j < body.length; j++) body[j] = Math.floor(next() * 256);
      // Lead with each sniffing marker now and then.
      if (body.length > 0 && i % 4 === 0) body[0] = [0x7b, 0x82, 0xde, 0x0a][(i / 4) % 4]!;
      for (const contentType of contentTypes) {
        const result = wire.decode(body, contentType);
        if (result.ok) {
          decoded++;
          assert.ok(result.message.jobId.length > 0);
        } else {
          assert.ok(result.reason === 'undecodable' || result.reason === 'invalid_message');
          assert.ok(result.error.length > 0);
          assert.ok(!result.error.includes('unexpected failure'), result.error);
        }
      }
    }
    assert.ok(decoded < 20, `${decoded} random bodies decoded`);
  });

  test('an exception inside decoding becomes undecodable, never a throw', () => {
    const broken = new WireCodec({
      validation: () => {
        throw new Error('boom');
      },
      idempotencyTtlMs: TTL_MS,
    });
    undecodable(broken.decode(protobuf(EMAIL), PROTOBUF_CONTENT_TYPE), 'boom');
  });
});
