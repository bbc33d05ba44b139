/**
 * MAILROOM_CHAOS: fault injection for drills and demos. Off unless the variable is set; its text is
 * comma-separated `name=value` entries, e.g. `downtime=300s/30s,error_rate=0.05,latency=200ms`.
 */

/** What MAILROOM_CHAOS asks for. The three rates are fractions of sends, together at most 1. */
export interface ChaosSettings {
  /** A scheduled outage: sends are refused as if the relay were not there. */
  readonly downtime?: ChaosDowntime;
  /** Fraction of sends answered `454 4.3.0` (transient, a failure the breaker counts). Default 0. */
  readonly errorRate: number;
  /** Fraction of sends answered `421 4.7.0 try again later` (transient throttling). Default 0. */
  readonly throttleRate: number;
  /** Fraction of sends answered `550 5.7.1` (permanent). Default 0. */
  readonly rejectRate: number;
  /** Delay before each send, drawn uniformly from `minMs..maxMs` (inclusive). */
  readonly latency?: ChaosLatency;
  /** Seed for the random draws (0..2³²−1): the same seed gives the same sequence of faults. */
  readonly seed?: number;
}

/**
 * Down for the first `durationMs` of every `periodMs`, counted from the Unix epoch: every process
 * of a deployment goes down at the same moments, like a shared relay, and the schedule can be read
 * off the wall clock (`300s/30s`: the first 30 s of every 5 minutes, at :00, :05, :10, …).
 */
export interface ChaosDowntime {
  readonly periodMs: number;
  readonly durationMs: number;
}

export interface ChaosLatency {
  readonly minMs: number;
  readonly maxMs: number;
}

type Draft = { -readonly [K in keyof ChaosSettings]: ChaosSettings[K] };

/** Each entry: the rule its value must follow (quoted in errors) and its parser (undefined: broken). */
const ENTRIES: Record<
  string,
  { rule: string; parse: (value: string) => Partial<ChaosSettings> | undefined }
> = {
  downtime: {
    rule: 'downtime must be PERIOD/DURATION in ms, s or m with DURATION shorter than PERIOD, e.g. 300s/30s',
    parse: (value) => {
      const [period, duration, extra] = value.split('/').map((part) => parseDuration(part.trim()));
      if (period === undefined || duration === undefined || extra !== undefined) return undefined;
      if (duration <= 0 || duration >= period) return undefined;
      return { downtime: { periodMs: period, durationMs: duration } };
    },
  },
  error_rate: rateEntry('error_rate', (errorRate) => ({ errorRate })),
  throttle_rate: rateEntry('throttle_rate', (throttleRate) => ({ throttleRate })),
  reject_rate: rateEntry('reject_rate', (rejectRate) => ({ rejectRate })),
  latency: {
    rule: 'latency must be a duration in ms, s or m, or a range MIN..MAX, e.g. 200ms or 100ms..500ms',
    parse: (value) => {
      const [min, max = min, extra] = value.split('..').map((part) => parseDuration(part.trim()));
      if (min === undefined || max === undefined || extra !== undefined || max < min) return undefined;
      return { latency: { minMs: min, maxMs: max } };
    },
  },
  seed: {
    rule: 'seed must be an integer from 0 to 4294967295',
    parse: (value) => {
      const seed = /^\d{1,10}$/.test(value) ? Number(value) : Number.NaN;
      return seed <= 0xffffffff ? { seed } : undefined;
    },
  },
};

const EXAMPLE = 'downtime=300s/30s,error_rate=0.05,latency=200ms';

/** Parses MAILROOM_CHAOS; throws an Error naming the entry and the rule it broke. */
export function parseChaos(text: string): ChaosSettings {
  if (text.trim() === '') throw chaosError(text, `must list at least one name=value entry, e.g. ${EXAMPLE}`);
  const draft: Draft = { errorRate: 0, throttleRate: 0, rejectRate: 0 };
  const seen = new Set<string>();
  for (const part of text.split(',')) {
    const entry = part.trim();
    if (entry === '') throw chaosError(text, 'has an empty entry (a stray comma?)');
    const equals = entry.indexOf('=');
    if (equals < 0) throw chaosError(entry, `entries are name=value, e.g. ${EXAMPLE}`);
    const name = entry.slice(0, equals).trim();
    const spec = Object.hasOwn(ENTRIES, name) ? ENTRIES[name] : undefined;
    if (!spec) {
      throw chaosError(entry, `unknown entry "${name}"; expected one of ${Object.keys(ENTRIES).join(', ')}`);
    }
    if (seen.has(name)) throw chaosError(entry, `${name} is given twice`);
    seen.add(name);
    const parsed = spec.parse(entry.slice(equals + 1).trim());
    if (!parsed) throw chaosError(entry, spec.rule);
    Object.assign(draft, parsed);
  }
  const sum = draft.errorRate + draft.throttleRate + draft.rejectRate;
  // A little slack for binary fractions: 0.1 + 0.2 + 0.7 adds up to 1.0000000000000002.
  if (sum > 1 + 1e-9) {
    throw chaosError(text, `error_rate + throttle_rate + reject_rate must add up to at most 1, got ${sum}`);
  }
  return Object.freeze(draft);
}

/** A short line for the start-up log and /ready: `downtime 30s every 300s, error_rate 0.05, latency 200ms`. */
export function describeChaos(settings: ChaosSettings): string {
  const parts: string[] = [];
  const { downtime, latency } = settings;
  if (downtime) parts.push(`downtime ${formatMs(downtime.durationMs)} every ${formatMs(downtime.periodMs)}`);
  if (settings.errorRate > 0) parts.push(`error_rate ${settings.errorRate}`);
  if (settings.throttleRate > 0) parts.push(`throttle_rate ${settings.throttleRate}`);
  if (settings.rejectRate > 0) parts.push(`reject_rate ${settings.rejectRate}`);
  if (latency) {
    const range = latency.minMs === latency.maxMs ? '' : `..${formatMs(latency.maxMs)}`;
    parts.push(`latency ${formatMs(latency.minMs)}${range}`);
  }
  if (settings.seed !== undefined) parts.push(`seed ${settings.seed}`);
  return parts.length > 0 ? parts.join(', ') : 'no faults';
}

function rateEntry(
  name: string,
  toSettings: (rate: number) => Partial<ChaosSettings>,
): (typeof ENTRIES)[string] {
  return {
    rule: `${name} must be a number from 0 to 1`,
    parse: (value) => {
      // Plain decimals only: Number() would also take '', '0x1', '1e-2' and 'Infinity'.
      const rate = /^(\d+(\.\d*)?|\.\d+)$/.test(value) ? Number(value) : Number.NaN;
      return rate >= 0 && rate <= 1 ? toSettings(rate) : undefined;
    },
  };
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000 };

/** `250ms`, `30s`, `1.5s`, `5m` → whole milliseconds; a unit is required. */
function parseDuration(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(text);
  if (!match) return undefined;
  const ms = Number(match[1]) * UNIT_MS[match[2]!]!;
  return Number.isSafeInteger(ms) ? ms : undefined;
}

function formatMs(ms: number): string {
  return ms > 0 && ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

function chaosError(entry: string, rule: string): Error {
  return new Error(`MAILROOM_CHAOS: "${entry}": ${rule}`);
}
