import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { ConsumerConfig, StreamConfig } from '@nats-io/jetstream';
import { connectionOptions } from './nats-broker.js';
import { describeTopology, type NatsTopologyOptions, planConsumer, planStream } from './topology.js';

const OPTIONS: NatsTopologyOptions = {
  stream: 'messages',
  subject: 'messages.email',
  consumer: 'email-processor',
  deadLetterSubject: 'messages.email.failed',
  deadLetterStream: 'messages_failed',
  ackWaitMs: 60_000,
  duplicateWindowMs: 120_000,
  maxAckPending: 10_000,
  replicas: 1,
};

const topology = describeTopology(OPTIONS);

describe('describeTopology', () => {
  test('one subject and one consumer per priority; the dead-letter subject is none of them', () => {
    assert.deepEqual(topology.subjects, {
      high: 'messages.email.high',
      normal: 'messages.email',
      low: 'messages.email.low',
    });
    assert.deepEqual(topology.consumers, {
      high: 'email-processor-high',
      normal: 'email-processor',
      low: 'email-processor-low',
    });
    // Literal subjects, no `messages.email.>`: the dead-letter subject belongs to the other stream.
    assert.deepEqual(topology.streamConfig.subjects, [
      'messages.email.high',
      'messages.email',
      'messages.email.low',
    ]);
    assert.deepEqual(topology.deadLetterStreamConfig.subjects, ['messages.email.failed']);
    assert.equal(topology.consumerConfigs.normal.filter_subject, 'messages.email');
    assert.equal(topology.consumerConfigs.normal.max_deliver, -1);
    assert.equal(topology.consumerConfigs.normal.ack_wait, 60e9);
  });

  test('refuses names JetStream would refuse, and overlapping subjects', () => {
    assert.throws(() => describeTopology({ ...OPTIONS, stream: 'mess.ages' }), /stream name "mess.ages"/);
    assert.throws(() => describeTopology({ ...OPTIONS, consumer: 'a b' }), /consumer name/);
    assert.throws(() => describeTopology({ ...OPTIONS, subject: 'messages.*' }), /not a literal subject/);
    assert.throws(
      () => describeTopology({ ...OPTIONS, subject: 'messages..email' }),
      /not a literal subject/,
    );
    assert.throws(
      () => describeTopology({ ...OPTIONS, deadLetterSubject: 'messages.email.low' }),
      /also a work subject/,
    );
    assert.throws(
      () => describeTopology({ ...OPTIONS, deadLetterStream: 'messages' }),
      /must not be the work stream/,
    );
    assert.throws(
      () => describeTopology({ ...OPTIONS, ackWaitMs: 0 }),
      /ackWaitMs must be a positive integer/,
    );
  });
});

function stream(overrides: Partial<StreamConfig> = {}): StreamConfig {
  return { ...(topology.streamConfig as StreamConfig), ...overrides };
}

function consumer(overrides: Partial<ConsumerConfig> = {}): ConsumerConfig {
  return { ...(topology.consumerConfigs.normal as ConsumerConfig), ...overrides };
}

describe('planStream', () => {
  test('the same stream: nothing to do', () => {
    assert.deepEqual(planStream(stream(), topology.streamConfig, true), { conflicts: [], changes: [] });
  });

  test('adds a missing subject and keeps one an operator added', () => {
    const plan = planStream(
      stream({ subjects: ['messages.email', 'messages.other'] }),
      topology.streamConfig,
      true,
    );
    assert.deepEqual(plan.conflicts, []);
    assert.deepEqual(plan.update?.subjects, [
      'messages.email',
      'messages.other',
      'messages.email.high',
      'messages.email.low',
    ]);
  });

  test('sets the dedupe window; leaves limits and replicas to the operator', () => {
    const plan = planStream(
      stream({ duplicate_window: 60e9, max_age: 86_400e9, num_replicas: 3 }),
      topology.streamConfig,
      true,
    );
    assert.deepEqual(plan.update, { duplicate_window: 120e9 });
    assert.deepEqual(plan.changes, ['stream messages: duplicate_window 60 s → 120 s']);
  });

  test('retention and storage cannot change in place: conflicts on the work stream only', () => {
    const other = stream({
      retention: 'limits' as StreamConfig['retention'],
      storage: 'memory' as StreamConfig['storage'],
    });
    const plan = planStream(other, topology.streamConfig, true);
    assert.equal(plan.conflicts.length, 2);
    assert.match(plan.conflicts[0]!, /^stream messages: retention is limits, Mailroom needs workqueue/);
    assert.match(plan.conflicts[1]!, /storage is memory, Mailroom needs file/);
    assert.deepEqual(planStream(other, topology.streamConfig, false).conflicts, []);
  });
});

describe('planConsumer', () => {
  test('the same consumer: nothing to do', () => {
    assert.deepEqual(planConsumer('messages', consumer(), topology.consumerConfigs.normal), {
      conflicts: [],
      changes: [],
    });
  });

  test('AckWait, MaxDeliver and MaxAckPending are updated in place', () => {
    const plan = planConsumer(
      'messages',
      consumer({ ack_wait: 30e9, max_deliver: 5, max_ack_pending: 1000 }),
      topology.consumerConfigs.normal,
    );
    assert.deepEqual(plan.conflicts, []);
    assert.deepEqual(plan.update, { ack_wait: 60e9, max_deliver: -1, max_ack_pending: 10_000 });
  });

  test('another filter, ack or deliver policy, or a push consumer: conflicts, named', () => {
    const plan = planConsumer(
      'messages',
      consumer({
        filter_subject: 'messages.>',
        ack_policy: 'all' as ConsumerConfig['ack_policy'],
        deliver_subject: 'inbox.x',
      }),
      topology.consumerConfigs.normal,
    );
    assert.equal(plan.conflicts.length, 3);
    assert.match(plan.conflicts[0]!, /consumer email-processor on stream messages: is a push consumer/);
    assert.match(plan.conflicts[1]!, /ack_policy is "all", Mailroom needs "explicit"/);
    assert.match(plan.conflicts[2]!, /filter_subject is "messages\.>", Mailroom needs "messages\.email"/);
  });
});

describe('connectionOptions', () => {
  test('host and port; user and password, or a token; TLS by scheme; reconnecting for ever', () => {
    const plain = connectionOptions('nats://127.0.0.1');
    assert.equal(plain.servers, '127.0.0.1:4222');
    assert.equal(plain.user, undefined);
    assert.equal(plain.maxReconnectAttempts, -1);
    const withUser = connectionOptions('nats://mail%40room:s%3Acret@nats.internal:4333');
    assert.deepEqual(
      [withUser.servers, withUser.user, withUser.pass],
      ['nats.internal:4333', 'mail@room', 's:cret'],
    );
    assert.equal(connectionOptions('nats://t0ken@nats.internal').token, 't0ken');
    assert.deepEqual(connectionOptions('tls://nats.internal').tls, {});
  });

  test('refuses what is not a nats:// or tls:// URL, without echoing it (it may hold a password)', () => {
    assert.throws(
      () => connectionOptions('amqp://user:secret@host'),
      (error: Error) => {
        assert.match(error.message, /must start with nats:\/\/ or tls:\/\//);
        assert.ok(!error.message.includes('secret'));
        return true;
      },
    );
    assert.throws(() => connectionOptions('not a url'), /not a URL/);
  });
});
