import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { simpleParser } from 'mailparser';
import { startTestApp, type TestApp } from './support/test-app.js';

/** Templates through the API only: save, version, preview, and send a templated email to the SMTP sink. */
describe('templates', () => {
  let t: TestApp;
  before(async () => {
    t = await startTestApp({
      MAILROOM_FROM: 'Acme <noreply@acme.test>',
      MAILROOM_MAX_MESSAGE_BYTES: '200000',
    });
  });
  after(() => t.stop());

  let n = 0;
  const fresh = (prefix: string) => `${prefix}_${++n}_${Date.now()}`;

  async function create(body: Record<string, unknown>): Promise<Record<string, unknown>> {
    const response = await t.request('POST', '/v1/templates', body);
    assert.equal(response.statusCode, 201, response.body);
    return response.json() as Record<string, unknown>;
  }

  function problems(response: LightMyRequestResponse): { field: string; rule: string; message?: string }[] {
    return (response.json() as { error: { details: { field: string; rule: string }[] } }).error.details;
  }

  function hasProblem(response: LightMyRequestResponse, field: string, rule: string): void {
    assert.ok(
      problems(response).some((p) => p.field === field && p.rule === rule),
      `expected ${field}/${rule} in ${response.body}`,
    );
  }

  async function jobCount(): Promise<number> {
    return ((await t.request('GET', '/v1/emails?limit=100')).json() as { data: unknown[] }).data.length;
  }

  test('create, read, list, update (a new version), versions, pin a version, delete', async () => {
    const code = fresh('welcome');
    const v1 = await create({
      code,
      subject: 'Welcome, {{name}}',
      html: '<p>Hi {{name}}, {{#if vip}}VIP {{level}}{{/if}}</p>',
    });
    assert.equal(v1['version'], 1);
    assert.deepEqual(v1['required_variables'], ['name']);
    assert.equal(v1['text'], null);

    const again = await t.request('POST', '/v1/templates', { code, subject: 'x', text: 'y' });
    assert.equal(again.statusCode, 409, again.body);
    assert.equal((again.json() as { error: { code: string } }).error.code, 'TEMPLATE_EXISTS');

    const put = await t.request('PUT', `/v1/templates/${code}`, {
      subject: 'Hello {{name}}',
      text: 'Go to {{link}}',
    });
    assert.equal(put.statusCode, 200, put.body);
    assert.equal((put.json() as { version: number }).version, 2);
    assert.deepEqual((put.json() as { required_variables: string[] }).required_variables, ['link', 'name']);

    const latest = (await t.request('GET', `/v1/templates/${code}`)).json() as {
      version: number;
      subject: string;
    };
    assert.equal(latest.version, 2);
    assert.equal(
      ((await t.request('GET', `/v1/templates/${code}?version=1`)).json() as { subject: string }).subject,
      'Welcome, {{name}}',
    );
    assert.equal((await t.request('GET', `/v1/templates/${code}?version=9`)).statusCode, 404);

    const versions = (await t.request('GET', `/v1/templates/${code}/versions`)).json() as {
      data: { version: number }[];
    };
    assert.deepEqual(
      versions.data.map((v) => v.version),
      [1, 2],
    );
    const list = (await t.request('GET', '/v1/templates?limit=100')).json() as {
      data: { code: string; version: number }[];
    };
    assert.equal(list.data.find((item) => item.code === code)?.version, 2);

    // Pinned to version 1: its subject and HTML, not version 2's.
    const id = await t.send({
      to: ['ada@example.com'],
      template: code,
      template_version: 1,
      variables: { name: 'Ada' },
    });
    const view = await t.waitForStatus(id, 'sent');
    assert.equal(view['subject'], 'Welcome, Ada');
    const unpinned = await t.send({
      to: ['ada@example.com'],
      template: code,
      variables: { name: 'Ada', link: 'https://x.test/' },
    });
    assert.equal((await t.waitForStatus(unpinned, 'sent'))['subject'], 'Hello Ada');

    const missingVersion = await t.request('POST', '/v1/emails', {
      to: ['a@example.com'],
      template: code,
      template_version: 7,
      variables: {},
    });
    assert.equal(missingVersion.statusCode, 400);
    hasProblem(missingVersion, 'template_version', 'unknown_template');

    assert.equal((await t.request('DELETE', `/v1/templates/${code}`)).statusCode, 204);
    assert.equal((await t.request('GET', `/v1/templates/${code}`)).statusCode, 404);
    assert.equal((await t.request('DELETE', `/v1/templates/${code}`)).statusCode, 404);
    // An email accepted before the delete keeps its content.
    assert.equal((await t.waitForStatus(id, 'sent'))['subject'], 'Welcome, Ada');
  });

  test('a templated email arrives at the sink: HTML escaped, subject and text not, text made from HTML', async () => {
    const code = fresh('receipt');
    await create({
      code,
      subject: 'Order {{order.id}} for {{name}}',
      html: '<h1>Thanks {{name}}</h1><p>Total: {{order.total}}</p><ul>{{#each order.items}}<li>{{this}}</li>{{/each}}</ul><p><a href="{{link}}">See it</a></p>',
    });
    const variables = {
      name: 'Tom & "Jerry" <script>',
      order: { id: 'A-1', total: '12 €', items: ['<b>tea</b>', 'cake'] },
      link: 'https://shop.test/o/A-1',
    };
    const preview = await t.request('POST', `/v1/templates/${code}/preview`, { variables });
    assert.equal(preview.statusCode, 200, preview.body);
    const shown = preview.json() as { subject: string; html: string; text: string };
    assert.equal(shown.subject, 'Order A-1 for Tom & "Jerry" <script>');
    assert.ok(shown.html.includes('Thanks Tom &amp; &quot;Jerry&quot; &lt;script&gt;'), shown.html);
    assert.ok(shown.html.includes('<li>&lt;b&gt;tea&lt;/b&gt;</li>'), shown.html);
    assert.ok(!shown.html.includes('<script>'));
    assert.match(shown.text, /THANKS TOM & "JERRY" <SCRIPT>/);
    assert.match(shown.text, /See it \[https:\/\/shop\.test\/o\/A-1\]/);

    const id = await t.send({ to: ['tom@example.com'], template: code, variables });
    const view = await t.waitForStatus(id, 'sent');
    const found = t.sink.messages().filter((message) => message.messageId === view.message_id);
    assert.equal(found.length, 1);
    const mail = await simpleParser(found[0]!.raw);
    assert.equal(mail.subject, 'Order A-1 for Tom & "Jerry" <script>');
    assert.equal(mail.html, shown.html);
    assert.equal(mail.text?.trim(), shown.text.trim());
  });

  test('a missing required variable is a 400 naming it; nothing is stored', async () => {
    const code = fresh('notice');
    await create({ code, subject: 'Hi {{user.name}}', text: 'Code {{code}} {{#if extra}}{{extra}}{{/if}}' });
    const before = await jobCount();
    const response = await t.request('POST', '/v1/emails', {
      to: ['a@example.com'],
      template: code,
      variables: { user: { nick: 'x' } },
    });
    assert.equal(response.statusCode, 400, response.body);
    hasProblem(response, 'variables.user.name', 'required');
    hasProblem(response, 'variables.code', 'required');
    assert.equal(problems(response).length, 2, 'extra is optional: it is only used inside {{#if}}');
    assert.equal(await jobCount(), before);

    const both = await t.request('POST', '/v1/emails', {
      to: ['a@example.com'],
      template: code,
      subject: 'x',
      variables: {},
    });
    hasProblem(both, 'subject', 'exclusive');
    const unknown = await t.request('POST', '/v1/emails', {
      to: ['a@example.com'],
      template: 'nope_nope',
      variables: {},
    });
    hasProblem(unknown, 'template', 'unknown_template');
    const stray = await t.request('POST', '/v1/emails', {
      to: ['a@example.com'],
      subject: 's',
      text: 't',
      variables: {},
    });
    hasProblem(stray, 'variables', 'required');
  });

  test('a template that fails while rendering is a 400 template_render_error; nothing is stored', async () => {
    const code = fresh('broken');
    // Saved (it parses), but Handlebars' #if needs an argument: it throws while rendering.
    await create({ code, subject: 'Hi', html: '<p>{{#if}}x{{/if}}</p>' });
    const before = await jobCount();
    const response = await t.request('POST', '/v1/emails', {
      to: ['a@example.com'],
      template: code,
      variables: {},
    });
    assert.equal(response.statusCode, 400, response.body);
    hasProblem(response, 'template', 'template_render_error');
    assert.equal(await jobCount(), before);
  });

  test('a subject that renders with CR/LF is refused, not sent as a header injection', async () => {
    const code = fresh('subj');
    await create({ code, subject: 'Hello {{name}}', text: 'x' });
    const response = await t.request('POST', '/v1/emails', {
      to: ['a@example.com'],
      template: code,
      variables: { name: 'x\r\nBcc: victim@example.com' },
    });
    assert.equal(response.statusCode, 400, response.body);
    hasProblem(response, 'subject', 'no_crlf');
  });

  test('hostile templates are refused when saved', async () => {
    const cases: [string, string][] = [
      ['{{constructor.constructor}}', 'constructor'],
      ['{{__proto__}}', '__proto__'],
      ['{{#with this}}{{constructor.name}}{{/with}}', 'constructor'],
      ['{{> header}}', 'partial'],
      ['{{#> layout}}x{{/layout}}', 'partial'],
      ['{{log "hello"}}', 'log'],
      ['{{exec "rm -rf /"}}', 'exec'],
      ['{{*decorator}}', 'Decorator'],
      ['{{#if a}}', 'Parse error'],
      [`${'{{#if a}}'.repeat(20)}x${'{{/if}}'.repeat(20)}`, 'nested'],
    ];
    for (const [html, expected] of cases) {
      const response = await t.request('POST', '/v1/templates', { code: fresh('evil'), subject: 'x', html });
      assert.equal(response.statusCode, 400, `${html}: ${response.body}`);
      const problem = problems(response).find((p) => p.field === 'html');
      assert.equal(problem?.rule, 'template_syntax', html);
      assert.ok(problem?.message?.includes(expected), `${html}: ${problem?.message}`);
    }
  });

  test('lookup cannot reach prototypes; variables named like internals render nothing', async () => {
    const code = fresh('lookup');
    await create({
      code,
      subject: 's',
      text: '[{{lookup this "constructor"}}][{{lookup this "__proto__"}}][{{lookup this "toString"}}][{{lookup obj key}}][{{#each obj}}{{@key}}={{this}};{{/each}}]',
    });
    const preview = await t.request('POST', `/v1/templates/${code}/preview`, {
      variables: { obj: { a: '1' }, key: 'hasOwnProperty' },
    });
    assert.equal(preview.statusCode, 200, preview.body);
    assert.equal((preview.json() as { text: string }).text, '[][][][][a=1;]');
  });

  test('huge outputs stop at the size limit: nested loops and a big variable printed many times', async () => {
    const loops = fresh('loops');
    await create({
      code: loops,
      subject: 's',
      text: '{{#each a}}{{#each ../a}}{{#each ../../a}}{{#each ../../../a}}xxxxxxxxxx{{/each}}{{/each}}{{/each}}{{/each}}',
    });
    const started = Date.now();
    const before = await jobCount();
    const response = await t.request('POST', '/v1/emails', {
      to: ['a@example.com'],
      template: loops,
      variables: { a: Array.from({ length: 1000 }, (_, i) => i) },
    });
    assert.equal(response.statusCode, 413, response.body);
    hasProblem(response, 'template', 'too_large');
    assert.ok(Date.now() - started < 2000, 'stopped early, not after 10^12 iterations');
    assert.equal(await jobCount(), before);

    const repeat = fresh('repeat');
    await create({ code: repeat, subject: 's', text: '{{x}}'.repeat(4000) });
    const preview = await t.request('POST', `/v1/templates/${repeat}/preview`, {
      variables: { x: 'y'.repeat(60_000) },
    });
    assert.equal(preview.statusCode, 413, preview.body);
    hasProblem(preview, 'template', 'too_large');

    const bigVariables = await t.request('POST', `/v1/templates/${repeat}/preview`, {
      variables: { x: 'y'.repeat(300_000) },
    });
    assert.equal(bigVariables.statusCode, 400, bigVariables.body);
    hasProblem(bigVariables, 'variables', 'max_length');

    const deep = await t.request('POST', `/v1/templates/${repeat}/preview`, {
      variables: { x: 'y', d: JSON.parse(`${'{"a":'.repeat(40)}1${'}'.repeat(40)}`) },
    });
    hasProblem(deep, 'variables', 'max_items');
  });

  test('MJML is compiled to HTML when saved; an MJML error is a 400; html and mjml together are refused', async () => {
    const code = fresh('mjml');
    const saved = await create({
      code,
      subject: 'Hi {{name}}',
      mjml: '<mjml><mj-body><mj-section><mj-column><mj-text>Hello {{name}}</mj-text><mj-button href="{{link}}">Open</mj-button></mj-column></mj-section></mj-body></mjml>',
    });
    assert.match(String(saved['html']), /<!doctype html>/i);
    assert.deepEqual(saved['required_variables'], ['link', 'name']);
    const preview = (
      await t.request('POST', `/v1/templates/${code}/preview`, {
        variables: { name: '<Ada>', link: 'https://x.test/' },
      })
    ).json() as { html: string; text: string };
    assert.ok(preview.html.includes('Hello &lt;Ada&gt;'));
    assert.ok(preview.html.includes('href="https://x.test/"'));
    assert.match(preview.text, /Hello <Ada>/);

    const bad = await t.request('POST', '/v1/templates', {
      code: fresh('mjml'),
      subject: 's',
      mjml: '<mjml><mj-body><mj-bogus /></mj-body></mjml>',
    });
    assert.equal(bad.statusCode, 400);
    hasProblem(bad, 'mjml', 'template_syntax');
    const both = await t.request('POST', '/v1/templates', {
      code: fresh('mjml'),
      subject: 's',
      html: '<p>x</p>',
      mjml: '<mjml></mjml>',
    });
    hasProblem(both, 'html', 'exclusive');
    const include = await t.request('POST', '/v1/templates', {
      code: fresh('mjml'),
      subject: 's',
      mjml: '<mjml><mj-body><mj-section><mj-column><mj-include path="/etc/passwd" /><mj-text>x</mj-text></mj-column></mj-section></mj-body></mjml>',
    });
    assert.ok(!include.body.includes('root:'), 'mj-include never reads a file');
  });

  test('template bodies are checked: code pattern, unknown fields, body required', async () => {
    const response = await t.request('POST', '/v1/templates', {
      code: 'has space',
      subject: 'x',
      colour: 'red',
    });
    assert.equal(response.statusCode, 400);
    hasProblem(response, 'code', 'pattern');
    hasProblem(response, 'colour', 'unknown_field');
    hasProblem(response, 'text', 'body_required');
    const crlf = await t.request('POST', '/v1/templates', { code: fresh('c'), subject: 'a\r\nb', text: 'x' });
    hasProblem(crlf, 'subject', 'no_crlf');
  });
});
