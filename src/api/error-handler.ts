import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { type FieldProblem, MailroomError } from '../errors.js';

/** The one shape every API error has. */
export function errorBody(error: MailroomError) {
  return {
    error: {
      code: error.code,
      message: error.message,
      ...(error.details.length > 0 && { details: error.details }),
    },
  };
}

/** Maps fastify's own errors (parsing, limits, schema checks of params) onto Mailroom's codes. */
export function toMailroomError(error: FastifyError): MailroomError {
  if (error instanceof MailroomError) return error;
  if (error.validation)
    return new MailroomError('VALIDATION_FAILED', error.message, error.validation.map(toProblem));
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new MailroomError(
        'PAYLOAD_TOO_LARGE',
        'The request body is larger than MAILROOM_MAX_MESSAGE_BYTES allows.',
      );
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new MailroomError('UNSUPPORTED_MEDIA_TYPE', 'Send the body as application/json.');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new MailroomError('INVALID_JSON', 'The request body is not valid JSON.');
    case 'FST_ERR_NOT_FOUND':
      return new MailroomError('NOT_FOUND', 'No such route.');
  }
  if (error instanceof SyntaxError || error.statusCode === 400) {
    // JSON.parse errors and prototype-poisoning refusals arrive as plain 400s.
    return new MailroomError('INVALID_JSON', `The request body is not valid JSON: ${error.message}`);
  }
  return new MailroomError('INTERNAL', 'Internal error.');
}

export function handleError(error: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const mailroomError = toMailroomError(error);
  if (mailroomError.code === 'INTERNAL') request.log.error({ err: error }, 'unhandled error');
  else if (mailroomError.status >= 500) request.log.warn({ code: mailroomError.code }, mailroomError.message);
  if (mailroomError.retryAfterSeconds !== undefined) {
    void reply.header('retry-after', String(mailroomError.retryAfterSeconds));
  } else if (mailroomError.code === 'BACKLOG_FULL' || mailroomError.code === 'STORE_UNAVAILABLE') {
    void reply.header('retry-after', '5');
  }
  // A client keeping its connection alive would come back to this instance, which is going away:
  // closing it sends the retry to a fresh connection (another instance, behind a load balancer).
  if (mailroomError.code === 'SHUTTING_DOWN') void reply.header('connection', 'close');
  void reply.status(mailroomError.status).send(errorBody(mailroomError));
}

interface AjvErrorLike {
  readonly keyword: string;
  readonly instancePath: string;
  readonly params: Record<string, unknown>;
  readonly message?: string;
}

function toProblem(error: AjvErrorLike): FieldProblem {
  const path = error.instancePath
    .split('/')
    .filter(Boolean)
    .map((part) => (/^\d+$/.test(part) ? `[${part}]` : `.${part}`))
    .join('')
    .replace(/^\./, '');
  if (error.keyword === 'required') {
    const missing = String(error.params.missingProperty);
    return { field: path ? `${path}.${missing}` : missing, rule: 'required', message: 'is required' };
  }
  if (error.keyword === 'additionalProperties') {
    const extra = String(error.params.additionalProperty);
    return {
      field: path ? `${path}.${extra}` : extra,
      rule: 'unknown_field',
      message: 'is not a known field',
    };
  }
  return { field: path || 'query', rule: error.keyword, message: error.message ?? error.keyword };
}
