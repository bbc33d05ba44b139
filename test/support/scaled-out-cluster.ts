/**
 * Mailroom scaled out, as real processes: `mailroom api` and `mailroom worker` children sharing one
 * provisioned PostgreSQL schema and one set of RabbitMQ queues (test-shape.ts), sending to a test
 * SMTP sink. Tracks every child it started so a test's `after` can kill them all, even on failure.
 * Also the load generator the fault tests post emails with.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { type MailroomProcess, startMailroomProcess } from './mailroom-process.js';
import { outboxCount, statusCounts } from './read-postgres.js';
import { SmtpSink } from './smtp-sink.js';
import { provisionShape, type TestShape } from './test-shape.js';
import { waitFor } from './wait-for.js';

/** Short leases and retries, so that what a fault leaves behind comes back within a test's time. */
export const SCALED_OUT_ENV: Readonly<Record<string, string>> = {
  MAILROOM_PORT: '0',
  MAILROOM_LEASE_MS: '3000',
  // Below the lease: a send that hangs ends (transient) before another worker may take the job over.
  MAILROOM_SMTP_TIMEOUT_MS: '2000',
  MAILROOM_RETRY_BASE_MS: '50',
  MAILROOM_RETRY_MAX_MS: '200',
  MAILROOM_SHUTDOWN_TIMEOUT_MS: '2000',
  // Several processes share the machine's PostgreSQL with other test runs: small pools.
  MAILROOM_DATABASE_POOL: '4',
  // Several workers on one machine: each serves /metrics on a free port of its own.
  MAILROOM_METRICS_PORT: '0',
};

export class ScaledOutCluster {
  /** Every process started, in order, dead or alive. */
  readonly processes: MailroomProcess[] = [];

  /** `env`: the shape's variables (schema, queues, URLs) plus the SMTP URL and any overrides. */
  constructor(readonly env: Readonly<Record<string, string>>) {}

  async api(extra: Record<string, string> = {}): Promise<MailroomProcess> {
    return this.start('api', extra);
  }

  /** Starts `mailroom worker`; `id` is its Worker id, the `lease_owner` of the jobs it claims. */
  async worker(extra: Record<string, string> = {}): Promise<{ process: MailroomProcess; id: string }> {
    const process = await this.start('worker', extra);
    return { process, id: workerIdOf(process) };
  }

  /** SIGKILL to every process still running, and wait for each to be gone. */
  async killAll(): Promise<void> {
    await Promise.all(this.processes.map((mailroom) => mailroom.stop('SIGKILL')));
  }

  /** The logs of every process, for a failure message. */
  output(): string {
    return this.processes.map((mailroom, i) => `--- process ${i} ---\n${mailroom.output()}`).join('\n');
  }

  /** JSON log lines of every process whose `msg` starts with `prefix`. */
  logs(prefix: string): Record<string, unknown>[] {
    return this.processes.flatMap((mailroom) => mailroom.logs(prefix));
  }

  private async start(command: 'api' | 'worker', extra: Record<string, string>): Promise<MailroomProcess> {
    const mailroom = await startMailroomProcess({ ...SCALED_OUT_ENV, ...this.env, ...extra }, command);
    this.processes.push(mailroom);
    return mailroom;
  }
}

export interface ScaledOutSetup {
  /** The PostgreSQL schema the processes share. */
  readonly schema: string;
  readonly sink: SmtpSink;
  readonly cluster: ScaledOutCluster;
}

/**
 * A fresh schema and set of queues or streams (provisionShape(broker), RabbitMQ by default), a started SMTP sink, and a cluster
 * sending to it; `extra` overrides variables (e.g. a URL through a TcpProxy). Everything is torn down
 * after the test, failed or not: every child killed, the sink closed, the schema and queues deleted.
 */
export async function setUpScaledOut(
  t: TestContext,
  extra: Record<string, string> = {},
  broker: Exclude<TestShape, 'embedded'> = 'rabbitmq',
): Promise<ScaledOutSetup> {
  const shape = provisionShape(broker);
  const sink = new SmtpSink();
  await sink.start();
  const cluster = new ScaledOutCluster({
    ...shape.env,
    MAILROOM_SMTP_URL: `smtp://127.0.0.1:${sink.port}`,
    ...extra,
  });
  t.after(async () => {
    await cluster.killAll();
    // The processes' logs, kept for a failure's post-mortem when asked for.
    if (process.env.MAILROOM_TEST_LOG_DIR) {
      const file = join(process.env.MAILROOM_TEST_LOG_DIR, `${shape.env.MAILROOM_DATABASE_SCHEMA}.log`);
      writeFileSync(file, `${t.name}\n${cluster.output()}`);
    }
    await sink.close();
    await shape.cleanup();
  });
  return { schema: shape.env.MAILROOM_DATABASE_SCHEMA!, sink, cluster };
}

/**
 * Waits until the schema holds `jobs` jobs, all `sent`, and an empty outbox; fails at once if a job
 * ends `failed` or `cancelled` or there are more jobs than that, and after `timeoutMs` with the
 * statuses it last saw.
 */
export async function waitAllSent(schema: string, jobs: number, timeoutMs: number): Promise<void> {
  let last: Record<string, number> = {};
  await waitFor(
    `all ${jobs} jobs sent and the outbox empty`,
    async () => {
      last = await statusCounts(schema);
      const total = Object.values(last).reduce((a, b) => a + b, 0);
      if ((last.failed ?? 0) + (last.cancelled ?? 0) > 0 || total > jobs)
        throw new Error(`expected ${jobs} jobs to be sent, found ${JSON.stringify(last)}`);
      return last.sent === jobs && (await outboxCount(schema)) === 0;
    },
    timeoutMs,
    250,
  ).catch((error: Error) => {
    throw new Error(`${error.message}; statuses: ${JSON.stringify(last)}`);
  });
}

/** The Worker id a `mailroom worker` logged in its "worker started" line. */
export function workerIdOf(mailroom: MailroomProcess): string {
  const started = mailroom.logs('worker started')[0];
  if (typeof started?.worker !== 'string') throw new Error(`no "worker started" line:\n${mailroom.output()}`);
  return started.worker;
}

/** What one POST got: an HTTP answer, or an error (connection refused or dropped). */
export interface PostResult {
  /** The request's number: its recipient is `recipient(i)`. */
  readonly i: number;
  /** The HTTP status, or 0 when no answer came. */
  readonly status: number;
  /** The job id, for a 202. */
  readonly id?: string;
  /** The error code of a JSON error answer, or the fetch error's message. */
  readonly error?: string;
}

export interface PostOptions {
  /** Requests in parallel. */
  readonly clients: number;
  /** The request body for request `i`. */
  readonly email: (i: number) => Record<string, unknown>;
  /** Stop after this many requests... */
  readonly count?: number;
  /** ...or once this says so (checked before each request). */
  readonly stop?: () => boolean;
  /** Called with every answer as it comes. */
  readonly onResult?: (result: PostResult) => void;
  /**
   * Each client waits a random 0 to `jitterMs` before each request, so that requests arrive spread
   * out rather than in lockstep with the API's group commits: there are then nearly always requests
   * being committed. Default 0.
   */
  readonly jitterMs?: number;
  /** After an answer other than 202 (or none), the client waits this long before its next request. Default 0. */
  readonly pauseAfterErrorMs?: number;
}

/** POSTs /v1/emails from `clients` parallel loops; resolves with every result, in request order. */
export async function postEmails(apiUrl: string, options: PostOptions): Promise<PostResult[]> {
  const results: PostResult[] = [];
  const url = new URL('/v1/emails', apiUrl);
  let next = 0;
  const more = () => (options.count === undefined || next < options.count) && !options.stop?.();
  await Promise.all(
    Array.from({ length: options.clients }, async () => {
      while (more()) {
        if (options.jitterMs) {
          await new Promise((resolve) => setTimeout(resolve, Math.random() * options.jitterMs!));
          if (!more()) break;
        }
        const i = next++;
        const result = await postOne(url, i, options.email(i));
        results.push(result);
        options.onResult?.(result);
        if (result.status !== 202 && options.pauseAfterErrorMs) {
          await new Promise((resolve) => setTimeout(resolve, options.pauseAfterErrorMs));
        }
      }
    }),
  );
  return results.sort((a, b) => a.i - b.i);
}

/** One POST of `email`, as request number `i`; never throws (no answer is status 0). */
export async function postOne(url: URL, i: number, email: Record<string, unknown>): Promise<PostResult> {
  try {
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(email),
      signal: AbortSignal.timeout(15_000),
    });
    const text = await response.text();
    // biome-ignore lint/suspicious/noExplicitAny: whatever JSON the API answered.
    let body: any = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = { error: { code: `not JSON: ${text.slice(0, 100)}` } };
    }
    if (response.status === 202) return { i, status: 202, id: String(body.id) };
    return {
      i,
      status: response.status,
      error: String(body?.error?.code ?? body?.code ?? text.slice(0, 100)),
    };
  } catch (error) {
    const cause = (error as { cause?: { code?: string } }).cause?.code;
    return { i, status: 0, error: cause ?? (error as Error).message };
  }
}
