import type { ValidatedEmail, ValidationResult } from '../domain/validate-email.js';
import { MailroomError, validationError } from '../errors.js';
import { hashRequest } from '../util/hash-request.js';
import type { AcceptOutcome, AcceptRequest, EmailIntake } from './email-intake.js';
import { errorBody } from './error-handler.js';

export const MAX_BATCH_EMAILS = 500;

/** One email's answer in a batch, at its index: its job, or why it was refused. */
export type BatchItemResult = { readonly id: string; readonly status: string } | ReturnType<typeof errorBody>;

export interface BatchRequest {
  /** Each email of the batch, validated, in the order sent. */
  readonly items: readonly ValidationResult<ValidatedEmail>[];
  /** The API key's fingerprint ('' on an open server). */
  readonly scope: string;
  readonly idempotencyKey?: string;
  /** The batch body as received: what the Idempotency-Key is bound to. */
  readonly body: unknown;
}

/**
 * Accepts the valid emails of a batch; invalid ones keep their errors, in place.
 *
 * Without an Idempotency-Key every valid email commits in one transaction. With one, the batch's key
 * is turned into one key per email, in a scope of its own (`batch:<scope>`, so no single-email key
 * can collide), each bound to the hash of the whole batch body: the first valid email takes
 * `<key>#first`, the others `<key>#<index>`. The first commits alone, before the rest: if its key
 * belongs to another body the batch is 409 with nothing stored, whatever the indexes of the other
 * body's valid emails. Then the rest commit in one transaction. A repeat of the same body finds
 * every key and answers the original ids; a crash between the two commits leaves only the first,
 * and a retry with the same key and body completes the batch.
 */
export async function acceptBatch(
  intake: EmailIntake,
  batch: BatchRequest,
): Promise<{ results: BatchItemResult[]; replayed: boolean }> {
  const results: BatchItemResult[] = batch.items.map((item) =>
    item.ok ? { id: '', status: '' } : refusal(item),
  );
  const valid = batch.items.flatMap((item, index) => (item.ok ? [{ index, email: item.value }] : []));
  if (valid.length === 0) return { results, replayed: false };

  const now = Date.now();
  const record = (indexes: readonly number[], outcomes: readonly AcceptOutcome[]) => {
    outcomes.forEach((outcome, i) => {
      results[indexes[i]!] =
        outcome.kind === 'accepted' ? { id: outcome.id, status: outcome.status } : conflict(outcome.id);
    });
  };

  const { idempotencyKey: key } = batch;
  if (key === undefined) {
    const requests = valid.map(({ email }) => ({ email, scope: batch.scope, canonicalBody: null }));
    record(
      valid.map(({ index }) => index),
      await intake.acceptAll(requests, { now }),
    );
    return { results, replayed: false };
  }

  // Hashed once here: each email's key is bound to this hash, not to a rehash of the whole body.
  const canonicalBody = { batch: hashRequest(batch.body) };
  const keyed = (email: ValidatedEmail, itemKey: string): AcceptRequest => ({
    email,
    scope: `batch:${batch.scope}`,
    idempotencyKey: itemKey,
    canonicalBody,
  });
  const [first, ...rest] = valid;
  const [anchor] = await intake.acceptAll([keyed(first!.email, `${key}#first`)], { now });
  if (anchor!.kind === 'conflict') {
    throw new MailroomError(
      'IDEMPOTENCY_CONFLICT',
      `Idempotency-Key was already used for a different batch (its first email is ${anchor!.id}).`,
    );
  }
  record([first!.index], [anchor!]);
  try {
    record(
      rest.map(({ index }) => index),
      await intake.acceptAll(
        rest.map(({ email, index }) => keyed(email, `${key}#${index}`)),
        { now, checkBacklog: false },
      ),
    );
  } catch (error) {
    throw partlyCommitted(error, first!.index, anchor!.id);
  }
  return { results, replayed: anchor!.replayed };
}

function refusal(item: Extract<ValidationResult<ValidatedEmail>, { ok: false }>) {
  const error = validationError(item.problems);
  return errorBody(
    item.tooLarge ? new MailroomError('PAYLOAD_TOO_LARGE', error.message, item.problems) : error,
  );
}

function conflict(id: string) {
  return errorBody(
    new MailroomError(
      'IDEMPOTENCY_CONFLICT',
      `This email's key was already used for another request (email ${id}).`,
    ),
  );
}

/** The first email is committed and the rest failed: say so, since "nothing was accepted" is not true. */
function partlyCommitted(error: unknown, index: number, id: string): unknown {
  if (!(error instanceof MailroomError)) return error;
  const first = `The batch's first valid email (emails[${index}], ${id}) was committed`;
  const retry = 'Retry with the same Idempotency-Key and body to complete the batch.';
  const message =
    error.code === 'STORE_UNAVAILABLE'
      ? `${first}; the others could not be stored. ${retry}`
      : `${first}. For the others: ${error.message} ${retry}`;
  return new MailroomError(error.code, message, error.details);
}
