import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { simpleParser } from 'mailparser';
import { startTestApp, type TestApp } from './support/test-app.js';

interface Problem {
  field: string;
  rule: string;
}
type ItemResult =
  | { id: string; status: string }
  | { error: { code: string; message: string; details?: Problem[] } };

const email = (subject: string) => ({ to: 'alice@example.com', subject, text: `Body of ${subject}` });

/** Every stored email, following cursors. */
async function jobCount(t: TestApp): Promise<number> {
  let count = 0;
  let cursor: string | null = null;
  do {
    const query: string = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
    const page = (await t.request('GET', `/v1/emails?limit=100${query}`)).json() as {
      data: unknown[];
      next_cursor: string | null;
    };
    count += page.data.length;
    cursor = page.next_cursor;
  } while (cursor !== null);
  return count;
}

function resultsOf(response: LightMyRequestResponse): ItemResult[] {
  assert.equal(response.statusCode, 202, response.body);
  return (response.json() as { results: ItemResult[] }).results;
}

function idOf(result: ItemResult | undefined): string {
  assert.ok(result && 'id' in result, `an accepted item: ${JSON.stringify(result)}`);
  return result.id;
}

function problemsOf(result: ItemResult | undefined): Problem[] {
  assert.ok(result && 'error' in result, `a refused item: ${JSON.stringify(result)}`);
  return result.error.details ?? [];
}

describe('POST /v1/emails/batch', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp();
  });
  after(() => t.stop());

  test('valid emails are accepted and delivered, invalid ones answered in place, in order', async () => {
    const before = await jobCount(t);
    const attachment = {
      filename: 'a.txt',
      content_type: 'text/plain',
      content: Buffer.from('hi').toString('base64'),
    };
    const results = resultsOf(
      await t.request('POST', '/v1/emails/batch', {
        emails: [
          email('batch-0'),
          { ...email('batch-1'), to: 'not an address' },
          { ...email('batch-2'), attachments: [attachment] },
          { ...email('batch-3'), attachments: [{ ...attachment, path: '/etc/passwd' }] },
          { ...email('batch-4'), colour: 'blue' },
          'not an object',
          email('batch-6'),
        ],
      }),
    );
    assert.equal(results.length, 7);
    assert.deepEqual(
      problemsOf(results[1]).map((p) => [p.field, p.rule]),
      [['to', 'email']],
    );
    assert.deepEqual(
      problemsOf(results[3]).map((p) => [p.field, p.rule]),
      [['attachments[0].path', 'unknown_field']],
    );
    assert.deepEqual(
      problemsOf(results[4]).map((p) => [p.field, p.rule]),
      [['colour', 'unknown_field']],
    );
    assert.deepEqual(
      problemsOf(results[5]).map((p) => [p.field, p.rule]),
      [['body', 'type']],
    );
    for (const i of [1, 3, 4, 5])
      assert.equal((results[i] as { error: { code: string } }).error.code, 'VALIDATION_FAILED');
    assert.equal(await jobCount(t), before + 3, 'only the valid emails are stored');

    for (const i of [0, 2, 6]) {
      assert.equal((results[i] as { status: string }).status, 'queued');
      const view = await t.waitForStatus(idOf(results[i]), 'sent');
      const [message] = t.sink.messages().filter((m) => m.messageId === view.message_id);
      const parsed = await simpleParser(message!.raw);
      assert.equal(parsed.subject, `batch-${i}`, 'each id is the email at its index');
      if (i === 2) assert.equal(parsed.attachments[0]?.content.toString(), 'hi');
    }
  });

  test('emails may name a template: each is rendered, and a missing variable refuses only its own email', async () => {
    const code = `batch_welcome_${Date.now()}`;
    const saved = await t.request('POST', '/v1/templates', {
      code,
      subject: 'Welcome, {{name}}',
      html: '<p>Hello {{name}}, your plan is {{plan}}.</p>',
    });
    assert.equal(saved.statusCode, 201, saved.body);
    const results = resultsOf(
      await t.request('POST', '/v1/emails/batch', {
        emails: [
          { to: 'ann@example.com', template: code, variables: { name: 'Ann', plan: 'pro' } },
          { to: 'bob@example.com', template: code, variables: { name: 'Bob' } },
          { to: 'cy@example.com', template: 'no_such_template' },
          {
            to: 'dee@example.com',
            template: code,
            template_version: 1,
            variables: { name: '<Dee>', plan: 'free' },
          },
          email('plain'),
        ],
      }),
    );
    const ann = idOf(results[0]);
    assert.deepEqual(
      problemsOf(results[1]).map((p) => [p.field, p.rule]),
      [['variables.plan', 'required']],
    );
    assert.deepEqual(
      problemsOf(results[2]).map((p) => [p.field, p.rule]),
      [['template', 'unknown_template']],
    );
    const dee = idOf(results[3]);
    idOf(results[4]);
    const parsed = [];
    for (const id of [ann, dee]) {
      const view = await t.waitForStatus(id, 'sent');
      const [message] = t.sink.messages().filter((m) => m.messageId === view.message_id);
      parsed.push(await simpleParser(message!.raw));
    }
    assert.deepEqual(parsed.map((mail) => mail.subject).sort(), ['Welcome, <Dee>', 'Welcome, Ann']);
    const deeHtml = parsed.find((mail) => mail.subject === 'Welcome, <Dee>')?.html;
    assert.match(String(deeHtml), /Hello &lt;Dee&gt;, your plan is free\./);
  });

  test('a batch that is not {emails: [1..500]} is 400 with the field named, and nothing is stored', async () => {
    const before = await jobCount(t);
    const cases: [unknown, string, string][] = [
      [Array.from({ length: 501 }, (_, i) => email(`too-many-${i}`)), 'emails', 'max_items'],
      [[], 'emails', 'min_length'],
      ['not a list', 'emails', 'type'],
      [undefined, 'emails', 'required'],
    ];
    for (const [emails, field, rule] of cases) {
      const response = await t.request('POST', '/v1/emails/batch', emails === undefined ? {} : { emails });
      assert.equal(response.statusCode, 400, response.body);
      const { error } = response.json() as { error: { code: string; details: Problem[] } };
      assert.equal(error.code, 'VALIDATION_FAILED');
      assert.deepEqual(
        error.details.map((p) => [p.field, p.rule]),
        [[field, rule]],
      );
    }
    const array = await t.request('POST', '/v1/emails/batch', [email('x')]);
    assert.equal(array.statusCode, 400);
    const extra = await t.request('POST', '/v1/emails/batch', { emails: [email('x')], send_at: 'now' });
    assert.equal(extra.statusCode, 400);
    assert.equal(await jobCount(t), before);
  });

  test('500 emails are accepted in one request', async () => {
    const before = await jobCount(t);
    const results = resultsOf(
      await t.request('POST', '/v1/emails/batch', {
        emails: Array.from({ length: 500 }, (_, i) => email(`five-hundred-${i}`)),
      }),
    );
    assert.equal(new Set(results.map(idOf)).size, 500);
    assert.equal(await jobCount(t), before + 500);
  });

  test('Idempotency-Key: the same body answers the original results; another body is 409', async () => {
    const headers = { 'idempotency-key': 'batch-key-1' };
    const body = { emails: [{ ...email('idem-0'), to: 'bad' }, email('idem-1'), email('idem-2')] };
    const first = await t.request('POST', '/v1/emails/batch', body, headers);
    const firstResults = resultsOf(first);
    assert.equal(first.headers['idempotent-replayed'], undefined);
    const count = await jobCount(t);

    const again = await t.request('POST', '/v1/emails/batch', body, headers);
    assert.deepEqual(resultsOf(again), firstResults);
    assert.equal(again.headers['idempotent-replayed'], 'true');
    assert.equal(await jobCount(t), count, 'a replay stores nothing');

    // Another body under the key: refused whole, even where it has valid emails at indexes the
    // first batch did not commit (0 and 3 here).
    const other = { emails: [email('other-0'), email('idem-1'), email('other-2'), email('other-3')] };
    const conflict = await t.request('POST', '/v1/emails/batch', other, headers);
    assert.equal(conflict.statusCode, 409, conflict.body);
    assert.equal((conflict.json() as { error: { code: string } }).error.code, 'IDEMPOTENCY_CONFLICT');
    assert.equal(await jobCount(t), count, 'a conflicting batch stores nothing');

    // A batch key never answers for a single email with the same key, nor the other way round.
    const single = await t.request('POST', '/v1/emails', email('idem-single'), headers);
    assert.equal(single.statusCode, 202, single.body);
    assert.equal(await jobCount(t), count + 1);
  });
});

describe('POST /v1/emails/batch and MAILROOM_API_RATE_PER_MIN', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp({ MAILROOM_API_RATE_PER_MIN: '5' });
  });
  after(() => t.stop());

  test('every email of a batch counts against the per-key limit; over it, nothing is stored', async () => {
    const batch = (n: number) =>
      t.request('POST', '/v1/emails/batch', {
        emails: Array.from({ length: n }, (_, i) => email(`rate-${i}`)),
      });
    assert.equal(resultsOf(await batch(3)).length, 3);
    const before = await jobCount(t);
    const refused = await batch(3);
    assert.equal(refused.statusCode, 429, refused.body);
    assert.equal((refused.json() as { error: { code: string } }).error.code, 'RATE_LIMITED');
    // 5 a minute is one token every 12 s; the batch lacks one.
    assert.equal(refused.headers['retry-after'], '12');
    assert.equal(await jobCount(t), before, 'a refused batch stores nothing');
    // The two tokens the first batch left are still there: the refused batch took none.
    assert.equal(resultsOf(await batch(2)).length, 2);
    const single = await t.request('POST', '/v1/emails', email('rate-single'));
    assert.equal(single.statusCode, 429, single.body);
  });

  test('a batch larger than the whole per-minute allowance is refused, saying how large one may be', async () => {
    const before = await jobCount(t);
    const refused = await t.request('POST', '/v1/emails/batch', {
      emails: Array.from({ length: 6 }, (_, i) => email(`too-many-${i}`)),
    });
    assert.equal(refused.statusCode, 429, refused.body);
    assert.match((refused.json() as { error: { message: string } }).error.message, /send at most 5 at once/);
    assert.equal(refused.headers['retry-after'], undefined, 'waiting would not help');
    assert.equal(await jobCount(t), before);
  });
});
