import type { SendResult } from '../transport.js';

/**
 * What the AWS SDK throws: a service error has SES's error name, a fault side and the HTTP status;
 * a failure before any answer (refused, reset, DNS, timeout) has only a name and Node's errno `code`.
 */
export interface SesErrorLike {
  readonly name?: string;
  readonly message?: string;
  readonly code?: string;
  readonly $fault?: 'client' | 'server';
  readonly $metadata?: { readonly httpStatusCode?: number };
}

/**
 * Errors that say this message can never be sent as it is, or that sending needs an operator
 * (verify a domain, create the configuration set, reinstate the account): retrying within the
 * attempt budget cannot help.
 */
const PERMANENT = new Set([
  'MessageRejected',
  'BadRequestException',
  'ValidationException',
  'InvalidParameterValue',
  'InvalidParameterException',
  'MailFromDomainNotVerifiedException',
  'AccountSuspendedException',
  'NotFoundException',
]);

/** SES's "slow down": the account's sending rate or a request quota was exceeded. */
const THROTTLING = new Set([
  'TooManyRequestsException',
  'LimitExceededException',
  'ThrottlingException',
  'Throttling',
]);

/**
 * The one place that decides retryable versus permanent for SES. Throttling (429), 5xx, failures
 * without an answer and `SendingPausedException` are transient; refusals of the message or its
 * parameters and account states that need an operator are permanent. Anything else counts as
 * transient, like an unknown SMTP error: retries are bounded and end in a dead letter that can be
 * replayed, while a wrong "permanent" would lose the email for good.
 *
 * A paused account (`SendingPausedException`) is transient on purpose: the message is fine and
 * sending resumes, by the account owner or after an AWS review. Transient, the job ends in a dead
 * letter (`max_attempts`) that can be replayed once sending is back; permanent, it would be failed
 * without one. `health()` reports the pause, so `/ready` shows it meanwhile.
 */
export function classifySesError(error: SesErrorLike): Exclude<SendResult, { kind: 'accepted' }> {
  const name = error.name && error.name !== 'Error' ? error.name : (error.code ?? 'UnknownError');
  const status = error.$metadata?.httpStatusCode;
  const text = `${name}${status !== undefined ? ` (HTTP ${status})` : ''}: ${error.message ?? 'no message'}`;
  const message = text.slice(0, 1000);
  if (PERMANENT.has(name)) return { kind: 'permanent', code: 'SES_PERMANENT', message };
  // Everything else is transient: throttling (TooManyRequestsException, LimitExceededException, any
  // 429), SendingPausedException, 5xx, no answer at all (ECONNREFUSED, ECONNRESET, ENOTFOUND,
  // TimeoutError), and errors this table does not know, whose name the message keeps.
  const throttled = THROTTLING.has(name) || status === 429;
  return {
    kind: 'transient',
    code: 'SES_TRANSIENT',
    message,
    ...(throttled && { throttle: 'transport' as const }),
  };
}
