import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import nodemailer from 'nodemailer';
import MailComposer from 'nodemailer/lib/mail-composer/index.js';
import { connectNoDelay } from '../src/transport/smtp/connect-no-delay.js';
import type { SinkProcessCommand, SinkProcessMessage } from './sink-process.js';

export interface CeilingOptions {
  readonly port: number;
  /** Pooled SMTP connections. */
  readonly pool: number;
  readonly messages: number;
  /** How many messages the sink has seen so far, warm-up included. */
  readonly received: () => number;
  /** Bounds the whole measurement, warm-up and the wait for the sink included. */
  readonly timeoutMs: number;
  /** Messages sent before the clock starts; 10 per connection by default. */
  readonly warmup?: number;
}

export interface CeilingResult {
  readonly perSec: number;
  /** From the first measured send to the last 250 reply. */
  readonly elapsedMs: number;
}

const SINK_POLL_MS = 10;

/**
 * The raw rate of a pooled nodemailer transport against a sink, with no Mailroom in the way: the
 * same pool size and socket options as Mailroom's SMTP transport, messages built beforehand and sent
 * as raw bytes, every connection kept busy. It is the most Mailroom could send through this relay.
 * Throws when a send fails, the timeout passes, or the sink does not see every message in time.
 */
export async function measureTransportCeiling(options: CeilingOptions): Promise<CeilingResult> {
  const { port, pool, messages, received, timeoutMs } = options;
  const warmup = options.warmup ?? pool * 10;
  const deadline = performance.now() + timeoutMs;
  const transport = nodemailer.createTransport({
    pool: true,
    maxConnections: pool,
    maxMessages: Number.POSITIVE_INFINITY,
    host: '127.0.0.1',
    port,
    secure: false,
    ignoreTLS: true,
    getSocket: connectNoDelay,
  });
  const prebuilt = await Promise.all(
    Array.from({ length: 100 }, (_, i) =>
      (async () => {
        const node = new MailComposer({
          from: 'Mailroom Bench <bench@example.com>',
          to: `rcpt${i}@example.com`,
          subject: `ceiling message ${i}`,
          text: `Hello,\n\nThis is ceiling message ${i}.\n\n-- \nMailroom`,
          html: `<p>Hello,</p><p>This is <b>ceiling</b> message ${i}.</p>`,
        }).compile();
        return { raw: await node.build(), messageId: node.messageId() };
      })(),
    ),
  );

  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    transport.close();
  }, timeoutMs);

  const sendBatch = async (count: number): Promise<void> => {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < count && !timedOut) {
        const i = next++;
        await transport.sendMail({
          envelope: { from: 'bench@example.com', to: [`rcpt${i % 100}@example.com`] },
          raw: prebuilt[i % 100]!.raw,
          // As Mailroom's transport does: no random Message-ID invented for a raw message.
          messageId: prebuilt[i % 100]!.messageId,
        });
      }
    };
    // A few messages queued per connection keep each one busy.
    await Promise.all(Array.from({ length: Math.min(count, pool * 4) }, worker));
    if (timedOut) throw new Error(`measureTransportCeiling: timed out after ${timeoutMs} ms`);
  };

  try {
    const base = received();
    await sendBatch(warmup);
    const started = performance.now();
    await sendBatch(messages);
    const elapsedMs = performance.now() - started;

    const expected = base + warmup + messages;
    for (let polls = 0; received() < expected; polls++) {
      if (performance.now() > deadline || polls > timeoutMs / SINK_POLL_MS) {
        throw new Error(
          `measureTransportCeiling: the sink saw ${received() - base} of ${warmup + messages} messages`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, SINK_POLL_MS));
    }
    return { perSec: (messages / elapsedMs) * 1000, elapsedMs };
  } finally {
    clearTimeout(timer);
    transport.close();
  }
}

export interface SinkProcess {
  readonly port: number;
  readonly pid: number;
  /** Resolves when the sink process has exited, whether stopped or not. */
  readonly exited: Promise<void>;
  /** Messages the sink has reported so far. */
  received(): number;
  /** Called with every batch the sink reports. */
  onReceived(listener: (items: readonly [messageId: string, receivedAt: number][]) => void): void;
  stop(): Promise<void>;
}

/** Spawns bench/sink-process.ts and resolves once it listens. */
export function spawnSinkProcess(
  options: { port?: number; readyTimeoutMs?: number } = {},
): Promise<SinkProcess> {
  const script = fileURLToPath(new URL('./sink-process.ts', import.meta.url));
  const child: ChildProcess = spawn(
    process.execPath,
    ['--import', 'tsx', script, String(options.port ?? 0)],
    {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    },
  );
  let count = 0;
  const listeners: ((items: readonly [string, number][]) => void)[] = [];
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  return new Promise<SinkProcess>((resolve, reject) => {
    const readyTimer = setTimeout(() => {
      child.kill();
      reject(new Error('spawnSinkProcess: the sink did not report ready in time'));
    }, options.readyTimeoutMs ?? 15_000);
    child.once('error', (err) => {
      clearTimeout(readyTimer);
      reject(err);
    });
    child.once('exit', (code) => {
      clearTimeout(readyTimer);
      reject(new Error(`spawnSinkProcess: the sink exited with ${code}`));
    });
    child.on('message', (message: SinkProcessMessage) => {
      if (message.type === 'received') {
        count += message.items.length;
        for (const listener of listeners) listener(message.items);
        return;
      }
      clearTimeout(readyTimer);
      resolve({
        port: message.port,
        pid: child.pid!,
        exited,
        received: () => count,
        onReceived: (listener) => listeners.push(listener),
        stop: async () => {
          if (child.exitCode !== null || child.signalCode !== null) return;
          const stop: SinkProcessCommand = { type: 'stop' };
          if (child.connected) child.send(stop);
          const killTimer = setTimeout(() => child.kill('SIGKILL'), 5_000);
          await exited;
          clearTimeout(killTimer);
        },
      });
    });
  });
}
