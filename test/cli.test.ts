/**
 * The `mailroom` command, run for real as a child process from source (src/cli.ts through tsx, so a
 * stale dist/ cannot hide a change). `send`, `status` and `dlq` talk HTTP to a Mailroom started in
 * this process, which delivers to an SMTP sink on loopback; `start` and `inbox` run as children.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import nodemailer from 'nodemailer';
import pg from 'pg';
import { POSTGRES_URL, serviceAvailable } from './support/services.js';
import { SmtpSink } from './support/smtp-sink.js';
import { type EmailView, FAST_ENV, startTestApp, type TestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';

const CLI = fileURLToPath(new URL('../src/cli.ts', import.meta.url));
/** By URL: the children run in temporary directories, where a bare `tsx` would not resolve. */
const TSX = import.meta.resolve('tsx');
const KEY = 'cli-key-0123456789abcdef';

interface Run {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** The parent's environment without any Mailroom setting, so only what a test gives reaches the CLI. */
function cleanEnv(env: Record<string, string>): NodeJS.ProcessEnv {
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('MAILROOM_') && name !== 'LOG_LEVEL'),
  );
  return { ...base, ...env };
}

/** A directory of its own for each child: the CLI reads `.env` from its working directory. */
const scratch: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'mailroom-cli-'));
  scratch.push(dir);
  return dir;
}
after(() => {
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

function spawnCli(args: string[], env: Record<string, string>, cwd: string): ChildProcess {
  return spawn(process.execPath, ['--import', TSX, CLI, ...args], {
    cwd,
    env: cleanEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** Runs one command to its end. Asynchronous: the Mailroom it talks to runs on this event loop. */
function cli(
  args: string[],
  env: Record<string, string> = {},
  options: { cwd?: string; timeoutMs?: number } = {},
): Promise<Run> {
  const child = spawnCli(args, env, options.cwd ?? tempDir());
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`mailroom ${args.join(' ')} did not finish: ${stdout}${stderr}`));
    }, options.timeoutMs ?? 20_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

function json<T>(text: string, what: string): T {
  try {
    return JSON.parse(text) as T;
  } catch {
    assert.fail(`${what}: not JSON: ${text}`);
  }
}

/** A command that succeeded: exit 0 and JSON on stdout. */
function ok<T>(run: Run, what: string): T {
  assert.equal(run.code, 0, `${what}: exit ${run.code}\n${run.stdout}${run.stderr}`);
  return json<T>(run.stdout, what);
}

/** A command the API refused: exit 1 and the API's error body on stderr. */
function refused(run: Run, code: string, what: string): void {
  assert.equal(run.code, 1, `${what}: exit ${run.code}\n${run.stdout}${run.stderr}`);
  assert.equal(run.stdout, '', `${what}: nothing on stdout`);
  assert.equal(json<{ error: { code: string } }>(run.stderr, what).error.code, code, what);
}

/** A configuration error: exit 1, the variable and its rule on stderr, and no stack trace. */
function configError(run: Run, pattern: RegExp, what: string): void {
  assert.equal(run.code, 1, `${what}: exit ${run.code}\n${run.stdout}${run.stderr}`);
  assert.match(run.stderr, /^Invalid configuration:/, what);
  assert.match(run.stderr, pattern, what);
  assert.doesNotMatch(run.stderr, /\n\s+at /, `${what}: a message, not a stack trace`);
}

function apiUrlOf(t: TestApp): string {
  return `http://127.0.0.1:${(t.app.server!.server.address() as AddressInfo).port}`;
}

/**
 * A long-running command (`start`, `inbox`) with JSON logs: `line()` waits for a log line whose
 * message starts with the given text; `stop()` sends SIGTERM and waits for the exit.
 */
function daemon(args: string[], env: Record<string, string>) {
  const child = spawnCli(args, { LOG_LEVEL: 'info', MAILROOM_LOG_PRETTY: 'false', ...env }, tempDir());
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    line(message: string): Promise<Record<string, unknown>> {
      return waitFor(
        `"${message}" in the log of mailroom ${args.join(' ')}`,
        () => {
          if (child.exitCode !== null) assert.fail(`mailroom ${args.join(' ')} exited: ${stdout}${stderr}`);
          return stdout
            .split('\n')
            .slice(0, -1) // the last piece may be half a line
            .filter((line) => line.startsWith('{'))
            .map((line) => JSON.parse(line) as Record<string, unknown>)
            .find((entry) => String(entry.msg).startsWith(message));
        },
        15_000,
      );
    },
    async stop(): Promise<number | null> {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
    kill(): void {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

describe('mailroom send and status, through the HTTP API', () => {
  let t: TestApp;
  let env: Record<string, string>;
  before(async () => {
    t = await startTestApp();
    env = { MAILROOM_URL: apiUrlOf(t) };
  });
  after(() => t.stop());

  test('send posts the email, which reaches the SMTP relay; status prints its status and history', async () => {
    const sent = ok<{ id: string; status: string }>(
      await cli(
        [
          'send',
          '--to',
          'alice@example.com',
          '--to',
          'Bob <bob@example.com>',
          '--subject',
          'Sent from the CLI',
          '--text',
          'Hello from mailroom send',
          '--from',
          'Shop <shop@example.com>',
        ],
        env,
      ),
      'send',
    );
    assert.equal(sent.status, 'queued');
    const view = await t.waitForStatus(sent.id, 'sent');
    const [message] = t.sink.messages().filter((m) => m.messageId === view.message_id);
    assert.ok(message, 'the sink received the message');
    assert.deepEqual([...message.envelope.to].sort(), ['alice@example.com', 'bob@example.com']);
    assert.equal(message.envelope.from, 'shop@example.com');
    const raw = message.raw.toString('utf8');
    assert.match(raw, /^Subject: Sent from the CLI\r$/m);
    assert.match(raw, /Hello from mailroom send/);

    const status = ok<EmailView>(await cli(['status', sent.id], env), 'status');
    assert.equal(status.id, sent.id);
    assert.equal(status.status, 'sent');
    assert.deepEqual(
      status.events.map((event) => event.type),
      ['queued', 'processing', 'sent'],
    );
  });

  test('a request the API refuses exits 1 with the error on stderr', async () => {
    const [noTo, badAddress, unknownId] = await Promise.all([
      cli(['send', '--subject', 'x', '--text', 'y'], env),
      cli(['send', '--to', 'a@b@c', '--subject', 'x', '--text', 'y'], env),
      cli(['status', '01890000-0000-7000-8000-000000000000'], env),
    ]);
    refused(noTo, 'VALIDATION_FAILED', 'send without --to');
    assert.match(noTo.stderr, /"field": "to"/);
    refused(badAddress, 'VALIDATION_FAILED', 'send to a bad address');
    refused(unknownId, 'NOT_FOUND', 'status of an unknown id');
  });

  test('wrong usage exits 2 with a short message, not a stack trace', async () => {
    const runs = await Promise.all([
      cli(['status'], env),
      cli(['send', '--to', 'a@example.com', '--colour', 'red'], env),
      cli(['send', '--to'], env),
      cli(['dlq'], env),
      cli(['dlq', 'replay'], env),
      cli(['dlq', 'replay', 'some-id', '--all'], env),
    ]);
    const expected = [
      /status needs an email id/,
      /Unknown option '--colour'/,
      /--to/,
      /usage: mailroom dlq/,
      /usage: mailroom dlq/,
      /an id or --all, not both/,
    ];
    runs.forEach((run, i) => {
      assert.equal(run.code, 2, `${i}: ${run.stderr}`);
      assert.match(run.stderr, expected[i]!);
      assert.doesNotMatch(run.stderr, /\n\s+at /, `${i}: no stack trace`);
    });
    assert.equal(t.sink.messages().length, 1, 'nothing was sent by a wrong command');
  });

  test('an API that cannot be reached is named, exit 1', async () => {
    const run = await cli(['status', 'x'], { MAILROOM_URL: 'http://127.0.0.1:59' });
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /Cannot reach the Mailroom API \(MAILROOM_URL\)/);
  });

  test('MAILROOM_URL with a path keeps its path', async () => {
    // A proxy path: the request must go to <url>/v1/emails/…, so the API answers 404 NOT_FOUND for the route.
    const run = await cli(['status', 'x'], { MAILROOM_URL: `${apiUrlOf(t)}/behind/a/proxy` });
    refused(run, 'NOT_FOUND', 'status through a path');
    assert.match(run.stderr, /No route GET \/behind\/a\/proxy\/v1\/emails\/x/);
  });

  test('.env in the working directory is read; the environment wins over it', async () => {
    const id = await firstEmailId(t);
    const dir = tempDir();
    writeFileSync(join(dir, '.env'), `# local settings\nMAILROOM_URL=${apiUrlOf(t)}\n`);
    const wrong = tempDir();
    writeFileSync(join(wrong, '.env'), 'MAILROOM_URL=http://127.0.0.1:59\n');
    const [fromFile, overridden, fromWrongFile] = await Promise.all([
      cli(['status', id], {}, { cwd: dir }),
      cli(['status', id], env, { cwd: wrong }),
      cli(['status', id], {}, { cwd: wrong }),
    ]);
    assert.equal(ok<EmailView>(fromFile, 'status with .env').id, id);
    assert.equal(ok<EmailView>(overridden, 'env over .env').id, id);
    assert.match(fromWrongFile.stderr, /Cannot reach the Mailroom API/);
  });
});

async function firstEmailId(t: TestApp): Promise<string> {
  const list = (await t.request('GET', '/v1/emails?limit=1')).json() as { data: { id: string }[] };
  return list.data[0]!.id;
}

describe('mailroom dlq, against a server with API keys', () => {
  let t: TestApp;
  let env: Record<string, string>;
  const deadIds: string[] = [];
  before(async () => {
    // 451 on every attempt, two attempts: each email is failed and dead-lettered as max_attempts.
    t = await startTestApp(
      { MAILROOM_MAX_ATTEMPTS: '2', MAILROOM_API_KEYS: KEY },
      new SmtpSink({ behaviour: 'tempfail' }),
    );
    env = { MAILROOM_URL: apiUrlOf(t), MAILROOM_API_KEY: KEY };
    const sends = await Promise.all(
      ['dead one', 'dead two'].map((subject) =>
        cli(['send', '--to', 'carol@example.com', '--subject', subject, '--text', 'x'], env),
      ),
    );
    for (const run of sends) deadIds.push(ok<{ id: string }>(run, 'send').id);
    for (const id of deadIds) {
      const view = await waitFor(`${id} to be dead-lettered`, async () => {
        const response = await t.request('GET', `/v1/emails/${id}`, undefined, {
          authorization: `Bearer ${KEY}`,
        });
        const email = response.json() as EmailView;
        return email.status === 'failed' ? email : undefined;
      });
      assert.equal(view.dead_letter_reason, 'max_attempts');
    }
  });
  after(() => t.stop());

  test('without MAILROOM_API_KEY the server refuses: exit 1, UNAUTHORIZED', async () => {
    const [list, send] = await Promise.all([
      cli(['dlq', 'list'], { MAILROOM_URL: env.MAILROOM_URL! }),
      cli(['send', '--to', 'a@example.com', '--subject', 's', '--text', 't'], {
        MAILROOM_URL: env.MAILROOM_URL!,
        MAILROOM_API_KEY: 'not-the-right-key-at-all',
      }),
    ]);
    refused(list, 'UNAUTHORIZED', 'dlq list without a key');
    refused(send, 'UNAUTHORIZED', 'send with a wrong key');
  });

  test('dlq list shows the dead letters, filtered by reason', async () => {
    const [allRun, byReasonRun, noneRun, bogus] = await Promise.all([
      cli(['dlq', 'list'], env),
      cli(['dlq', 'list', '--reason', 'max_attempts'], env),
      cli(['dlq', 'list', '--reason', 'invalid_message'], env),
      cli(['dlq', 'list', '--reason', 'bogus'], env),
    ]);
    const all = ok<{ data: EmailView[] }>(allRun, 'dlq list');
    assert.deepEqual(all.data.map((job) => job.id).sort(), [...deadIds].sort());
    for (const job of all.data) {
      assert.equal(job.status, 'failed');
      assert.equal(job.dead_letter_reason, 'max_attempts');
    }
    assert.equal(ok<{ data: EmailView[] }>(byReasonRun, 'dlq list --reason').data.length, 2);
    assert.deepEqual(ok<{ data: EmailView[] }>(noneRun, 'dlq list --reason invalid_message').data, []);
    refused(bogus, 'VALIDATION_FAILED', 'unknown reason');
  });

  test('dlq replay <id> queues one again; dlq replay --all the rest; both are then delivered', async () => {
    await t.sink.setBehaviour('accept');
    const [first, second] = deadIds as [string, string];
    const one = ok<{ id: string; status: string }>(await cli(['dlq', 'replay', first], env), 'replay one');
    assert.deepEqual(one, { id: first, status: 'queued' });
    await waitForKeyed(t, first, 'sent');

    const left = ok<{ data: EmailView[] }>(await cli(['dlq', 'list'], env), 'dlq list after one replay');
    assert.deepEqual(
      left.data.map((job) => job.id),
      [second],
    );
    refused(await cli(['dlq', 'replay', first], env), 'NOT_FOUND', 'replaying a job that is no dead letter');

    const rest = ok<{ replayed: number; ids: string[] }>(
      await cli(['dlq', 'replay', '--all'], env),
      'replay all',
    );
    assert.deepEqual(rest, { replayed: 1, ids: [second] });
    await waitForKeyed(t, second, 'sent');
    assert.deepEqual(
      ok<{ data: EmailView[] }>(await cli(['dlq', 'list'], env), 'dlq list at the end').data,
      [],
    );
    assert.equal(t.sink.messages().length, 2, 'each replayed email delivered once');
  });
});

async function waitForKeyed(t: TestApp, id: string, status: string): Promise<void> {
  await waitFor(`${id} to be ${status}`, async () => {
    const response = await t.request('GET', `/v1/emails/${id}`, undefined, {
      authorization: `Bearer ${KEY}`,
    });
    return (response.json() as EmailView).status === status;
  });
}

describe('mailroom start', () => {
  test('a wrong value stops start-up, naming the variable and what it expected', async () => {
    const dataDir = tempDir();
    const file = join(dataDir, 'a-file');
    writeFileSync(file, '');
    const base = { ...FAST_ENV, MAILROOM_DATA_DIR: dataDir, MAILROOM_INBOX_SMTP_PORT: '0' };
    const cases: [Record<string, string>, RegExp][] = [
      [{ MAILROOM_PORT: 'abc' }, /MAILROOM_PORT="abc": expected an integer from 0 to 65535/],
      [
        { MAILROOM_SMTP_URL: 'ftp://x' },
        /MAILROOM_SMTP_URL=\(hidden\): expected smtp:\/\/\[user:pass@\]host/,
      ],
      [
        { MAILROOM_HOST: '0.0.0.0' },
        /MAILROOM_HOST=0\.0\.0\.0: a non-loopback address needs MAILROOM_API_KEYS/,
      ],
      [
        { LOG_LEVEL: 'loud', MAILROOM_MAX_ATTEMPTS: '0' },
        /MAILROOM_MAX_ATTEMPTS="0": expected an integer from 1 to 100\n {2}LOG_LEVEL="loud"/,
      ],
      [{ MAILROOM_FROM: 'not an address' }, /MAILROOM_FROM="not an address"/],
      [{ MAILROOM_DATA_DIR: join(file, 'sub') }, /MAILROOM_DATA_DIR=".*a-file\/sub": expected a place/],
      [
        { MAILROOM_BROKER_URL: 'amqp://guest:guest@127.0.0.1:5672' },
        /MAILROOM_BROKER_URL=\(hidden\): a network broker needs MAILROOM_DATABASE_URL=postgres/,
      ],
      [
        { MAILROOM_DATABASE_URL: 'mysql://root@127.0.0.1/test' },
        /MAILROOM_DATABASE_URL=\(hidden\): expected sqlite:PATH or postgres:\/\//,
      ],
    ];
    // Four at a time: eight processes starting at once on two cores can outlast the CLI timeout.
    const runs: Run[] = [];
    for (let i = 0; i < cases.length; i += 4) {
      runs.push(
        ...(await Promise.all(cases.slice(i, i + 4).map(([env]) => cli(['start'], { ...base, ...env })))),
      );
    }
    for (const [i, run] of runs.entries()) configError(run, cases[i]![1], JSON.stringify(cases[i]![0]));
  });

  test('a port in use stops start-up, naming MAILROOM_PORT', async () => {
    const sink = new SmtpSink();
    await sink.start();
    try {
      const run = await cli(['start'], {
        ...FAST_ENV,
        MAILROOM_PORT: String(sink.port),
        MAILROOM_DATA_DIR: tempDir(),
        MAILROOM_SMTP_URL: `smtp://127.0.0.1:${sink.port}`,
      });
      configError(run, new RegExp(`MAILROOM_PORT=${sink.port}: .*already in use`), 'port in use');
    } finally {
      await sink.close();
    }
  });

  test('.env in the working directory configures start', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, '.env'), 'MAILROOM_PORT=not-a-port\nLOG_LEVEL=silent\n');
    configError(await cli(['start'], {}, { cwd: dir }), /MAILROOM_PORT="not-a-port"/, 'start with .env');
  });

  test('runs API, worker and dev inbox; mailroom send reaches the dev inbox; SIGTERM exits 0', async () => {
    const server = daemon(['start'], {
      ...FAST_ENV,
      LOG_LEVEL: 'info',
      MAILROOM_DATA_DIR: tempDir(),
      MAILROOM_INBOX_SMTP_PORT: '0',
    });
    try {
      const running = await server.line('Mailroom is running');
      const apiUrl = String(running.api);
      assert.match(apiUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.equal(running.inbox, `${apiUrl}/inbox`);
      const sent = ok<{ id: string }>(
        await cli(['send', '--to', 'dave@example.com', '--subject', 'to the dev inbox', '--text', 'hi'], {
          MAILROOM_URL: apiUrl,
        }),
        'send to a child start',
      );
      await waitFor('the email to be sent', async () => {
        const view = (await (await fetch(`${apiUrl}/v1/emails/${sent.id}`)).json()) as EmailView;
        return view.status === 'sent';
      });
      const inbox = (await (await fetch(`${apiUrl}/v1/inbox/messages`)).json()) as {
        data: { subject: string; to: string[] }[];
      };
      assert.deepEqual(
        inbox.data.map((message) => [message.subject, message.to]),
        [['to the dev inbox', ['dave@example.com']]],
      );
      assert.equal(await server.stop(), 0);
    } finally {
      server.kill();
    }
  });
});

describe('mailroom inbox', () => {
  async function deliver(smtpUrl: string, subject: string): Promise<void> {
    const transport = nodemailer.createTransport({ url: smtpUrl, ignoreTLS: true });
    try {
      await transport.sendMail({
        from: 'app@example.com',
        to: 'erin@example.com',
        subject,
        text: 'caught by the dev inbox',
      });
    } finally {
      transport.close();
    }
  }

  test('runs the dev inbox alone: accepts a message over SMTP and lists it', async () => {
    const inbox = daemon(['inbox'], { MAILROOM_INBOX_HTTP_PORT: '0', MAILROOM_INBOX_SMTP_PORT: '0' });
    try {
      const running = await inbox.line('Dev inbox is running');
      const httpUrl = String(running.inbox);
      await deliver(String(running.smtp), 'caught');
      const list = await fetch(`${httpUrl}/v1/inbox/messages`);
      assert.equal(list.status, 200);
      const { data } = (await list.json()) as { data: { id: string; subject: string; to: string[] }[] };
      assert.deepEqual(
        data.map((message) => [message.subject, message.to]),
        [['caught', ['erin@example.com']]],
      );
      const page = await fetch(`${httpUrl}/inbox`);
      assert.equal(page.status, 200);
      assert.match(await page.text(), /caught/);
      assert.equal(await inbox.stop(), 0);
    } finally {
      inbox.kill();
    }
  });

  test('with MAILROOM_API_KEYS its API needs the key and its pages ask for it', async () => {
    const inbox = daemon(['inbox'], {
      MAILROOM_INBOX_HTTP_PORT: '0',
      MAILROOM_INBOX_SMTP_PORT: '0',
      MAILROOM_API_KEYS: KEY,
    });
    try {
      const running = await inbox.line('Dev inbox is running');
      const httpUrl = String(running.inbox);
      await deliver(String(running.smtp), 'secret');
      const anonymous = await fetch(`${httpUrl}/v1/inbox/messages`);
      assert.equal(anonymous.status, 401);
      assert.doesNotMatch(await anonymous.text(), /secret/);
      const page = await fetch(`${httpUrl}/inbox`);
      assert.equal(page.status, 401);
      assert.match(page.headers.get('www-authenticate') ?? '', /^Basic /);
      const keyed = await fetch(`${httpUrl}/v1/inbox/messages`, {
        headers: { authorization: `Bearer ${KEY}` },
      });
      assert.equal(keyed.status, 200);
      assert.equal(((await keyed.json()) as { data: { subject: string }[] }).data[0]?.subject, 'secret');
      const browser = await fetch(`${httpUrl}/inbox`, {
        headers: { authorization: `Basic ${Buffer.from(`me:${KEY}`).toString('base64')}` },
      });
      assert.equal(browser.status, 200);
      assert.match(await browser.text(), /secret/);
    } finally {
      inbox.kill();
    }
  });

  test('a port in use stops it, naming the variable', async () => {
    const sink = new SmtpSink();
    await sink.start();
    try {
      const [http, smtp] = await Promise.all([
        cli(['inbox'], { MAILROOM_INBOX_HTTP_PORT: String(sink.port), MAILROOM_INBOX_SMTP_PORT: '0' }),
        cli(['inbox'], { MAILROOM_INBOX_HTTP_PORT: '0', MAILROOM_INBOX_SMTP_PORT: String(sink.port) }),
      ]);
      configError(http, new RegExp(`MAILROOM_INBOX_HTTP_PORT=${sink.port}: .*already in use`), 'http port');
      configError(smtp, new RegExp(`MAILROOM_INBOX_SMTP_PORT=${sink.port}: .*already in use`), 'smtp port');
    } finally {
      await sink.close();
    }
  });
});

describe('mailroom api, worker and migrate', () => {
  test('api and worker alone need the shared PostgreSQL store: with SQLite they stop, naming the variable', async () => {
    const env = { ...FAST_ENV, MAILROOM_DATA_DIR: tempDir(), MAILROOM_INBOX_SMTP_PORT: '0' };
    const runs = await Promise.all([cli(['api'], env), cli(['worker'], env)]);
    for (const run of runs)
      configError(
        run,
        /MAILROOM_DATABASE_URL: expected postgres:\/\/… to run the API and workers as separate processes/,
        'role',
      );
  });

  test('migrate creates the PostgreSQL schema and tables, and is a no-op the second time', async (t) => {
    if (!(await serviceAvailable('PostgreSQL', POSTGRES_URL))) return t.skip('PostgreSQL unreachable');
    const schema = `mailroom_cli_${process.pid}`;
    const env = { MAILROOM_DATABASE_URL: POSTGRES_URL, MAILROOM_DATABASE_SCHEMA: schema, LOG_LEVEL: 'info' };
    const client = new pg.Client({ connectionString: POSTGRES_URL });
    await client.connect();
    try {
      for (let run = 0; run < 2; run++) {
        const result = await cli(['migrate'], env);
        assert.equal(result.code, 0, result.stderr + result.stdout);
        assert.match(result.stdout, /the store is up to date/);
      }
      const { rows } = await client.query(
        'SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name',
        [schema],
      );
      const tables = rows.map((row: { table_name: string }) => row.table_name);
      for (const table of ['jobs', 'job_events', 'outbox'])
        assert.ok(tables.includes(table), `${table} in ${tables}`);
    } finally {
      await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await client.end();
    }
  });
});

describe('mailroom with no or an unknown command', () => {
  test('help prints the usage and exits 0; an unknown command prints it on stderr and exits 2', async () => {
    const [help, none, unknown] = await Promise.all([cli(['help']), cli([]), cli(['deliver'])]);
    for (const run of [help, none]) {
      assert.equal(run.code, 0, run.stderr);
      assert.match(run.stdout, /^Usage: mailroom <command>/);
      for (const command of [
        'start',
        'api',
        'worker',
        'migrate',
        'inbox',
        'send',
        'status',
        'dlq list',
        'dlq replay',
      ])
        assert.ok(run.stdout.includes(`  ${command}`), `usage names ${command}`);
    }
    assert.equal(unknown.code, 2);
    assert.equal(unknown.stdout, '');
    assert.match(unknown.stderr, /^Unknown command "deliver"\./);
    assert.match(unknown.stderr, /Usage: mailroom <command>/);
  });
});
