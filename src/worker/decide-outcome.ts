import { retryDelayMs } from '../domain/backoff.js';
import type { Outcome } from '../store/store.js';
import type { SendResult } from '../transport/transport.js';

export interface RetryPolicy {
  readonly maxAttempts: number;
  readonly retryBaseMs: number;
  readonly retryMaxMs: number;
}

/**
 * Turns a transport's answer to attempt number `attempt` into the job's next state:
 * accepted → sent; transient → deferred with backoff, or failed and dead-lettered once attempts are
 * spent; permanent → failed (not dead-lettered: replaying a refused address cannot help).
 */
export function decideOutcome(
  result: SendResult,
  attempt: number,
  policy: RetryPolicy,
  now: number,
): Outcome {
  if (result.kind === 'accepted') {
    return {
      kind: 'sent',
      detail: {
        smtpCode: smtpCodeOf(result.response),
        response: result.response,
        ...(result.remoteId && { remoteId: result.remoteId }),
        ...(result.rejected.length > 0 && { rejected: result.rejected }),
      },
    };
  }
  const detail = {
    code: result.code,
    message: result.message,
    ...(result.responseCode !== undefined && { smtpCode: result.responseCode }),
  };
  if (result.kind === 'permanent') return { kind: 'failed', detail };
  if (attempt >= policy.maxAttempts) {
    return {
      kind: 'failed',
      deadLetter: 'max_attempts',
      detail: { ...detail, code: 'MAX_ATTEMPTS', lastCode: result.code },
    };
  }
  const retryAt = now + retryDelayMs(attempt, policy.retryBaseMs, policy.retryMaxMs);
  return { kind: 'deferred', retryAt, detail };
}

function smtpCodeOf(response: string): number | undefined {
  const match = /^(\d{3})\b/.exec(response);
  return match ? Number(match[1]) : undefined;
}
