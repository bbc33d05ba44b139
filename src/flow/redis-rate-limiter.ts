/**
 * The rate limiter shared through Redis: each bucket is a hash (`level`, `at`) under a prefixed key.
 * One Lua script reads, decides and writes every bucket of a take: Redis runs a script alone, so
 * the take is atomic across processes, and it reads Redis's own clock (`TIME`), so processes on
 * machines whose clocks differ still agree.
 */
import { Redis } from 'ioredis';
import { checkMaxWait, checkTokens, distinctBuckets } from './bucket-math.js';
import {
  type BucketSpec,
  type RateLimiter,
  RateLimiterUnavailableError,
  type TakeResult,
} from './rate-limiter.js';

export interface RedisRateLimiterOptions {
  /** `redis://[[user]:password@]host[:port][/db]` (or `rediss://` for TLS). */
  readonly url: string;
  /** Put before every bucket key. Default `mailroom:rate:`. */
  readonly keyPrefix?: string;
  /** How long opening the connection may take. Default 2 s. */
  readonly connectTimeoutMs?: number;
  /** How long one take or read may take, waiting for a connection included. Default 2 s. */
  readonly commandTimeoutMs?: number;
}

/** The Redis time in ms (TIME answers seconds and microseconds), and a bucket's level refilled to then. */
const LUA_COMMON = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local function bucket(i)
  local rate, burst = tonumber(ARGV[2 * i]) / 1000, tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'level', 'at')
  local level = burst
  if state[1] then level = math.min(burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate) end
  return level, rate, burst
end
`;

/**
 * KEYS: the buckets, distinct. ARGV[1]: maxWaitMs; ARGV[2i], ARGV[2i+1]: bucket i's rate (tokens
 * per s) and burst; the last ARGV: the tokens to take. Returns {1, waitMs} when granted, {0, retryInMs} when not; the arithmetic is
 * bucket-math.ts's. Numbers are written with %.17g: Lua's default (%.14g) would cut the time to
 * 0.1 ms. A bucket expires a second after it would be full again: by then it is the same as none.
 */
const TAKE_SCRIPT = `
if redis.replicate_commands then redis.replicate_commands() end -- TIME before writes, Redis < 5
${LUA_COMMON}
local tokens = tonumber(ARGV[2 * #KEYS + 2]) or 1
local levels, rates, bursts, wait = {}, {}, {}, 0
for i = 1, #KEYS do
  levels[i], rates[i], bursts[i] = bucket(i)
  if levels[i] < tokens then wait = math.max(wait, (tokens - levels[i]) / rates[i]) end
end
local waitMs = math.max(0, math.ceil(wait - 1e-6))
if waitMs > tonumber(ARGV[1]) then return {0, waitMs} end
for i = 1, #KEYS do
  local level = levels[i] - tokens
  redis.call('HSET', KEYS[i], 'level', string.format('%.17g', level), 'at', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[i], math.ceil((bursts[i] - level) / rates[i]) + 1000)
end
return {1, waitMs}
`;

/** Same KEYS and ARGV (ARGV[1] unused). Returns each level as a string: Redis would truncate a number. */
const LEVELS_SCRIPT = `
${LUA_COMMON}
local result = {}
for i = 1, #KEYS do result[i] = string.format('%.17g', (bucket(i))) end
return result
`;

/** The slice of ioredis this uses: the two scripts, as `defineCommand` adds them. */
interface RateScripts {
  mailroomRateTake(keyCount: number, ...keysThenArgs: string[]): Promise<[number, number]>;
  mailroomRateLevels(keyCount: number, ...keysThenArgs: string[]): Promise<string[]>;
}

export class RedisRateLimiter implements RateLimiter {
  readonly name = 'redis';
  private readonly redis: Redis;
  private readonly scripts: RateScripts;
  private readonly keyPrefix: string;
  /** Where, for error messages: never the URL, which may hold a password. */
  private readonly where: string;
  private lastConnectionError: Error | undefined;
  private closed = false;

  constructor(options: RedisRateLimiterOptions) {
    this.keyPrefix = options.keyPrefix ?? 'mailroom:rate:';
    this.where = new URL(options.url).host || 'localhost:6379';
    this.redis = new Redis(options.url, {
      // Connects on the first command, so that constructing one never throws or opens a socket.
      lazyConnect: true,
      connectTimeout: options.connectTimeoutMs ?? 2000,
      // Also bounds a command queued while (re)connecting: a take never hangs on a Redis gone quiet.
      commandTimeout: options.commandTimeoutMs ?? 2000,
      // A command waits for at most one reconnection: a Redis that is down fails takes fast.
      maxRetriesPerRequest: 1,
      retryStrategy: (attempt) => Math.min(attempt * 100, 2000),
    });
    // Without a listener ioredis prints every failed reconnection; keep the last for the message.
    this.redis.on('error', (error: Error) => {
      this.lastConnectionError = error;
    });
    this.redis.on('ready', () => {
      this.lastConnectionError = undefined;
    });
    this.redis.defineCommand('mailroomRateTake', { lua: TAKE_SCRIPT });
    this.redis.defineCommand('mailroomRateLevels', { lua: LEVELS_SCRIPT, readOnly: true });
    this.scripts = this.redis as unknown as RateScripts;
  }

  async take(buckets: readonly BucketSpec[], maxWaitMs: number, tokens = 1): Promise<TakeResult> {
    checkMaxWait(maxWaitMs);
    const specs = distinctBuckets(buckets);
    checkTokens(tokens, specs);
    if (specs.length === 0) return { kind: 'granted', waitMs: 0 };
    const [granted, waitMs] = await this.run(() =>
      this.scripts.mailroomRateTake(specs.length, ...this.scriptArgs(specs, maxWaitMs), String(tokens)),
    );
    return granted === 1 ? { kind: 'granted', waitMs } : { kind: 'denied', retryInMs: waitMs };
  }

  async levels(buckets: readonly BucketSpec[]): Promise<number[]> {
    const specs = distinctBuckets(buckets);
    if (specs.length === 0) return [];
    const levels = await this.run(() =>
      this.scripts.mailroomRateLevels(specs.length, ...this.scriptArgs(specs, 0)),
    );
    const byKey = new Map(specs.map((spec, i) => [spec.key, Number(levels[i])]));
    return buckets.map((spec) => byKey.get(spec.key)!);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // QUIT lets replies in flight arrive; with no connection there is nothing to say goodbye to.
    if (this.redis.status === 'ready') await this.redis.quit().catch(() => this.redis.disconnect());
    else this.redis.disconnect();
  }

  /** The script's KEYS, then its ARGV; numbers as JavaScript prints them (exact round trip). */
  private scriptArgs(specs: readonly BucketSpec[], maxWaitMs: number): string[] {
    return [
      ...specs.map((spec) => this.keyPrefix + spec.key),
      String(maxWaitMs),
      ...specs.flatMap((spec) => [String(spec.ratePerSec), String(spec.burst)]),
    ];
  }

  private async run<T>(command: () => Promise<T>): Promise<T> {
    if (this.closed) throw new RateLimiterUnavailableError('the Redis rate limiter is closed');
    try {
      return await command();
    } catch (error) {
      const last = this.lastConnectionError;
      const because = last && last !== error ? ` (last connection error: ${last.message})` : '';
      throw new RateLimiterUnavailableError(
        `Redis rate limiter at ${this.where}: ${(error as Error).message}${because}`,
        { cause: error },
      );
    }
  }
}
