import nodemailer from 'nodemailer';
import type SMTPPool from 'nodemailer/lib/smtp-pool/index.js';
import type { ComponentHealth, OutgoingMessage, SendResult, Transport } from '../transport.js';
import { classifySmtpError, type SmtpErrorLike } from './classify-smtp-error.js';
import { connectNoDelay } from './connect-no-delay.js';

export interface SmtpTransportOptions {
  /** `smtp://user:pass@host:587` or `smtps://…`. */
  readonly url: string;
  /** Pooled connections. */
  readonly pool: number;
  /** Limit for connect, greeting and every reply. */
  readonly timeoutMs: number;
}

const HEALTH_CACHE_MS = 5000;

/**
 * Sends through an SMTP relay over a pool of kept-open connections (nodemailer's pool). Messages are
 * sent as built (`raw`), with an explicit envelope, so Bcc recipients never show in headers.
 */
export class SmtpTransport implements Transport {
  readonly name = 'smtp';
  private readonly transporter: nodemailer.Transporter<SMTPPool.SentMessageInfo>;
  private lastHealth: { at: number; result: ComponentHealth } | undefined;

  constructor(options: SmtpTransportOptions) {
    this.transporter = nodemailer.createTransport(poolOptions(options));
  }

  async send(message: OutgoingMessage): Promise<SendResult> {
    try {
      const info = await this.transporter.sendMail({
        envelope: { from: message.envelope.from, to: [...message.envelope.to] },
        raw: message.raw,
        // The raw message already carries this Message-ID; given here, nodemailer does not draw
        // random bytes to invent one it would never send (a measurable cost at thousands a second).
        messageId: message.messageId,
      });
      return {
        kind: 'accepted',
        response: String(info.response ?? ''),
        rejected: (info.rejected ?? []).map(String),
        ...(queuedAs(info.response) && { remoteId: queuedAs(info.response) }),
      };
    } catch (error) {
      return classifySmtpError(error as SmtpErrorLike);
    }
  }

  async health(): Promise<ComponentHealth> {
    const now = Date.now();
    if (this.lastHealth && now - this.lastHealth.at < HEALTH_CACHE_MS) return this.lastHealth.result;
    let result: ComponentHealth;
    try {
      await this.transporter.verify();
      result = { ok: true };
    } catch (error) {
      result = { ok: false, detail: (error as Error).message };
    }
    this.lastHealth = { at: now, result };
    return result;
  }

  async close(): Promise<void> {
    this.transporter.close();
  }
}

/** A pool option nodemailer reads but its type definitions do not list. */
type PoolOptions = SMTPPool.Options & { readonly maxRequeues?: number };

function poolOptions(options: SmtpTransportOptions): PoolOptions {
  const url = new URL(options.url);
  const secure = url.protocol === 'smtps:';
  return {
    pool: true,
    maxConnections: options.pool,
    // Keep connections open: reconnecting every 100 messages (the default) costs a handshake each time.
    maxMessages: Number.POSITIVE_INFINITY,
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port ? Number(url.port) : secure ? 465 : 587,
    secure,
    ...(url.username && {
      auth: { user: decodeURIComponent(url.username), pass: decodeURIComponent(url.password) },
    }),
    connectionTimeout: options.timeoutMs,
    greetingTimeout: options.timeoutMs,
    socketTimeout: options.timeoutMs,
    // A connection that closes mid-send fails that send. The pool's default sends it again on another
    // connection, without limit: a relay that already had it delivers it twice, and Mailroom's own
    // retry rules (attempts, backoff, the circuit breaker) never see the failure.
    maxRequeues: 0,
    disableFileAccess: true,
    disableUrlAccess: true,
    getSocket: connectNoDelay,
  };
}

function queuedAs(response: unknown): string | undefined {
  const match = /queued as ([\w.-]+)/i.exec(String(response ?? ''));
  return match?.[1];
}
