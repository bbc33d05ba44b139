#!/usr/bin/env node
// Runs every *.test.ts under src/ and test/ with Node's own test runner, one file at a time:
// integration tests start servers and processes, and this machine has two cores.
//
// Then it runs the shape-neutral integration suite again on each scaled-out shape
// (MAILROOM_TEST_SHAPE=rabbitmq: PostgreSQL and RabbitMQ; =nats: PostgreSQL and NATS JetStream), so
// every adapter passes the same tests. When a shape's servers are unreachable it says so loudly and
// skips that pass, unless CI is set: then it fails. `node scripts/run-tests.mjs FILE…` runs just those files, on the shape
// MAILROOM_TEST_SHAPE names (embedded by default).
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';

/** The files that test behaviour through the API only, so they hold for every shape. */
const SHAPE_NEUTRAL = [
  'test/api.test.ts',
  'test/compat.test.ts',
  'test/delivery.test.ts',
  'test/attachments.test.ts',
  'test/batch.test.ts',
  'test/templates.test.ts',
  'test/notifications-compat.test.ts',
  'test/webhooks.test.ts',
  'test/live-status.test.ts',
];

const POSTGRES = [
  'PostgreSQL',
  process.env.MAILROOM_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
];
/** Each scaled-out shape, with the servers it needs. */
const SCALED_OUT_SHAPES = [
  [
    'rabbitmq',
    'PostgreSQL + RabbitMQ',
    [POSTGRES, ['RabbitMQ', process.env.MAILROOM_TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672']],
  ],
  [
    'nats',
    'PostgreSQL + NATS JetStream',
    [POSTGRES, ['NATS', process.env.MAILROOM_TEST_NATS_URL ?? 'nats://127.0.0.1:4222']],
  ],
];

function findTests(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === 'node_modules' ? [] : findTests(path);
    return entry.name.endsWith('.test.ts') ? [path] : [];
  });
}

function run(files, env = {}) {
  const result = spawnSync(
    process.execPath,
    ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', ...files],
    { stdio: 'inherit', env: { ...process.env, ...env } },
  );
  return result.status ?? 1;
}

function reachable(url) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect({ host: hostname, port: Number(port) });
    const done = (open) => {
      socket.destroy();
      resolve(open);
    };
    socket.setTimeout(2000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

const only = process.argv.slice(2);
if (only.length > 0) process.exit(run(only));

const status = run([...findTests('src'), ...findTests('test')].sort());
if (status !== 0) process.exit(status);

let failed = false;
for (const [shape, title, servers] of SCALED_OUT_SHAPES) {
  const down = [];
  for (const [name, url] of servers) if (!(await reachable(url))) down.push(`${name} (${new URL(url).host})`);
  if (down.length > 0) {
    const message = `${title}: unreachable ${down.join(', ')}; this shape's pass of the integration suite cannot run.`;
    if (process.env.CI) {
      console.error(`\n✖ ${message} CI is set, so this is a failure.`);
      failed = true;
    } else {
      console.error(`\n!!! SKIPPING: ${message}\n`);
    }
    continue;
  }
  console.error(`\n── the integration suite again, on the scaled-out shape ${shape} (${title}) ──\n`);
  if (run(SHAPE_NEUTRAL, { MAILROOM_TEST_SHAPE: shape }) !== 0) failed = true;
}
process.exit(failed ? 1 : 0);
