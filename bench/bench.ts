/**
 * `npm run bench [-- --quick]`: the embedded shape end to end against an SMTP sink in its own process.
 *
 * (a) The transport ceiling: nodemailer's pool straight to the sink, no Mailroom.
 * (b) Mailroom (the built CLI, `mailroom start`, in its own process, durable: fsync before 202):
 *     open-loop HTTP POSTs at rising rates; the highest rate it keeps up with (no growing backlog),
 *     accept and delivery latency at 1,000/s, and peak RSS.
 * The last line is one JSON object with the headline figures.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { measureTransportCeiling, type SinkProcess, spawnSinkProcess } from './ceiling.js';
import { type OpenLoopResult, runOpenLoop } from './load.js';
import { summarize } from './stats.js';

const { values: args } = parseArgs({
  options: { quick: { type: 'boolean', default: false }, shape: { type: 'string', default: 'embedded' } },
});
if (args.shape !== 'embedded') {
  console.error(`--shape ${args.shape}: only the embedded shape exists so far.`);
  process.exit(2);
}
const QUICK = args.quick;
const POOL = 4;
const LATENCY_RATE = 1000;
const STEP_MS = QUICK ? 3000 : 8000;
const WARMUP_MS = QUICK ? 3000 : 5000;
const RATES = QUICK ? [1000, 2000, 2500, 3000] : [1000, 1500, 2000, 2500, 3000, 3500, 4000];
/** A step is sustained when, a moment after it ends, at most this much work is left over. */
const BACKLOG_TOLERANCE_S = 0.25;
/** …and deliveries during the step reach at least this share of the offered rate. */
const MIN_DELIVERED_SHARE = 0.9;

interface StepResult {
  readonly offered: number;
  readonly accepted: number;
  readonly errors: number;
  readonly errorKinds: string;
  readonly deliveredPerSec: number;
  readonly backlogAfter: number;
  readonly sustained: boolean;
  readonly acceptMs: ReturnType<typeof summarize>;
  readonly deliveryMs: ReturnType<typeof summarize>;
}

const log = (line: string) => console.error(line);

async function main(): Promise<void> {
  const sink = await spawnSinkProcess();
  const deliveredAt = new Map<string, number>();
  sink.onReceived((items) => {
    for (const [messageId, at] of items) deliveredAt.set(messageId, at);
  });
  const dataDir = mkdtempSync(join(tmpdir(), 'mailroom-bench-'));
  let mailroom: ChildProcess | undefined;
  try {
    log(`transport ceiling: nodemailer pool of ${POOL}, raw messages, straight to the sink…`);
    const ceiling = await measureTransportCeiling({
      port: sink.port,
      pool: POOL,
      messages: QUICK ? 6000 : 10_000,
      // A cold client and sink read about half their warm rate: warm up as Mailroom does.
      warmup: QUICK ? 2000 : 4000,
      received: () => sink.received(),
      timeoutMs: 120_000,
    });
    log(`  ${ceiling.perSec.toFixed(0)} messages/s`);

    const port = await freePort();
    mailroom = startMailroom(port, sink.port, dataDir);
    await waitReady(`http://127.0.0.1:${port}/ready`);
    const url = `http://127.0.0.1:${port}/v1/emails`;
    // Steady state is what the figures describe: the first seconds after start run unoptimised code
    // on a growing heap (accept p99 about twice the steady figure), so warm up at the latency rate.
    log(`warming up at ${LATENCY_RATE}/s for ${WARMUP_MS / 1000} s…`);
    await runStep(url, LATENCY_RATE, WARMUP_MS, sink, deliveredAt);

    const steps: StepResult[] = [];
    for (const rate of RATES) {
      const step = await runStep(url, rate, STEP_MS, sink, deliveredAt);
      steps.push(step);
      log(
        `  offered ${rate}/s: accepted ${step.accepted} (errors ${step.errors}${step.errorKinds ? `: ${step.errorKinds}` : ''}), delivered ${step.deliveredPerSec.toFixed(0)}/s, ` +
          `backlog after ${step.backlogAfter}, accept p50/p99 ${step.acceptMs.p50.toFixed(1)}/${step.acceptMs.p99.toFixed(1)} ms, ` +
          `delivery p50/p99 ${step.deliveryMs.p50.toFixed(0)}/${step.deliveryMs.p99.toFixed(0)} ms${step.sustained ? '' : '  (not sustained)'}`,
      );
      if (!step.sustained) break;
    }
    const sustained = steps.filter((step) => step.sustained);
    const best = sustained.reduce(
      (a, b) => (b.deliveredPerSec > a.deliveredPerSec ? b : a),
      sustained[0] ?? steps[0]!,
    );
    const atLatencyRate = steps.find((step) => step.offered === LATENCY_RATE)!;
    const peakRssMb = peakRss(mailroom.pid!);
    const result = {
      shape: 'embedded',
      quick: QUICK,
      transport_ceiling_per_sec: Math.round(ceiling.perSec),
      delivered_per_sec: sustained.length > 0 ? Math.round(best.deliveredPerSec) : 0,
      efficiency: Number(((sustained.length > 0 ? best.deliveredPerSec : 0) / ceiling.perSec).toFixed(2)),
      accept_p50_ms: round(atLatencyRate.acceptMs.p50),
      accept_p99_ms: round(atLatencyRate.acceptMs.p99),
      delivery_p50_ms: round(atLatencyRate.deliveryMs.p50),
      delivery_p99_ms: round(atLatencyRate.deliveryMs.p99),
      peak_rss_mb: Math.round(peakRssMb),
    };
    console.log(JSON.stringify(result));
  } finally {
    if (mailroom && mailroom.exitCode === null) {
      mailroom.kill('SIGTERM');
      await new Promise((resolve) => mailroom!.once('exit', resolve));
    }
    await sink.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function runStep(
  url: string,
  rate: number,
  durationMs: number,
  sink: SinkProcess,
  deliveredAt: Map<string, number>,
): Promise<StepResult> {
  const before = sink.received();
  const started = Date.now();
  const load: OpenLoopResult = await runOpenLoop({
    url,
    ratePerSec: rate,
    durationMs,
    maxInFlight: 2000,
    body: (i) =>
      JSON.stringify({
        from: 'Bench <bench@example.com>',
        to: `user${i % 1000}@example.com`,
        subject: `Order ${i} confirmed`,
        text: `Hello,\n\nyour order ${i} is confirmed.\n\nThanks,\nthe bench`,
        html: `<p>Hello,</p><p>your order <b>${i}</b> is confirmed.</p><p>Thanks,<br>the bench</p>`,
        tags: ['bench'],
      }),
  });
  const elapsedS = (Date.now() - started) / 1000;
  const deliveredInWindow = sink.received() - before;
  // Give in-flight sends a moment, then see what is left over.
  await new Promise((resolve) => setTimeout(resolve, BACKLOG_TOLERANCE_S * 1000 + 200));
  const backlogAfter = load.ok - (sink.received() - before);
  const acceptedAt = load.responses
    .filter((response) => response.status === 202)
    .map((response) => ({ id: (JSON.parse(response.body) as { id: string }).id, at: response.finishedAt }));
  await drain(sink, before + load.ok, 60_000);
  const deliveryMs = acceptedAt
    .map(({ id, at }) => (deliveredAt.get(`<${id}@example.com>`) ?? Number.NaN) - at)
    .filter((ms) => Number.isFinite(ms));
  return {
    offered: rate,
    accepted: load.ok,
    errors: load.errors,
    errorKinds: Object.entries(load.statusCounts)
      .filter(([key]) => !key.startsWith('2'))
      .map(([key, count]) => `${key}×${count}`)
      .join(' '),
    deliveredPerSec: deliveredInWindow / elapsedS,
    backlogAfter,
    // Kept up: every request accepted, deliveries in the window close to the offered rate (not
    // catching up only once the load stopped and freed the cores), and little left over after.
    sustained:
      load.errors === 0 &&
      deliveredInWindow / elapsedS >= rate * MIN_DELIVERED_SHARE &&
      backlogAfter <= rate * BACKLOG_TOLERANCE_S,
    acceptMs: summarize(load.latenciesMs),
    deliveryMs: summarize(deliveryMs),
  };
}

async function drain(sink: SinkProcess, expected: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (sink.received() < expected) {
    if (Date.now() > deadline)
      throw new Error(`backlog did not drain: ${sink.received()} of ${expected} delivered`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function startMailroom(port: number, sinkPort: number, dataDir: string): ChildProcess {
  const child = spawn(
    process.execPath,
    [
      ...(process.env.BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROFILE}`] : []),
      'bin/mailroom.js',
      'start',
    ],
    {
      env: {
        ...process.env,
        MAILROOM_PORT: String(port),
        MAILROOM_DATA_DIR: dataDir,
        MAILROOM_SMTP_URL: `smtp://127.0.0.1:${sinkPort}`,
        MAILROOM_SMTP_POOL: String(POOL),
        LOG_LEVEL: 'warn',
        MAILROOM_LOG_PRETTY: 'false',
      },
      stdio: ['ignore', 'inherit', 'inherit'],
    },
  );
  child.once('exit', (code, signal) => {
    if (code !== 0 && signal !== 'SIGTERM') log(`mailroom exited early: code ${code}, signal ${signal}`);
  });
  return child;
}

async function waitReady(url: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`Mailroom did not become ready at ${url}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** Peak resident set size of a process, from the kernel's high-water mark. */
function peakRss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmHWM:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) / 1024 : Number.NaN;
}

const round = (value: number) => Math.round(value * 10) / 10;

await main();
