/**
 * The wire contract's codec (proto/email.proto, docs/wire-contract.md): what Mailroom publishes to a
 * network broker, and what it accepts from anyone who publishes there.
 */

import { create, isFieldSet, toBinary } from '@bufbuild/protobuf';
import type { Timestamp } from '@bufbuild/protobuf/wkt';
import { v7 as uuidv7 } from 'uuid';
import type { DecodeResult, EncodedMessage, JobMessage, MessageCodec } from '../broker/broker.js';
import type { Priority } from '../domain/email.js';
import { newJobFrom } from '../domain/new-job.js';
import {
  isValidIdempotencyKey,
  type ValidationContext,
  validateSendEmail,
} from '../domain/validate-email.js';
import type { FieldProblem } from '../errors.js';
import { type EmailJob, EmailJobSchema, Priority as WirePriority } from './gen/email_pb.js';
import { CONTENT_TYPES, formatOf, messageOf, type ParseResult, parseBody, sniff } from './parse-body.js';

export interface WireCodecOptions {
  /** The limits and defaults the HTTP API validates with, built per call (it carries `now`). */
  readonly validation: () => ValidationContext;
  /** How long an idempotency key holds, as in the API. */
  readonly idempotencyTtlMs: number;
}

/** What `encode` produces. */
export const PROTOBUF_CONTENT_TYPE = 'application/x-protobuf';

/** Where keys of messages from the broker live: apart from the API's (an API key fingerprint, or ''). */
export const BROKER_IDEMPOTENCY_SCOPE = 'broker';

/**
 * A body may be this much larger than MAILROOM_MAX_MESSAGE_BYTES: the HTTP API's own body limit.
 * JSON escapes can double the content (Python's json.dumps writes every non-ASCII character as
 * `\uXXXX`), and recipients, tags and metadata come on top. The content itself is then measured
 * exactly by the validator.
 */
export function maxBodyBytes(maxMessageBytes: number): number {
  return maxMessageBytes * 2 + 1024 * 1024;
}

/** Ids producers choose: a URL path segment and the left part of a Message-ID (RFC 5322 dot-atom). */
const ID_PATTERN = /^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.))*$/;
/** GET /v1/emails/:id takes at most 64 characters. */
const MAX_ID_CHARS = 64;

const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const MAX_TRACESTATE_CHARS = 512;

const TO_WIRE: Record<Priority, WirePriority> = {
  high: WirePriority.HIGH,
  normal: WirePriority.NORMAL,
  low: WirePriority.LOW,
};
const FROM_WIRE = new Map<WirePriority, Priority>([
  [WirePriority.UNSPECIFIED, 'normal'],
  [WirePriority.HIGH, 'high'],
  [WirePriority.NORMAL, 'normal'],
  [WirePriority.LOW, 'low'],
]);

/** Fields a pointer may carry; any other field set makes the message an email. */
const POINTER_FIELDS = new Set(['id', 'priority', 'trace_context']);

/** An error names at most this many problems (the first ones), and each field name is cut to a length. */
const MAX_PROBLEMS_IN_ERROR = 10;
const MAX_FIELD_CHARS = 100;

/**
 * Reads and writes `mailroom.v1.EmailJob` (proto/email.proto) as protobuf, JSON (the protobuf JSON
 * mapping) or MessagePack (the JSON mapping, in MessagePack). A message with content is checked with
 * the HTTP API's validator and becomes a `NewJob` built as the API builds one.
 */
export class WireCodec implements MessageCodec {
  constructor(private readonly options: WireCodecOptions) {}

  /**
   * A pointer: id, priority and the trace context found in `headers`, as protobuf. `newJob` is not
   * encoded: whenever Mailroom publishes (from the outbox, or again for a deferred delivery) the job
   * is already in the Store.
   */
  encode(message: JobMessage): EncodedMessage {
    const job = create(EmailJobSchema, {
      id: message.jobId,
      priority: TO_WIRE[message.priority],
      traceContext: traceContextOf(message.headers),
    });
    return { body: toBinary(EmailJobSchema, job), contentType: PROTOBUF_CONTENT_TYPE };
  }

  /**
   * Reads what anyone published. Never throws: whatever goes wrong is a `DecodeResult` whose error
   * names the content type and what failed, or each field and the rule it broke.
   */
  decode(body: Uint8Array, contentType: string | undefined): DecodeResult {
    try {
      const ctx = this.options.validation();
      const limit = maxBodyBytes(ctx.maxMessageBytes);
      if (body.byteLength > limit) {
        return invalid([
          {
            field: 'body',
            rule: 'too_large',
            message: `the message takes ${body.byteLength} bytes; at most ${limit} are read (twice MAILROOM_MAX_MESSAGE_BYTES plus 1 MiB)`,
          },
        ]);
      }
      const parsed = parse(body, contentType);
      if (!parsed.ok) return parsed;
      return this.interpret(parsed.job, ctx, parsed.fieldNames);
    } catch (error) {
      return {
        ok: false,
        reason: 'undecodable',
        error: `unexpected failure while decoding: ${messageOf(error)}`,
      };
    }
  }

  /** `fieldNames`: the names to report problems under, for a body not shaped as EmailJob (parse-body.ts). */
  private interpret(
    job: EmailJob,
    ctx: ValidationContext,
    fieldNames?: Readonly<Record<string, string>>,
  ): DecodeResult {
    const problems: FieldProblem[] = [];
    const priority = FROM_WIRE.get(job.priority);
    if (priority === undefined) {
      problems.push({
        field: 'priority',
        rule: 'enum',
        message: `${job.priority} is not a Priority: use PRIORITY_HIGH, PRIORITY_NORMAL or PRIORITY_LOW (or leave it unset)`,
      });
    }
    if (job.id !== '') checkId(job.id, problems);
    const headers = traceContextOf(job.traceContext);

    if (isPointer(job)) {
      if (job.id === '') {
        problems.push({
          field: 'id',
          rule: 'required',
          message:
            'is required: a message without content is a pointer to a job Mailroom holds. To send an email, set to, subject and text or html',
        });
      }
      if (problems.length > 0 || priority === undefined) return invalid(problems, fieldNames);
      return { ok: true, message: { jobId: job.id, priority, headers } };
    }

    if (job.id === '' && job.idempotencyKey === '') {
      problems.push({
        field: 'id',
        rule: 'required',
        message:
          'set id or idempotency_key: messages are delivered at least once, and without one a redelivery would send twice',
      });
    }
    if (job.idempotencyKey !== '') checkIdempotencyKey(job.idempotencyKey, problems);
    const request = toRequest(job, problems);
    const validated = validateSendEmail(request, ctx);
    if (!validated.ok) problems.push(...validated.problems);
    if (!validated.ok || problems.length > 0) return invalid(problems, fieldNames);

    const email = validated.value;
    const id = job.id === '' ? uuidv7() : job.id;
    const newJob = newJobFrom(email, {
      id,
      now: ctx.now,
      ...(job.idempotencyKey !== '' && {
        idempotency: {
          scope: BROKER_IDEMPOTENCY_SCOPE,
          key: job.idempotencyKey,
          request,
          ttlMs: this.options.idempotencyTtlMs,
        },
      }),
    });
    return { ok: true, message: { jobId: id, priority: email.priority, headers, newJob } };
  }
}

function parse(body: Uint8Array, contentType: string | undefined): ParseOutcome {
  if (contentType !== undefined && contentType.trim() !== '') {
    const format = formatOf(contentType);
    if (format === undefined) {
      const accepted = Object.values(CONTENT_TYPES).flat().join(', ');
      return undecodable(
        `content type "${clip(contentType)}" is not one Mailroom reads; send one of ${accepted}`,
      );
    }
    return labelled(parseBody(body, format), contentType.trim());
  }
  const sniffed = sniff(body);
  const failures: string[] = [];
  for (const format of sniffed.formats) {
    const parsed = parseBody(body, format);
    if (parsed.ok || parsed.reason === 'invalid_message') return labelled(parsed, '');
    failures.push(`as ${format}: ${parsed.error}`);
  }
  return undecodable(
    `no content type; the body ${sniffed.because}, and reading it failed ${failures.join('; ')}`,
  );
}

type ParseOutcome = Extract<ParseResult, { ok: true }> | Extract<DecodeResult, { ok: false }>;

function labelled(parsed: ParseResult, contentType: string): ParseOutcome {
  if (parsed.ok) return parsed;
  if (parsed.reason === 'invalid_message') return invalid(parsed.problems);
  return undecodable(contentType === '' ? parsed.error : `${clip(contentType)}: ${parsed.error}`);
}

function isPointer(job: EmailJob): boolean {
  return EmailJobSchema.fields.every((field) => POINTER_FIELDS.has(field.name) || !isFieldSet(job, field));
}

function checkId(id: string, problems: FieldProblem[]): void {
  if (id.length > MAX_ID_CHARS) {
    problems.push({ field: 'id', rule: 'max_length', message: `is longer than ${MAX_ID_CHARS} characters` });
  } else if (!ID_PATTERN.test(id) || id.endsWith('.')) {
    problems.push({
      field: 'id',
      rule: 'pattern',
      message:
        'may contain only letters, digits and . _ - (no "..", not ending in "."), starting with a letter or digit: it becomes a URL path segment and part of the Message-ID',
    });
  }
}

function checkIdempotencyKey(key: string, problems: FieldProblem[]): void {
  if (isValidIdempotencyKey(key)) return;
  problems.push({
    field: 'idempotency_key',
    rule: key.length > 256 ? 'max_length' : 'pattern',
    message: 'must be 1 to 256 printable ASCII characters, without spaces at either end',
  });
}

/**
 * The email as the HTTP API's validator reads it (snake_case, RFC 3339 send_at): the same rules, and
 * the same field paths in its problems. Also what the idempotency hash covers: the content, in a form
 * that does not depend on the encoding; not the id, the key or the trace context.
 */
function toRequest(job: EmailJob, problems: FieldProblem[]): Record<string, unknown> {
  const sendAt = job.sendAt === undefined ? undefined : timestampToIso(job.sendAt, problems);
  const priority = FROM_WIRE.get(job.priority);
  return {
    ...(job.from !== '' && { from: job.from }),
    ...(job.to.length > 0 && { to: job.to }),
    ...(job.cc.length > 0 && { cc: job.cc }),
    ...(job.bcc.length > 0 && { bcc: job.bcc }),
    ...(job.replyTo.length > 0 && { reply_to: job.replyTo }),
    ...(job.subject !== '' && { subject: job.subject }),
    ...(job.text !== undefined && { text: job.text }),
    ...(job.html !== undefined && { html: job.html }),
    ...(Object.keys(job.headers).length > 0 && { headers: job.headers }),
    ...(job.tags.length > 0 && { tags: job.tags }),
    ...(Object.keys(job.metadata).length > 0 && { metadata: job.metadata }),
    ...(job.priority !== WirePriority.UNSPECIFIED && priority !== undefined && { priority }),
    ...(sendAt !== undefined && { send_at: sendAt }),
  };
}

/** google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z. */
const MIN_SECONDS = -62_135_596_800n;
const MAX_SECONDS = 253_402_300_799n;

function timestampToIso(timestamp: Timestamp, problems: FieldProblem[]): string | undefined {
  const { seconds, nanos } = timestamp;
  if (seconds < MIN_SECONDS || seconds > MAX_SECONDS || nanos < 0 || nanos > 999_999_999) {
    problems.push({
      field: 'send_at',
      rule: 'datetime',
      message: 'must be a Timestamp from year 1 to 9999, with nanos from 0 to 999999999',
    });
    return undefined;
  }
  return new Date(Number(seconds) * 1000 + Math.floor(nanos / 1_000_000)).toISOString();
}

/**
 * The W3C trace context among `headers`: `traceparent` and `tracestate`, names in any case, values
 * well formed. Anything else is dropped: tracing never stops an email.
 */
function traceContextOf(headers: Readonly<Record<string, string>>): Record<string, string> {
  const context: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    const key = name.toLowerCase();
    if (key === 'traceparent' && TRACEPARENT.test(value)) context[key] = value;
    if (key === 'tracestate' && value.length <= MAX_TRACESTATE_CHARS && /^[\x20-\x7e]*$/.test(value)) {
      context[key] = value;
    }
  }
  return context;
}

function invalid(
  problems: readonly FieldProblem[],
  fieldNames?: Readonly<Record<string, string>>,
): Extract<DecodeResult, { ok: false }> {
  const named = fieldNames
    ? problems.map((problem) =>
        Object.hasOwn(fieldNames, problem.field)
          ? { ...problem, field: fieldNames[problem.field]! }
          : problem,
      )
    : problems;
  const shown = named
    .slice(0, MAX_PROBLEMS_IN_ERROR)
    .map(
      (problem) =>
        `${clip(problem.field, MAX_FIELD_CHARS)} (${problem.rule}): ${problem.message ?? problem.rule}`,
    );
  const more =
    named.length > MAX_PROBLEMS_IN_ERROR ? ` (and ${named.length - MAX_PROBLEMS_IN_ERROR} more)` : '';
  return { ok: false, reason: 'invalid_message', error: `${shown.join('; ')}${more}` };
}

function undecodable(error: string): Extract<DecodeResult, { ok: false }> {
  return { ok: false, reason: 'undecodable', error };
}

function clip(text: string, max = 200): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}
