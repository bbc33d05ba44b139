import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { FieldProblem } from '../errors.js';
import type { ValidatedEmail, ValidationContext, ValidationResult } from './validate-email.js';
import {
  FIELD_RULES,
  isValidIdempotencyKey,
  looksLikeHtml,
  parseDateTime,
  parseMailbox,
  validateCompatEmail,
  validateSendEmail,
} from './validate-email.js';

const NOW = Date.parse('2026-06-01T12:00:00Z');
const DAY = 86_400_000;

const ctx: ValidationContext = {
  defaultFrom: 'Mailroom <noreply@mailroom.test>',
  maxRecipients: 50,
  maxMessageBytes: 10_000,
  now: NOW,
  maxScheduleAheadMs: 365 * DAY,
};

const minimal = { to: 'ann@example.com', subject: 'Hello', text: 'Hi Ann' };

/** Every rule the tests saw, to check at the end that each documented rule is exercised. */
const seenRules = new Set<string>();

function record(problems: readonly FieldProblem[]): void {
  for (const p of problems) seenRules.add(p.rule);
}

function send(body: unknown, context: ValidationContext = ctx): ValidationResult<ValidatedEmail> {
  const result = validateSendEmail(body, context);
  if (!result.ok) record(result.problems);
  return result;
}

function compat(body: unknown, context: ValidationContext = ctx): ValidationResult<ValidatedEmail> {
  const result = validateCompatEmail(body, context);
  if (!result.ok) record(result.problems);
  return result;
}

function valid(result: ValidationResult<ValidatedEmail>): ValidatedEmail {
  if (!result.ok) assert.fail(`expected valid, got ${JSON.stringify(result.problems)}`);
  return result.value;
}

/** `field:rule` of every problem, in order. */
function problemKeys(result: ValidationResult<ValidatedEmail>): string[] {
  if (result.ok) assert.fail('expected problems, got a valid email');
  for (const p of result.problems) {
    assert.ok(p.message && p.message.length > 0, `problem ${p.field}:${p.rule} has no message`);
  }
  return result.problems.map((p) => `${p.field}:${p.rule}`);
}

function assertOnly(result: ValidationResult<ValidatedEmail>, ...expected: string[]): void {
  assert.deepEqual(problemKeys(result), expected);
}

function addresses(n: number, domain = 'example.com'): string[] {
  return Array.from({ length: n }, (_, i) => `user${i}@${domain}`);
}

describe('parseMailbox: accepted', () => {
  const cases: [input: string, address: string, name?: string][] = [
    ['user@example.com', 'user@example.com'],
    ['Display Name <user@example.com>', 'user@example.com', 'Display Name'],
    ['"Quoted, Name" <user@example.com>', 'user@example.com', 'Quoted, Name'],
    ['"Say \\"hi\\"" <user@example.com>', 'user@example.com', 'Say "hi"'],
    ['"Back\\\\slash" <user@example.com>', 'user@example.com', 'Back\\slash'],
    ['"<Angles> inside" <user@example.com>', 'user@example.com', '<Angles> inside'],
    ['<user@example.com>', 'user@example.com'],
    ['  <user@example.com>  ', 'user@example.com'],
    ['"" <user@example.com>', 'user@example.com'],
    ['"   " <user@example.com>', 'user@example.com'],
    ['  Ann   Lee  <ann@example.com>', 'ann@example.com', 'Ann   Lee'],
    ['Name<user@example.com>', 'user@example.com', 'Name'],
    ['Zoë Ünicode <zoe@example.com>', 'zoe@example.com', 'Zoë Ünicode'],
    ['Smith, John <john@example.com>', 'john@example.com', 'Smith, John'],
    ['  user@example.com  ', 'user@example.com'],
    ['User.Name+tag@Example.COM', 'User.Name+tag@example.com'],
    ["a!#$%&'*+/=?^_`{|}~-z@example.com", "a!#$%&'*+/=?^_`{|}~-z@example.com"],
    ['a.b.c@sub.domain.example.co.uk', 'a.b.c@sub.domain.example.co.uk'],
    ['x@a-b.example', 'x@a-b.example'],
    ['x@123.example.com', 'x@123.example.com'],
    ['x@example.c0m', 'x@example.c0m'],
    ['dev@localhost', 'dev@localhost'],
    ['dev@LOCALHOST', 'dev@localhost'],
    ['user@münchen.de', 'user@xn--mnchen-3ya.de'],
    ['user@例え.テスト', 'user@xn--r8jz45g.xn--zckzah'],
    ['user@xn--mnchen-3ya.de', 'user@xn--mnchen-3ya.de'],
    ['user@ｅｘａｍｐｌｅ．ｃｏｍ', 'user@example.com'],
    [`${'a'.repeat(64)}@example.com`, `${'a'.repeat(64)}@example.com`],
    [`N <${'a'.repeat(64)}@example.com>`, `${'a'.repeat(64)}@example.com`, 'N'],
    [`"${'n'.repeat(256)}" <u@example.com>`, 'u@example.com', 'n'.repeat(256)],
  ];
  for (const [input, address, name] of cases) {
    test(JSON.stringify(input), () => {
      const result = parseMailbox(input);
      assert.deepEqual(result, { ok: true, mailbox: name === undefined ? { address } : { address, name } });
    });
  }

  test('an address of exactly 254 octets', () => {
    const domain = `${'d'.repeat(63)}.${'e'.repeat(63)}.${'f'.repeat(63)}.${'g'.repeat(57)}`;
    const address = `${'l'.repeat(254 - domain.length - 1)}@${domain}`;
    assert.equal(address.length, 254);
    assert.deepEqual(parseMailbox(address), { ok: true, mailbox: { address } });
  });
});

describe('parseMailbox: rejected', () => {
  const longDomain = `${'d'.repeat(63)}.${'e'.repeat(63)}.${'f'.repeat(63)}.${'g'.repeat(58)}`;
  const cases: [input: string, rule: string, messagePart: string][] = [
    ['', 'email', 'empty'],
    ['   ', 'email', 'empty'],
    ['userexample.com', 'email', 'missing "@"'],
    ['a(comment)@example.com', 'email', 'comments'],
    ['a@example.com(comment)', 'email', 'comments'],
    ['(comment)a@example.com', 'email', 'comments'],
    ['"quoted"@example.com', 'email', 'quoted local parts'],
    ['"a b"@example.com', 'email', 'space'],
    ['"a@b"@c.com', 'email', 'quoted local parts'],
    ['Name <"quoted"@example.com>', 'email', 'quoted local parts'],
    ['a@b@c.com', 'email', 'more than one "@"'],
    ['<a@b.com>@evil.com', 'email', 'nothing may follow ">"'],
    ['Name <a@b.com> trailing', 'email', 'nothing may follow ">"'],
    ['Name <a@b.com>>', 'email', 'nothing may follow ">"'],
    ['Name <a@b.com><c@d.com>', 'email', 'nothing may follow ">"'],
    ['a@b.com>', 'email', '">"'],
    ['Name > <a@b.com>', 'email', '">"'],
    ['Name <a@b.com', 'email', 'missing closing ">"'],
    ['<<a@b.com>>', 'email', 'nothing may follow'],
    ['Name <x<a@b.com>', 'email', 'nested'],
    ['@route:a@b.com', 'email', 'source routes'],
    ['<@route,@other:a@b.com>', 'email', 'source routes'],
    ['a@[127.0.0.1]', 'email', 'address literals'],
    ['a@[IPv6:::1]', 'email', 'address literals'],
    ['a..b@x.com', 'email', 'two dots'],
    ['.a@x.com', 'email', 'starts or ends with a dot'],
    ['a.@x.com', 'email', 'starts or ends with a dot'],
    ['@example.com', 'email', 'local part'],
    ['a@', 'email', 'domain'],
    [`${'a'.repeat(65)}@example.com`, 'email', 'longer than 64'],
    [`${'l'.repeat(254 - longDomain.length)}@${longDomain}`, 'email', 'longer than 254'],
    ['a@b.com\r\nBcc: x@y.com', 'no_crlf', 'CR, LF or NUL'],
    ['a@b.com\nBcc: x@y.com', 'no_crlf', 'CR, LF or NUL'],
    ['a\0@b.com', 'no_crlf', 'CR, LF or NUL'],
    ['Evil\r\nBcc: x@y.com <a@b.com>', 'no_crlf', 'CR, LF or NUL'],
    ['"Evil\r\n" <a@b.com>', 'no_crlf', 'CR, LF or NUL'],
    ['Tab\tName <a@b.com>', 'email', 'control character'],
    ['a @example.com', 'email', 'space'],
    ['Name a@example.com', 'email', 'space'],
    ['< a@example.com >', 'email', 'space'],
    ['a\u00a0b@example.com', 'email', 'space'],
    ['a,b@example.com', 'email', 'local part contains ","'],
    ['a;b@example.com', 'email', 'local part contains ";"'],
    ['a\\b@example.com', 'email', 'local part contains "\\"'],
    ['a"b@example.com', 'email', 'local part contains """'],
    ['josé@example.com', 'email', 'ASCII'],
    ['a@localhost.', 'email', 'empty label'],
    ['a@example.com.', 'email', 'empty label'],
    ['a@.example.com', 'email', 'empty label'],
    ['a@example..com', 'email', 'empty label'],
    ['a@-example.com', 'email', 'hyphen'],
    ['a@example-.com', 'email', 'hyphen'],
    ['a@exa_mple.com', 'email', 'domain contains "_"'],
    ['a@ex%61mple.com', 'email', 'domain contains "%"'],
    ['a@example.com:25', 'email', 'domain contains ":"'],
    ['a@exam!ple.com', 'email', 'domain contains "!"'],
    [`a@${'x'.repeat(64)}.com`, 'email', 'longer than 63'],
    [`a@${longDomain}.com`, 'email', 'longer than 253'],
    ['a@example', 'email', 'needs a dot'],
    ['a@mailhost', 'email', 'needs a dot'],
    ['a@1.2.3.4', 'email', 'all digits'],
    ['a@example.123', 'email', 'all digits'],
    ['a@xn--zz.com', 'email', 'not a valid host name'],
    ['a@b.com, c@d.com', 'email', 'space'],
    ['a@b.com,c@d.com', 'email', 'more than one "@"'],
    ['Group: a@b.com;', 'email', 'space'],
    ['"Unterminated <a@b.com>', 'email', 'unterminated'],
    ['"Bad \\escape" <a@b.com>', 'email', 'escaped'],
    ['"Name" a@b.com', 'email', 'space'],
    ['"Name" x <a@b.com>', 'email', 'followed by <address>'],
    ['Half "quoted" <a@b.com>', 'email', 'quoted as a whole'],
    [`"${'n'.repeat(257)}" <u@example.com>`, 'max_length', 'display name'],
    [`${'n'.repeat(3000)} <u@example.com>`, 'max_length', 'longer than 2048'],
  ];
  for (const [input, rule, messagePart] of cases) {
    test(JSON.stringify(input.length > 80 ? `${input.slice(0, 40)}…(${input.length})` : input), () => {
      const result = parseMailbox(input);
      if (result.ok) assert.fail(`accepted as ${JSON.stringify(result.mailbox)}`);
      assert.equal(result.rule, rule);
      assert.ok(result.message.includes(messagePart), `message "${result.message}" lacks "${messagePart}"`);
      seenRules.add(result.rule);
    });
  }

  test('stays fast on hostile input', () => {
    const inputs = [
      '<'.repeat(2000),
      `${'"'.repeat(1999)}<`,
      `${'a.'.repeat(1000)}@`,
      `a@${'a-'.repeat(1000)}`,
    ];
    const start = performance.now();
    for (const input of inputs) for (let i = 0; i < 100; i++) parseMailbox(input);
    assert.ok(performance.now() - start < 1000);
  });
});

describe('validateSendEmail: valid requests', () => {
  test('minimal body: defaults applied', () => {
    assert.deepEqual(valid(send(minimal)), {
      content: {
        from: { address: 'noreply@mailroom.test', name: 'Mailroom' },
        to: [{ address: 'ann@example.com' }],
        cc: [],
        bcc: [],
        replyTo: [],
        subject: 'Hello',
        text: 'Hi Ann',
        headers: {},
      },
      tags: [],
      metadata: {},
      priority: 'normal',
    });
  });

  test('every field given', () => {
    const sendAt = '2026-06-02T12:00:00Z';
    const value = valid(
      send({
        from: 'Shop <shop@Example.com>',
        to: ['Ann <ann@example.com>', 'bob@example.com'],
        cc: 'carol@example.com',
        bcc: ['dave@example.com'],
        reply_to: 'support@example.com',
        subject: 'Your order',
        text: 'Thanks',
        html: '<p>Thanks</p>',
        headers: { 'X-Campaign': 'spring', 'In-Reply-To': '<1@example.com>', References: '<1@example.com>' },
        tags: ['order', 'v1.2:eu-west_1'],
        metadata: { user_id: '42' },
        priority: 'high',
        send_at: sendAt,
      }),
    );
    assert.deepEqual(value, {
      content: {
        from: { address: 'shop@example.com', name: 'Shop' },
        to: [{ address: 'ann@example.com', name: 'Ann' }, { address: 'bob@example.com' }],
        cc: [{ address: 'carol@example.com' }],
        bcc: [{ address: 'dave@example.com' }],
        replyTo: [{ address: 'support@example.com' }],
        subject: 'Your order',
        text: 'Thanks',
        html: '<p>Thanks</p>',
        headers: { 'X-Campaign': 'spring', 'In-Reply-To': '<1@example.com>', References: '<1@example.com>' },
      },
      tags: ['order', 'v1.2:eu-west_1'],
      metadata: { user_id: '42' },
      priority: 'high',
      sendAt: Date.parse(sendAt),
    });
  });

  test('`to` as a string and as an array give the same recipients', () => {
    const asString = valid(send({ ...minimal, to: 'ann@example.com' }));
    const asArray = valid(send({ ...minimal, to: ['ann@example.com'] }));
    assert.deepEqual(asString.content.to, asArray.content.to);
  });

  test('html only; empty text is dropped', () => {
    const value = valid(send({ to: 'a@example.com', subject: 's', text: '', html: '<b>hi</b>' }));
    assert.equal(value.content.text, undefined);
    assert.equal('text' in value.content, false);
    assert.equal(value.content.html, '<b>hi</b>');
  });

  test('no default sender needed when from is given', () => {
    const { defaultFrom: _, ...noDefault } = ctx;
    const value = valid(send({ ...minimal, from: 'me@example.com' }, noDefault));
    assert.deepEqual(value.content.from, { address: 'me@example.com' });
  });

  test('exactly 50 recipients across to, cc and bcc', () => {
    const list = addresses(50);
    valid(send({ ...minimal, to: list.slice(0, 30), cc: list.slice(30, 45), bcc: list.slice(45) }));
  });

  test('limits reached but not passed', () => {
    valid(
      send(
        {
          ...minimal,
          subject: 's'.repeat(998),
          headers: Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`X-H${i}`, 'v'])),
          tags: Array.from({ length: 20 }, (_, i) => `t${i}`.padEnd(64, 'x')),
          metadata: Object.fromEntries(Array.from({ length: 50 }, (_, i) => [`k${i}`.padEnd(64, 'k'), 'v'])),
        },
        { ...ctx, maxMessageBytes: 1_000_000 },
      ),
    );
    valid(send({ ...minimal, headers: { [`X-${'n'.repeat(74)}`]: 'v'.repeat(998) } }));
    valid(send({ ...minimal, metadata: { k: 'v'.repeat(1024) } }));
    valid(send({ ...minimal, subject: '😀'.repeat(998) }, { ...ctx, maxMessageBytes: 1_000_000 }));
  });

  test('header and metadata keys named __proto__ stay plain data', () => {
    const body: unknown = JSON.parse(
      '{"to":"a@example.com","subject":"s","text":"t","metadata":{"__proto__":"x"}}',
    );
    const value = valid(send(body));
    assert.equal(Object.getPrototypeOf(value.metadata), Object.prototype);
    assert.deepEqual(Object.keys(value.metadata), ['__proto__']);
    assert.equal(Object.getOwnPropertyDescriptor(value.metadata, '__proto__')?.value, 'x');
  });
});

describe('validateSendEmail: one rule at a time', () => {
  const { defaultFrom: _, ...noDefault } = ctx;
  const cases: [name: string, body: unknown, expected: string[], context?: ValidationContext][] = [
    ['body is an array', [], ['body:type']],
    ['body is null', null, ['body:type']],
    ['body is a string', 'hello', ['body:type']],
    ['unknown field', { ...minimal, foo: 1 }, ['foo:unknown_field']],
    ['camelCase field', { ...minimal, replyTo: 'a@example.com' }, ['replyTo:unknown_field']],
    ['no from and no default', minimal, ['from:required'], noDefault],
    ['from wrong type', { ...minimal, from: ['a@example.com'] }, ['from:type']],
    ['from null', { ...minimal, from: null }, ['from:type']],
    ['from invalid', { ...minimal, from: 'nope' }, ['from:email']],
    ['from display name injection', { ...minimal, from: 'Evil\r\nBcc: x@y.com <a@b.com>' }, ['from:no_crlf']],
    ['from display name too long', { ...minimal, from: `${'n'.repeat(257)} <a@b.com>` }, ['from:max_length']],
    ['to missing', { subject: 's', text: 't' }, ['to:required']],
    ['to empty array', { ...minimal, to: [] }, ['to:required']],
    ['to wrong type', { ...minimal, to: 5 }, ['to:type']],
    ['to object', { ...minimal, to: { address: 'a@example.com' } }, ['to:type']],
    ['to item wrong type', { ...minimal, to: ['a@example.com', 7] }, ['to[1]:type']],
    ['to string invalid', { ...minimal, to: 'a@b@c.com' }, ['to:email']],
    ['to item invalid', { ...minimal, to: ['a@example.com', 'b@example.com', 'bad'] }, ['to[2]:email']],
    ['to empty string', { ...minimal, to: '' }, ['to:email']],
    ['to header injection', { ...minimal, to: 'a@b.com\r\nBcc: x@y.com' }, ['to:no_crlf']],
    ['cc wrong type', { ...minimal, cc: true }, ['cc:type']],
    ['cc item invalid', { ...minimal, cc: ['a@[127.0.0.1]'] }, ['cc[0]:email']],
    ['bcc null', { ...minimal, bcc: null }, ['bcc:type']],
    ['bcc invalid', { ...minimal, bcc: '"a@b"@c.com' }, ['bcc:email']],
    [
      'reply_to invalid',
      { ...minimal, reply_to: ['ok@example.com', 'a..b@example.com'] },
      ['reply_to[1]:email'],
    ],
    ['51 recipients in to', { ...minimal, to: addresses(51) }, ['to:max_recipients']],
    [
      '51 recipients across to, cc and bcc',
      {
        ...minimal,
        to: addresses(17),
        cc: addresses(17, 'cc.example.com'),
        bcc: addresses(17, 'b.example.com'),
      },
      ['to:max_recipients'],
    ],
    ['51 reply_to addresses', { ...minimal, reply_to: addresses(51) }, ['reply_to:max_items']],
    ['subject missing', { to: 'a@example.com', text: 't' }, ['subject:required']],
    ['subject wrong type', { ...minimal, subject: 1 }, ['subject:type']],
    ['subject empty', { ...minimal, subject: '' }, ['subject:min_length']],
    ['subject too long', { ...minimal, subject: 's'.repeat(999) }, ['subject:max_length']],
    ['subject with CRLF', { ...minimal, subject: 'Hi\r\nBcc: x@y.com' }, ['subject:no_crlf']],
    ['subject with NUL', { ...minimal, subject: 'Hi\0' }, ['subject:no_crlf']],
    ['no text nor html', { to: 'a@example.com', subject: 's' }, ['text:body_required']],
    ['text and html empty', { ...minimal, text: '', html: '' }, ['text:body_required']],
    ['text wrong type', { ...minimal, text: 5 }, ['text:type', 'text:body_required']],
    ['html wrong type', { ...minimal, html: ['<p>'] }, ['html:type']],
    ['headers wrong type', { ...minimal, headers: ['X-A: b'] }, ['headers:type']],
    ['headers null', { ...minimal, headers: null }, ['headers:type']],
    [
      'too many headers',
      { ...minimal, headers: Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`X-H${i}`, 'v'])) },
      ['headers:max_items'],
    ],
    ['header name with space', { ...minimal, headers: { 'X Bad': 'v' } }, ['headers.X Bad:header_name']],
    ['header name with colon', { ...minimal, headers: { 'X-Bad:': 'v' } }, ['headers.X-Bad::header_name']],
    ['header name empty', { ...minimal, headers: { '': 'v' } }, ['headers.:header_name']],
    [
      'header name non-ASCII',
      { ...minimal, headers: { 'X-Ünicode': 'v' } },
      ['headers.X-Ünicode:header_name'],
    ],
    [
      'header name too long',
      { ...minimal, headers: { [`X-${'n'.repeat(75)}`]: 'v' } },
      [`headers.X-${'n'.repeat(75)}:header_name`],
    ],
    ['header name with CRLF', { ...minimal, headers: { 'X-A\r\nBcc': 'v' } }, ['headers.X-A\r\nBcc:no_crlf']],
    ['header value wrong type', { ...minimal, headers: { 'X-Campaign': 1 } }, ['headers.X-Campaign:type']],
    [
      'header value with CRLF',
      { ...minimal, headers: { 'X-A': 'v\r\nBcc: x@y.com' } },
      ['headers.X-A:no_crlf'],
    ],
    ['header value with LF', { ...minimal, headers: { 'X-A': 'v\nBcc: x@y.com' } }, ['headers.X-A:no_crlf']],
    ['header value with NUL', { ...minimal, headers: { 'X-A': 'v\0' } }, ['headers.X-A:no_crlf']],
    [
      'header value too long',
      { ...minimal, headers: { 'X-A': 'v'.repeat(999) } },
      ['headers.X-A:max_length'],
    ],
    ['tags wrong type', { ...minimal, tags: 'welcome' }, ['tags:type']],
    [
      'too many tags',
      { ...minimal, tags: Array.from({ length: 21 }, (_, i) => `t${i}`) },
      ['tags:max_items'],
    ],
    ['tag wrong type', { ...minimal, tags: ['ok', 3] }, ['tags[1]:type']],
    ['tag empty', { ...minimal, tags: [''] }, ['tags[0]:min_length']],
    ['tag too long', { ...minimal, tags: ['t'.repeat(65)] }, ['tags[0]:max_length']],
    ['tag with space', { ...minimal, tags: ['ok', 'has space'] }, ['tags[1]:pattern']],
    ['tag with slash', { ...minimal, tags: ['a/b'] }, ['tags[0]:pattern']],
    ['tag non-ASCII', { ...minimal, tags: ['café'] }, ['tags[0]:pattern']],
    ['tag with CRLF', { ...minimal, tags: ['a\r\nb'] }, ['tags[0]:no_crlf']],
    ['metadata wrong type', { ...minimal, metadata: [] }, ['metadata:type']],
    [
      'too many metadata keys',
      { ...minimal, metadata: Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`k${i}`, 'v'])) },
      ['metadata:max_items'],
    ],
    ['metadata key empty', { ...minimal, metadata: { '': 'v' } }, ['metadata.:min_length']],
    [
      'metadata key too long',
      { ...minimal, metadata: { ['k'.repeat(65)]: 'v' } },
      [`metadata.${'k'.repeat(65)}:max_length`],
    ],
    ['metadata key with CRLF', { ...minimal, metadata: { 'a\nb': 'v' } }, ['metadata.a\nb:no_crlf']],
    ['metadata value wrong type', { ...minimal, metadata: { user_id: 42 } }, ['metadata.user_id:type']],
    ['metadata value null', { ...minimal, metadata: { user_id: null } }, ['metadata.user_id:type']],
    [
      'metadata value too long',
      { ...minimal, metadata: { user_id: 'v'.repeat(1025) } },
      ['metadata.user_id:max_length'],
    ],
    [
      'metadata value with NUL',
      { ...minimal, metadata: { user_id: '4\x002' } },
      ['metadata.user_id:no_crlf'],
    ],
    ['priority unknown', { ...minimal, priority: 'urgent' }, ['priority:enum']],
    ['priority upper case', { ...minimal, priority: 'HIGH' }, ['priority:enum']],
    ['priority wrong type', { ...minimal, priority: 1 }, ['priority:type']],
    ['send_at wrong type', { ...minimal, send_at: NOW + DAY }, ['send_at:type']],
    ['send_at without timezone', { ...minimal, send_at: '2026-06-02T10:00:00' }, ['send_at:datetime']],
    ['send_at date only', { ...minimal, send_at: '2026-06-02' }, ['send_at:datetime']],
    ['send_at free text', { ...minimal, send_at: 'tomorrow' }, ['send_at:datetime']],
    ['send_at bad day', { ...minimal, send_at: '2026-02-30T10:00:00Z' }, ['send_at:datetime']],
    ['send_at bad hour', { ...minimal, send_at: '2026-06-02T24:00:00Z' }, ['send_at:datetime']],
    ['send_at bad offset', { ...minimal, send_at: '2026-06-02T10:00:00+0200' }, ['send_at:datetime']],
    [
      'send_at more than a year ahead',
      { ...minimal, send_at: new Date(NOW + 366 * DAY).toISOString() },
      ['send_at:too_far_ahead'],
    ],
    ['too large', { ...minimal, text: 'x'.repeat(10_001) }, ['body:too_large']],
  ];
  for (const [name, body, expected, context] of cases) {
    test(name, () => assertOnly(send(body, context), ...expected));
  }

  test('reserved headers, in any case', () => {
    const reserved = [
      'From',
      'to',
      'CC',
      'Bcc',
      'Subject',
      'Reply-To',
      'Sender',
      'Message-ID',
      'Date',
      'MIME-Version',
      'Content-Type',
      'Content-Transfer-Encoding',
      'Return-Path',
      'Received',
      'DKIM-Signature',
    ];
    for (const name of reserved) {
      assertOnly(send({ ...minimal, headers: { [name]: 'x' } }), `headers.${name}:reserved_header`);
    }
  });

  test('In-Reply-To and References are allowed', () => {
    const value = valid(send({ ...minimal, headers: { 'in-reply-to': '<a@b>', references: '<a@b> <c@d>' } }));
    assert.deepEqual(value.content.headers, { 'in-reply-to': '<a@b>', references: '<a@b> <c@d>' });
  });

  test('unknown field message suggests the snake_case name', () => {
    const result = send({ ...minimal, sendAt: '2026-06-02T10:00:00Z' });
    assert.ok(!result.ok);
    assert.match(result.problems[0]!.message ?? '', /send_at/);
  });
});

describe('validateSendEmail: several problems at once', () => {
  test('collects every problem, not just the first', () => {
    const result = send({
      from: 'bad',
      to: ['ok@example.com', 'a..b@example.com', 42],
      cc: 'x@[1.2.3.4]',
      subject: '',
      headers: { Subject: 'x', 'X-Ok': 'fine', 'X-Bad': 'a\r\nb' },
      tags: ['ok', 'not ok'],
      metadata: { user_id: 1 },
      priority: 'urgent',
      send_at: 'soon',
      extra: true,
      another: null,
    });
    assert.deepEqual(problemKeys(result).sort(), [
      'another:unknown_field',
      'cc:email',
      'extra:unknown_field',
      'from:email',
      'headers.Subject:reserved_header',
      'headers.X-Bad:no_crlf',
      'metadata.user_id:type',
      'priority:enum',
      'send_at:datetime',
      'subject:min_length',
      'tags[1]:pattern',
      'text:body_required',
      'to[1]:email',
      'to[2]:type',
    ]);
  });

  test('a header can break its name and its value rules at once', () => {
    assertOnly(
      send({ ...minimal, headers: { 'Bad Name': 'a\nb' } }),
      'headers.Bad Name:header_name',
      'headers.Bad Name:no_crlf',
    );
  });

  test('a metadata entry can break its key and its value rules at once', () => {
    assertOnly(send({ ...minimal, metadata: { '': 5 } }), 'metadata.:min_length', 'metadata.:type');
  });

  test('too_large sets tooLarge and comes with the other problems', () => {
    const result = send({ ...minimal, subject: '', html: 'é'.repeat(5_001) });
    assert.ok(!result.ok);
    assert.equal(result.tooLarge, true);
    assert.deepEqual(problemKeys(result), ['body:too_large', 'subject:min_length']);
  });

  test('tooLarge is absent for other problems', () => {
    const result = send({ ...minimal, subject: '' });
    assert.ok(!result.ok);
    assert.equal('tooLarge' in result, false);
  });

  test('size counts subject, text, html and headers in UTF-8 bytes', () => {
    const small = { ...ctx, maxMessageBytes: 20 };
    const fits = {
      to: 'a@example.com',
      subject: 'ab',
      text: 'cd',
      html: 'ef',
      headers: { 'X-A': 'é'.repeat(5) },
    };
    valid(send(fits, small)); // 2 + 2 + 2 + 3 + 10 = 19 bytes
    assertOnly(send({ ...fits, subject: 'abc', text: 'cde' }, small), 'body:too_large');
  });

  test('a hostile body gets a bounded list of problems', () => {
    const result = send({ ...minimal, to: Array.from({ length: 1000 }, () => 'bad') });
    assert.ok(!result.ok);
    assert.equal(result.problems.length, 100);
  });
});

describe('validateSendEmail: send_at', () => {
  const cases: [name: string, sendAt: string, expected: number | undefined][] = [
    ['in the past: send now', '2026-05-01T12:00:00Z', undefined],
    ['exactly now: send now', '2026-06-01T12:00:00Z', undefined],
    ['one second ahead', '2026-06-01T12:00:01Z', NOW + 1000],
    ['with an offset', '2026-06-02T14:00:00+02:00', NOW + DAY],
    ['with a negative offset', '2026-06-02T07:30:00-04:30', NOW + DAY],
    ['with fractional seconds', '2026-06-02T12:00:00.250Z', NOW + DAY + 250],
    ['without seconds', '2026-06-02T12:00Z', NOW + DAY],
    ['lower-case t and z', '2026-06-02t12:00:00z', NOW + DAY],
    ['exactly the limit ahead', new Date(NOW + 365 * DAY).toISOString(), NOW + 365 * DAY],
    ['leap day', '2028-02-29T12:00:00Z', Date.parse('2028-02-29T12:00:00Z')],
  ];
  for (const [name, sendAt, expected] of cases) {
    test(name, () => {
      const value = valid(send({ ...minimal, send_at: sendAt }, { ...ctx, maxScheduleAheadMs: 1000 * DAY }));
      if (name === 'exactly the limit ahead') {
        assert.equal(valid(send({ ...minimal, send_at: sendAt })).sendAt, expected);
      }
      assert.equal(value.sendAt, expected);
      assert.equal('sendAt' in value, expected !== undefined);
    });
  }

  test('parseDateTime rejects what is not a full date-time with a zone', () => {
    for (const input of [
      '2026-06-02T10:00:00',
      '2026-06-02 10:00:00Z',
      '2026-06-02T10:00:00 Z',
      '20260602T100000Z',
      '2026-13-01T00:00:00Z',
      '2026-00-01T00:00:00Z',
      '2027-02-29T00:00:00Z',
      '2100-02-29T00:00:00Z',
      '2026-06-02T10:60:00Z',
      '2026-06-02T10:00:60Z',
      '2026-06-02T10:00:00+24:00',
      '2026-06-02T10:00:00+02',
      ' 2026-06-02T10:00:00Z',
      '2026-06-02T10:00:00Z\n',
      '',
    ]) {
      assert.equal(parseDateTime(input), undefined, input);
    }
    assert.equal(parseDateTime('2000-02-29T00:00:00Z'), Date.parse('2000-02-29T00:00:00Z'));
    assert.equal(parseDateTime('0050-01-01T00:00:00Z'), Date.parse('0050-01-01T00:00:00Z'));
  });
});

describe('validateSendEmail: priority', () => {
  test('defaults to normal', () => assert.equal(valid(send(minimal)).priority, 'normal'));
  for (const priority of ['high', 'normal', 'low'] as const) {
    test(priority, () => assert.equal(valid(send({ ...minimal, priority })).priority, priority));
  }
});

describe('validateCompatEmail', () => {
  test('plain text body', () => {
    assert.deepEqual(valid(compat({ to: 'ann@example.com', subject: 'Hi', body: 'Hello Ann' })), {
      content: {
        from: { address: 'noreply@mailroom.test', name: 'Mailroom' },
        to: [{ address: 'ann@example.com' }],
        cc: [],
        bcc: [],
        replyTo: [],
        subject: 'Hi',
        text: 'Hello Ann',
        headers: {},
      },
      tags: [],
      metadata: {},
      priority: 'normal',
    });
  });

  test('a body with a tag is sent as text and html', () => {
    const body = '<h1>Hello</h1><p>Ann</p>';
    const value = valid(compat({ to: ['ann@example.com', 'bob@example.com'], subject: 'Hi', body }));
    assert.equal(value.content.text, body);
    assert.equal(value.content.html, body);
    assert.equal(value.content.to.length, 2);
  });

  test('looksLikeHtml', () => {
    for (const html of [
      '<p>x</p>',
      'a<br>b',
      'a<br/>b',
      '<a href="x">y</a>',
      'x</div>',
      '<!DOCTYPE html><html>',
      '<!-- c -->',
    ]) {
      assert.equal(looksLikeHtml(html), true, html);
    }
    for (const text of ['1 < 2 and 3 > 2', 'a <= b', 'email me at <', '<3 you', 'x << y', '']) {
      assert.equal(looksLikeHtml(text), false, text);
    }
  });

  const { defaultFrom: _, ...noDefault } = ctx;
  const cases: [name: string, body: unknown, expected: string[], context?: ValidationContext][] = [
    ['not an object', 'x', ['body:type']],
    [
      'unknown fields rejected',
      { to: 'a@example.com', subject: 's', body: 'b', from: 'me@example.com' },
      ['from:unknown_field'],
    ],
    [
      'text field rejected',
      { to: 'a@example.com', subject: 's', body: 'b', text: 't' },
      ['text:unknown_field'],
    ],
    ['no default sender', { to: 'a@example.com', subject: 's', body: 'b' }, ['from:required'], noDefault],
    ['to missing', { subject: 's', body: 'b' }, ['to:required']],
    ['to invalid', { to: 'a@b@c', subject: 's', body: 'b' }, ['to:email']],
    ['too many recipients', { to: addresses(51), subject: 's', body: 'b' }, ['to:max_recipients']],
    [
      'subject with CRLF',
      { to: 'a@example.com', subject: 's\r\nBcc: x@y.com', body: 'b' },
      ['subject:no_crlf'],
    ],
    ['body missing', { to: 'a@example.com', subject: 's' }, ['body:required']],
    ['body wrong type', { to: 'a@example.com', subject: 's', body: { text: 'b' } }, ['body:type']],
    ['body empty', { to: 'a@example.com', subject: 's', body: '' }, ['body:body_required']],
    ['too large', { to: 'a@example.com', subject: 's', body: 'b'.repeat(10_000) }, ['body:too_large']],
    [
      'several problems',
      { to: 7, subject: '', body: '', cc: 'x' },
      ['cc:unknown_field', 'to:type', 'subject:min_length', 'body:body_required'],
    ],
  ];
  for (const [name, body, expected, context] of cases) {
    test(name, () => assertOnly(compat(body, context), ...expected));
  }

  test('too large html body counts twice and sets tooLarge', () => {
    const result = compat({ to: 'a@example.com', subject: 's', body: `<p>${'b'.repeat(4_995)}</p>` });
    assert.ok(!result.ok);
    assert.equal(result.tooLarge, true);
  });
});

describe('isValidIdempotencyKey', () => {
  const good = ['a', 'order-42', 'key with inner spaces', '~!@#$%^&*()_+{}|:"<>?', 'k'.repeat(256), 'A1 b2'];
  const bad = [
    '',
    'k'.repeat(257),
    ' leading',
    'trailing ',
    ' ',
    'line\nbreak',
    'carriage\rreturn',
    'nul\0',
    'tab\tkey',
    'del\x7f',
    'ünicode',
    '😀',
  ];
  for (const key of good)
    test(`accepts ${JSON.stringify(key.slice(0, 40))}`, () => assert.ok(isValidIdempotencyKey(key)));
  for (const key of bad)
    test(`rejects ${JSON.stringify(key.slice(0, 40))}`, () => assert.ok(!isValidIdempotencyKey(key)));
});

describe('attachments', () => {
  const file = {
    filename: 'report.pdf',
    content: Buffer.from('%PDF-1.7').toString('base64'),
    content_type: 'application/pdf',
  };
  const withAttachments = (attachments: unknown) => ({ ...minimal, attachments });

  /** Asserts exactly one problem, the expected field and rule, and returns its message. */
  function refusedWith(attachments: unknown, field: string, rule: string): string {
    const result = send(withAttachments(attachments));
    assert.ok(!result.ok, `refused: ${JSON.stringify(attachments).slice(0, 80)}`);
    const found = result.problems.filter((p) => p.field === field && p.rule === rule);
    assert.equal(found.length, 1, `${field}/${rule} in ${JSON.stringify(result.problems)}`);
    return found[0]!.message ?? '';
  }

  test('valid attachments are kept as sent, content_id only when given', () => {
    const inline = {
      filename: 'Grüße 😀.png',
      content: 'iVBORw0KGgo=',
      content_type: 'image/png',
      content_id: 'logo@acme.test',
    };
    const result = send(withAttachments([file, inline, { ...file, content: '' }]));
    assert.ok(result.ok, JSON.stringify(!result.ok && result.problems));
    assert.deepEqual(result.value.content.attachments, [
      { filename: 'report.pdf', contentType: 'application/pdf', content: file.content },
      {
        filename: 'Grüße 😀.png',
        contentType: 'image/png',
        content: 'iVBORw0KGgo=',
        contentId: 'logo@acme.test',
      },
      { filename: 'report.pdf', contentType: 'application/pdf', content: '' },
    ]);
  });

  test('an email without attachments has no attachments key (stored content stays as it was)', () => {
    for (const attachments of [undefined, []]) {
      const result = send(withAttachments(attachments));
      assert.ok(result.ok);
      assert.equal('attachments' in result.value.content, false);
    }
  });

  test('content must be canonical base64; paths, URLs and data: URLs are refused with a hint', () => {
    const cases: [string, RegExp][] = [
      ['/etc/passwd', /file path/],
      ['./secrets.txt', /file path/],
      ['C:\\Users\\me\\report.pdf', /file path/],
      ['file:///etc/passwd', /URL/],
      ['https://example.com/logo.png', /URL/],
      ['data:image/png;base64,iVBORw0KGgo=', /data: URL/],
      ['aGVs\nbG8=', /line breaks/],
      ['-_-_', /URL-safe/],
      ['QR==', /canonical/],
      ['aGVsbG8', /not base64/],
      ['aGVsbG8=!', /not base64/],
    ];
    for (const [content, hint] of cases) {
      assert.match(refusedWith([{ ...file, content }], 'attachments[0].content', 'encoding'), hint, content);
    }
  });

  test('path, href and other ways to point at content are unknown fields that say why', () => {
    for (const key of ['path', 'href', 'url', 'raw']) {
      const message = refusedWith(
        [{ ...file, [key]: '/etc/passwd' }],
        `attachments[0].${key}`,
        'unknown_field',
      );
      assert.match(message, /never reads files or URLs/);
    }
    assert.match(
      refusedWith([{ ...file, contentType: 'x/y' }], 'attachments[0].contentType', 'unknown_field'),
      /did you mean content_type/,
    );
  });

  test('missing and mistyped fields', () => {
    refusedWith(
      [{ content: file.content, content_type: 'text/plain' }],
      'attachments[0].filename',
      'required',
    );
    refusedWith([{ filename: 'a', content_type: 'text/plain' }], 'attachments[0].content', 'required');
    refusedWith([{ filename: 'a', content: 'AAAA' }], 'attachments[0].content_type', 'required');
    refusedWith([{ ...file, content: 42 }], 'attachments[0].content', 'type');
    refusedWith([{ ...file, content_id: 7 }], 'attachments[0].content_id', 'type');
    refusedWith(['/etc/passwd'], 'attachments[0]', 'type');
    refusedWith(file, 'attachments', 'type');
  });

  test('file names: no CR/LF/NUL, no control characters, no paths, not empty, at most 255 characters', () => {
    refusedWith(
      [{ ...file, filename: 'a\r\nContent-Type: text/html' }],
      'attachments[0].filename',
      'no_crlf',
    );
    refusedWith([{ ...file, filename: 'nul\0.pdf' }], 'attachments[0].filename', 'no_crlf');
    refusedWith([{ ...file, filename: 'tab\t.pdf' }], 'attachments[0].filename', 'pattern');
    refusedWith([{ ...file, filename: '../../etc/passwd' }], 'attachments[0].filename', 'pattern');
    refusedWith([{ ...file, filename: ' ' }], 'attachments[0].filename', 'min_length');
    refusedWith([{ ...file, filename: `${'ä'.repeat(252)}.pdf` }], 'attachments[0].filename', 'max_length');
    assert.ok(send(withAttachments([{ ...file, filename: `${'ä'.repeat(251)}.pdf` }])).ok, '255 is accepted');
  });

  test('content_type must be type/subtype; multipart/ and message/ are refused', () => {
    for (const type of ['pdf', 'application/pdf; charset=x', 'text/html\r\nX: y', 'a/b/c', '/x']) {
      refusedWith([{ ...file, content_type: type }], 'attachments[0].content_type', 'mime_type');
    }
    refusedWith([{ ...file, content_type: 'multipart/mixed' }], 'attachments[0].content_type', 'mime_type');
    refusedWith([{ ...file, content_type: 'message/rfc822' }], 'attachments[0].content_type', 'mime_type');
  });

  test('content_id: no brackets, spaces or CR/LF, unique within the email', () => {
    refusedWith([{ ...file, content_id: '<logo@acme>' }], 'attachments[0].content_id', 'pattern');
    refusedWith([{ ...file, content_id: 'a b' }], 'attachments[0].content_id', 'pattern');
    refusedWith([{ ...file, content_id: 'a\r\nb' }], 'attachments[0].content_id', 'no_crlf');
    refusedWith([{ ...file, content_id: '' }], 'attachments[0].content_id', 'min_length');
    const twice = [
      { ...file, content_id: 'logo' },
      { ...file, content_id: 'logo' },
    ];
    refusedWith(twice, 'attachments[1].content_id', 'duplicate');
  });

  test('at most 20 attachments', () => {
    assert.ok(send(withAttachments(Array.from({ length: 20 }, () => file))).ok);
    refusedWith(
      Array.from({ length: 21 }, () => file),
      'attachments',
      'max_items',
    );
  });

  test('decoded attachment bytes count in MAILROOM_MAX_MESSAGE_BYTES, with the text', () => {
    const text = 'x'.repeat(1000);
    // Subject (5 bytes) and text (1000) leave this much for the attachment; one byte more is over.
    const fits = Buffer.alloc(ctx.maxMessageBytes - 1000 - 5).toString('base64');
    assert.ok(send({ ...minimal, text, attachments: [{ ...file, content: fits }] }).ok);
    const over = Buffer.alloc(ctx.maxMessageBytes - 1000 - 5 + 1).toString('base64');
    const result = send({ ...minimal, text, attachments: [{ ...file, content: over }] });
    assert.ok(!result.ok && result.tooLarge);
    assert.equal(result.problems[0]?.field, 'body');
    assert.match(result.problems[0]?.message ?? '', /attachments/);
  });
});

describe('FIELD_RULES', () => {
  test('every rule has a one-line description', () => {
    for (const [rule, description] of Object.entries(FIELD_RULES)) {
      assert.match(rule, /^[a-z_]+$/);
      assert.ok(description.length > 0 && !description.includes('\n'), rule);
    }
  });

  // Runs last in this file: the tests above record the rules they saw.
  test('every rule is exercised by these tests, and every rule seen is documented', () => {
    // Rules that only templates produce, at the API: test/templates.test.ts exercises them.
    const templateRules = ['exclusive', 'template_render_error', 'template_syntax', 'unknown_template'];
    assert.deepEqual([...seenRules, ...templateRules].sort(), Object.keys(FIELD_RULES).sort());
  });
});
