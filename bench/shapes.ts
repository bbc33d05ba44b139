/**
 * Starting each shape's Mailroom processes for the benchmark, and undoing it afterwards.
 *
 * - embedded: one `mailroom start` (SQLite in a temporary directory, the embedded broker).
 * - rabbitmq, nats: `mailroom migrate` once, then one `mailroom api` and two `mailroom worker`s
 *   sharing a PostgreSQL schema and a set of RabbitMQ queues or JetStream streams made for this run
 *   (`mailroom_bench_<random>`), deleted when the shape stops, and by the Janitor however the run
 *   ends.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect as connectNats } from '@nats-io/transport-node';
import { connect } from 'amqplib';
import pg from 'pg';
import { DEFAULT_DELAY_TIERS_MS } from '../src/broker/rabbitmq/delay-tiers.js';
import { describeTopology } from '../src/broker/rabbitmq/topology.js';
import { CONFIG_SCHEMA, type VariableSpec } from '../src/config/config-schema.js';
import type { CpuGroup } from './cpu.js';
import type { Janitor } from './janitor.js';
import {
  freePort,
  type MailroomChild,
  peakRssMb,
  runMailroomCommand,
  spawnMailroom,
  waitReady,
  within,
} from './processes.js';

export const SHAPES = ['embedded', 'rabbitmq', 'nats'] as const;
export type ShapeName = (typeof SHAPES)[number];

export const POSTGRES_URL = process.env.BENCH_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const AMQP_URL = process.env.BENCH_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
export const NATS_URL = process.env.BENCH_NATS_URL ?? 'nats://127.0.0.1:4222';

const START_TIMEOUT_MS = 30_000;
const MIGRATE_TIMEOUT_MS = 60_000;
/** MAILROOM_SHUTDOWN_TIMEOUT_MS of every process: in-flight sends at the end are few and fast. */
const SHUTDOWN_TIMEOUT_MS = 2_000;
/** How long after SIGTERM a process may take before SIGKILL. */
const STOP_GRACE_MS = SHUTDOWN_TIMEOUT_MS + 3_000;
const WORKERS = 2;

const log = (line: string) => console.error(line);

export interface ShapeOptions {
  readonly sinkPort: number;
  /** MAILROOM_SMTP_POOL of each process that sends. */
  readonly pool: number;
  readonly janitor: Janitor;
}

export interface RunningShape {
  readonly name: ShapeName;
  /** POST here to send an email. */
  readonly emailsUrl: string;
  readonly processes: readonly MailroomChild[];
  /** What else to watch the CPU of while this shape runs (the servers it uses). */
  readonly cpuGroups: readonly CpuGroup[];
  /**
   * Counters that only grow (PostgreSQL commits, rows written…), for figures per email over the
   * ladder; a trailing `*` marks a machine-wide one that other users of the server add to.
   */
  readonly counters?: () => Promise<Record<string, number>>;
  /** Rejects as soon as one of the processes exits on its own; never resolves. */
  readonly failed: Promise<never>;
  /** Peak RSS in MB of each process, by name; read while they still run. */
  peakRssMb(): Record<string, number>;
  /** Stops every process, then deletes what the shape created. Rejects if the cleanup failed. */
  stop(): Promise<void>;
}

export function startShape(name: ShapeName, options: ShapeOptions): Promise<RunningShape> {
  return name === 'embedded' ? startEmbedded(options) : startScaledOut(options, name);
}

/** Settings every process gets, whatever the environment says: loopback, no keys, JSON logs. */
function baseEnv(options: ShapeOptions): Record<string, string> {
  return {
    MAILROOM_HOST: '127.0.0.1',
    MAILROOM_API_KEYS: '',
    MAILROOM_SMTP_URL: `smtp://127.0.0.1:${options.sinkPort}`,
    MAILROOM_SMTP_POOL: String(options.pool),
    MAILROOM_SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS),
    // info: the "Mailroom is running" line. Nothing is logged per email at info.
    LOG_LEVEL: 'info',
    MAILROOM_LOG_PRETTY: 'false',
  };
}

async function startEmbedded(options: ShapeOptions): Promise<RunningShape> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mailroom-bench-'));
  const removeDataDir = options.janitor.add(`remove ${dataDir}`, async () =>
    rmSync(dataDir, { recursive: true, force: true }),
  );
  const port = await freePort();
  const env = {
    ...baseEnv(options),
    // A MAILROOM_DATABASE_URL or MAILROOM_BROKER_URL in the caller's environment must not turn this
    // into another shape: an empty value means unset.
    MAILROOM_DATABASE_URL: '',
    MAILROOM_BROKER_URL: 'embedded',
    MAILROOM_DATA_DIR: dataDir,
    MAILROOM_PORT: String(port),
  };
  const processes = [spawnMailroom('mailroom', ['start'], env)];
  const stopProcesses = options.janitor.add('stop mailroom start', () => stopAll(processes));
  log(
    `embedded shape: mailroom start (pid ${processes[0]!.pid}) on 127.0.0.1:${port}, SQLite in ${dataDir}\n` +
      `  settings: ${settings(env, ['MAILROOM_SMTP_POOL', 'MAILROOM_CONCURRENCY', 'MAILROOM_POLL_INTERVAL_MS', 'MAILROOM_SHUTDOWN_TIMEOUT_MS'])}`,
  );
  await waitStarted(processes, `http://127.0.0.1:${port}/ready`);
  return running(
    'embedded',
    port,
    processes,
    [],
    async () => ({}),
    async () => {
      await stopProcesses();
      await removeDataDir();
    },
  );
}

/** What differs between the scaled-out shapes: the broker's variables, its names, its cleanup. */
interface BrokerSetup {
  readonly env: Record<string, string>;
  /** One line for the log. */
  readonly describe: string;
  readonly cpuGroup: CpuGroup;
  cleanup(): Promise<string>;
}

function brokerSetup(broker: 'rabbitmq' | 'nats', suffix: string): BrokerSetup {
  const name = `mailroom_bench_${suffix}`;
  if (broker === 'nats') {
    return {
      env: {
        MAILROOM_BROKER_URL: NATS_URL,
        MAILROOM_NATS_STREAM: name,
        MAILROOM_NATS_SUBJECT: `${name}.email`,
        MAILROOM_NATS_CONSUMER: `mailroom-bench-${suffix}`,
      },
      describe: `NATS ${redact(NATS_URL)}, stream ${name} (subjects ${name}.email{.high,,.low}), dead letters in ${name}_failed`,
      cpuGroup: { name: 'nats-server*', commands: ['nats-server'] },
      cleanup: () => deleteStreams([name, `${name}_failed`]),
    };
  }
  const deadLetterQueue = `${name}_failed`;
  return {
    env: {
      MAILROOM_BROKER_URL: AMQP_URL,
      MAILROOM_AMQP_QUEUE: name,
      MAILROOM_AMQP_DEAD_LETTER_QUEUE: deadLetterQueue,
    },
    describe: `RabbitMQ ${redact(AMQP_URL)}, work queues ${name}{.high,,.low}, delay queues ${name}.delay.*, dead letters ${deadLetterQueue}`,
    cpuGroup: { name: 'rabbitmq*', commands: ['beam.smp'] },
    cleanup: () => deleteQueues(name, deadLetterQueue),
  };
}

async function startScaledOut(options: ShapeOptions, broker: 'rabbitmq' | 'nats'): Promise<RunningShape> {
  await checkServers(broker);
  const suffix = randomBytes(5).toString('hex');
  const schema = `mailroom_bench_${suffix}`;
  const setup = brokerSetup(broker, suffix);
  // Registered before anything exists, so that even a failed start-up deletes what it made.
  const deleteResources = options.janitor.add(
    `drop schema ${schema} and delete the ${broker} resources`,
    () => deleteResourcesOf(schema, setup),
  );
  const port = await freePort();
  const env = {
    ...baseEnv(options),
    MAILROOM_DATABASE_URL: POSTGRES_URL,
    MAILROOM_DATABASE_SCHEMA: schema,
    ...setup.env,
  };
  log(
    `${broker} shape: 1 × mailroom api (127.0.0.1:${port}) + ${WORKERS} × mailroom worker, sharing\n` +
      `  PostgreSQL ${redact(POSTGRES_URL)}, schema ${schema}\n` +
      `  ${setup.describe}\n` +
      `  settings per process: ${settings(env, ['MAILROOM_DATABASE_POOL', 'MAILROOM_PREFETCH', 'MAILROOM_CONCURRENCY', 'MAILROOM_SMTP_POOL', 'MAILROOM_LEASE_MS', 'MAILROOM_SHUTDOWN_TIMEOUT_MS'])}\n` +
      `  (concurrency, prefetch and the SMTP pool matter in the workers: ${WORKERS * options.pool} SMTP connections to the sink in all)`,
  );
  // One migration before the processes start, rather than three processes taking turns on the lock.
  const migrateStarted = performance.now();
  await runMailroomCommand('migrate', ['migrate'], env, MIGRATE_TIMEOUT_MS);
  log(`  mailroom migrate: ${((performance.now() - migrateStarted) / 1000).toFixed(1)} s`);

  const processes = [
    spawnMailroom('api', ['api'], { ...env, MAILROOM_PORT: String(port) }),
    // Each worker serves /metrics on a port of its own (0: any free one).
    ...Array.from({ length: WORKERS }, (_, i) =>
      spawnMailroom(`worker-${i + 1}`, ['worker'], { ...env, MAILROOM_METRICS_PORT: '0' }),
    ),
  ];
  const stopProcesses = options.janitor.add('stop the api and workers', () => stopAll(processes));
  log(`  pids: ${processes.map((child) => `${child.name} ${child.pid}`).join(', ')}`);
  await waitStarted(processes, `http://127.0.0.1:${port}/ready`);
  // The backends serving this run's processes, by the application_name the store gives them.
  const backends = new pg.Client({ connectionString: POSTGRES_URL, application_name: 'mailroom-bench' });
  backends.on('error', () => undefined);
  await backends.connect();
  const closeBackends = options.janitor.add('close the bench connection to PostgreSQL', () => backends.end());
  const cpuGroups: CpuGroup[] = [
    {
      name: 'postgres',
      findPids: async () =>
        (
          await backends.query<{ pid: number }>(
            'SELECT pid FROM pg_stat_activity WHERE application_name = $1',
            [`mailroom:${schema}`],
          )
        ).rows.map((row) => row.pid),
    },
    { name: 'postgres-other*', commands: ['postgres'] },
    setup.cpuGroup,
  ];
  // PostgreSQL's statistics reach these views late (see procedure.ts): read them after a pause.
  const counters = async (): Promise<Record<string, number>> => {
    const commits = await backends.query<{ commits: string }>(
      'SELECT xact_commit AS commits FROM pg_stat_database WHERE datname = current_database()',
    );
    const tables = await backends.query<{
      table: string;
      inserted: string;
      updated: string;
      deleted: string;
    }>(
      `SELECT relname AS table, n_tup_ins AS inserted, n_tup_upd AS updated, n_tup_del AS deleted
         FROM pg_stat_user_tables WHERE schemaname = $1 ORDER BY relname`,
      [schema],
    );
    const result: Record<string, number> = { 'commits*': Number(commits.rows[0]?.commits ?? Number.NaN) };
    for (const kind of ['inserted', 'updated', 'deleted'] as const) {
      for (const row of tables.rows) result[`${kind} ${row.table}`] = Number(row[kind]);
    }
    return result;
  };
  return running(broker, port, processes, cpuGroups, counters, async () => {
    await closeBackends();
    await stopProcesses();
    await deleteResources();
  });
}

function running(
  name: ShapeName,
  port: number,
  processes: readonly MailroomChild[],
  cpuGroups: readonly CpuGroup[],
  counters: (() => Promise<Record<string, number>>) | undefined,
  stop: () => Promise<void>,
): RunningShape {
  const failed = new Promise<never>((_, reject) => {
    for (const child of processes) {
      void child.exited.then(({ code, signal }) => {
        if (child.stopping) return;
        reject(
          new Error(
            `${child.name} (pid ${child.pid}) exited during the run: code ${code}, signal ${signal}. Its last lines:\n${child.tail()}`,
          ),
        );
      });
    }
  });
  // Watched by racing it; a death after the measurements must not be an unhandled rejection.
  failed.catch(() => undefined);
  return {
    name,
    emailsUrl: `http://127.0.0.1:${port}/v1/emails`,
    processes,
    cpuGroups,
    ...(counters && { counters }),
    failed,
    peakRssMb: () => Object.fromEntries(processes.map((child) => [child.name, peakRssMb(child.pid)])),
    stop,
  };
}

async function waitStarted(processes: readonly MailroomChild[], readyUrl: string): Promise<void> {
  const started = performance.now();
  await within(
    Promise.all(processes.map((child) => child.running)),
    START_TIMEOUT_MS,
    `not every process logged "Mailroom is running" within ${START_TIMEOUT_MS / 1000} s:\n` +
      processes.map((child) => `--- ${child.name} ---\n${child.tail()}`).join('\n'),
  );
  await waitReady(readyUrl, START_TIMEOUT_MS);
  log(`  running and ready after ${((performance.now() - started) / 1000).toFixed(1)} s`);
}

async function stopAll(processes: readonly MailroomChild[]): Promise<void> {
  await Promise.all(processes.map((child) => child.stop(STOP_GRACE_MS)));
}

/** Fails early, with the address, when PostgreSQL or the broker cannot be reached. */
async function checkServers(broker: 'rabbitmq' | 'nats'): Promise<void> {
  const client = new pg.Client({ connectionString: POSTGRES_URL, connectionTimeoutMillis: 5_000 });
  try {
    await client.connect();
    await client.query('SELECT 1');
  } catch (error) {
    throw new Error(
      `PostgreSQL at ${redact(POSTGRES_URL)} (BENCH_POSTGRES_URL) is unreachable: ${(error as Error).message}`,
    );
  } finally {
    await client.end().catch(() => undefined);
  }
  if (broker === 'nats') {
    try {
      const connection = await within(connectNats({ servers: NATS_URL }), 5_000, 'no answer within 5 s');
      await connection.close();
    } catch (error) {
      throw new Error(
        `NATS at ${redact(NATS_URL)} (BENCH_NATS_URL) is unreachable: ${(error as Error).message}`,
      );
    }
    return;
  }
  try {
    const connection = await within(connect(AMQP_URL), 5_000, 'no answer within 5 s');
    await connection.close();
  } catch (error) {
    throw new Error(
      `RabbitMQ at ${redact(AMQP_URL)} (BENCH_AMQP_URL) is unreachable: ${(error as Error).message}`,
    );
  }
}

/** Drops the schema and deletes the broker's queues or streams; each is a no-op if absent. */
async function deleteResourcesOf(schema: string, setup: BrokerSetup): Promise<void> {
  const [dropped, deleted] = await Promise.allSettled([dropSchema(schema), setup.cleanup()]);
  const failures = [
    ...(dropped.status === 'rejected' ? [`schema ${schema}: ${(dropped.reason as Error).message}`] : []),
    ...(deleted.status === 'rejected' ? [`broker: ${(deleted.reason as Error).message}`] : []),
  ];
  if (failures.length > 0) throw new Error(`left behind, delete by hand: ${failures.join('; ')}`);
  log(`  dropped schema ${schema}; ${deleted.status === 'fulfilled' ? deleted.value : ''}`);
}

async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: POSTGRES_URL, connectionTimeoutMillis: 10_000 });
  await client.connect();
  try {
    // Every process is stopped by now; a lock left by one would otherwise hang the cleanup.
    await client.query("SET lock_timeout = '10s'");
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}

async function deleteQueues(queue: string, deadLetterQueue: string): Promise<string> {
  const topology = describeTopology({
    queue,
    deadLetterQueue,
    deliveryLimit: 20,
    delayTiersMs: DEFAULT_DELAY_TIERS_MS,
  });
  const connection = await connect(AMQP_URL);
  try {
    const channel = await connection.createChannel();
    for (const { name } of topology.queues) await channel.deleteQueue(name);
    for (const exchange of topology.exchanges) await channel.deleteExchange(exchange);
  } finally {
    await connection.close();
  }
  return `deleted ${topology.queues.length} queues and ${topology.exchanges.length} exchanges`;
}

async function deleteStreams(streams: readonly string[]): Promise<string> {
  const connection = await connectNats({ servers: NATS_URL });
  try {
    const manager = await jetstreamManager(connection);
    for (const stream of streams) await manager.streams.delete(stream).catch(() => false);
  } finally {
    await connection.close();
  }
  return `deleted streams ${streams.join(', ')}`;
}

/** `NAME=value` for each variable: the value the processes get, from `env`, this environment or the default. */
function settings(env: Readonly<Record<string, string>>, names: readonly string[]): string {
  const defaults = new Map<string, string | undefined>(
    (Object.values(CONFIG_SCHEMA) as VariableSpec<unknown>[]).map((spec) => [spec.env, spec.default]),
  );
  return names
    .map((name) => `${name}=${env[name] ?? process.env[name] ?? defaults.get(name) ?? ''}`)
    .join(' ');
}

/** A URL with its password hidden, for the log. */
function redact(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparsable URL)';
  }
}
