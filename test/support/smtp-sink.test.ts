import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import nodemailer from 'nodemailer';
import type SMTPTransport from 'nodemailer/lib/smtp-transport/index.js';
import type { SinkMessage } from './smtp-sink.js';
import { SmtpSink } from './smtp-sink.js';

interface SendFailure {
  readonly code: string | undefined;
  readonly responseCode: number | undefined;
  readonly command: string | undefined;
  readonly message: string;
}

interface MailOverrides {
  readonly to?: string | string[];
  readonly messageId?: string;
  readonly socketTimeout?: number;
}

function send(port: number, overrides: MailOverrides = {}): Promise<SMTPTransport.SentMessageInfo> {
  const transport = nodemailer.createTransport({
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    connectionTimeout: 2_000,
    greetingTimeout: 2_000,
    socketTimeout: overrides.socketTimeout ?? 5_000,
  });
  return transport
    .sendMail({
      from: 'sender@example.com',
      to: overrides.to ?? 'rcpt@example.com',
      subject: 'Sink test',
      text: 'Hello from the sink test',
      ...(overrides.messageId === undefined ? {} : { messageId: overrides.messageId }),
    })
    .finally(() => transport.close());
}

async function sendFailure(port: number, overrides: MailOverrides = {}): Promise<SendFailure> {
  try {
    const info = await send(port, overrides);
    assert.fail(`expected the send to fail, got ${info.response}`);
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    const e = err as Error & { code?: string; responseCode?: number; command?: string };
    return { code: e.code, responseCode: e.responseCode, command: e.command, message: e.message };
  }
}

describe('SmtpSink', () => {
  const sink = new SmtpSink();

  before(async () => {
    await sink.start();
  });

  after(async () => {
    await sink.close();
  });

  beforeEach(async () => {
    sink.onMessage = undefined;
    sink.delayMs = 1000;
    await sink.reset();
  });

  test('accept records the message, its Message-ID and envelope', async () => {
    const seen: SinkMessage[] = [];
    sink.onMessage = (message) => seen.push(message);
    const before = Date.now();

    const info = await send(sink.port, { to: ['a@example.com', 'b@example.com'] });
    await sink.waitForCount(1, 2_000);

    assert.match(info.response, /^250 /);
    const [message] = sink.messages();
    assert.ok(message);
    assert.equal(message.messageId, info.messageId);
    assert.match(message.messageId, /^<.+@example\.com>$/);
    assert.deepEqual(message.envelope, {
      from: 'sender@example.com',
      to: ['a@example.com', 'b@example.com'],
    });
    assert.match(message.raw.toString(), /Subject: Sink test/);
    assert.ok(message.receivedAt >= before && message.receivedAt <= Date.now());
    assert.deepEqual(seen, [message]);
    assert.equal(sink.attempts.accept, 1);
  });

  test('tempfail answers 451 at the end of DATA: nodemailer reports EMESSAGE', async () => {
    await sink.setBehaviour('tempfail');
    const failure = await sendFailure(sink.port);
    assert.equal(failure.responseCode, 451);
    assert.equal(failure.code, 'EMESSAGE');
    assert.equal(failure.command, 'DATA');
    assert.match(failure.message, /451 4\.3\.0/);
    assert.equal(sink.messages().length, 0);
    assert.equal(sink.attempts.tempfail, 1);
  });

  test('tempfail-rcpt answers 450 at RCPT TO: nodemailer reports EENVELOPE', async () => {
    await sink.setBehaviour('tempfail-rcpt');
    const failure = await sendFailure(sink.port);
    assert.equal(failure.responseCode, 450);
    assert.equal(failure.code, 'EENVELOPE');
    assert.equal(failure.command, 'RCPT TO');
    assert.equal(sink.attempts['tempfail-rcpt'], 1);
  });

  test('throttle-rcpt answers 421 4.7.0 at RCPT TO: nodemailer reports it with the command', async () => {
    await sink.setBehaviour('throttle-rcpt');
    const failure = await sendFailure(sink.port);
    assert.equal(failure.responseCode, 421);
    assert.equal(failure.command, 'RCPT TO');
    assert.equal(sink.attempts['throttle-rcpt'], 1);
  });

  test('permfail answers 550 5.1.1 at RCPT TO: nodemailer reports EENVELOPE', async () => {
    await sink.setBehaviour('permfail');
    const failure = await sendFailure(sink.port);
    assert.equal(failure.responseCode, 550);
    assert.equal(failure.code, 'EENVELOPE');
    assert.equal(failure.command, 'RCPT TO');
    assert.match(failure.message, /550 5\.1\.1/);
    assert.equal(sink.attempts.permfail, 1);
  });

  test('permfail-data answers 554 at the end of DATA: nodemailer reports EMESSAGE', async () => {
    await sink.setBehaviour('permfail-data');
    const failure = await sendFailure(sink.port);
    assert.equal(failure.responseCode, 554);
    assert.equal(failure.code, 'EMESSAGE');
    assert.equal(failure.command, 'DATA');
    assert.equal(sink.messages().length, 0);
    assert.equal(sink.attempts['permfail-data'], 1);
  });

  test('stall never answers: nodemailer times out with ETIMEDOUT and no responseCode', async () => {
    await sink.setBehaviour('stall');
    const failure = await sendFailure(sink.port, { socketTimeout: 300 });
    assert.equal(failure.code, 'ETIMEDOUT');
    assert.equal(failure.responseCode, undefined);
    assert.equal(sink.attempts.stall, 1);
    assert.equal(sink.messages().length, 0);
  });

  test('a stalled transaction is answered once the behaviour changes', async () => {
    await sink.setBehaviour('stall');
    const pending = send(sink.port);
    await sink.waitForAttempts('stall', 1, 2_000);
    assert.equal(sink.messages().length, 0);

    await sink.setBehaviour('accept');
    const info = await pending;
    assert.match(info.response, /^250 /);
    assert.equal(sink.messages()[0]?.messageId, info.messageId);
  });

  test('delay answers 250 after delayMs and records the message only then', async () => {
    sink.delayMs = 300;
    await sink.setBehaviour('delay');
    const started = Date.now();
    const pending = send(sink.port);
    await sink.waitForAttempts('delay', 1, 2_000);
    assert.equal(sink.messages().length, 0, 'recorded before the 250');

    const info = await pending;
    assert.match(info.response, /^250 /);
    assert.ok(Date.now() - started >= 300, 'answered before the delay was over');
    assert.equal(sink.messages()[0]?.messageId, info.messageId);
    assert.equal(sink.attempts.delay, 1);
    assert.equal(sink.attempts.accept, 1);
  });

  test('delayed transactions run in parallel and keep their answer when the behaviour changes', async () => {
    sink.delayMs = 300;
    await sink.setBehaviour('delay');
    const pending = Promise.all([send(sink.port), send(sink.port)]);
    await sink.waitForAttempts('delay', 2, 2_000);
    await sink.setBehaviour('permfail');

    const infos = await pending;
    assert.deepEqual(
      infos.map((info) => info.response.slice(0, 3)),
      ['250', '250'],
    );
    assert.equal(sink.messages().length, 2);
  });

  test('a client that leaves during the delay is not recorded', async () => {
    sink.delayMs = 500;
    await sink.setBehaviour('delay');
    const failure = await sendFailure(sink.port, { socketTimeout: 250 });
    assert.equal(failure.code, 'ETIMEDOUT');
    assert.equal(sink.attempts.delay, 1, 'the message was in and waiting when the client gave up');
    // Sent after the first one gave up, so answered after the first one's delay was over too.
    const info = await send(sink.port);

    assert.deepEqual(
      sink.messages().map((message) => message.messageId),
      [info.messageId],
    );
    assert.equal(sink.attempts.delay, 2);
  });

  test('drop destroys the connection: nodemailer reports ECONNECTION and no responseCode', async () => {
    await sink.setBehaviour('drop');
    const failure = await sendFailure(sink.port);
    assert.equal(failure.code, 'ECONNECTION');
    assert.equal(failure.responseCode, undefined);
    assert.equal(sink.attempts.drop, 1);
    assert.equal(sink.messages().length, 0);
  });

  test('refuse stops listening (ESOCKET, ECONNREFUSED) and switching back listens on the same port', async () => {
    const port = sink.port;
    await sink.setBehaviour('refuse');
    const failure = await sendFailure(port);
    assert.equal(failure.code, 'ESOCKET');
    assert.equal(failure.responseCode, undefined);
    assert.match(failure.message, /ECONNREFUSED/);

    await sink.setBehaviour('accept');
    assert.equal(sink.port, port);
    await send(port);
    assert.equal(sink.messages().length, 1);
  });

  test('refuse also drops connections that were already open', async () => {
    const transport = nodemailer.createTransport({
      pool: true,
      host: '127.0.0.1',
      port: sink.port,
      secure: false,
      ignoreTLS: true,
      socketTimeout: 2_000,
    });
    try {
      await transport.sendMail({ from: 'sender@example.com', to: 'rcpt@example.com', text: 'first' });
      await sink.setBehaviour('refuse');
      await assert.rejects(
        transport.sendMail({ from: 'sender@example.com', to: 'rcpt@example.com', text: 'second' }),
        (err: Error & { code?: string }) => ['ESOCKET', 'ECONNECTION'].includes(err.code ?? ''),
      );
    } finally {
      transport.close();
    }
    assert.equal(sink.messages().length, 1);
  });

  test('a behaviour function decides per recipient and sees the transaction sequence', async () => {
    const contexts: { rcpt: string; mailFrom: string; sequence: number }[] = [];
    await sink.setBehaviour((ctx) => {
      contexts.push({ ...ctx });
      if (ctx.sequence === 0) return 'tempfail';
      return ctx.rcpt === 'bad@example.com' ? 'permfail' : 'accept';
    });

    const first = await sendFailure(sink.port);
    assert.equal(first.responseCode, 451);
    const info = await send(sink.port, { to: ['good@example.com', 'bad@example.com'] });

    assert.deepEqual(info.accepted, ['good@example.com']);
    assert.deepEqual(info.rejected, ['bad@example.com']);
    assert.deepEqual(sink.messages()[0]?.envelope.to, ['good@example.com']);
    assert.deepEqual(contexts, [
      { rcpt: 'rcpt@example.com', mailFrom: 'sender@example.com', sequence: 0 },
      { rcpt: 'good@example.com', mailFrom: 'sender@example.com', sequence: 1 },
      { rcpt: 'bad@example.com', mailFrom: 'sender@example.com', sequence: 1 },
    ]);
    assert.deepEqual(sink.attempts, {
      accept: 1,
      tempfail: 1,
      'tempfail-rcpt': 0,
      'throttle-rcpt': 0,
      permfail: 1,
      'permfail-data': 0,
      stall: 0,
      delay: 0,
      drop: 0,
      refuse: 0,
    });
  });

  test('countByMessageId and duplicates find a message delivered twice', async () => {
    await send(sink.port, { messageId: '<dup@mailroom.test>' });
    await send(sink.port, { messageId: '<dup@mailroom.test>' });
    const once = await send(sink.port);

    assert.deepEqual(
      sink.countByMessageId(),
      new Map([
        ['<dup@mailroom.test>', 2],
        [once.messageId, 1],
      ]),
    );
    assert.deepEqual(sink.duplicates(), ['<dup@mailroom.test>']);
  });

  test('waitForCount rejects with the count it saw on timeout', async () => {
    await send(sink.port);
    await assert.rejects(sink.waitForCount(3, 50), {
      message: 'SmtpSink.waitForCount: expected 3 messages within 50 ms, got 1',
    });
  });

  test('waitForCount resolves as messages arrive', async () => {
    const waiting = sink.waitForCount(2, 5_000);
    await Promise.all([send(sink.port), send(sink.port)]);
    await waiting;
    assert.equal(sink.messages().length, 2);
  });

  test('reset forgets messages and counters and goes back to accept', async () => {
    await sink.setBehaviour('permfail');
    await sendFailure(sink.port);
    await sink.reset();
    assert.equal(sink.attempts.permfail, 0);
    await send(sink.port);
    assert.equal(sink.messages().length, 1);
  });
});

describe('SmtpSink.close', () => {
  test('releases a stalled transaction and its socket', async () => {
    const sink = new SmtpSink({ behaviour: 'stall' });
    await sink.start();
    const pending = sendFailure(sink.port, { socketTimeout: 30_000 });
    await sink.waitForAttempts('stall', 1, 2_000);
    const waiting = assert.rejects(sink.waitForCount(1, 30_000), {
      message: 'SmtpSink: closed while waiting',
    });

    const started = Date.now();
    await sink.close();
    const failure = await pending;

    assert.ok(Date.now() - started < 2_000, 'close did not wait for the stalled client');
    assert.equal(failure.code, 'ECONNECTION');
    await waiting;
  });

  test('releases a delayed transaction at once and never records it', async () => {
    const sink = new SmtpSink({ behaviour: 'delay', delayMs: 30_000 });
    await sink.start();
    const pending = sendFailure(sink.port, { socketTimeout: 30_000 });
    await sink.waitForAttempts('delay', 1, 2_000);

    const started = Date.now();
    await sink.close();
    const failure = await pending;

    assert.ok(Date.now() - started < 2_000, 'close waited for the delay');
    assert.equal(failure.code, 'ECONNECTION');
    assert.equal(sink.messages().length, 0);
  });

  test('closes while refusing', async () => {
    const sink = new SmtpSink();
    await sink.start();
    await sink.setBehaviour('refuse');
    await sink.close();
  });
});
