import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Metrics } from './metrics.js';

test('a broker that does not answer gets one backlog read at a time, however many scrapes come', async (t) => {
  // The scrape's deadline timer does not hold the process open; this test must be held open.
  const keepAlive = setInterval(() => {}, 1000);
  t.after(() => clearInterval(keepAlive));
  const metrics = new Metrics({ service: 'mailroom', version: 'test' });
  let reads = 0;
  let answer!: (value: { queue: string; messages: number }[]) => void;
  metrics.watchBroker(() => {
    reads++;
    return new Promise((resolve) => {
      answer = resolve;
    });
  });
  // Each scrape gives up on the read after its 2 s deadline and answers without the gauge...
  for (let scrape = 0; scrape < 2; scrape++) {
    assert.doesNotMatch(await metrics.render(), /^mailroom_broker_messages\{/m);
  }
  assert.equal(reads, 1, 'the second scrape waited on the read still running, not a new one');
  // ...and once the broker answers, the next scrape has the figures.
  answer([{ queue: 'email_tasks', messages: 7 }]);
  await new Promise((resolve) => setImmediate(resolve));
  assert.match(await metrics.render(), /^mailroom_broker_messages\{queue="email_tasks".*\} 7$/m);
});
