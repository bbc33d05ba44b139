import type { Logger } from 'pino';
import type { SendResult } from '../transport/transport.js';
import type { AdaptiveRates } from './adaptive-rates.js';
import type { BreakerSnapshot, CircuitBreaker, SendVerdict } from './circuit-breaker.js';
import type { BucketSpec, RateLimiter } from './rate-limiter.js';

/**
 * Flow control for one worker process: before each send, the transport's circuit breaker and the
 * rate limits (the transport's, and each recipient domain's) must agree; after it, the result feeds
 * the breaker and the adaptive rates. A job that may not go now is handed back with the time to try
 * again, so that a closed-off relay or a throttled domain never holds a worker's slot that another
 * domain's email could use (no head-of-line blocking).
 */

export interface DomainRates {
  /** Sends per second for each listed domain (lower-case). */
  readonly byDomain: ReadonlyMap<string, number>;
  /** The `*` entry: the rate of every other domain, each on its own. */
  readonly fallback?: number;
}

export interface FlowControlOptions {
  readonly breaker: CircuitBreaker;
  /**
   * The limiter of this shape: in memory when embedded, Redis or PostgreSQL when shared (behind a
   * FallbackRateLimiter, so a take answers even while the shared state cannot be reached).
   */
  readonly limiter: RateLimiter;
  readonly adaptive: AdaptiveRates;
  /**
   * How long a claimed job may wait in place for a transport token: what its lease leaves after the
   * longest send. Default MAX_WAIT_IN_PLACE_MS.
   */
  readonly transportMaxWaitMs?: number;
  /** MAILROOM_RATE_PER_SEC and MAILROOM_RATE_BURST; undefined: no transport-wide limit. */
  readonly transportRate?: { readonly ratePerSec: number; readonly burst: number };
  readonly domainRates: DomainRates;
  readonly logger: Logger;
  readonly now?: () => number;
  /**
   * Told of every wait in place for tokens (never of a take granted at once): which limit, a
   * bounded bucket label (see `waitLabel`) and the wait in ms. For metrics; must be cheap.
   */
  readonly onWait?: (wait: RateLimitWait) => void;
}

/** One wait in place for rate-limit tokens. */
export interface RateLimitWait {
  readonly limit: 'transport' | 'domain';
  /**
   * `transport:<name>`; `domain:<name>` for a domain listed in MAILROOM_DOMAIN_RATES; `domain:*` for
   * any other domain, or several at once, so that recipients' domains never become label values.
   */
  readonly bucket: string;
  readonly waitMs: number;
}

/** What the worker does with a job. */
export type Gate =
  | {
      readonly kind: 'go';
      /**
       * Reports the send's result. Returns what the job's history should say about flow control:
       * that it was a probe, and the breaker transition it caused.
       */
      readonly done: (result: SendResult) => Record<string, unknown> | undefined;
      /** The send will not happen after all (shutdown): frees a probe slot, counts nothing. */
      readonly cancel: () => void;
    }
  /** Hand the job back until `retryAt`; for `circuit_open`, also stop taking work until then. */
  | {
      readonly kind: 'circuit_open' | 'rate_limited';
      readonly retryAt: number;
      readonly detail: Record<string, unknown>;
    };

/** Waiting for a domain's token in place is cheaper than handing the job back, up to this long. */
export const MAX_WAIT_IN_PLACE_MS = 250;
/** While half-open with every probe slot taken, wait this long at most for a slot before handing back. */
const PROBE_SLOT_WAIT_MS = 2_000;

export class FlowControl {
  /** Per slowest-bucket key, the earliest time the next handed-back job is scheduled for. */
  private readonly paced = new Map<string, number>();
  private readonly now: () => number;

  private readonly transportMaxWaitMs: number;

  constructor(private readonly options: FlowControlOptions) {
    this.now = options.now ?? Date.now;
    this.transportMaxWaitMs = Math.max(MAX_WAIT_IN_PLACE_MS, options.transportMaxWaitMs ?? 0);
  }

  get breaker(): CircuitBreaker {
    return this.options.breaker;
  }

  /** Decides whether a message for `recipients` may be sent now; waits briefly when that helps. */
  async admit(recipients: readonly string[]): Promise<Gate> {
    const admission = await this.admitThroughBreaker();
    if (admission.kind === 'open') {
      const snapshot = this.options.breaker.snapshot();
      return {
        kind: 'circuit_open',
        retryAt: admission.until,
        detail: {
          code: 'CIRCUIT_OPEN',
          message: `the ${snapshot.transport} circuit breaker is ${snapshot.state.replace('_', '-')}: no attempt spent`,
          transport: snapshot.transport,
          ...(snapshot.lastTransition && { breaker_reason: snapshot.lastTransition.reason }),
        },
      };
    }
    // Domains first, with a short wait: a job for a throttled domain goes back rather than hold a
    // slot another domain's email could use. Then the transport, whose limit every job shares, so
    // waiting for its token in place costs no other job anything (up to what the lease allows).
    const domains = this.domainBucketsFor(recipients);
    const transport = this.transportBucket();
    const waits: number[] = [];
    for (const [limit, buckets, maxWaitMs] of [
      ['domain', domains, MAX_WAIT_IN_PLACE_MS],
      ['transport', transport ? [transport] : [], this.transportMaxWaitMs],
    ] as const) {
      if (buckets.length === 0) continue;
      const taken = await this.options.limiter.take(buckets, maxWaitMs);
      if (taken.kind === 'denied') {
        admission.done('neutral');
        return this.rateLimited(buckets, taken.retryInMs);
      }
      if (taken.waitMs > 0) {
        this.options.onWait?.({ limit, bucket: this.waitLabel(buckets), waitMs: taken.waitMs });
      }
      waits.push(taken.waitMs);
    }
    const waitMs = Math.max(0, ...waits);
    if (waitMs > 0) await sleep(waitMs);
    return {
      kind: 'go',
      cancel: () => admission.done('neutral'),
      done: (result) => {
        const transition = admission.done(verdictOf(result));
        this.adapt(recipients, result);
        if (!admission.probe && !transition) return undefined;
        return {
          circuit: {
            ...(admission.probe && { probe: true }),
            ...(transition && {
              transition: `${transition.from} → ${transition.to}`,
              reason: transition.reason,
            }),
          },
        };
      },
    };
  }

  /** The bucket label of a wait: a configured key, else `domain:*` (see RateLimitWait.bucket). */
  private waitLabel(buckets: readonly BucketSpec[]): string {
    const [only] = buckets;
    if (buckets.length !== 1 || !only) return 'domain:*';
    if (!only.key.startsWith('domain:')) return only.key;
    return this.options.domainRates.byDomain.has(only.key.slice(7)) ? only.key : 'domain:*';
  }

  private rateLimited(buckets: readonly BucketSpec[], retryInMs: number): Gate {
    const slowest = buckets.reduce((a, b) => (b.ratePerSec < a.ratePerSec ? b : a));
    return {
      kind: 'rate_limited',
      retryAt: this.pace(slowest, retryInMs),
      detail: {
        code: 'RATE_LIMITED',
        message: `rate limit ${slowest.key} (${round(slowest.ratePerSec)}/s) reached: no attempt spent`,
        limit: slowest.key,
        // The bounded form of `limit` that metrics label with: recipients' domains never become series.
        limit_group: this.waitLabel([slowest]),
        rate_per_sec: round(slowest.ratePerSec),
      },
    };
  }

  /** The breaker, and the limits in force (configured and adapted), for /v1/system/*. */
  breakerSnapshot(): BreakerSnapshot {
    return this.options.breaker.snapshot();
  }

  async limitsSnapshot() {
    const { transportRate, domainRates, adaptive } = this.options;
    const adapted = adaptive.entries();
    const domains = new Set([...domainRates.byDomain.keys()]);
    for (const entry of adapted) if (entry.key.startsWith('domain:')) domains.add(entry.key.slice(7));
    const domainBuckets = [...domains].sort().flatMap((domain) => this.domainBucket(domain) ?? []);
    const transportBucket = this.transportBucket();
    const all = [...(transportBucket ? [transportBucket] : []), ...domainBuckets];
    const levels = await this.options.limiter.levels(all).catch(() => all.map(() => Number.NaN));
    const level = (bucket: BucketSpec) => levels[all.indexOf(bucket)];
    const describe = (bucket: BucketSpec, configured: number | undefined) => ({
      key: bucket.key,
      configured_per_sec: configured ?? null,
      effective_per_sec: round(bucket.ratePerSec),
      burst: round(bucket.burst),
      tokens: Number.isNaN(level(bucket) ?? Number.NaN) ? null : round(level(bucket)!),
      factor: round(adaptive.factor(bucket.key)),
    });
    return {
      limiter: this.options.limiter.name,
      transport: transportBucket ? describe(transportBucket, transportRate?.ratePerSec) : null,
      domains: domainBuckets.map((bucket) =>
        describe(bucket, domainRates.byDomain.get(bucket.key.slice(7)) ?? domainRates.fallback),
      ),
      default_domain_per_sec: domainRates.fallback ?? null,
      lowered: adapted.map((entry) => ({
        key: entry.key,
        factor: round(entry.factor),
        cuts: entry.cuts,
        last_cut_at: new Date(entry.lastCutAt).toISOString(),
        reason: entry.reason,
      })),
    };
  }

  private async admitThroughBreaker() {
    const { breaker } = this.options;
    const deadline = this.now() + PROBE_SLOT_WAIT_MS;
    for (;;) {
      const admission = breaker.admit();
      if (admission.kind !== 'probes_busy') return admission;
      const left = deadline - this.now();
      // Probes are taking long: treat it as open for a moment rather than hold the slot.
      if (left <= 0) return { kind: 'open' as const, until: this.now() + PROBE_SLOT_WAIT_MS };
      await Promise.race([breaker.changed(), sleep(left)]);
    }
  }

  /** Lowers the rate of what a "try later" reply concerns. */
  private adapt(recipients: readonly string[], result: SendResult): void {
    if (result.kind !== 'transient' || !result.throttle) return;
    // Only a rate in force can be lowered: with none configured, backoff is what slows retries.
    const buckets =
      result.throttle === 'transport'
        ? [this.transportBucket()]
        : [...domainsOf(recipients)].map((domain) => this.domainBucket(domain));
    for (const key of buckets.flatMap((bucket) => bucket?.key ?? [])) {
      const factor = this.options.adaptive.throttled(key, result.message.slice(0, 200));
      if (factor !== undefined) {
        this.options.logger.warn(
          { limit: key, factor: round(factor), reply: result.message.slice(0, 200) },
          `flow control: ${key} asked us to slow down; its rate is now ${Math.round(factor * 100)}% of normal`,
        );
      }
    }
  }

  private domainBucketsFor(recipients: readonly string[]): BucketSpec[] {
    // Every send passes here: with no domain rates configured there is nothing to look up.
    const { byDomain, fallback } = this.options.domainRates;
    if (byDomain.size === 0 && fallback === undefined) return [];
    return [...domainsOf(recipients)].flatMap((domain) => this.domainBucket(domain) ?? []);
  }

  /** The transport's bucket, lowered by the adaptive factor; none without MAILROOM_RATE_PER_SEC. */
  private transportBucket(): BucketSpec | undefined {
    const configured = this.options.transportRate;
    if (!configured) return undefined;
    const key = `transport:${this.options.breaker.transport}`;
    const factor = this.options.adaptive.factor(key);
    return { key, ratePerSec: configured.ratePerSec * factor, burst: Math.max(1, configured.burst * factor) };
  }

  /** A domain's bucket, lowered by the adaptive factor; none when neither it nor `*` has a rate. */
  private domainBucket(domain: string): BucketSpec | undefined {
    const configured = this.options.domainRates.byDomain.get(domain) ?? this.options.domainRates.fallback;
    if (configured === undefined) return undefined;
    const key = `domain:${domain}`;
    const ratePerSec = configured * this.options.adaptive.factor(key);
    return { key, ratePerSec, burst: Math.max(1, ratePerSec) };
  }

  /**
   * When a job handed back for `bucket` should come again: not before the limiter said, and spaced
   * one token apart from the jobs handed back before it, so that a backlog for a slow domain comes
   * back at that domain's pace instead of all at once (which would hand it back again and again).
   */
  private pace(bucket: BucketSpec, retryInMs: number): number {
    const now = this.now();
    const earliest = now + Math.max(retryInMs, MAX_WAIT_IN_PLACE_MS);
    const next = Math.max(earliest, this.paced.get(bucket.key) ?? 0);
    this.paced.set(bucket.key, next + 1000 / bucket.ratePerSec);
    if (this.paced.size > 10_000) {
      for (const [key, at] of this.paced) if (at < now) this.paced.delete(key);
    }
    return Math.ceil(next);
  }
}

/** What a send's result says about the relay: only failures to reach it, or to be served, count. */
export function verdictOf(result: SendResult): SendVerdict {
  if (result.kind !== 'transient') return 'success';
  return result.throttle ? 'neutral' : 'failure';
}

/** The distinct, lower-cased domains of some addresses. */
export function domainsOf(recipients: readonly string[]): Set<string> {
  const domains = new Set<string>();
  for (const address of recipients) {
    const at = address.lastIndexOf('@');
    if (at >= 0) domains.add(address.slice(at + 1).toLowerCase());
  }
  return domains;
}

function round(value: number): number {
  return Math.round(value * 1000) / 1000;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());
