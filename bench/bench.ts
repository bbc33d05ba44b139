/**
 * `npm run bench [-- --quick] [-- --shape embedded|rabbitmq|nats|all]`: Mailroom end to end against an SMTP
 * sink in its own process, from the built CLI.
 *
 * (a) The transport ceiling: nodemailer's pool straight to the sink, no Mailroom (once per run).
 * (b) Each shape (shapes.ts): `embedded` is one `mailroom start` (SQLite, durable: fsync before 202);
 *     `rabbitmq` is one `mailroom api` and two `mailroom worker`s on PostgreSQL and RabbitMQ. Then
 *     (procedure.ts) open-loop HTTP POSTs at rising rates; the highest rate it keeps up with (no
 *     growing backlog), accept and delivery latency at the shape's latency rate, and peak RSS.
 * Each shape prints one JSON line with its headline figures; `--shape all` ends with one more,
 * `{"shape":"all","results":[…]}`. Progress and diagnostics go to stderr.
 */
import { parseArgs } from 'node:util';
import { measureTransportCeiling, spawnSinkProcess } from './ceiling.js';
import { Janitor } from './janitor.js';
import { measureShape, type Plan, type ShapeResult } from './procedure.js';
import { SHAPES, type ShapeName, startShape } from './shapes.js';

const USAGE = 'usage: npm run bench -- [--quick] [--shape embedded|rabbitmq|nats|all]';
const POOL = 4;

function plan(shape: ShapeName, quick: boolean): Plan {
  const stepMs = quick ? 3000 : 8000;
  const warmupMs = quick ? 3000 : 5000;
  if (shape === 'embedded') {
    return {
      latencyRate: 1000,
      rates: quick ? [1000, 2000, 2500, 3000] : [1000, 1500, 2000, 2500, 3000, 3500, 4000],
      stepMs,
      warmupMs,
    };
  }
  // The target for the scaled-out shape: accept p99 < 20 ms at 500/s, ≥ 1,000 delivered/s.
  return {
    latencyRate: 500,
    rates: quick ? [500, 1000, 1500, 2000] : [250, 500, 750, 1000, 1250, 1500, 2000, 2500],
    stepMs,
    warmupMs,
  };
}

const log = (line: string) => console.error(line);

/** A failure already logged. */
class Reported extends Error {}

function parse(): { quick: boolean; shapes: ShapeName[]; all: boolean } {
  let values: { quick?: boolean; shape?: string };
  try {
    ({ values } = parseArgs({
      options: { quick: { type: 'boolean', default: false }, shape: { type: 'string', default: 'embedded' } },
    }));
  } catch (error) {
    console.error(`${(error as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  const shape = values.shape ?? 'embedded';
  if (shape === 'all') return { quick: values.quick ?? false, shapes: [...SHAPES], all: true };
  if (!(SHAPES as readonly string[]).includes(shape)) {
    console.error(`--shape ${shape}: expected one of ${[...SHAPES, 'all'].join(', ')}.\n${USAGE}`);
    process.exit(2);
  }
  return { quick: values.quick ?? false, shapes: [shape as ShapeName], all: false };
}

const args = parse();
const janitor = new Janitor();
let interrupted = false;

function onSignal(signal: NodeJS.Signals): void {
  if (interrupted) {
    log(`${signal} again: exiting without finishing the cleanup (names above: bench schema and queues).`);
    process.exit(130);
  }
  interrupted = true;
  log(`${signal}: stopping every process and deleting the schema and queues… (again to exit at once)`);
  void janitor.runAll().then(() => process.exit(signal === 'SIGINT' ? 130 : 143));
}
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

async function main(): Promise<void> {
  const sink = await spawnSinkProcess();
  let sinkStopping = false;
  janitor.add('stop the sink', async () => {
    sinkStopping = true;
    await sink.stop();
  });
  const sinkDied = sink.exited.then(() => {
    if (!sinkStopping) throw new Error('the SMTP sink process exited during the run');
    return undefined as never;
  });
  sinkDied.catch(() => undefined);
  const deliveredAt = new Map<string, number>();
  sink.onReceived((items) => {
    for (const [messageId, at] of items) deliveredAt.set(messageId, at);
  });

  log(`transport ceiling: nodemailer pool of ${POOL}, raw messages, straight to the sink…`);
  const ceiling = await measureTransportCeiling({
    port: sink.port,
    pool: POOL,
    messages: args.quick ? 6000 : 10_000,
    // A cold client and sink read about half their warm rate: warm up as Mailroom does.
    warmup: args.quick ? 2000 : 4000,
    received: () => sink.received(),
    timeoutMs: 120_000,
  });
  log(`  ${ceiling.perSec.toFixed(0)} messages/s`);

  const results: ShapeResult[] = [];
  for (const name of args.shapes) {
    log(`\n=== shape ${name} ===`);
    const started = performance.now();
    const shape = await Promise.race([
      startShape(name, { sinkPort: sink.port, pool: POOL, janitor }),
      sinkDied,
    ]);
    try {
      const result = await Promise.race([
        measureShape(shape, plan(name, args.quick), {
          sink,
          deliveredAt,
          ceilingPerSec: ceiling.perSec,
          quick: args.quick,
        }),
        shape.failed,
        sinkDied,
      ]);
      results.push(result);
      console.log(JSON.stringify(result));
    } catch (error) {
      // Said before the cleanup's own lines, then passed on for the exit code.
      if (!interrupted)
        log(`\nbench failed (shape ${name}): ${(error as Error).message ?? error}\ncleaning up…`);
      throw new Reported((error as Error).message ?? String(error));
    } finally {
      await shape.stop();
    }
    log(`  shape ${name}: ${((performance.now() - started) / 1000).toFixed(0)} s`);
  }
  if (args.all) console.log(JSON.stringify({ shape: 'all', results }));
}

let exitCode = 0;
try {
  await main();
} catch (error) {
  exitCode = 1;
  if (!interrupted && !(error instanceof Reported))
    log(`\nbench failed: ${(error as Error).message ?? error}\ncleaning up…`);
} finally {
  await janitor.runAll();
}
// Exit explicitly: a failed run may leave a load generator's timers and sockets behind.
process.exit(interrupted ? 130 : exitCode);
