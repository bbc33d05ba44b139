import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { installTracing, type Tracing } from '../telemetry/tracing.js';
import { createLogger } from './logger.js';

function capture(): { lines: () => Record<string, unknown>[]; stream: Writable; text: () => string } {
  let text = '';
  const stream = new Writable({
    write(chunk, _encoding, done) {
      text += chunk.toString();
      done();
    },
  });
  return {
    stream,
    text: () => text,
    lines: () =>
      text
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as Record<string, unknown>),
  };
}

test('secrets are redacted: Authorization, API keys, URLs with passwords, webhook secrets', () => {
  const out = capture();
  const logger = createLogger({ level: 'info', pretty: false, destination: out.stream });
  logger.info(
    {
      req: { headers: { authorization: 'Bearer sk-live-123' } },
      apiKey: 'key-456',
      smtpUrl: 'smtp://user:hunter2@relay.example.com',
      secret: 'whsec_top',
      webhook: { url: 'https://example.com/hook', secret: 'whsec_nested' },
    },
    'line with secrets',
  );
  for (const secret of ['sk-live-123', 'key-456', 'hunter2', 'whsec_top', 'whsec_nested']) {
    assert.ok(!out.text().includes(secret), `${secret} leaked: ${out.text()}`);
  }
  assert.equal((out.lines()[0]!.webhook as Record<string, unknown>).secret, '[redacted]');
});

test('secrets one level down and in error messages are redacted too', () => {
  const out = capture();
  const logger = createLogger({ level: 'info', pretty: false, destination: out.stream });
  logger.info(
    {
      config: {
        apiKeys: ['key-nested'],
        databaseUrl: 'postgres://app:pg-secret@db/mailroom',
        redisUrl: 'redis://:redis-secret@cache:6379',
        statusCallbackSecret: 'whsec_callback',
      },
      statusCallbackUrl: 'https://hooks.example/cb?token=cb-token',
    },
    'nested',
  );
  logger.error(
    { err: new Error('connect failed for amqp://guest:amqp-secret@rabbit:5672/ (ECONNREFUSED)') },
    'an error that quotes its URL',
  );
  for (const secret of [
    'key-nested',
    'pg-secret',
    'redis-secret',
    'whsec_callback',
    'cb-token',
    'amqp-secret',
  ]) {
    assert.ok(!out.text().includes(secret), `${secret} leaked: ${out.text()}`);
  }
  const err = out.lines()[1]!.err as Record<string, unknown>;
  assert.equal(err.message, 'connect failed for amqp://[redacted]@rabbit:5672/ (ECONNREFUSED)');
  assert.equal(err.type, 'Error', 'still the standard serializer');
});

test('with tracing on, lines carry the active trace_id and span_id', () => {
  const ids = { trace_id: '0af7651916cd43dd8448eb211c80319c', span_id: 'b7ad6b7169203331' };
  installTracing({ activeIds: () => ids } as unknown as Tracing);
  const out = capture();
  createLogger({ level: 'info', pretty: false, destination: out.stream }).info(
    { job_id: 'j1' },
    'about a job',
  );
  assert.equal(out.lines()[0]!.trace_id, ids.trace_id);
  assert.equal(out.lines()[0]!.span_id, ids.span_id);
});
