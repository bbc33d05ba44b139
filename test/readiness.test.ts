/**
 * /ready tells the truth when what a process depends on goes away and comes back: the SMTP relay the
 * worker sends to (the sink stops listening, then listens again) and RabbitMQ (every connection cut
 * through a TcpProxy, new ones refused, then let through again; the server itself is never touched).
 * Checked on `mailroom start` in-process, and on `mailroom api` and `mailroom worker` processes, the
 * worker's on MAILROOM_METRICS_PORT.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { setUpScaledOut } from './support/scaled-out-cluster.js';
import { AMQP_URL, POSTGRES_URL, serviceAvailable } from './support/services.js';
import { TcpProxy } from './support/tcp-proxy.js';
import { startTestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';

interface Readiness {
  readonly status: number;
  readonly components: Record<string, { ok: boolean; detail?: string }>;
}

/** Health checks are cached for up to 5 s (the relay's) and a reconnect backs off: room for both. */
const FLIP_TIMEOUT_MS = 20_000;

/**
 * Waits until `/ready` answers `status`, with `component` failing (503) or every component fine
 * (200); returns that answer.
 */
async function readyFlips(
  read: () => Promise<Readiness>,
  status: 200 | 503,
  component: string,
): Promise<Readiness> {
  let last: Readiness | undefined;
  return waitFor(
    `/ready to answer ${status} (${component})`,
    async () => {
      last = await read();
      if (last.status !== status) return undefined;
      if (status === 503) return last.components[component]?.ok === false ? last : undefined;
      return last;
    },
    FLIP_TIMEOUT_MS,
    100,
  ).catch((error: Error) => {
    // Built when it timed out, so it shows the last answer rather than none.
    throw new Error(`${error.message}; last answer: ${JSON.stringify(last)}`);
  });
}

async function readyOver(url: string): Promise<Readiness> {
  // Bounded: a /ready that hangs must fail the wait, not hang the test.
  const response = await fetch(new URL('/ready', url), { signal: AbortSignal.timeout(3000) });
  const body = (await response.json()) as { components: Readiness['components'] };
  return { status: response.status, components: body.components };
}

describe('mailroom start: /ready follows the SMTP relay', () => {
  test('503 naming the transport while the relay refuses connections, 200 once it is back', async () => {
    const t = await startTestApp({}, undefined, 'embedded');
    try {
      const read = async (): Promise<Readiness> => {
        const response = await t.request('GET', '/ready');
        return { status: response.statusCode, components: response.json().components };
      };
      assert.equal((await read()).status, 200);
      await t.sink.setBehaviour('refuse');
      const down = await readyFlips(read, 503, 'transport');
      assert.match(String(down.components.transport?.detail), /ECONNREFUSED|connect/i);
      // The other components are not blamed for the relay.
      for (const name of ['store', 'broker', 'worker']) assert.equal(down.components[name]?.ok, true, name);
      await t.sink.setBehaviour('accept');
      const back = await readyFlips(read, 200, 'transport');
      assert.equal(back.components.transport?.ok, true);
    } finally {
      await t.stop();
    }
  });
});

const scaledOut =
  (await serviceAvailable('PostgreSQL', POSTGRES_URL)) && (await serviceAvailable('RabbitMQ', AMQP_URL));

describe('mailroom api and mailroom worker: /ready follows RabbitMQ and the relay', {
  skip: !scaledOut,
}, () => {
  test('503 naming the broker while RabbitMQ cannot be reached, 200 once it can; the worker also for the relay', async (t) => {
    const proxy = await TcpProxy.start(AMQP_URL);
    const { sink, cluster } = await setUpScaledOut(t, {
      MAILROOM_BROKER_URL: proxy.urlFor(AMQP_URL),
    });
    t.after(() => proxy.close()); // after the processes are killed
    const api = await cluster.api();
    const worker = await cluster.worker();
    const ops = String(worker.process.logs('Mailroom is running')[0]?.ops ?? '');
    assert.match(ops, /^http:\/\/127\.0\.0\.1:\d+$/, worker.process.output());
    const processes = { api: () => readyOver(api.apiUrl), worker: () => readyOver(ops) };
    for (const [name, read] of Object.entries(processes)) assert.equal((await read()).status, 200, name);

    proxy.cutAll();
    proxy.pause();
    for (const [name, read] of Object.entries(processes)) {
      const down = await readyFlips(read, 503, 'broker');
      assert.match(String(down.components.broker?.detail), /not connected/, name);
      assert.equal(down.components.store?.ok, true, `${name}: the store is not blamed`);
    }
    proxy.resume();
    for (const read of Object.values(processes)) await readyFlips(read, 200, 'broker');

    // The worker sends; the API process has no transport and stays ready.
    await sink.setBehaviour('refuse');
    const down = await readyFlips(processes.worker, 503, 'transport');
    assert.equal(down.components.broker?.ok, true);
    const apiReady = await processes.api();
    assert.equal(apiReady.status, 200, 'the API does not depend on the relay');
    assert.equal(apiReady.components.transport, undefined, 'the API process has no transport to report');
    await sink.setBehaviour('accept');
    await readyFlips(processes.worker, 200, 'transport');
  });
});
