/**
 * Rates as people write them in configuration (`20/s`, `600/m`, `3600/h`), turned into tokens per
 * second for `BucketSpec.ratePerSec`.
 */

const RATE = /^([+-]?\d+(?:\.\d+)?)\s*\/\s*(s|m|min|h)$/i;
const SECONDS_PER: Record<string, number> = { s: 1, m: 60, min: 60, h: 3600 };
const RATE_RULE = 'the rate must look like 20/s, 600/m or 3600/h';
/** A host name as far as it matters here: no spaces, separators or wildcards; no leading or trailing dot. */
const DOMAIN = /^[^\s.=,@/*]+(?:\.[^\s.=,@/*]+)*$/;

export interface DomainRates {
  /** Per second, by lower-case domain. */
  readonly byDomain: Map<string, number>;
  /** Per second, for every domain not listed (`*`); absent when there is no `*` entry. */
  readonly fallback?: number;
}

/**
 * `20/s`, `600/m` (or `/min`), `3600/h` → tokens per second (`600/m` → 10). Throws an Error whose
 * message quotes the text (after `variable: `, when given) and says the rule it broke.
 */
export function parseRate(text: string, variable?: string): number {
  const result = rateOrRule(text);
  if (typeof result === 'number') return result;
  throw new Error(`${variable ? `${variable}: ` : ''}${JSON.stringify(text)}: ${result}`);
}

/**
 * `MAILROOM_DOMAIN_RATES`: `gmail.com=20/s,yahoo.com=10/s,*=100/s`. Whitespace around entries, `=`
 * and `/` is ignored; domains are lower-cased. Empty or blank text means no per-domain rates. Throws
 * an Error naming the entry and the rule for an empty entry, a missing domain or rate, a rate that
 * is not a positive rate, and a domain (or `*`) given twice.
 */
export function parseDomainRates(text: string, variable = 'MAILROOM_DOMAIN_RATES'): DomainRates {
  const byDomain = new Map<string, number>();
  let fallback: number | undefined;
  if (text.trim() === '') return { byDomain };
  for (const [index, raw] of text.split(',').entries()) {
    const entry = raw.trim();
    const fail = (rule: string) =>
      new Error(`${variable}: ${entry ? JSON.stringify(entry) : `entry ${index + 1}`}: ${rule}`);
    if (entry === '') throw fail('the entry is empty (a comma too many?)');
    const equals = entry.indexOf('=');
    if (equals === -1)
      throw fail('an entry must look like gmail.com=20/s, or *=100/s for every other domain');
    const domain = entry.slice(0, equals).trim().toLowerCase();
    const rate = rateOrRule(entry.slice(equals + 1));
    if (domain === '') throw fail('the domain is missing before =');
    if (domain !== '*' && !DOMAIN.test(domain))
      throw fail('the domain must be a host name like gmail.com, or *');
    if (typeof rate === 'string') throw fail(rate);
    if (domain === '*') {
      if (fallback !== undefined) throw fail('* (every other domain) is given twice');
      fallback = rate;
    } else {
      if (byDomain.has(domain)) throw fail(`${domain} is given twice`);
      byDomain.set(domain, rate);
    }
  }
  return fallback === undefined ? { byDomain } : { byDomain, fallback };
}

/** Tokens per second, or the rule the text breaks. */
function rateOrRule(text: string): number | string {
  const match = RATE.exec(text.trim());
  if (!match) return RATE_RULE;
  const count = Number(match[1]);
  if (!(count > 0)) return 'the rate must be greater than 0';
  return count / SECONDS_PER[match[2]!.toLowerCase()]!;
}
