/** The PostgreSQL store's health probe: quick, read-only, and never throws. */
import type { ComponentHealth } from '../../transport/transport.js';
import type { Database } from './database.js';

/** /ready must answer quickly, whatever the pool or the server is doing. */
export const HEALTH_TIMEOUT_MS = 2000;

/**
 * One small query that needs a working connection and says two things writes depend on: the server
 * is not a read-only standby (a failover gone wrong), and the schema holds the store's tables.
 */
export async function probeHealth(db: Database, schema: string): Promise<ComponentHealth> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ProbeTimeout()), HEALTH_TIMEOUT_MS);
  });
  try {
    const { rows } = await Promise.race([
      db.query<{ standby: boolean; migrated: boolean }>(
        "SELECT pg_is_in_recovery() AS standby, to_regclass('jobs') IS NOT NULL AS migrated",
      ),
      timeout,
    ]);
    const row = rows[0]!;
    if (row.standby) return { ok: false, detail: 'the server is a read-only standby: writes would fail' };
    if (!row.migrated) return { ok: false, detail: `schema ${schema} has no jobs table: not migrated` };
    return { ok: true };
  } catch (error) {
    return { ok: false, detail: describeFailure(error, db.connectTimeoutMs) };
  } finally {
    clearTimeout(timer);
  }
}

class ProbeTimeout extends Error {}

const UNREACHABLE = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
]);

function describeFailure(error: unknown, connectTimeoutMs: number): string {
  if (error instanceof ProbeTimeout) return `PostgreSQL did not answer within ${HEALTH_TIMEOUT_MS} ms`;
  const { code = '', message = '' } = (error ?? {}) as { code?: string; message?: string };
  // pg-pool's words for "no free connection in time" and "a new connection did not open in time".
  if (/timeout exceeded when trying to connect/i.test(message)) {
    return `no free connection in the pool within ${connectTimeoutMs} ms (all busy)`;
  }
  if (/connection timeout/i.test(message)) {
    return `no connection to PostgreSQL within ${connectTimeoutMs} ms (server unreachable or not answering)`;
  }
  // Node reports a refusal on every address of a name (::1 and 127.0.0.1) with an empty message.
  if (UNREACHABLE.has(code)) return `cannot reach PostgreSQL: ${message || code}`;
  return code ? `${code}: ${message}` : message || String(error);
}
