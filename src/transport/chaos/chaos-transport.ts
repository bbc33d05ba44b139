import { classifySmtpError } from '../smtp/classify-smtp-error.js';
import type { ComponentHealth, OutgoingMessage, SendResult, Transport } from '../transport.js';
import { mulberry32 } from './mulberry32.js';
import { type ChaosSettings, describeChaos } from './parse-chaos.js';

export interface ChaosTransportOptions {
  /** Wall-clock milliseconds; the downtime schedule counts from the Unix epoch. Default `Date.now`. */
  readonly now?: () => number;
  /** Uniform in [0, 1). Default: mulberry32 from `settings.seed` when there is one, else Math.random. */
  readonly random?: () => number;
}

type Failure = Exclude<SendResult, { kind: 'accepted' }>;

/**
 * Wraps a transport and makes it fail, refuse or slow down as MAILROOM_CHAOS says. Per send:
 * 1. during the downtime window, refused at once (a closed port answers fast), no latency;
 * 2. otherwise delayed by the latency, then one random draw picks 454, 421, 550 or the real send.
 * A failed draw never reaches the inner transport: the email is not sent.
 * The injected failures go through the SMTP classifier, so they are coded and retried like real ones.
 */
export class ChaosTransport implements Transport {
  /** The inner transport's name, so breakers and metrics stay per transport. */
  readonly name: string;
  readonly settings: ChaosSettings;
  private readonly inner: Transport;
  private readonly now: () => number;
  private readonly random: () => number;

  constructor(inner: Transport, settings: ChaosSettings, options: ChaosTransportOptions = {}) {
    this.inner = inner;
    this.name = inner.name;
    this.settings = settings;
    this.now = options.now ?? Date.now;
    this.random = options.random ?? (settings.seed === undefined ? Math.random : mulberry32(settings.seed));
  }

  /** The settings in a short line, for the start-up log and /ready. */
  describe(): string {
    return describeChaos(this.settings);
  }

  /** Milliseconds until the current injected downtime ends; 0 when not down. */
  downForMs(): number {
    const downtime = this.settings.downtime;
    if (!downtime) return 0;
    const into = mod(this.now(), downtime.periodMs);
    return into < downtime.durationMs ? downtime.durationMs - into : 0;
  }

  async send(message: OutgoingMessage): Promise<SendResult> {
    const downMs = this.downForMs();
    if (downMs > 0) {
      return classifySmtpError({
        code: 'ECONNREFUSED',
        message: `connection refused: relay down, injected by MAILROOM_CHAOS downtime (back in ${seconds(downMs)})`,
      });
    }
    const latencyMs = this.drawLatencyMs();
    if (latencyMs > 0) await new Promise<void>((resolve) => setTimeout(resolve, latencyMs));
    return this.drawFailure() ?? this.inner.send(message);
  }

  async health(): Promise<ComponentHealth> {
    const downMs = this.downForMs();
    if (downMs > 0) {
      return {
        ok: false,
        detail: `down: injected by MAILROOM_CHAOS (${this.describe()}), back in ${seconds(downMs)}`,
      };
    }
    const inner = await this.inner.health();
    // Said even when healthy, so /ready shows that faults are being injected.
    const note = `MAILROOM_CHAOS on: ${this.describe()}`;
    return { ok: inner.ok, detail: inner.detail ? `${inner.detail}; ${note}` : note };
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private drawLatencyMs(): number {
    const latency = this.settings.latency;
    if (!latency) return 0;
    if (latency.minMs === latency.maxMs) return latency.minMs;
    return latency.minMs + Math.floor(this.random() * (latency.maxMs - latency.minMs + 1));
  }

  /** One draw against adjacent intervals [0, error), [error, error+throttle), …: the rates stay exact. */
  private drawFailure(): Failure | undefined {
    const { errorRate, throttleRate, rejectRate } = this.settings;
    const draw = this.random();
    if (draw < errorRate) return injected(ERROR_REPLY, `error_rate ${errorRate}`);
    if (draw < errorRate + throttleRate) return injected(THROTTLE_REPLY, `throttle_rate ${throttleRate}`);
    if (draw < errorRate + throttleRate + rejectRate) {
      return injected(REJECT_REPLY, `reject_rate ${rejectRate}`);
    }
    return undefined;
  }
}

/**
 * The replies imitated. error_rate uses 454, not 451: the classifier reads 421/450/451/452 as
 * "try later" (throttling, which flow control slows down for and the breaker ignores), and
 * error_rate is meant to be a failure the breaker counts. throttle_rate is that "try later".
 */
const ERROR_REPLY = { responseCode: 454, text: '4.3.0 Temporary failure' };
const THROTTLE_REPLY = { responseCode: 421, text: '4.7.0 Try again later' };
const REJECT_REPLY = { responseCode: 550, text: '5.7.1 Message refused' };

function injected(reply: { responseCode: number; text: string }, cause: string): Failure {
  return classifySmtpError({
    responseCode: reply.responseCode,
    response: `${reply.responseCode} ${reply.text}, injected by MAILROOM_CHAOS (${cause})`,
  });
}

/** A modulo that stays in [0, period) for clocks before 1970 too (fake clocks start anywhere). */
function mod(value: number, period: number): number {
  return ((value % period) + period) % period;
}

function seconds(ms: number): string {
  return `${Math.ceil(ms / 1000)}s`;
}
