/**
 * Bytes to an `EmailJob`: picks the encoding (content type, or sniffing when there is none), parses,
 * and checks the shape of JSON and MessagePack bodies field by field, so that a wrong type or an unknown
 * field is reported by name. What the fields mean is the codec's business (wire-codec.ts).
 */
import {
  create,
  type DescField,
  type DescMessage,
  fromBinary,
  fromJson,
  type JsonObject,
  type JsonValue,
  ScalarType,
} from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import { TimestampSchema } from '@bufbuild/protobuf/wkt';
import { DecodeError, decode as decodeMsgpack, ExtData } from '@msgpack/msgpack';
import type { FieldProblem } from '../errors.js';
import { type EmailJob, EmailJobSchema } from './gen/email_pb.js';

/** The content types each encoding answers to (compared without parameters, in lower case). */
export const CONTENT_TYPES = {
  protobuf: ['application/x-protobuf', 'application/protobuf', 'application/vnd.google.protobuf'],
  json: ['application/json'],
  msgpack: ['application/msgpack', 'application/x-msgpack', 'application/vnd.msgpack'],
} as const;

export type WireFormat = keyof typeof CONTENT_TYPES;

export type ParseResult =
  | {
      readonly ok: true;
      readonly job: EmailJob;
      /**
       * For a shape whose fields are not named as in EmailJob (the MessagePack compatibility shape):
       * the name a problem with each EmailJob field is reported under, so that it names what the
       * producer sent.
       */
      readonly fieldNames?: Readonly<Record<string, string>>;
    }
  | { readonly ok: false; readonly reason: 'undecodable'; readonly error: string }
  | { readonly ok: false; readonly reason: 'invalid_message'; readonly problems: readonly FieldProblem[] };

const FORMAT_BY_TYPE = new Map<string, WireFormat>(
  Object.entries(CONTENT_TYPES).flatMap(([format, types]) =>
    types.map((type): [string, WireFormat] => [type, format as WireFormat]),
  ),
);

/** `application/json; charset=utf-8` → json. Undefined for a type no encoding answers to. */
export function formatOf(contentType: string): WireFormat | undefined {
  return FORMAT_BY_TYPE.get(mediaType(contentType));
}

/** The media type alone: parameters dropped, trimmed, lower case. */
export function mediaType(contentType: string): string {
  const semicolon = contentType.indexOf(';');
  return (semicolon === -1 ? contentType : contentType.slice(0, semicolon)).trim().toLowerCase();
}

export interface Sniffed {
  /** Encodings to try, in order: the first that parses wins. */
  readonly formats: readonly WireFormat[];
  /** Why, for error messages. */
  readonly because: string;
}

/**
 * Guesses the encoding of a body that came without a content type.
 *
 * - `{`, after optional JSON whitespace → JSON. Leading whitespace is ambiguous: 0x0A is also the tag of
 *   protobuf field 1 (`id`), and an id of 123 characters has the length byte `{`. So JSON is tried
 *   first and protobuf second, unless the body starts with `{` itself (0x7B is no protobuf tag this
 *   schema can produce: field 15 with the group wire type).
 * - A MessagePack map marker (0x80–0x8F fixmap, 0xDE map16, 0xDF map32) → MessagePack. 0x80–0x8F
 *   also start a protobuf message whose first field is numbered 16 or 17 (trace_context, say), so
 *   protobuf is tried second; 0xDE and 0xDF carry a wire type that does not exist and never start one.
 * - Anything else → protobuf.
 */
export function sniff(body: Uint8Array): Sniffed {
  const first = body[0];
  if (first === undefined) return { formats: ['protobuf'], because: 'empty body' };
  if (first === 0x7b) return { formats: ['json'], because: 'starts with "{"' };
  if (isJsonWhitespace(first)) {
    let i = 1;
    while (i < body.length && isJsonWhitespace(body[i]!)) i++;
    if (body[i] === 0x7b) return { formats: ['json', 'protobuf'], because: 'starts with whitespace and "{"' };
  }
  if (first === 0xde || first === 0xdf) return { formats: ['msgpack'], because: 'starts with a map marker' };
  if (first >= 0x80 && first <= 0x8f) {
    return { formats: ['msgpack', 'protobuf'], because: 'starts with a fixmap marker' };
  }
  return { formats: ['protobuf'], because: 'starts with neither "{" nor a map marker' };
}

function isJsonWhitespace(byte: number): boolean {
  return byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d;
}

/** Parses `body` as `format`. Throws nothing. */
export function parseBody(body: Uint8Array, format: WireFormat): ParseResult {
  switch (format) {
    case 'protobuf':
      return parseProtobuf(body);
    case 'json':
      return parseJson(body);
    case 'msgpack':
      return parseMsgpack(body);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Protobuf

const MAP_FIELDS = new Map(
  EmailJobSchema.fields.filter((field) => field.fieldKind === 'map').map((field) => [field.number, field]),
);

function parseProtobuf(body: Uint8Array): ParseResult {
  let job: EmailJob;
  let protoKey: string | undefined;
  try {
    job = fromBinary(EmailJobSchema, body);
    // Also a stricter second reading: fromBinary lets a tag's varint run past the end of an embedded
    // message, this walk does not.
    protoKey = protoKeyInMaps(body);
  } catch (error) {
    return undecodable(`not a ${EmailJobSchema.typeName}: ${messageOf(error)}`);
  }
  const problems = [...unknownFields(job.$unknown, ''), ...unknownFields(job.sendAt?.$unknown, 'send_at.')];
  if (protoKey) problems.push(protoKeyProblem(`${protoKey}.__proto__`));
  return problems.length > 0 ? { ok: false, reason: 'invalid_message', problems } : { ok: true, job };
}

function unknownFields(fields: readonly { no: number }[] | undefined, prefix: string): FieldProblem[] {
  return (fields ?? []).map(({ no }) => ({
    field: `${prefix}#${no}`,
    rule: 'unknown_field',
    message: `field number ${no} is not in the schema this Mailroom knows; upgrade Mailroom before producers set it`,
  }));
}

/**
 * The map field that holds a `__proto__` key, if any. protobuf-es keeps maps in plain objects, where
 * that key cannot be stored: it would vanish without a word, so it is looked for in the bytes and
 * refused, as it is in JSON. Runs on bytes fromBinary already accepted.
 */
function protoKeyInMaps(body: Uint8Array): string | undefined {
  const reader = new BinaryReader(body);
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    const field = MAP_FIELDS.get(no);
    if (field === undefined || wireType !== WireType.LengthDelimited) {
      reader.skip(wireType, no);
      continue;
    }
    const entry = new BinaryReader(reader.bytes());
    while (entry.pos < entry.len) {
      const [entryNo, entryWireType] = entry.tag();
      if (entryNo === 1 && entryWireType === WireType.LengthDelimited) {
        if (entry.string() === '__proto__') return field.name;
      } else {
        entry.skip(entryWireType, entryNo);
      }
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------
// JSON and MessagePack: the protobuf JSON mapping

const utf8 = new TextDecoder('utf-8', { fatal: true });

function parseJson(body: Uint8Array): ParseResult {
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(body));
  } catch (error) {
    return undecodable(`not valid JSON in UTF-8: ${messageOf(error)}`);
  }
  return fromJsonValue(value);
}

/** A map key that is not a string: MessagePack allows them, the JSON mapping does not. */
class NonStringKey extends Error {}

function parseMsgpack(body: Uint8Array): ParseResult {
  let value: unknown;
  try {
    value = decodeMsgpack(body, {
      // Strings arrive as bytes and are decoded strictly below: the library's decoder replaces
      // malformed UTF-8 without a word.
      rawStrings: true,
      mapKeyConverter: (key) => {
        if (typeof key === 'string') return key;
        const shown = typeof key === 'number' ? ` (${key})` : '';
        throw new NonStringKey(`a map key is ${describe(key)}${shown}; keys must be strings`);
      },
    });
  } catch (error) {
    // Not the JSON mapping of any message: undecodable, which also lets sniffing move on to protobuf
    // (a protobuf tag of two bytes reads as a fixmap whose first key is a number).
    if (error instanceof NonStringKey) {
      return undecodable(`not the JSON mapping in MessagePack: ${error.message}`);
    }
    // The library refuses the one key a plain object cannot hold; JSON reports it as a problem too.
    if (error instanceof DecodeError && error.message.includes('__proto__')) {
      return invalid([protoKeyProblem('__proto__')]);
    }
    return undecodable(`not valid MessagePack: ${messageOf(error)}`);
  }
  if (isCompatShape(value)) return fromCompatShape(value);
  const parsed = fromJsonValue(value);
  return parsed.ok || parsed.reason !== 'invalid_message' ? parsed : withCompatHint(parsed);
}

// ---------------------------------------------------------------------------------------------------------
// MessagePack: the compatibility shape

/**
 * The one MessagePack body read other than by the JSON mapping: a map with exactly the keys `uuid`,
 * `email`, `subject` and `body`, all strings, as producers that predate the wire contract publish
 * it. It is read as an EmailJob with `idempotency_key` = uuid, `to` = [email], `subject`, `html` = body
 * and no `from` (the default sender). Any other key, or one of the four missing, and the map is read
 * by the JSON mapping like any other, which refuses `uuid`, `email` and `body` as unknown fields.
 */
const COMPAT_KEYS: readonly string[] = ['body', 'email', 'subject', 'uuid'];

/** Problems with EmailJob fields, reported under the compatibility shape's names. */
const COMPAT_FIELD_NAMES: Readonly<Record<string, string>> = {
  id: 'uuid',
  idempotency_key: 'uuid',
  to: 'email',
  'to[0]': 'email',
  html: 'body',
  text: 'body',
};

function isCompatShape(value: unknown): value is Record<string, unknown> {
  if (!isRecord(value)) return false;
  const keys = Object.keys(value).sort();
  return keys.length === COMPAT_KEYS.length && keys.every((key, i) => key === COMPAT_KEYS[i]);
}

function fromCompatShape(value: Record<string, unknown>): ParseResult {
  const problems: FieldProblem[] = [];
  const read = (key: string): string => {
    const text = readScalar(ScalarType.STRING, value[key], key, problems);
    return typeof text === 'string' ? text : '';
  };
  const uuid = read('uuid');
  const email = read('email');
  const subject = read('subject');
  const body = read('body');
  if (problems.length > 0) return invalid(problems);
  if (uuid === '') {
    // An EmailJob without id and key is refused for that, in words that do not fit this shape.
    return invalid([
      {
        field: 'uuid',
        rule: 'required',
        message:
          'must not be empty: it is the idempotency key that makes a redelivery or a republish a no-op',
      },
    ]);
  }
  return {
    ok: true,
    job: create(EmailJobSchema, { idempotencyKey: uuid, to: [email], subject, html: body }),
    fieldNames: COMPAT_FIELD_NAMES,
  };
}

/** A map that has a key of the compatibility shape but is not that shape: say so where it is refused. */
function withCompatHint(parsed: Extract<ParseResult, { reason: 'invalid_message' }>): ParseResult {
  const problems = parsed.problems.map((problem) =>
    problem.rule === 'unknown_field' && COMPAT_ONLY_KEYS.has(problem.field)
      ? {
          ...problem,
          message: `${problem.message}; a map in the shape {uuid, email, subject, body} must have exactly those four keys, all strings`,
        }
      : problem,
  );
  return invalid(problems);
}

const COMPAT_ONLY_KEYS = new Set(['uuid', 'email', 'body']);

/** Checks the shape against the schema, then lets protobuf-es read it. */
function fromJsonValue(value: unknown): ParseResult {
  const problems: FieldProblem[] = [];
  const json = readMessage(value, problems);
  if (json === undefined || problems.length > 0) return invalid(problems);
  try {
    return { ok: true, job: fromJson(EmailJobSchema, json) };
  } catch (error) {
    // readMessage lets through only what fromJson takes; this is a net, not a path.
    return invalid([{ field: 'body', rule: 'type', message: messageOf(error) }]);
  }
}

/** Both spellings of each field: `reply_to` and `replyTo`. A Map, so `__proto__` is just a key. */
const FIELDS_BY_KEY = new Map<string, DescField>(
  EmailJobSchema.fields.flatMap((field): [string, DescField][] => [
    [field.name, field],
    [field.jsonName, field],
  ]),
);

function readMessage(value: unknown, problems: FieldProblem[]): JsonObject | undefined {
  if (!isRecord(value)) {
    problems.push({ field: 'body', rule: 'type', message: `must be an object, not ${describe(value)}` });
    return undefined;
  }
  const json: JsonObject = {};
  const given = new Map<string, string>();
  for (const [key, item] of Object.entries(value)) {
    const field = FIELDS_BY_KEY.get(key);
    if (field === undefined) {
      problems.push({
        field: key,
        rule: 'unknown_field',
        message: `is not a field of ${EmailJobSchema.typeName}`,
      });
      continue;
    }
    const earlier = given.get(field.name);
    if (earlier !== undefined) {
      problems.push({
        field: field.name,
        rule: 'duplicate_field',
        message: `is given twice, as ${earlier} and ${key}`,
      });
      continue;
    }
    given.set(field.name, key);
    // null means "not set" in the JSON mapping.
    if (item === null) continue;
    const read = readField(field, item, problems);
    if (read !== undefined) json[field.name] = read;
  }
  return json;
}

function readField(field: DescField, value: unknown, problems: FieldProblem[]): JsonValue | undefined {
  const path = field.name;
  switch (field.fieldKind) {
    case 'scalar':
      return readScalar(field.scalar, value, path, problems);
    case 'enum':
      return readEnum(field.enum.values, value, path, problems);
    case 'message':
      return readSubMessage(field.message, value, path, problems);
    case 'list': {
      if (!Array.isArray(value)) {
        problems.push({ field: path, rule: 'type', message: `must be an array, not ${describe(value)}` });
        return undefined;
      }
      if (field.listKind !== 'scalar') return value as JsonValue;
      const items: JsonValue[] = [];
      value.forEach((item: unknown, i) => {
        const read = readScalar(field.scalar, item, `${path}[${i}]`, problems);
        if (read !== undefined) items.push(read);
      });
      return items;
    }
    case 'map': {
      if (!isRecord(value)) {
        problems.push({ field: path, rule: 'type', message: `must be an object, not ${describe(value)}` });
        return undefined;
      }
      if (field.mapKind !== 'scalar') return value as JsonValue;
      const entries: [string, JsonValue][] = [];
      for (const [key, item] of Object.entries(value)) {
        if (key === '__proto__') {
          problems.push(protoKeyProblem(`${path}.${key}`));
          continue;
        }
        const read = readScalar(field.scalar, item, `${path}.${key}`, problems);
        if (read !== undefined) entries.push([key, read]);
      }
      // fromEntries defines own properties.
      return Object.fromEntries(entries);
    }
  }
}

function readScalar(
  type: ScalarType,
  value: unknown,
  path: string,
  problems: FieldProblem[],
): JsonValue | undefined {
  // Every scalar in v1 is a string; others, should a later version add them, are fromJson's to check.
  if (type !== ScalarType.STRING) return value as JsonValue;
  if (typeof value === 'string') return value;
  if (value instanceof Uint8Array) {
    try {
      return utf8.decode(value);
    } catch {
      problems.push({
        field: path,
        rule: 'type',
        message: 'is a MessagePack string that is not valid UTF-8',
      });
      return undefined;
    }
  }
  problems.push({ field: path, rule: 'type', message: `must be a string, not ${describe(value)}` });
  return undefined;
}

function readEnum(
  values: readonly { readonly name: string; readonly number: number }[],
  value: unknown,
  path: string,
  problems: FieldProblem[],
): JsonValue | undefined {
  const text = value instanceof Uint8Array ? readScalar(ScalarType.STRING, value, path, problems) : value;
  if (text === undefined) return undefined;
  if (typeof text === 'number' && Number.isInteger(text)) return text;
  if (typeof text === 'string' && values.some((v) => v.name === text)) return text;
  const names = values.map((v) => v.name);
  const guess =
    typeof text === 'string' ? names.find((name) => name.endsWith(`_${text.toUpperCase()}`)) : undefined;
  problems.push({
    field: path,
    rule: 'enum',
    message: `must be one of ${names.join(', ')}${guess ? `; did you mean ${guess}?` : ''}`,
  });
  return undefined;
}

function readSubMessage(
  message: DescMessage,
  value: unknown,
  path: string,
  problems: FieldProblem[],
): JsonValue | undefined {
  if (message.typeName !== TimestampSchema.typeName) return value as JsonValue;
  const text = readScalar(ScalarType.STRING, value, path, problems);
  if (text === undefined) return undefined;
  try {
    fromJson(TimestampSchema, text);
    return text;
  } catch {
    problems.push({
      field: path,
      rule: 'datetime',
      message: 'must be an RFC 3339 date-time from year 1 to 9999, e.g. 2026-11-23T10:00:00Z',
    });
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------------

function protoKeyProblem(field: string): FieldProblem {
  return { field, rule: 'pattern', message: 'the key __proto__ is not accepted' };
}

/** A plain object: JSON.parse's and the MessagePack decoder's maps; not arrays, dates, bytes. */
function isRecord(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** What a value is, in the words of JSON and MessagePack. */
function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Date) return 'a MessagePack timestamp (extension type -1)';
  if (value instanceof ExtData) return `a MessagePack extension (type ${value.type})`;
  if (value instanceof Uint8Array) return 'MessagePack binary';
  if (typeof value === 'object') return 'an object';
  if (typeof value === 'bigint') return 'a number';
  return `a ${typeof value}`;
}

function undecodable(error: string): ParseResult {
  return { ok: false, reason: 'undecodable', error };
}

function invalid(problems: readonly FieldProblem[]): ParseResult {
  return { ok: false, reason: 'invalid_message', problems };
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
