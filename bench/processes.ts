/**
 * The benchmark's Mailroom children: the built CLI (`bin/mailroom.js`) started with a command and
 * an environment, its logs read line by line (warnings and errors passed on to stderr with the
 * process's name), and a promise that settles when it reports running or exits.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';

const log = (line: string) => console.error(line);

/** Lines of a child's output kept for a failure message. */
const TAIL_LINES = 30;
/** Warnings and errors passed on per process before the rest are only counted. */
const MAX_FORWARDED = 40;
/** pino's level numbers: 40 is warn. */
const WARN = 40;

export interface MailroomChild {
  /** `api`, `worker-1`, `mailroom`…: how the logs and figures name it. */
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Resolves when it logs "Mailroom is running"; rejects if it exits first. */
  readonly running: Promise<void>;
  /** Resolves with how it exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** True once stop() was called: an exit after that is expected. */
  readonly stopping: boolean;
  /** The last lines it wrote, for failure messages. */
  tail(): string;
  /** SIGTERM, then SIGKILL if it is still there after `graceMs`; resolves once it is gone. */
  stop(graceMs: number): Promise<void>;
}

/** `node [--cpu-prof] bin/mailroom.js <args…>` with `env` on top of this process's environment. */
export function spawnMailroom(
  name: string,
  args: readonly string[],
  env: Readonly<Record<string, string>>,
): MailroomChild {
  const child = spawn(
    process.execPath,
    [
      ...(process.env.BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE}`] : []),
      'bin/mailroom.js',
      ...args,
    ],
    { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  if (child.pid === undefined)
    throw new Error(`${name}: could not start node bin/mailroom.js ${args.join(' ')}`);
  const tail: string[] = [];
  let forwarded = 0;
  let suppressed = 0;
  let stopping = false;
  let onRunning: (() => void) | undefined;

  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      if (suppressed > 0) log(`[${name}] (${suppressed} more warnings or errors not shown)`);
      resolve({ code, signal });
    });
  });
  const forward = (line: string) => {
    // Once it is told to stop, refusals of the load still coming (SHUTTING_DOWN) are expected.
    if (stopping) return;
    if (forwarded < MAX_FORWARDED) {
      forwarded++;
      log(`[${name}] ${line}`);
    } else suppressed++;
  };
  const onLine = (line: string, stream: 'stdout' | 'stderr') => {
    tail.push(line);
    if (tail.length > TAIL_LINES) tail.shift();
    let entry: { level?: number; msg?: string } | undefined;
    try {
      entry = JSON.parse(line) as { level?: number; msg?: string };
    } catch {}
    if (entry === undefined || typeof entry !== 'object' || entry === null) {
      // Not a log line: Node's own warnings, a crash's stack trace.
      if (line.trim() !== '' || stream === 'stderr') forward(line);
      return;
    }
    if ((entry.level ?? 0) >= WARN) forward(line);
    if (String(entry.msg ?? '').startsWith('Mailroom is running')) onRunning?.();
  };
  createInterface({ input: child.stdout! }).on('line', (line) => onLine(line, 'stdout'));
  createInterface({ input: child.stderr! }).on('line', (line) => onLine(line, 'stderr'));

  const running = new Promise<void>((resolve, reject) => {
    onRunning = resolve;
    void exited.then(({ code, signal }) =>
      reject(
        new Error(`${name} exited during start-up (code ${code}, signal ${signal}):\n${tail.join('\n')}`),
      ),
    );
  });
  // A caller that only waits for `exited` (mailroom migrate) must not see an unhandled rejection.
  running.catch(() => undefined);

  return {
    name,
    pid: child.pid,
    child,
    running,
    exited,
    get stopping() {
      return stopping;
    },
    tail: () => tail.join('\n'),
    async stop(graceMs) {
      stopping = true;
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => {
        log(`[${name}] still running ${graceMs} ms after SIGTERM: SIGKILL`);
        child.kill('SIGKILL');
      }, graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Runs `mailroom <args>` to its end (a one-off command such as migrate); throws unless it exits 0. */
export async function runMailroomCommand(
  name: string,
  args: readonly string[],
  env: Readonly<Record<string, string>>,
  timeoutMs: number,
): Promise<void> {
  const command = spawnMailroom(name, args, env);
  const timer = setTimeout(() => command.child.kill('SIGKILL'), timeoutMs);
  const { code, signal } = await command.exited;
  clearTimeout(timer);
  if (code !== 0) {
    const why =
      signal === 'SIGKILL' ? `did not finish within ${timeoutMs} ms` : `exited with ${code ?? signal}`;
    throw new Error(`mailroom ${args.join(' ')} ${why}:\n${command.tail()}`);
  }
}

/** Polls `url` until it answers 2xx; throws after `timeoutMs`. */
export async function waitReady(url: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = 'no answer';
  for (;;) {
    try {
      const response = await fetch(url);
      if (response.ok) return;
      last = `${response.status} ${await response.text()}`;
    } catch (error) {
      last = (error as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`not ready at ${url} within ${timeoutMs} ms: ${last}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Resolves with `promise`, or rejects with `message` after `timeoutMs`. */
export async function within<T>(promise: Promise<T>, timeoutMs: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(message)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** Peak resident set size of a live process in MB, from the kernel's high-water mark. */
export function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmHWM:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) / 1024 : Number.NaN;
}
