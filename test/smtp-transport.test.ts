/**
 * The SMTP transport against a real SMTP sink on loopback, where its connection pool meets a relay
 * that goes away and comes back.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SmtpTransport } from '../src/transport/smtp/smtp-transport.js';
import type { OutgoingMessage } from '../src/transport/transport.js';
import { SmtpSink } from './support/smtp-sink.js';

function message(n: number): OutgoingMessage {
  const messageId = `<pool-${n}@mailroom.test>`;
  return {
    jobId: `job-${n}`,
    messageId,
    envelope: { from: 'sender@acme.test', to: ['rcpt@example.com'] },
    raw: Buffer.from(`Message-ID: ${messageId}\r\nSubject: ${n}\r\n\r\nhello\r\n`),
  };
}

describe('SmtpTransport with a relay that refuses connections', () => {
  const sink = new SmtpSink();
  let transport: SmtpTransport;
  before(async () => {
    await sink.start();
    transport = new SmtpTransport({ url: `smtp://127.0.0.1:${sink.port}`, pool: 2, timeoutMs: 1500 });
  });
  after(async () => {
    await transport.close();
    await sink.close();
  });

  test('every send answers (transient) while it is down, more sends than pooled connections', {
    timeout: 20_000,
  }, async () => {
    const warm = await Promise.all([1, 2, 3].map((n) => transport.send(message(n))));
    assert.deepEqual(
      warm.map((result) => result.kind),
      ['accepted', 'accepted', 'accepted'],
    );
    await sink.setBehaviour('refuse');
    // nodemailer 7's pool leaked a connection slot for each failed connect made through a custom
    // getSocket: after two, these sends would wait forever. The test runner's timeout catches that.
    const down = await Promise.all(Array.from({ length: 8 }, (_, i) => transport.send(message(10 + i))));
    assert.deepEqual(
      down.map((result) => [result.kind, result.kind === 'accepted' ? '' : result.code]),
      Array.from({ length: 8 }, () => ['transient', 'SMTP_TRANSIENT']),
    );
  });

  test('once the relay is back, sends go through again', async () => {
    await sink.setBehaviour('accept');
    const back = await Promise.all(Array.from({ length: 4 }, (_, i) => transport.send(message(20 + i))));
    assert.deepEqual(
      back.map((result) => result.kind),
      ['accepted', 'accepted', 'accepted', 'accepted'],
    );
    assert.equal(sink.messages().length, 7);
  });
});
