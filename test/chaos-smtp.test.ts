/**
 * MAILROOM_CHAOS around the real SMTP transport, sending to the dev inbox on loopback: exactly the
 * sends the chaos let through arrive, and the ones it failed never leave the process.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { DevInbox } from '../src/inbox/dev-inbox.js';
import { ChaosTransport } from '../src/transport/chaos/chaos-transport.js';
import { parseChaos } from '../src/transport/chaos/parse-chaos.js';
import { SmtpTransport } from '../src/transport/smtp/smtp-transport.js';
import type { OutgoingMessage, SendResult } from '../src/transport/transport.js';

const SENDS = 200;

function outgoing(n: number): OutgoingMessage {
  const messageId = `<chaos-${n}@mailroom.test>`;
  const raw = Buffer.from(
    [
      'From: Mailroom <noreply@mailroom.test>',
      'To: jane@example.com',
      `Subject: chaos ${n}`,
      `Message-ID: ${messageId}`,
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=utf-8',
      '',
      `message ${n}`,
      '',
    ].join('\r\n'),
  );
  return {
    jobId: `job-${n}`,
    messageId,
    envelope: { from: 'noreply@mailroom.test', to: ['jane@example.com'] },
    raw,
  };
}

describe('ChaosTransport around SmtpTransport and the dev inbox', () => {
  const inbox = new DevInbox({
    host: '127.0.0.1',
    smtpPort: 0,
    maxMessages: SENDS * 2,
    maxMessageBytes: 1024 * 1024,
    logger: pino({ level: 'silent' }),
  });
  let chaos: ChaosTransport;

  before(async () => {
    await inbox.start();
    const smtp = new SmtpTransport({ url: `smtp://127.0.0.1:${inbox.port}`, pool: 2, timeoutMs: 5000 });
    chaos = new ChaosTransport(smtp, parseChaos('error_rate=0.5,seed=7'));
  });

  after(async () => {
    await chaos.close();
    await inbox.close();
  });

  test('exactly the accepted messages arrive; the failed ones are never sent', async () => {
    const results = new Map<string, SendResult>();
    await Promise.all(
      Array.from({ length: SENDS }, async (_, n) => {
        const message = outgoing(n);
        results.set(message.messageId, await chaos.send(message));
      }),
    );

    const accepted = [...results].filter(([, result]) => result.kind === 'accepted').map(([id]) => id);
    const failed = [...results].filter(([, result]) => result.kind !== 'accepted');
    // Seeded, so the same every run; still, about half (5 σ of a binomial(200, 0.5) is ±35).
    assert.ok(Math.abs(accepted.length - SENDS / 2) <= 35, `${accepted.length} of ${SENDS} accepted`);
    for (const [id, result] of failed) {
      assert.equal(result.kind, 'transient', id);
      assert.match((result as { message: string }).message, /injected by MAILROOM_CHAOS/);
    }

    // The inbox answers 250 only after storing, so every accepted message is there by now.
    const arrived = inbox.list().map((summary) => summary.message_id);
    assert.equal(arrived.length, accepted.length);
    assert.deepEqual(new Set(arrived), new Set(accepted));
  });
});
