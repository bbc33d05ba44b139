/**
 * Keeps webhooks from being turned against the network Mailroom runs in (SSRF): a webhook target
 * must be a public unicast address. Loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7),
 * link-local (169.254/16 with the cloud metadata address, fe80::/10), carrier-grade NAT, multicast,
 * reserved and translation ranges are refused; IPv4-mapped, IPv4-compatible and NAT64 addresses are
 * judged as the IPv4 they carry. ipaddr.js knows the ranges; only what it calls `unicast` passes.
 *
 * The check runs at registration and again on every connection, against the addresses the
 * connection really uses (a name may resolve elsewhere later: DNS rebinding).
 */
import { lookup as dnsLookup, type LookupAddress, type LookupOneOptions } from 'node:dns';
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';

/** Why an address may not be a webhook target, or undefined when it may. */
export function forbiddenAddress(address: string): string | undefined {
  if (!ipaddr.isValid(address)) return `${address} is not an IP address`;
  const parsed = ipaddr.parse(address);
  const judged = parsed.kind() === 'ipv6' ? (embeddedIPv4(parsed as ipaddr.IPv6) ?? parsed) : parsed;
  const range = judged.range();
  return range === 'unicast' ? undefined : `${address} is a ${range} address`;
}

/**
 * The IPv4 address an IPv6 address stands for, where the network would carry it to that IPv4
 * address: IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d, deprecated, but a stack may
 * still route it) and NAT64 (64:ff9b::a.b.c.d, RFC 6052, on DNS64 networks). Judged as that IPv4:
 * 64:ff9b::10.0.0.1 is a private target, 64:ff9b::93.184.215.14 a public one.
 */
function embeddedIPv4(address: ipaddr.IPv6): ipaddr.IPv4 | undefined {
  const range = address.range();
  // ::/96 less ::0.0.x.y, which holds :: and ::1 (judged as themselves: unspecified, loopback).
  const compatible = address.parts.slice(0, 6).every((part) => part === 0) && address.parts[6] !== 0;
  if (range !== 'ipv4Mapped' && range !== 'rfc6052' && !compatible) return undefined;
  const [high, low] = address.parts.slice(6) as [number, number];
  return new ipaddr.IPv4([high >> 8, high & 0xff, low >> 8, low & 0xff]);
}

/** Brackets off an IPv6 literal as URL.hostname gives it: `[::1]` → `::1`. */
export function bareHost(hostname: string): string {
  return hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
}

export type Resolve = (host: string) => Promise<readonly string[]>;

/** Every address a name resolves to, as a connection would look them up. */
export const resolveAll: Resolve = (host) =>
  new Promise((resolve, reject) =>
    dnsLookup(host, { all: true }, (error, addresses) =>
      error ? reject(error) : resolve(addresses.map((entry) => entry.address)),
    ),
  );

/**
 * Why this host may not be a webhook target, or undefined. A name is judged by every address it
 * resolves to: one forbidden address is enough to refuse it. A name that does not resolve is
 * refused, unless `unresolved` is 'allow' (a check at start-up, which a passing DNS failure should
 * not stop; every try is checked again when it connects).
 */
export async function forbiddenHost(
  hostname: string,
  resolve: Resolve = resolveAll,
  unresolved: 'refuse' | 'allow' = 'refuse',
): Promise<string | undefined> {
  const host = bareHost(hostname);
  if (isIP(host)) return forbiddenAddress(host);
  let addresses: readonly string[];
  try {
    addresses = await resolve(host);
  } catch (error) {
    if (unresolved === 'allow') return undefined;
    return `${host} does not resolve (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`;
  }
  for (const address of addresses) {
    const reason = forbiddenAddress(address);
    if (reason) return `${host} resolves to ${reason}`;
  }
  return addresses.length === 0 ? `${host} does not resolve` : undefined;
}

type LookupCallback = (
  error: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;

/**
 * A `lookup` for http.request that refuses forbidden addresses: the check at connect time. Node
 * calls it with `all: true` when it races IPv4 and IPv6 (autoSelectFamily), so both forms are served.
 */
export function guardedLookup(
  hostname: string,
  options: LookupOneOptions & { all?: boolean },
  callback: LookupCallback,
): void {
  dnsLookup(hostname, { ...options, all: true }, (error, addresses) => {
    if (error) return callback(error, '');
    for (const { address } of addresses) {
      const reason = forbiddenAddress(address);
      if (reason) {
        const refused = Object.assign(
          new Error(`webhook target refused: ${hostname} resolves to ${reason}`),
          {
            code: 'EWEBHOOKFORBIDDEN',
          },
        );
        return callback(refused, '');
      }
    }
    if (options.all) return callback(null, addresses);
    const first = addresses[0];
    if (!first)
      return callback(Object.assign(new Error(`${hostname} does not resolve`), { code: 'ENOTFOUND' }), '');
    callback(null, first.address, first.family);
  });
}
