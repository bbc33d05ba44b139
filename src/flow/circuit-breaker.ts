/**
 * A circuit breaker for one transport: closed → open after `failures` consecutive failures → half-open
 * once `openMs` has passed, letting up to `halfOpenMax` probes through → closed after `successes`
 * successful probes, or open again on a failed one.
 *
 * Written here rather than taken from cockatiel (the library STYLE.md points to): cockatiel 3.2 (the
 * last line for Node 20) lets exactly one test call through when half-open and closes on its first
 * success, and opossum trips on a failure percentage over a rolling window; neither can honour
 * MAILROOM_BREAKER_HALF_OPEN_MAX and MAILROOM_BREAKER_SUCCESSES. The surface follows cockatiel's:
 * a value with a state, transition events for logs, metrics and job histories, and a JSON snapshot.
 *
 * Time comes from an injectable clock, and nothing here sets a timer: the open → half-open step
 * happens on the first `admit()` after `openMs`, so tests move a fake clock instead of sleeping.
 */

export type BreakerState = 'closed' | 'open' | 'half_open';

export interface BreakerOptions {
  /** Consecutive failures that open a closed breaker. */
  readonly failures: number;
  /** How long the breaker stays open before probes are let through. */
  readonly openMs: number;
  /** Probes in flight at once while half-open. */
  readonly halfOpenMax: number;
  /** Successful probes that close a half-open breaker. */
  readonly successes: number;
  readonly now?: () => number;
}

/** What one admitted send reports back: `neutral` neither counts nor resets (the relay's answer says nothing about it). */
export type SendVerdict = 'success' | 'failure' | 'neutral';

export type Admission =
  | {
      readonly kind: 'admitted';
      /** True while half-open: this send is one of the probes. */
      readonly probe: boolean;
      /** Reports the send's result (once; later calls do nothing). Returns the transition it caused. */
      readonly done: (verdict: SendVerdict) => BreakerTransition | undefined;
    }
  /** Open: nothing goes through before `until` (the first probe). */
  | { readonly kind: 'open'; readonly until: number }
  /** Half-open with every probe slot taken: wait for a probe to finish (`changed()`). */
  | { readonly kind: 'probes_busy' };

export interface BreakerTransition {
  readonly transport: string;
  readonly from: BreakerState;
  readonly to: BreakerState;
  readonly at: number;
  /** Why, in words: "5 consecutive failures", "30000 ms passed", "2 probes succeeded", "a probe failed". */
  readonly reason: string;
  /** When the breaker will next let a probe through (set when `to` is open). */
  readonly probeAt?: number;
}

export interface BreakerSnapshot {
  readonly transport: string;
  readonly state: BreakerState;
  readonly consecutiveFailures: number;
  readonly probesInFlight: number;
  readonly probeSuccesses: number;
  /** When it last opened, and when it lets probes through (both while open or half-open). */
  readonly openedAt?: number;
  readonly probeAt?: number;
  readonly transitions: number;
  readonly lastTransition?: BreakerTransition;
  readonly options: Omit<BreakerOptions, 'now'>;
}

type Listener = (transition: BreakerTransition) => void;

export class CircuitBreaker {
  private state: BreakerState = 'closed';
  private consecutiveFailures = 0;
  private probesInFlight = 0;
  private probeSuccesses = 0;
  private openedAt = 0;
  private transitionCount = 0;
  /** Bumped on every transition: a send admitted in an earlier state no longer counts when it ends. */
  private generation = 0;
  private lastTransition: BreakerTransition | undefined;
  private readonly listeners = new Set<Listener>();
  /** Resolvers of `changed()` calls, settled on the next transition or freed probe slot. */
  private waiters: (() => void)[] = [];
  private readonly now: () => number;

  constructor(
    readonly transport: string,
    private readonly options: BreakerOptions,
  ) {
    for (const key of ['failures', 'halfOpenMax', 'successes'] as const) {
      if (!Number.isInteger(options[key]) || options[key] < 1) throw new Error(`breaker ${key} must be ≥ 1`);
    }
    if (!(options.openMs >= 0)) throw new Error('breaker openMs must be ≥ 0');
    this.now = options.now ?? Date.now;
  }

  /** Registers a listener for every transition; returns a function that removes it. */
  onTransition(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Asks to send once. Admitted sends must report with `done`. */
  admit(): Admission {
    if (this.state === 'open') {
      const probeAt = this.openedAt + this.options.openMs;
      if (this.now() < probeAt) return { kind: 'open', until: probeAt };
      this.moveTo('half_open', `${this.options.openMs} ms passed`);
    }
    if (this.state === 'half_open') {
      if (this.probesInFlight >= this.options.halfOpenMax) return { kind: 'probes_busy' };
      this.probesInFlight++;
      return { kind: 'admitted', probe: true, done: this.report((verdict) => this.probeDone(verdict)) };
    }
    return { kind: 'admitted', probe: false, done: this.report((verdict) => this.closedDone(verdict)) };
  }

  /** Resolves at the next transition or when a probe slot frees up: when `admit()` may answer differently. */
  changed(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  snapshot(): BreakerSnapshot {
    const { now: _now, ...options } = this.options;
    const open = this.state !== 'closed';
    return {
      transport: this.transport,
      state: this.state,
      consecutiveFailures: this.consecutiveFailures,
      probesInFlight: this.probesInFlight,
      probeSuccesses: this.probeSuccesses,
      ...(open && { openedAt: this.openedAt, probeAt: this.openedAt + this.options.openMs }),
      transitions: this.transitionCount,
      ...(this.lastTransition && { lastTransition: this.lastTransition }),
      options,
    };
  }

  private closedDone(verdict: SendVerdict): void {
    if (verdict === 'neutral') return;
    if (verdict === 'success') {
      this.consecutiveFailures = 0;
      return;
    }
    this.consecutiveFailures++;
    if (this.consecutiveFailures >= this.options.failures) {
      this.open(plural(this.consecutiveFailures, 'consecutive failure'));
    }
  }

  private probeDone(verdict: SendVerdict): void {
    this.probesInFlight--;
    if (verdict === 'failure') {
      this.open('a probe failed');
      return;
    }
    if (verdict === 'success' && ++this.probeSuccesses >= this.options.successes) {
      this.moveTo('closed', `${plural(this.probeSuccesses, 'probe')} succeeded`);
      return;
    }
    this.wakeWaiters();
  }

  private open(reason: string): void {
    this.openedAt = this.now();
    this.moveTo('open', reason);
  }

  private moveTo(to: BreakerState, reason: string): void {
    const from = this.state;
    this.state = to;
    this.generation++;
    this.consecutiveFailures = 0;
    this.probeSuccesses = 0;
    this.probesInFlight = 0;
    this.transitionCount++;
    const transition: BreakerTransition = {
      transport: this.transport,
      from,
      to,
      at: this.now(),
      reason,
      ...(to === 'open' && { probeAt: this.openedAt + this.options.openMs }),
    };
    this.lastTransition = transition;
    for (const listener of this.listeners) listener(transition);
    this.wakeWaiters();
  }

  private wakeWaiters(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const resolve of waiters) resolve();
  }

  /**
   * Wraps a result handler so that it runs at most once, and not at all when the breaker moved on
   * since the send was admitted (e.g. a send admitted while closed that ends after the breaker opened).
   */
  private report(
    handle: (verdict: SendVerdict) => void,
  ): (verdict: SendVerdict) => BreakerTransition | undefined {
    const generation = this.generation;
    let reported = false;
    return (verdict) => {
      if (reported || generation !== this.generation) {
        reported = true;
        return undefined;
      }
      reported = true;
      handle(verdict);
      return generation === this.generation ? undefined : this.lastTransition;
    };
  }
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}
