/**
 * OpenTelemetry traces across processes: an API process and a worker process export spans to a
 * local OTLP/HTTP receiver, and one email's spans form one trace, from the HTTP request through the
 * store commit, the broker and the claim to the SMTP send, over each broker. Also: the job's
 * details name the trace, and log lines about the job carry trace_id and span_id.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, type TestContext, test } from 'node:test';
import { type MailroomProcess, startMailroomProcess } from './support/mailroom-process.js';
import { OtlpReceiver, type ReceivedSpan } from './support/otlp-receiver.js';
import { setUpScaledOut } from './support/scaled-out-cluster.js';
import { AMQP_URL, NATS_URL, POSTGRES_URL, serviceAvailable } from './support/services.js';
import { SmtpSink } from './support/smtp-sink.js';
import { waitFor } from './support/wait-for.js';
import { WebhookReceiver } from './support/webhook-receiver.js';

const postgres = await serviceAvailable('PostgreSQL', POSTGRES_URL);
const rabbitmq = postgres && (await serviceAvailable('RabbitMQ', AMQP_URL));
const nats = postgres && (await serviceAvailable('NATS', NATS_URL));

const EMAIL = { from: 'app@example.com', to: ['alice@example.com'], subject: 'Traced', text: 'Hello.' };

async function startReceiver(
  t: TestContext,
): Promise<{ receiver: OtlpReceiver; env: Record<string, string> }> {
  const receiver = new OtlpReceiver();
  const endpoint = await receiver.start();
  t.after(() => receiver.close());
  return {
    receiver,
    env: {
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      // Export within a tenth of a second, so the test waits little.
      OTEL_BSP_SCHEDULE_DELAY: '100',
      MAILROOM_ENV: 'tracing-test',
      LOG_LEVEL: 'debug',
    },
  };
}

/** Which process a span came from: set per process through OTEL_RESOURCE_ATTRIBUTES. */
/** `mailroom start` on SQLite in a temporary data directory, sending to a sink; gone after the test. */
async function startEmbedded(t: TestContext, env: Record<string, string>): Promise<MailroomProcess> {
  const sink = new SmtpSink();
  await sink.start();
  const dataDir = mkdtempSync(join(tmpdir(), 'mailroom-tracing-'));
  const mailroom = await startMailroomProcess({
    ...env,
    MAILROOM_PORT: '0',
    MAILROOM_DATA_DIR: dataDir,
    MAILROOM_SMTP_URL: `smtp://127.0.0.1:${sink.port}`,
  });
  t.after(async () => {
    await mailroom.stop('SIGKILL');
    await sink.close();
    rmSync(dataDir, { recursive: true, force: true });
  });
  return mailroom;
}

const role = (name: string) => ({ OTEL_RESOURCE_ATTRIBUTES: `mailroom.role=${name}` });
const roleOf = (span: ReceivedSpan) => span.resource['mailroom.role'];

/**
 * Sends one email through `api`, waits until the worker's send span arrived, and checks the trace:
 * one trace id from the HTTP server span to the send, parents that chain back to the HTTP span
 * across the process boundary, the job id on Mailroom's spans, the trace id in the job's details.
 */
async function checkOneTrace(
  receiver: OtlpReceiver,
  api: MailroomProcess,
  processes: readonly MailroomProcess[],
  broker: string,
): Promise<void> {
  const accepted = await api.request('POST', '/v1/emails', EMAIL);
  assert.equal(accepted.status, 202, JSON.stringify(accepted.body));
  const id = String(accepted.body.id);
  const output = () => processes.map((p) => p.output()).join('\n---\n');

  const send = await waitFor(
    'the send span of the email',
    () =>
      receiver.spans.find((span) => span.name === 'send smtp' && span.attributes['mailroom.job_id'] === id),
    15_000,
    50,
  ).catch((error: Error) => {
    throw new Error(`${error.message}\nspans: ${receiver.spans.map((s) => s.name).join(', ')}\n${output()}`);
  });
  assert.equal(send.attributes['mailroom.smtp.response_code'], 250);
  assert.equal(send.kind, 3, 'send is a client span');
  assert.equal(roleOf(send), processes.length > 1 ? 'worker' : 'all');

  // The HTTP server span, named by route, in the same trace.
  const http = await waitFor('the HTTP server span', () =>
    receiver.trace(send.traceId).find((span) => span.name === 'POST /v1/emails'),
  );
  assert.equal(http.kind, 2, 'server span');
  assert.equal(http.attributes['http.route'], '/v1/emails');
  assert.equal(http.resource['service.name'], 'mailroom');
  assert.equal(http.resource['deployment.environment'], 'tracing-test');
  assert.ok(http.resource['service.version'], 'service.version');

  // Every span from the send up to the root is in this trace and received: the chain is unbroken.
  const trace = receiver.trace(send.traceId);
  const byId = new Map(trace.map((span) => [span.spanId, span]));
  const chain: ReceivedSpan[] = [send];
  for (let span = send; span.parentSpanId !== ''; ) {
    const parent = byId.get(span.parentSpanId);
    assert.ok(parent, `the parent of ${span.name} is in the trace (${trace.map((s) => s.name).join(', ')})`);
    chain.push(parent);
    span = parent;
  }
  const names = chain.map((span) => span.name);
  assert.equal(chain.at(-1), http, `the chain ends at the HTTP span: ${names.join(' ← ')}`);
  assert.ok(names.includes('store commit'), names.join(' ← '));
  const processSpan = chain.find((span) => span.name === 'process');
  assert.ok(processSpan, names.join(' ← '));
  assert.equal(processSpan.kind, 5, 'process is a consumer span');
  assert.equal(processSpan.attributes['mailroom.job_id'], id);
  assert.equal(processSpan.attributes['messaging.system'], broker);
  if (processes.length > 1) {
    // Crosses the process boundary: the API made the start, the worker the end.
    assert.equal(roleOf(processSpan), 'worker');
    assert.equal(roleOf(http), 'api');
  }
  // The claim is the process span's child, with the job id.
  const claim = trace.find((span) => span.name === 'claim' && span.parentSpanId === processSpan.spanId);
  assert.equal(claim?.attributes['mailroom.job_id'], id);
  // The group commit is a trace of its own, linked to this request's commit span.
  const commit = chain.find((span) => span.name === 'store commit')!;
  const group = await waitFor('the group commit linked to the request', () =>
    receiver.spans.find(
      (span) =>
        span.name === 'store group commit' && span.links.some((link) => link.spanId === commit.spanId),
    ),
  );
  assert.equal(group.parentSpanId, '');

  // The job's details name the trace.
  const job = await api.request('GET', `/v1/emails/${id}`);
  assert.equal(job.body.events[0].detail.trace_id, send.traceId);
  assert.match(job.body.events[0].detail.traceparent, new RegExp(`^00-${send.traceId}-`));

  // Log lines about the job carry the trace.
  await waitFor('the sent log line', () => processes.some((p) => p.logs('sent').length > 0));
  const sentLine = processes.flatMap((p) => p.logs('sent')).find((line) => line.job_id === id);
  assert.equal(sentLine?.trace_id, send.traceId, 'trace_id on the worker line');
  assert.match(String(sentLine?.span_id), /^[0-9a-f]{16}$/);
  const acceptedLine = api.logs('accepted').find((line) => line.job_id === id);
  assert.equal(acceptedLine?.trace_id, send.traceId, 'trace_id on the API line');
}

describe('traces across processes', () => {
  test('RabbitMQ shape: mailroom api and mailroom worker share one trace per email', {
    skip: !rabbitmq,
  }, async (t) => {
    const { receiver, env } = await startReceiver(t);
    const { cluster } = await setUpScaledOut(t, env);
    const api = await cluster.api(role('api'));
    const { process: worker } = await cluster.worker(role('worker'));
    await checkOneTrace(receiver, api, [api, worker], 'rabbitmq');
    // amqplib's instrumentation: its producer span joined the email's trace.
    assert.ok(receiver.spans.some((span) => span.kind === 4 && span.name.startsWith('publish')));
  });

  test('NATS shape: the same, with Mailroom’s own producer span', { skip: !nats }, async (t) => {
    const { receiver, env } = await startReceiver(t);
    const { cluster } = await setUpScaledOut(t, env, 'nats');
    const api = await cluster.api(role('api'));
    const { process: worker } = await cluster.worker(role('worker'));
    await checkOneTrace(receiver, api, [api, worker], 'nats');
    const producer = receiver.spans.find((span) => span.kind === 4);
    assert.equal(producer?.attributes['messaging.system'], 'nats');
  });

  test('embedded broker on PostgreSQL: the worker reads the saved context at claim time', {
    skip: !postgres,
  }, async (t) => {
    const { receiver, env } = await startReceiver(t);
    const { cluster } = await setUpScaledOut(t, { ...env, MAILROOM_BROKER_URL: 'embedded' });
    const api = await cluster.api(role('api'));
    const { process: worker } = await cluster.worker(role('worker'));
    await checkOneTrace(receiver, api, [api, worker], 'embedded');
  });

  test('embedded shape (SQLite, mailroom start): one process, the same trace', async (t) => {
    const { receiver, env } = await startReceiver(t);
    const mailroom = await startEmbedded(t, { ...env, ...role('all') });
    await checkOneTrace(receiver, mailroom, [mailroom], 'embedded');
  });

  test('webhook POSTs are not traced: no span exports a receiver’s URL, no trace context reaches it', async (t) => {
    const { receiver, env } = await startReceiver(t);
    const hooks = new WebhookReceiver();
    await hooks.start();
    t.after(() => hooks.close());
    const mailroom = await startEmbedded(t, { ...env, MAILROOM_WEBHOOKS_ALLOW_PRIVATE: '1' });
    const path = '/hooks/token-in-the-path-s3cr3t';
    const registered = await mailroom.request('POST', '/v1/webhooks', {
      url: hooks.url(path),
      events: ['email.sent'],
    });
    assert.equal(registered.status, 201, JSON.stringify(registered.body));
    const accepted = await mailroom.request('POST', '/v1/emails', EMAIL);
    const id = String(accepted.body.id);
    await waitFor('the webhook', () => hooks.at(path).length > 0, 15_000, 50);
    // The send span is exported with the same batch delay as any span the POST would have made.
    await waitFor('the send span', () =>
      receiver.spans.some((span) => span.name === 'send smtp' && span.attributes['mailroom.job_id'] === id),
    );
    await new Promise((resolve) => setTimeout(resolve, 300)); // two export intervals more
    assert.deepEqual(
      receiver.spans.filter((span) => JSON.stringify(span.attributes).includes('s3cr3t')).map((s) => s.name),
      [],
    );
    assert.equal(hooks.at(path)[0]!.headers.traceparent, undefined);
  });
});

describe('tracing off', () => {
  test('no OTLP endpoint: no trace in the job details, no trace ids in logs', async (t) => {
    const mailroom = await startEmbedded(t, { LOG_LEVEL: 'debug' });
    const accepted = await mailroom.request('POST', '/v1/emails', EMAIL);
    const id = String(accepted.body.id);
    await waitFor('the sent line', () => mailroom.logs('sent').some((line) => line.job_id === id));
    const job = await mailroom.request('GET', `/v1/emails/${id}`);
    assert.deepEqual(job.body.events[0].detail, {});
    assert.ok(mailroom.logs('').every((line) => line.trace_id === undefined));
  });
});
