import http from 'node:http';

export interface OpenLoopOptions {
  /** An http:// URL; every request is a POST to it. */
  readonly url: string;
  readonly ratePerSec: number;
  readonly durationMs: number;
  readonly body: (i: number) => string;
  /** Sent with every request, after a default `content-type: application/json`. */
  readonly headers?: Record<string, string>;
  /** A request due while this many are in flight is not sent: it counts as an error, `dropped`. */
  readonly maxInFlight: number;
  /** How long to wait for requests still in flight at the end; they count as `unfinished` after. */
  readonly drainTimeoutMs?: number;
  readonly maxSockets?: number;
}

export interface OpenLoopResponse {
  readonly i: number;
  /** The HTTP status, 0 when the request failed without one. */
  readonly status: number;
  /** The response body, or the error message when status is 0. */
  readonly body: string;
  /** Epoch ms of the request's scheduled send time, not when it actually went out. */
  readonly startedAt: number;
  /** Epoch ms of the end of the response. */
  readonly finishedAt: number;
}

export interface OpenLoopResult {
  /** Requests actually sent. */
  readonly sent: number;
  /** 2xx responses. */
  readonly ok: number;
  /** Everything else: other statuses, failed requests, `dropped`, `unsent` and `unfinished` ones. */
  readonly errors: number;
  /** By HTTP status ('202', '503'), error code ('ECONNRESET') or 'dropped', 'unsent', 'unfinished'. */
  readonly statusCounts: Record<string, number>;
  /** Per HTTP response, from its scheduled send time to the end of the response. */
  readonly latenciesMs: number[];
  readonly responses: OpenLoopResponse[];
}

/** Requests sent at once when the timer fires late, before yielding to let responses in. */
const MAX_BURST = 20;
const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;
/** How late past the end of the schedule the last requests may still be sent. */
const GENERATOR_GRACE_MS = 100;

/**
 * Fires POSTs on a fixed schedule, request i at start + i / rate, whatever the server's pace: a slow
 * server sees requests pile up instead of the load backing off, and latency is measured from the
 * scheduled time so waiting behind a late timer or a full socket pool counts.
 */
export async function runOpenLoop(options: OpenLoopOptions): Promise<OpenLoopResult> {
  const url = new URL(options.url);
  if (url.protocol !== 'http:') throw new Error(`runOpenLoop: only http:// URLs, got ${options.url}`);
  if (!(options.ratePerSec > 0)) throw new RangeError('runOpenLoop: ratePerSec must be > 0');
  if (!(options.durationMs >= 0)) throw new RangeError('runOpenLoop: durationMs must be >= 0');
  if (!(options.maxInFlight >= 1)) throw new RangeError('runOpenLoop: maxInFlight must be >= 1');

  const agent = new http.Agent({ keepAlive: true, maxSockets: options.maxSockets ?? 64 });
  const total = Math.floor((options.durationMs * options.ratePerSec) / 1000);
  const intervalMs = 1000 / options.ratePerSec;
  const statusCounts: Record<string, number> = {};
  const latenciesMs: number[] = [];
  const responses: OpenLoopResponse[] = [];
  /** Each request in flight, with the function that settles it once. */
  const inFlight = new Map<http.ClientRequest, (status: number, key: string, body: string) => void>();
  let sent = 0;
  let ok = 0;
  let errors = 0;
  let onIdle: (() => void) | undefined;

  const epochOf = (perfNow: number): number => performance.timeOrigin + perfNow;
  const tally = (key: string, amount = 1): void => {
    statusCounts[key] = (statusCounts[key] ?? 0) + amount;
  };

  const fire = (i: number, scheduledAt: number): void => {
    if (inFlight.size >= options.maxInFlight) {
      tally('dropped');
      errors++;
      return;
    }
    const payload = options.body(i);
    let settled = false;
    const settle = (status: number, key: string, body: string): void => {
      if (settled) return;
      settled = true;
      inFlight.delete(request);
      const finishedAt = performance.now();
      tally(key);
      if (status >= 200 && status < 300) ok++;
      else errors++;
      if (status !== 0) latenciesMs.push(finishedAt - scheduledAt);
      responses.push({ i, status, body, startedAt: epochOf(scheduledAt), finishedAt: epochOf(finishedAt) });
      if (inFlight.size === 0) onIdle?.();
    };
    const request = http.request(
      {
        host: url.hostname,
        port: url.port,
        path: `${url.pathname}${url.search}`,
        method: 'POST',
        agent,
        headers: {
          'content-type': 'application/json',
          ...options.headers,
          'content-length': Buffer.byteLength(payload),
        },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.once('end', () => {
          const status = response.statusCode ?? 0;
          settle(status, String(status), Buffer.concat(chunks).toString('utf8'));
        });
        response.on('error', (err: NodeJS.ErrnoException) => settle(0, err.code ?? 'error', err.message));
      },
    );
    request.on('error', (err: NodeJS.ErrnoException) => settle(0, err.code ?? 'error', err.message));
    inFlight.set(request, settle);
    sent++;
    request.end(payload);
  };

  const start = performance.now();
  let next = 0;
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const elapsed = performance.now() - start;
      // Requests still due at the end may go a little late; a generator that far behind stops.
      if (elapsed >= options.durationMs + GENERATOR_GRACE_MS) {
        resolve();
        return;
      }
      const due = Math.min(total, Math.floor(elapsed / intervalMs) + 1);
      for (let burst = 0; next < due && burst < MAX_BURST; burst++, next++)
        fire(next, start + next * intervalMs);
      if (next >= total) {
        resolve();
        return;
      }
      if (next < due) setImmediate(tick);
      else setTimeout(tick, Math.max(0, start + next * intervalMs - performance.now()));
    };
    tick();
  });
  if (next < total) {
    // The generator itself fell behind (a starved event loop): report it rather than fire late.
    tally('unsent', total - next);
    errors += total - next;
  }

  if (inFlight.size > 0) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, options.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS);
      onIdle = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
  for (const [request, settle] of [...inFlight]) {
    settle(0, 'unfinished', 'still in flight when the drain timeout passed');
    request.destroy();
  }
  agent.destroy();

  return { sent, ok, errors, statusCounts, latenciesMs, responses };
}
