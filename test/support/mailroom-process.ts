import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { CONFIG_SCHEMA, type VariableSpec } from '../../src/config/config-schema.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'src', 'cli.ts');
const START_TIMEOUT_MS = 20_000;

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface HttpAnswer {
  readonly status: number;
  readonly headers: Headers;
  // biome-ignore lint/suspicious/noExplicitAny: a test reads whatever JSON the API answered.
  readonly body: any;
}

/** `mailroom start` (or `api`, `worker`) running as a child process, the way an operator runs it. */
export interface MailroomProcess {
  readonly child: ChildProcess;
  /** http://127.0.0.1:PORT, from the "Mailroom is running" log line; '' for `mailroom worker`. */
  readonly apiUrl: string;
  /** Resolves when the process has exited. */
  readonly exited: Promise<Exit>;
  /** Everything it wrote to stdout and stderr so far, for failure messages. */
  output(): string;
  /** JSON log lines whose `msg` starts with `prefix`. */
  logs(prefix: string): Record<string, unknown>[];
  request(method: string, path: string, body?: unknown): Promise<HttpAnswer>;
  /** Sends `signal` and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<Exit>;
}

/**
 * Every configuration variable set explicitly (to `env`'s value or the schema default), so that the
 * `.env` the CLI loads from its working directory cannot change a test: dotenv never overrides a
 * variable that is set, and an empty value counts as unset for a variable without a default.
 */
function hermeticEnv(env: Record<string, string>): Record<string, string> {
  const config = Object.fromEntries(
    (Object.values(CONFIG_SCHEMA) as VariableSpec<unknown>[]).map((spec) => [
      spec.env,
      env[spec.env] ?? spec.default ?? '',
    ]),
  );
  return {
    PATH: process.env.PATH ?? '',
    ...(process.env.TMPDIR !== undefined && { TMPDIR: process.env.TMPDIR }),
    TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json'),
    LOG_LEVEL: 'info',
    ...config,
    MAILROOM_LOG_PRETTY: 'false',
    ...env,
  };
}

/**
 * Starts `mailroom <command>` from the TypeScript source through tsx, so a test never runs a stale
 * build in dist/. The working directory is the repository: the store's thread finds tsx from there.
 * Resolves once it reports running; rejects with the process's output if it exits or hangs first.
 */
export async function startMailroomProcess(
  env: Record<string, string>,
  command: 'start' | 'api' | 'worker' = 'start',
): Promise<MailroomProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, command], {
    cwd: ROOT,
    env: hermeticEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const lines: Record<string, unknown>[] = [];
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    output += chunk.toString();
  });
  const apiUrl = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`mailroom did not listen within ${START_TIMEOUT_MS} ms:\n${output}`));
    }, START_TIMEOUT_MS);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      output += `${line}\n`;
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      lines.push(entry);
      if (!String(entry.msg ?? '').startsWith('Mailroom is running')) return;
      clearTimeout(timer);
      resolve(typeof entry.api === 'string' ? entry.api : '');
    });
    void exited.then((exit) => {
      clearTimeout(timer);
      reject(new Error(`mailroom exited during start-up (${JSON.stringify(exit)}):\n${output}`));
    });
  });

  const url = await apiUrl;
  return {
    child,
    apiUrl: url,
    exited,
    output: () => output,
    logs: (prefix) => lines.filter((entry) => String(entry.msg ?? '').startsWith(prefix)),
    async request(method, path, body) {
      const response = await fetch(new URL(path, url), {
        method,
        ...(body !== undefined && {
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
        }),
      });
      const text = await response.text();
      return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : null };
    },
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}
