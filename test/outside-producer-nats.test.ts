/**
 * Producers outside Mailroom publishing straight to NATS JetStream with a plain NATS client: the
 * MessagePack shape existing producers use ({uuid, email, subject, body}) and a protobuf EmailJob are
 * delivered and tracked; a republish is a no-op; an undecodable message lands on the dead-letter
 * subject with its reason.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { create, toBinary } from '@bufbuild/protobuf';
import { encode as encodeMsgpack } from '@msgpack/msgpack';
import { type JetStreamClient, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection, headers as natsHeaders } from '@nats-io/transport-node';
import { messageIdFor } from '../src/mime/message-id.js';
import { EmailJobSchema } from '../src/wire/gen/email_pb.js';
import { NATS_URL, POSTGRES_URL, serviceAvailable } from './support/services.js';
import { type EmailView, startTestApp, type TestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';

const available =
  (await serviceAvailable('PostgreSQL', POSTGRES_URL)) && (await serviceAvailable('NATS', NATS_URL));

describe('a producer outside Mailroom, publishing to NATS JetStream', { skip: !available }, () => {
  let mailroom: TestApp;
  let connection: NatsConnection;
  let js: JetStreamClient;
  let subject: string;

  before(async () => {
    mailroom = await startTestApp({}, undefined, 'nats');
    subject = mailroom.app.config.natsSubject;
    connection = await connect({ servers: NATS_URL });
    js = jetstream(connection);
  });

  after(async () => {
    await connection?.close();
    await mailroom?.stop();
  });

  async function publish(body: Uint8Array, contentType?: string): Promise<void> {
    const headers = natsHeaders();
    if (contentType) headers.set('Content-Type', contentType);
    await js.publish(subject, body, { headers });
  }

  async function emailsTagged(tag: string): Promise<EmailView[]> {
    const response = await mailroom.request('GET', `/v1/emails?tag=${tag}&limit=10`);
    return (response.json() as { data: EmailView[] }).data;
  }

  const copiesAtSink = (messageId: string) =>
    mailroom.sink.messages().filter((message) => message.messageId === messageId).length;

  test('the MessagePack shape {uuid, email, subject, body} is sent once, however often it is published', async () => {
    const body = encodeMsgpack({
      uuid: 'c0ffee00-0000-4000-8000-000000000001',
      email: 'frank@example.com',
      subject: 'Your code',
      body: '<p>Your code is 4711</p>',
    });
    for (let i = 0; i < 3; i++) await publish(body, 'application/msgpack');
    const sent = await waitFor('the email sent', async () => {
      const response = await mailroom.request('GET', '/v1/emails?to=frank@example.com&limit=10');
      const emails = (response.json() as { data: EmailView[] }).data;
      return emails.length > 0 && emails.every((view) => view.status === 'sent') ? emails : undefined;
    });
    assert.equal(sent.length, 1, 'one job for three publishes');
    assert.equal(copiesAtSink(sent[0]!.message_id), 1);
    const message = mailroom.sink.messages().find((m) => m.messageId === sent[0]!.message_id)!;
    assert.match(message.raw.toString('utf8'), /Your code is 4711/);
  });

  test('a protobuf EmailJob with an id is sent and tracked under that id', async () => {
    const job = create(EmailJobSchema, {
      id: 'nats-order-7',
      from: 'Shop <shop@example.com>',
      to: ['grace@example.com'],
      subject: 'Shipped',
      text: 'Order 7 is on its way.',
      tags: ['nats-outside'],
    });
    await publish(toBinary(EmailJobSchema, job), 'application/x-protobuf');
    await publish(toBinary(EmailJobSchema, job), 'application/x-protobuf');
    const sent = await mailroom.waitForStatus('nats-order-7', 'sent');
    assert.equal(sent.message_id, messageIdFor('nats-order-7', 'shop@example.com'));
    // A marker behind the republish: once it is sent, the republish has long been handled.
    await publish(
      toBinary(EmailJobSchema, create(EmailJobSchema, { ...job, id: 'nats-order-7-marker', tags: [] })),
      'application/x-protobuf',
    );
    await mailroom.waitForStatus('nats-order-7-marker', 'sent');
    assert.equal(copiesAtSink(sent.message_id), 1);
    assert.equal((await emailsTagged('nats-outside')).length, 1);
  });

  test('an undecodable message lands on the dead-letter subject with its reason, and is not redelivered', async () => {
    const manager = await jetstreamManager(connection);
    const deadLetterStream = `${mailroom.app.config.natsStream}_failed`;
    const before = (await manager.streams.info(deadLetterStream)).state.messages;
    await publish(new Uint8Array([0xc1, 0x00, 0xff]), 'application/msgpack');
    const info = await waitFor('a message on the dead-letter subject', async () => {
      const state = (await manager.streams.info(deadLetterStream)).state;
      return state.messages > before ? state : undefined;
    });
    const dead = await manager.streams.getMessage(deadLetterStream, { seq: info.last_seq });
    assert.equal(dead?.subject, `${subject}.failed`);
    assert.equal(dead?.header.get('Mailroom-Reason'), 'undecodable');
    assert.match(dead?.header.get('Mailroom-Error') ?? '', /msgpack|MessagePack/i);
    assert.deepEqual([...(dead?.data ?? [])], [0xc1, 0x00, 0xff], 'the original body is kept');
    // Terminated, not left to come back: the work stream holds nothing for it.
    await waitFor(
      'the work stream to be empty',
      async () => (await manager.streams.info(mailroom.app.config.natsStream)).state.messages === 0,
    );
  });
});
