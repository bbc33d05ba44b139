import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DEFAULT_DELAY_TIERS_MS, pickDelayTier } from './delay-tiers.js';
import { describeTopology } from './topology.js';

describe('pickDelayTier', () => {
  const tiers = [1000, 5000, 30_000];

  test('picks the largest tier not longer than the delay, so a message never comes back late', () => {
    assert.equal(pickDelayTier(1000, tiers), 1000);
    assert.equal(pickDelayTier(1500, tiers), 1000);
    assert.equal(pickDelayTier(4999, tiers), 1000);
    assert.equal(pickDelayTier(5000, tiers), 5000);
    assert.equal(pickDelayTier(3_600_000, tiers), 30_000);
  });

  test('a delay below the shortest tier waits in it rather than spinning through the work queue', () => {
    assert.equal(pickDelayTier(999, tiers), 1000);
    assert.equal(pickDelayTier(1, tiers), 1000);
  });

  test('no delay goes straight back to the work queue', () => {
    assert.equal(pickDelayTier(0, tiers), undefined);
    assert.equal(pickDelayTier(-5, tiers), undefined);
    assert.equal(pickDelayTier(5000, []), undefined);
  });

  test('the default tiers run from one second to one hour', () => {
    assert.deepEqual(DEFAULT_DELAY_TIERS_MS, [1000, 5000, 30_000, 120_000, 600_000, 3_600_000]);
  });
});

describe('describeTopology', () => {
  const topology = describeTopology({
    queue: 'email_tasks',
    deadLetterQueue: 'email_failed_queue',
    deliveryLimit: 20,
    delayTiersMs: [1000, 5000],
  });

  test('one quorum work queue per priority, dead-lettering at least once to the .dlx exchange', () => {
    assert.deepEqual(topology.workQueues, {
      high: 'email_tasks.high',
      normal: 'email_tasks',
      low: 'email_tasks.low',
    });
    const work = topology.queues.find((queue) => queue.name === 'email_tasks.high');
    assert.deepEqual(work?.arguments, {
      'x-queue-type': 'quorum',
      'x-dead-letter-exchange': 'email_tasks.dlx',
      'x-dead-letter-strategy': 'at-least-once',
      'x-overflow': 'reject-publish',
      'x-delivery-limit': 20,
    });
  });

  test('each delay tier is a fanout exchange and a TTL queue that dead-letters to the default exchange', () => {
    assert.deepEqual(topology.delayTiers, [
      { delayMs: 1000, name: 'email_tasks.delay.1000' },
      { delayMs: 5000, name: 'email_tasks.delay.5000' },
    ]);
    const tier = topology.queues.find((queue) => queue.name === 'email_tasks.delay.5000');
    assert.deepEqual(tier?.arguments, {
      'x-queue-type': 'quorum',
      'x-message-ttl': 5000,
      'x-dead-letter-exchange': '',
      'x-dead-letter-strategy': 'at-least-once',
      'x-overflow': 'reject-publish',
    });
    assert.ok(
      topology.bindings.some(
        (b) => b.exchange === 'email_tasks.delay.5000' && b.queue === 'email_tasks.delay.5000',
      ),
    );
  });

  test('the dead-letter exchange feeds the dead-letter queue', () => {
    assert.deepEqual(topology.exchanges, [
      'email_tasks.dlx',
      'email_tasks.delay.1000',
      'email_tasks.delay.5000',
    ]);
    assert.deepEqual(topology.bindings[0], { exchange: 'email_tasks.dlx', queue: 'email_failed_queue' });
    assert.deepEqual(topology.queues[0], {
      name: 'email_failed_queue',
      arguments: { 'x-queue-type': 'quorum' },
    });
    assert.equal(topology.queues.length, 1 + 3 + 2);
  });
});
