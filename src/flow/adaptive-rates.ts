/**
 * Rates that bend when a relay says "try later": each throttling reply (SMTP 421/450/451/452, SES
 * throttling) multiplies the rate of what it concerns (a recipient domain, or the whole transport)
 * by `decrease`, down to `minFactor`; after `holdMs` without another one the rate climbs back by
 * `recoverStep` every `recoverEveryMs` until it is whole again (additive increase, multiplicative
 * decrease, as TCP does). Replies that arrive within `cooldownMs` of a cut are one event: a burst of
 * sends in flight when the relay started refusing must not cut the rate to the floor at once.
 *
 * State is per process and computed from timestamps on read, so nothing runs in the background and
 * tests move a fake clock.
 */

export interface AdaptiveOptions {
  readonly decrease: number;
  readonly minFactor: number;
  readonly cooldownMs: number;
  readonly holdMs: number;
  readonly recoverStep: number;
  readonly recoverEveryMs: number;
  readonly now?: () => number;
}

export const DEFAULT_ADAPTIVE_OPTIONS: AdaptiveOptions = {
  decrease: 0.5,
  minFactor: 0.05,
  cooldownMs: 1_000,
  holdMs: 10_000,
  recoverStep: 0.1,
  recoverEveryMs: 5_000,
};

interface Cut {
  /** The factor right after the last cut. */
  readonly factor: number;
  readonly at: number;
  readonly reason: string;
  readonly cuts: number;
}

export interface AdaptiveEntry {
  readonly key: string;
  readonly factor: number;
  readonly lastCutAt: number;
  readonly reason: string;
  readonly cuts: number;
}

export class AdaptiveRates {
  private readonly cuts = new Map<string, Cut>();
  private readonly now: () => number;

  constructor(private readonly options: AdaptiveOptions = DEFAULT_ADAPTIVE_OPTIONS) {
    this.now = options.now ?? Date.now;
  }

  /** The share (0 < f ≤ 1) of its configured rate that `key` may use now. */
  factor(key: string): number {
    const cut = this.cuts.get(key);
    if (!cut) return 1;
    const factor = this.recovered(cut, this.now());
    if (factor >= 1) this.cuts.delete(key);
    return factor;
  }

  /**
   * Records a throttling reply for `key`. Returns the new factor when this cut the rate, undefined
   * when it fell within the cooldown of the previous cut.
   */
  throttled(key: string, reason: string): number | undefined {
    const now = this.now();
    const previous = this.cuts.get(key);
    if (previous && now - previous.at < this.options.cooldownMs) return undefined;
    const current = previous ? this.recovered(previous, now) : 1;
    const factor = Math.max(this.options.minFactor, current * this.options.decrease);
    this.cuts.set(key, { factor, at: now, reason, cuts: (previous?.cuts ?? 0) + 1 });
    return factor;
  }

  /** Every key whose rate is lowered right now. */
  entries(): AdaptiveEntry[] {
    return [...this.cuts.keys()].flatMap((key) => {
      const factor = this.factor(key);
      const cut = this.cuts.get(key);
      return cut ? [{ key, factor, lastCutAt: cut.at, reason: cut.reason, cuts: cut.cuts }] : [];
    });
  }

  private recovered(cut: Cut, now: number): number {
    const recovering = now - cut.at - this.options.holdMs;
    if (recovering < 0) return cut.factor;
    const steps = Math.floor(recovering / this.options.recoverEveryMs) + 1;
    return Math.min(1, cut.factor + steps * this.options.recoverStep);
  }
}
