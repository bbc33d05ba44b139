import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Batcher } from './batcher.js';

function recording(maxBatch: number) {
  const batches: number[][] = [];
  const batcher = new Batcher<number, string>(async (items) => {
    batches.push(items);
    return items.map((item) => `r${item}`);
  }, maxBatch);
  return { batcher, batches };
}

test('single items of one tick form one batch, each gets its own result', async () => {
  const { batcher, batches } = recording(10);
  const results = await Promise.all([1, 2, 3].map((item) => batcher.add(item)));
  assert.deepEqual(results, ['r1', 'r2', 'r3']);
  assert.deepEqual(batches, [[1, 2, 3]]);
});

test('a group is never split across batches; one larger than maxBatch runs alone', async () => {
  const { batcher, batches } = recording(4);
  const [a, group, b, big] = await Promise.all([
    batcher.add(1),
    batcher.addAll([2, 3, 4]),
    batcher.add(5),
    batcher.addAll([6, 7, 8, 9, 10, 11]),
  ]);
  assert.equal(a, 'r1');
  assert.deepEqual(group, ['r2', 'r3', 'r4']);
  assert.equal(b, 'r5');
  assert.deepEqual(big, ['r6', 'r7', 'r8', 'r9', 'r10', 'r11']);
  assert.deepEqual(batches, [[1, 2, 3, 4], [5], [6, 7, 8, 9, 10, 11]]);
});

test('a failed batch rejects every group in it, and the next batch still runs', async () => {
  let calls = 0;
  const batcher = new Batcher<number, number>(async (items) => {
    calls++;
    if (items.includes(0)) throw new Error('boom');
    return items;
  }, 2);
  const failed = batcher.addAll([0, 1]);
  const next = batcher.add(2);
  await assert.rejects(failed, /boom/);
  assert.equal(await next, 2);
  assert.equal(calls, 2);
  assert.deepEqual(await batcher.addAll([]), []);
});

test('with maxInFlight 2, a batch stuck in its flush does not hold the next one', async () => {
  let release!: () => void;
  const stuck = new Promise<void>((resolve) => {
    release = resolve;
  });
  const batches: number[][] = [];
  const batcher = new Batcher<number, number>(
    async (items) => {
      batches.push(items);
      if (items.includes(1)) await stuck;
      return items;
    },
    10,
    2,
  );
  const first = batcher.add(1);
  await new Promise((resolve) => setImmediate(resolve));
  // The first batch is in flight and stuck; these run beside it, then after each other.
  assert.deepEqual(await Promise.all([batcher.add(2), batcher.add(3)]), [2, 3]);
  assert.deepEqual(await batcher.add(4), 4);
  release();
  assert.equal(await first, 1);
  assert.deepEqual(batches, [[1], [2, 3], [4]]);
});

test('with the default of one in flight, the next batch waits for the stuck one', async () => {
  let release!: () => void;
  const stuck = new Promise<void>((resolve) => {
    release = resolve;
  });
  const flushed: number[][] = [];
  const batcher = new Batcher<number, number>(async (items) => {
    flushed.push(items);
    if (items.includes(1)) await stuck;
    return items;
  }, 10);
  const first = batcher.add(1);
  await new Promise((resolve) => setImmediate(resolve));
  const second = batcher.add(2);
  // Several turns of the event loop: a second batch would have started by now if it could.
  for (let turn = 0; turn < 5; turn++) await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(flushed, [[1]]);
  release();
  assert.deepEqual(await Promise.all([first, second]), [1, 2]);
});

test('a flush running past releaseSlotAfterMs frees its slot; its requests still get its result', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  let release!: () => void;
  const stuck = new Promise<void>((resolve) => {
    release = resolve;
  });
  const flushed: number[][] = [];
  const batcher = new Batcher<number, number>(
    async (items) => {
      flushed.push(items);
      if (items.includes(1)) await stuck;
      return items;
    },
    10,
    1,
    1000,
  );
  const first = batcher.add(1);
  await new Promise((resolve) => setImmediate(resolve));
  const second = batcher.add(2);
  for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(flushed, [[1]], 'still held before the stall time');
  t.mock.timers.tick(1000);
  assert.equal(await second, 2);
  assert.deepEqual(flushed, [[1], [2]]);
  release();
  assert.equal(await first, 1);
});
