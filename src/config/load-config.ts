import { isIP } from 'node:net';
import { MailroomError } from '../errors.js';
import { CONFIG_SCHEMA, type Config, type VariableSpec } from './config-schema.js';

export type Environment = Readonly<Record<string, string | undefined>>;

/**
 * Reads the configuration once, through CONFIG_SCHEMA, and freezes it.
 * Every wrong value is reported at once, each naming the variable and what it expected.
 */
export function loadConfig(env: Environment = process.env): Config {
  const problems: string[] = [];
  const values: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(CONFIG_SCHEMA) as [string, VariableSpec<unknown>][]) {
    const raw = env[spec.env] ?? spec.default;
    if (raw === undefined || (raw === '' && spec.default === undefined)) continue;
    const shown = spec.secret ? '(hidden)' : JSON.stringify(raw);
    let value: unknown;
    try {
      value = spec.parse(raw);
    } catch (error) {
      // A parser with a grammar of its own says which entry broke which rule.
      const reason = (error as Error).message.replace(new RegExp(`^${spec.env}:\\s*`), '');
      problems.push(`${spec.env}=${shown}: ${reason}`);
      continue;
    }
    if (value === undefined) {
      if (raw.trim() !== '' || spec.default !== undefined)
        problems.push(`${spec.env}=${shown}: expected ${spec.expected}`);
    } else {
      values[name] = value;
    }
  }
  const config = values as Config;
  if (problems.length === 0) problems.push(...crossChecks(config));
  if (problems.length > 0) {
    throw new MailroomError('CONFIG_INVALID', `Invalid configuration:\n  ${problems.join('\n  ')}`);
  }
  return Object.freeze(config);
}

function crossChecks(config: Config): string[] {
  const problems: string[] = [];
  const [timeoutVariable, timeoutMs] =
    config.transport === 'ses'
      ? ['MAILROOM_SES_TIMEOUT_MS', config.sesTimeoutMs]
      : ['MAILROOM_SMTP_TIMEOUT_MS', config.smtpTimeoutMs];
  if (config.leaseMs <= timeoutMs) {
    problems.push(
      `MAILROOM_LEASE_MS=${config.leaseMs}: expected more than ${timeoutVariable} (${timeoutMs}), or a slow send would lose its lease`,
    );
  }
  if (config.transport === 'ses' && config.awsRegion === undefined) {
    problems.push('MAILROOM_TRANSPORT=ses: expected AWS_REGION too, the region of the SES account');
  }
  if (config.retryMaxMs < config.retryBaseMs) {
    problems.push(
      `MAILROOM_RETRY_MAX_MS=${config.retryMaxMs}: expected at least MAILROOM_RETRY_BASE_MS (${config.retryBaseMs})`,
    );
  }
  if (isNetworkBroker(config) && storeKind(config) !== 'postgres') {
    problems.push(
      'MAILROOM_BROKER_URL=(hidden): a network broker needs MAILROOM_DATABASE_URL=postgres://… too, so that the API and worker processes share one store',
    );
  }
  if (config.statusCallbackUrl !== undefined && config.statusCallbackSecret === undefined) {
    problems.push(
      'MAILROOM_STATUS_CALLBACK_URL=(hidden): expected MAILROOM_STATUS_CALLBACK_SECRET too (whsec_…), the secret its receiver verifies signatures with',
    );
  }
  if (!isLoopback(config.host) && (config.apiKeys ?? []).length === 0) {
    problems.push(
      `MAILROOM_HOST=${config.host}: a non-loopback address needs MAILROOM_API_KEYS, or anyone on the network could send mail`,
    );
  }
  return problems;
}

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1' || host === '[::1]';
}

export type StoreKind = 'sqlite' | 'postgres';

export function storeKind(config: Config): StoreKind {
  return config.databaseUrl !== undefined && /^postgres(ql)?:/.test(config.databaseUrl)
    ? 'postgres'
    : 'sqlite';
}

/** True when the broker is a server of its own (RabbitMQ), not the store. */
export function isNetworkBroker(config: Config): boolean {
  return config.brokerUrl !== 'embedded';
}

/** The SQLite file path the configuration points at. */
export function sqlitePath(config: Config): string {
  if (config.databaseUrl) return config.databaseUrl.replace(/^sqlite:(\/\/)?/, '');
  return `${config.dataDir.replace(/\/+$/, '')}/mailroom.db`;
}
