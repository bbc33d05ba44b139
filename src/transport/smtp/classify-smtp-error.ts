import type { SendResult } from '../transport.js';

/** What nodemailer puts on an SMTP error: a code of its own plus the relay's reply when there was one. */
export interface SmtpErrorLike {
  readonly message?: string;
  readonly code?: string;
  readonly responseCode?: number;
  readonly response?: string;
  readonly command?: string;
}

/** Errors nodemailer raises before or without a reply; all mean "the relay could not be reached". */
const CONNECTION_CODES = new Set([
  'ECONNECTION',
  'ETIMEDOUT',
  'ESOCKET',
  'EDNS',
  'ETLS',
  'EPROTOCOL',
  'ECONNRESET',
]);

/** "Try later" replies: the relay is there but wants less from us (RFC 5321 §4.2.2, RFC 3463). */
const THROTTLE_CODES = new Set([421, 450, 451, 452]);

/**
 * A refusal at RCPT TO or DATA concerns the recipients (their domain's limits, greylisting, a full
 * mailbox); at the greeting, EHLO, AUTH or MAIL FROM it concerns this sender as a whole.
 */
function throttleScope(command: string | undefined): 'recipients' | 'transport' {
  return command === 'RCPT TO' || command === 'DATA' ? 'recipients' : 'transport';
}

/**
 * The one place that decides retryable versus permanent for SMTP:
 * a 4xx reply is transient, a 5xx reply permanent, and a failure with no reply (refused, dropped,
 * timed out) transient. An unknown error counts as transient: retries are bounded, a wrong
 * "permanent" would lose an email for good.
 */
export function classifySmtpError(error: SmtpErrorLike): Exclude<SendResult, { kind: 'accepted' }> {
  const text = (error.response ?? error.message ?? 'unknown SMTP error').slice(0, 1000);
  const responseCode = error.responseCode;
  if (responseCode !== undefined && responseCode >= 500 && responseCode < 600) {
    return { kind: 'permanent', code: 'SMTP_PERMANENT', message: text, responseCode };
  }
  if (responseCode !== undefined && responseCode >= 400 && responseCode < 500) {
    const throttle = THROTTLE_CODES.has(responseCode) ? throttleScope(error.command) : undefined;
    return {
      kind: 'transient',
      code: 'SMTP_TRANSIENT',
      message: text,
      responseCode,
      ...(throttle && { throttle }),
    };
  }
  if (error.code === 'EENVELOPE' && responseCode === undefined) {
    // Raised before talking to the relay: no usable recipient in the envelope.
    return { kind: 'permanent', code: 'SMTP_PERMANENT', message: text };
  }
  const code = error.code && CONNECTION_CODES.has(error.code) ? error.code : (error.code ?? 'UNKNOWN');
  return { kind: 'transient', code: 'SMTP_TRANSIENT', message: `${code}: ${text}` };
}
