/**
 * The measurement, the same for every shape once its processes run: a warm-up at the latency rate,
 * then open-loop HTTP POSTs at rising offered rates until one is not sustained, the accept and
 * delivery latency at the latency rate, and the processes' peak RSS.
 */

import type { SinkProcess } from './ceiling.js';
import { type CpuGroup, cpuBetween, formatCpu, sampleCpu } from './cpu.js';
import { followLiveLag } from './live-lag.js';
import { type OpenLoopResult, runOpenLoop } from './load.js';
import type { RunningShape } from './shapes.js';
import { summarize } from './stats.js';

/** A step is sustained when, a moment after it ends, at most this much work is left over. */
const BACKLOG_TOLERANCE_S = 0.25;
/** …and deliveries during the step reach at least this share of the offered rate. */
const MIN_DELIVERED_SHARE = 0.9;
/**
 * PostgreSQL's statistics views lag the work: a busy backend reports at most once a second, and one
 * that went idle with statistics pending reports them 10 s later (PGSTAT_IDLE_INTERVAL).
 */
const STATS_DELAY_MS = 11_000;
/** How long the backlog a step leaves may take to reach the sink before the run fails. */
const DRAIN_TIMEOUT_MS = 60_000;

export interface Plan {
  /** The rate the latencies are reported at; the warm-up runs at it too. */
  readonly latencyRate: number;
  /** Offered rates, rising. */
  readonly rates: readonly number[];
  readonly stepMs: number;
  readonly warmupMs: number;
}

export interface Context {
  readonly sink: SinkProcess;
  /** When the sink received each Message-ID (epoch ms). */
  readonly deliveredAt: ReadonlyMap<string, number>;
  readonly ceilingPerSec: number;
  readonly quick: boolean;
}

/** The JSON line of one shape. */
export interface ShapeResult {
  readonly shape: string;
  readonly quick: boolean;
  readonly transport_ceiling_per_sec: number;
  readonly delivered_per_sec: number;
  readonly efficiency: number;
  readonly latency_rate_per_sec: number;
  readonly accept_p50_ms: number;
  readonly accept_p99_ms: number;
  readonly delivery_p50_ms: number;
  readonly delivery_p99_ms: number;
  readonly peak_rss_mb: number;
  /** Live status (SSE) at the latency rate: event arrival minus the transition's time. */
  readonly live_lag_p50_ms: number;
  readonly live_lag_p99_ms: number;
}

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
  readonly cpu: string;
}

const log = (line: string) => console.error(line);
const round = (value: number) => Math.round(value * 10) / 10;

export async function measureShape(shape: RunningShape, plan: Plan, context: Context): Promise<ShapeResult> {
  const cpuGroups: CpuGroup[] = [
    ...shape.processes.map((child) => ({ name: child.name, pids: [child.pid] })),
    { name: 'sink', pids: [context.sink.pid] },
    { name: 'bench', pids: [process.pid] },
    ...shape.cpuGroups,
  ];
  // Steady state is what the figures describe: the first seconds after start run unoptimised code
  // on a growing heap (accept p99 about twice the steady figure), so warm up at the latency rate.
  log(`warming up at ${plan.latencyRate}/s for ${plan.warmupMs / 1000} s…`);
  const warmup = await runStep(shape.emailsUrl, plan.latencyRate, plan.warmupMs, context, cpuGroups);
  log(`  warm-up: ${describe(warmup)}`);

  const steps: StepResult[] = [];
  // Counters need a pause before each read to be right: full runs only, --quick stays quick.
  const counting = shape.counters !== undefined && !context.quick;
  const countersBefore = counting ? await settledCounters(shape) : {};
  for (const rate of plan.rates) {
    const step = await runStep(shape.emailsUrl, rate, plan.stepMs, context, cpuGroups);
    steps.push(step);
    log(`  offered ${rate}/s: ${describe(step)}\n    ${step.cpu}`);
    // Carry on below the latency rate: its latencies are reported whatever happens under it.
    if (!step.sustained && rate >= plan.latencyRate) break;
  }
  const countersAfter = counting ? await settledCounters(shape) : {};
  // Live status gets a step of its own at the latency rate: a client following every event costs
  // the API work (reading and sending three events per email) that the ladder's figures leave out.
  const live = await followLiveLag(shape.emailsUrl);
  const liveStep = await runStep(shape.emailsUrl, plan.latencyRate, plan.stepMs, context, cpuGroups);
  const liveLagMs = summarize(live.stop());
  log(
    `  live status at ${plan.latencyRate}/s: ${liveLagMs.count} events, transition → SSE client p50/p99 ${liveLagMs.p50.toFixed(1)}/${liveLagMs.p99.toFixed(1)} ms; with the client: ${describe(liveStep)}`,
  );
  const emails = steps.reduce((sum, step) => sum + step.accepted, 0);
  if (Object.keys(countersAfter).length > 0) {
    const perEmail = Object.entries(countersAfter)
      .map(([name, value]) => [name, (value - (countersBefore[name] ?? 0)) / emails] as const)
      .filter(([, value]) => value !== 0)
      .map(([name, value]) => `${name} ${value.toFixed(2)}`)
      .join(', ');
    log(`  per email over the ladder (${emails} emails): ${perEmail}`);
  }
  const sustained = steps.filter((step) => step.sustained);
  const best = sustained.reduce<StepResult | undefined>(
    (a, b) => (a === undefined || b.deliveredPerSec > a.deliveredPerSec ? b : a),
    undefined,
  );
  const atLatencyRate = steps.find((step) => step.offered === plan.latencyRate);
  if (!atLatencyRate) throw new Error(`the plan has no step at the latency rate ${plan.latencyRate}/s`);

  const rss = shape.peakRssMb();
  const totalRss = Object.values(rss).reduce((a, b) => a + b, 0);
  log(
    `  peak RSS: ${Object.entries(rss)
      .map(([name, mb]) => `${name} ${mb.toFixed(0)} MB`)
      .join(', ')}${shape.processes.length > 1 ? `; ${totalRss.toFixed(0)} MB in all` : ''}`,
  );
  const delivered = best?.deliveredPerSec ?? 0;
  return {
    shape: shape.name,
    quick: context.quick,
    transport_ceiling_per_sec: Math.round(context.ceilingPerSec),
    delivered_per_sec: Math.round(delivered),
    efficiency: Number((delivered / context.ceilingPerSec).toFixed(2)),
    latency_rate_per_sec: plan.latencyRate,
    accept_p50_ms: round(atLatencyRate.acceptMs.p50),
    accept_p99_ms: round(atLatencyRate.acceptMs.p99),
    delivery_p50_ms: round(atLatencyRate.deliveryMs.p50),
    delivery_p99_ms: round(atLatencyRate.deliveryMs.p99),
    peak_rss_mb: Math.round(totalRss),
    live_lag_p50_ms: round(liveLagMs.p50),
    live_lag_p99_ms: round(liveLagMs.p99),
  };
}

/** The shape's counters once the work done so far has reached them (STATS_DELAY_MS). */
async function settledCounters(shape: RunningShape): Promise<Record<string, number>> {
  if (!shape.counters) return {};
  log(`  waiting ${STATS_DELAY_MS / 1000} s for PostgreSQL's statistics to catch up…`);
  await new Promise((resolve) => setTimeout(resolve, STATS_DELAY_MS));
  return shape.counters();
}

function describe(step: StepResult): string {
  return (
    `accepted ${step.accepted} (errors ${step.errors}${step.errorKinds ? `: ${step.errorKinds}` : ''}), delivered ${step.deliveredPerSec.toFixed(0)}/s, ` +
    `backlog after ${step.backlogAfter}, accept p50/p99 ${step.acceptMs.p50.toFixed(1)}/${step.acceptMs.p99.toFixed(1)} ms, ` +
    `delivery p50/p99 ${step.deliveryMs.p50.toFixed(0)}/${step.deliveryMs.p99.toFixed(0)} ms${step.sustained ? '' : '  (not sustained)'}`
  );
}

async function runStep(
  url: string,
  rate: number,
  durationMs: number,
  context: Context,
  cpuGroups: readonly CpuGroup[],
): Promise<StepResult> {
  const { sink, deliveredAt } = context;
  const before = sink.received();
  const started = Date.now();
  const cpuStart = await sampleCpu(cpuGroups);
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
  const cpuUsage = cpuBetween(cpuStart, await sampleCpu(cpuGroups));
  const elapsedS = (Date.now() - started) / 1000;
  const deliveredInWindow = sink.received() - before;
  // Per email accepted: the emails that went through the API in the window, most also delivered.
  const cpu = formatCpu(cpuUsage, load.ok);
  // Give in-flight sends a moment, then see what is left over.
  await new Promise((resolve) => setTimeout(resolve, BACKLOG_TOLERANCE_S * 1000 + 200));
  const backlogAfter = load.ok - (sink.received() - before);
  const acceptedAt = load.responses
    .filter((response) => response.status === 202)
    .map((response) => ({ id: (JSON.parse(response.body) as { id: string }).id, at: response.finishedAt }));
  await drain(sink, before + load.ok, DRAIN_TIMEOUT_MS);
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
    cpu,
  };
}

async function drain(sink: SinkProcess, expected: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (sink.received() < expected) {
    if (Date.now() > deadline) {
      throw new Error(
        `the backlog did not drain within ${timeoutMs / 1000} s: the sink has ${sink.received()} of the ${expected} emails accepted so far`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
