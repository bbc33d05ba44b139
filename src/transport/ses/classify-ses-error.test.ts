import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classifySesError, type SesErrorLike } from './classify-ses-error.js';

/** An SDK service error as the SES v2 client throws it. */
function serviceError(name: string, status: number, message = 'from SES'): SesErrorLike {
  return {
    name,
    message,
    $fault: status >= 500 ? 'server' : 'client',
    $metadata: { httpStatusCode: status },
  };
}

test('refusals of the message or its parameters, and states that need an operator, are permanent', () => {
  for (const [name, status] of [
    ['MessageRejected', 400],
    ['BadRequestException', 400],
    ['ValidationException', 400],
    ['InvalidParameterValue', 400],
    ['MailFromDomainNotVerifiedException', 400],
    ['AccountSuspendedException', 400],
    ['NotFoundException', 404],
  ] as const) {
    const result = classifySesError(serviceError(name, status));
    assert.equal(result.kind, 'permanent', name);
    assert.equal(result.code, 'SES_PERMANENT', name);
  }
});

test('throttling, 5xx and a paused account are transient', () => {
  for (const [name, status] of [
    ['TooManyRequestsException', 429],
    ['ThrottlingException', 400],
    ['LimitExceededException', 400],
    ['SomethingNew', 429],
    ['InternalFailure', 500],
    ['InternalServiceErrorException', 500],
    ['ServiceUnavailable', 503],
    ['SendingPausedException', 400],
  ] as const) {
    const result = classifySesError(serviceError(name, status));
    assert.equal(result.kind, 'transient', name);
    assert.equal(result.code, 'SES_TRANSIENT', name);
    // Throttling slows the transport down; other transient errors count for the breaker.
    const throttling = status === 429 || /Throttling|TooManyRequests|LimitExceeded/.test(name);
    assert.equal((result as { throttle?: string }).throttle, throttling ? 'transport' : undefined, name);
  }
});

test('failures without an answer are transient and keep Node’s code or the SDK’s name', () => {
  const refused = classifySesError({ name: 'Error', code: 'ECONNREFUSED', message: 'connect ECONNREFUSED' });
  assert.deepEqual(refused, {
    kind: 'transient',
    code: 'SES_TRANSIENT',
    message: 'ECONNREFUSED: connect ECONNREFUSED',
  });
  const timeout = classifySesError({ name: 'TimeoutError', message: 'no answer from SES within 20 ms' });
  assert.equal(timeout.kind, 'transient');
  assert.match(timeout.message, /^TimeoutError: /);
});

test('an unknown error is transient, with its name and HTTP status in the message', () => {
  const result = classifySesError(serviceError('AccessDeniedException', 403, 'not authorized'));
  assert.deepEqual(result, {
    kind: 'transient',
    code: 'SES_TRANSIENT',
    message: 'AccessDeniedException (HTTP 403): not authorized',
  });
  assert.equal(classifySesError({}).kind, 'transient');
});

test('no SMTP reply code is claimed, and the message is cut to 1000 characters', () => {
  const result = classifySesError(serviceError('MessageRejected', 400, 'x'.repeat(5000)));
  assert.equal(result.responseCode, undefined);
  assert.equal(result.message.length, 1000);
  assert.match(result.message, /^MessageRejected \(HTTP 400\): x+$/);
});
