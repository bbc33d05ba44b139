/**
 * A producer outside Mailroom publishes straight to RabbitMQ (docs/wire-contract.md): the email is
 * delivered and tracked like one from the API, a republish is a no-op, and a message that cannot be
 * read or breaks a rule goes to the dead-letter queue at once with its reason.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { create, toBinary } from '@bufbuild/protobuf';
import { encode as encodeMsgpack } from '@msgpack/msgpack';
import { type Channel, type ChannelModel, connect } from 'amqplib';
import { messageIdFor } from '../src/mime/message-id.js';
import { EmailJobSchema, Priority } from '../src/wire/gen/email_pb.js';
import { AMQP_URL, POSTGRES_URL, serviceAvailable } from './support/services.js';
import { type EmailView, startTestApp, type TestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';

const available =
  (await serviceAvailable('PostgreSQL', POSTGRES_URL)) && (await serviceAvailable('RabbitMQ', AMQP_URL));

describe('a producer outside Mailroom, publishing to RabbitMQ', { skip: !available }, () => {
  let mailroom: TestApp;
  let connection: ChannelModel;
  let channel: Channel;
  let queue: string;
  let deadLetterQueue: string;

  before(async () => {
    mailroom = await startTestApp({}, undefined, 'rabbitmq');
    queue = mailroom.app.config.amqpQueue;
    deadLetterQueue = mailroom.app.config.amqpDeadLetterQueue;
    connection = await connect(AMQP_URL);
    channel = await connection.createConfirmChannel();
  });

  after(async () => {
    await connection?.close();
    await mailroom?.stop();
  });

  /** Publishes to a work queue the way docs/wire-contract.md tells producers to, and waits for the confirm. */
  async function publish(body: Uint8Array, contentType: string | undefined, to = queue): Promise<void> {
    channel.sendToQueue(to, Buffer.from(body), {
      persistent: true,
      ...(contentType !== undefined && { contentType }),
    });
    await (channel as unknown as { waitForConfirms(): Promise<void> }).waitForConfirms();
  }

  async function emailsTagged(tag: string): Promise<EmailView[]> {
    const response = await mailroom.request('GET', `/v1/emails?tag=${tag}&limit=10`);
    return (response.json() as { data: EmailView[] }).data;
  }

  function copiesAtSink(messageId: string): number {
    return mailroom.sink.messages().filter((message) => message.messageId === messageId).length;
  }

  /** Takes the next message from the dead-letter queue, waiting for it to arrive. */
  async function nextDeadLetter() {
    return waitFor('a message in the dead-letter queue', async () => {
      const message = await channel.get(deadLetterQueue, { noAck: true });
      return message === false ? undefined : message;
    });
  }

  test('a protobuf email with an id is sent, tracked under that id, and a republish sends nothing more', async () => {
    const job = create(EmailJobSchema, {
      id: 'order-1001-receipt',
      from: 'Shop <shop@example.com>',
      to: ['alice@example.com'],
      subject: 'Your receipt',
      text: 'Thanks for order 1001.',
      priority: Priority.HIGH,
      tags: ['outside'],
    });
    const body = toBinary(EmailJobSchema, job);
    await publish(body, 'application/x-protobuf', `${queue}.high`);

    const sent = await mailroom.waitForStatus('order-1001-receipt', 'sent');
    assert.equal(sent.priority, 'high');
    assert.deepEqual(
      sent.events.map((event) => event.type),
      ['queued', 'processing', 'sent'],
    );
    const messageId = messageIdFor('order-1001-receipt', 'shop@example.com');
    assert.equal(sent.message_id, messageId);
    assert.equal(copiesAtSink(messageId), 1);

    // The same message again (at-least-once producers do this), then a marker behind it: once the
    // marker is sent, the republish has long been handled.
    await publish(body, 'application/x-protobuf', `${queue}.high`);
    await publish(
      toBinary(
        EmailJobSchema,
        create(EmailJobSchema, { ...job, id: 'order-1001-marker', subject: 'Marker', tags: [] }),
      ),
      'application/x-protobuf',
      `${queue}.high`,
    );
    await mailroom.waitForStatus('order-1001-marker', 'sent');
    assert.equal(copiesAtSink(messageId), 1, 'the republish sent nothing');
    assert.equal((await emailsTagged('outside')).length, 1);
  });

  test('JSON and MessagePack emails keyed by idempotency_key make one job each, however often published', async () => {
    const json = JSON.stringify({
      idempotencyKey: 'signup-42',
      from: 'hello@example.com',
      to: ['bob@example.com'],
      subject: 'Welcome',
      html: '<p>Welcome aboard</p>',
      tags: ['json-producer'],
    });
    const msgpack = encodeMsgpack({
      idempotency_key: 'signup-43',
      from: 'hello@example.com',
      to: ['carol@example.com'],
      subject: 'Welcome',
      text: 'Welcome aboard',
      tags: ['msgpack-producer'],
    });
    for (let i = 0; i < 3; i++) {
      await publish(Buffer.from(json), 'application/json; charset=utf-8');
      await publish(msgpack, 'application/msgpack');
    }
    for (const tag of ['json-producer', 'msgpack-producer']) {
      const [email] = await waitFor(`the ${tag} email sent`, async () => {
        const emails = await emailsTagged(tag);
        return emails.length > 0 && emails.every((view) => view.status === 'sent') ? emails : undefined;
      });
      assert.equal((await emailsTagged(tag)).length, 1, `one job for ${tag}`);
      assert.equal(copiesAtSink(email!.message_id), 1, `one email for ${tag}`);
    }
  });

  test('bytes that are not a message go to the dead-letter queue at once, with the reason', async () => {
    await publish(Buffer.from([0xff, 0x00, 0x13, 0x37]), 'application/x-protobuf');
    const dead = await nextDeadLetter();
    assert.equal(dead.properties.headers?.['x-mailroom-reason'], 'undecodable');
    assert.match(String(dead.properties.headers?.['x-mailroom-error']), /protobuf/i);
    assert.deepEqual([...dead.content], [0xff, 0x00, 0x13, 0x37], 'the original body is kept');
  });

  test('an email that breaks a rule goes to the dead-letter queue naming the field, and no job is made', async () => {
    await publish(
      Buffer.from(
        JSON.stringify({
          id: 'header-injection',
          from: 'shop@example.com',
          to: ['dave@example.com'],
          subject: 'Hi\r\nBcc: victim@example.com',
          text: 'x',
        }),
      ),
      'application/json',
    );
    const dead = await nextDeadLetter();
    assert.equal(dead.properties.headers?.['x-mailroom-reason'], 'invalid_message');
    assert.match(String(dead.properties.headers?.['x-mailroom-error']), /subject/);
    assert.equal((await mailroom.request('GET', '/v1/emails/header-injection')).statusCode, 404);
  });

  test('an idempotency_key reused for a different email is dead-lettered, the first email stands', async () => {
    const email = (subject: string) =>
      Buffer.from(
        JSON.stringify({
          idempotency_key: 'reset-7',
          from: 'shop@example.com',
          to: ['erin@example.com'],
          subject,
          text: 'Reset your password',
          tags: ['reused-key'],
        }),
      );
    await publish(email('Password reset'), 'application/json');
    await waitFor(
      'the first email sent',
      async () => (await emailsTagged('reused-key'))[0]?.status === 'sent',
    );
    await publish(email('Something else'), 'application/json');
    const dead = await nextDeadLetter();
    assert.equal(dead.properties.headers?.['x-mailroom-reason'], 'invalid_message');
    assert.match(String(dead.properties.headers?.['x-mailroom-error']), /reset-7.*different email/);
    assert.equal((await emailsTagged('reused-key')).length, 1);
  });
});
