/**
 * The error registry: every error Mailroom reports carries one of these stable codes.
 * docs/errors.md lists them all, and a test fails when one is missing there.
 */
export const ERROR_CODES = {
  VALIDATION_FAILED: {
    status: 400,
    description: 'The request failed validation; `details` names each field and rule.',
  },
  INVALID_JSON: { status: 400, description: 'The request body is not valid JSON.' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, description: 'The request body must be `application/json`.' },
  PAYLOAD_TOO_LARGE: {
    status: 413,
    description: 'The request or the email is larger than MAILROOM_MAX_MESSAGE_BYTES.',
  },
  UNAUTHORIZED: { status: 401, description: 'A valid `Authorization: Bearer <key>` header is required.' },
  NOT_FOUND: { status: 404, description: 'No such resource.' },
  IDEMPOTENCY_CONFLICT: {
    status: 409,
    description: 'The Idempotency-Key was already used within 24 h for a request with a different body.',
  },
  INVALID_STATE: { status: 409, description: 'The email is not in a state that allows this action.' },
  TEMPLATE_EXISTS: {
    status: 409,
    description: 'A template with this code exists: `PUT /v1/templates/{code}` saves a new version.',
  },
  BACKLOG_FULL: {
    status: 503,
    description: 'The backlog passed MAILROOM_MAX_BACKLOG; retry after the `Retry-After` seconds.',
  },
  RATE_LIMITED: {
    status: 429,
    description:
      'Over MAILROOM_API_RATE_PER_MIN for this API key: retry after the `Retry-After` seconds. In a job’s history: held back by MAILROOM_RATE_PER_SEC or MAILROOM_DOMAIN_RATES until `retry_at`, no attempt spent.',
  },
  CIRCUIT_OPEN: {
    status: 0,
    description:
      'In a job’s history: the transport’s circuit breaker was open, so the job waits untried until `retry_at` (the next probe), no attempt spent.',
  },
  SHUTTING_DOWN: { status: 503, description: 'The server is shutting down and takes no new work.' },
  STORE_UNAVAILABLE: {
    status: 503,
    description: 'The store could not commit the job; nothing was accepted.',
  },
  STORE_OUTCOME_UNKNOWN: {
    status: 503,
    description:
      'The store connection broke during the commit and could not be checked: the email may have been accepted; the message names its id.',
  },
  INTERNAL: { status: 500, description: 'An unexpected error; the log has the detail.' },
  BROKER_UNAVAILABLE: {
    status: 0,
    description:
      'The network broker is disconnected: publishes are refused at once; committed jobs wait in the outbox.',
  },
  CONFIG_INVALID: { status: 0, description: 'A configuration variable has a wrong value; start-up stops.' },
  // Delivery outcomes, recorded in a job's history as `detail.code`.
  SMTP_TRANSIENT: {
    status: 0,
    description: 'The relay answered 4xx, or the connection failed or timed out: retried.',
  },
  SMTP_PERMANENT: { status: 0, description: 'The relay answered 5xx: the job fails at once.' },
  SES_TRANSIENT: {
    status: 0,
    description:
      'Amazon SES throttled, answered 5xx, paused sending, could not be reached or timed out: retried.',
  },
  SES_PERMANENT: {
    status: 0,
    description:
      'Amazon SES refused the message or its parameters, or the sender, configuration set or account needs an operator: the job fails at once.',
  },
  MESSAGE_BUILD_FAILED: {
    status: 0,
    description: 'The job could not be built into a MIME message: dead-lettered.',
  },
  MAX_ATTEMPTS: {
    status: 0,
    description: 'The job failed transiently MAILROOM_MAX_ATTEMPTS times: dead-lettered.',
  },
  LEASE_EXPIRED: {
    status: 0,
    description: 'A worker claimed the job and stopped answering; the job was claimed again after its lease.',
  },
} as const satisfies Record<string, { status: number; description: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface FieldProblem {
  /** The field, as a path: `to[2]`, `headers.X-Foo`. */
  readonly field: string;
  /** The rule it broke: `required`, `email`, `no_crlf`, `max_length`, … */
  readonly rule: string;
  readonly message?: string;
}

/** An error with a stable code, an HTTP status and optional per-field details. */
export class MailroomError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details: readonly FieldProblem[];
  /** Sent as `Retry-After` when set: when the client may try again. */
  readonly retryAfterSeconds: number | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    details: readonly FieldProblem[] = [],
    options: { readonly retryAfterSeconds?: number } = {},
  ) {
    super(message);
    this.name = 'MailroomError';
    this.code = code;
    this.status = ERROR_CODES[code].status;
    this.details = details;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

export function validationError(details: readonly FieldProblem[]): MailroomError {
  const first = details[0];
  const summary = first ? `${first.field}: ${first.message ?? first.rule}` : 'invalid request';
  const more = details.length > 1 ? ` (and ${details.length - 1} more)` : '';
  return new MailroomError('VALIDATION_FAILED', `Validation failed: ${summary}${more}`, details);
}
