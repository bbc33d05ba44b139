import type { FastifyRequest } from 'fastify';
import { isValidIdempotencyKey } from '../domain/validate-email.js';
import { validationError } from '../errors.js';

/** The Idempotency-Key header, checked; undefined when absent. */
export function readIdempotencyKey(request: FastifyRequest): string | undefined {
  const key = request.headers['idempotency-key'];
  if (Array.isArray(key) || (key !== undefined && !isValidIdempotencyKey(key))) {
    throw validationError([
      {
        field: 'Idempotency-Key',
        rule: 'max_length',
        message: 'must be 1 to 256 printable characters, sent once',
      },
    ]);
  }
  return key;
}
