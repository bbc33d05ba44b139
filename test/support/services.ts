/**
 * The real servers that tests of the scaled-out shape talk to, and the rule for when one is down:
 * skip with a loud message on a developer's machine, fail when `CI` is set (CI must never pass by
 * skipping what it was meant to check).
 */
import { connect } from 'node:net';

export const POSTGRES_URL =
  process.env.MAILROOM_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const AMQP_URL = process.env.MAILROOM_TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
export const NATS_URL = process.env.MAILROOM_TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
export const REDIS_URL = process.env.MAILROOM_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

const PROBE_TIMEOUT_MS = 2000;

/** True when a TCP connection to the server's port opens within two seconds. */
function portOpen(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect({ host: hostname, port: Number(port) });
    const done = (open: boolean) => {
      socket.destroy();
      resolve(open);
    };
    socket.setTimeout(PROBE_TIMEOUT_MS, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * Resolves to `false` (the caller skips) when the server is unreachable outside CI, printing a
 * warning that names the server and how to start it; throws under CI. Use the result as the `skip`
 * option of a `describe`: `describe('…', { skip: !(await serviceAvailable('PostgreSQL', POSTGRES_URL)) }, …)`.
 */
export async function serviceAvailable(name: string, url: string): Promise<boolean> {
  if (await portOpen(url)) return true;
  const where = new URL(url).host;
  const message = `${name} is unreachable at ${where}: the tests that need it cannot run (see the env notes for the command that starts it).`;
  if (process.env.CI) throw new Error(`${message} CI is set, so this is a failure, not a skip.`);
  process.stderr.write(`\n!!! SKIPPING: ${message}\n\n`);
  return false;
}
