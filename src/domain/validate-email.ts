import { domainToASCII } from 'node:url';
import type { FieldProblem } from '../errors.js';
import type { EmailContent, Mailbox, Priority } from './email.js';
import { PRIORITIES } from './email.js';
import { attachmentBytes, readAttachments } from './validate-attachments.js';
import { charLength, hasControlChar, hasCrlfOrNul, isPlainObject, jsonType } from './value-checks.js';

/**
 * Every rule a validation problem can name, with what it means. Names are stable: clients match on them,
 * and the API docs list this table.
 */
export const FIELD_RULES = {
  required: 'The field is missing, or an address list that needs at least one address is empty.',
  type: 'The field has the wrong JSON type (or the request body is not a JSON object).',
  unknown_field: 'The field is not part of the request; check its spelling (fields are snake_case).',
  email:
    'The address fails strict parsing (plain dot-atom local part, host name domain); the message says why.',
  max_length: 'The value is longer than allowed.',
  min_length: 'The value is shorter than allowed (usually: empty).',
  no_crlf:
    'A CR, LF or NUL character appears in an address, display name, subject, header, tag, metadata entry, attachment file name or Content-ID.',
  max_recipients: 'to, cc and bcc together name more addresses than the server allows.',
  body_required: 'The email needs a non-empty `text` or `html` body (or both).',
  enum: 'The value is not one of the allowed values.',
  datetime: 'The value is not an ISO 8601 date-time with a timezone, e.g. `2026-11-23T10:00:00Z`.',
  too_far_ahead: 'send_at is further in the future than the server allows.',
  header_name: 'The header name is not an RFC 5322 field name: 1 to 76 printable ASCII characters, no colon.',
  reserved_header:
    'The header is set by Mailroom itself (From, To, Subject, Message-ID, Date, …) and cannot be given.',
  max_items: 'The list or object has more entries than allowed.',
  pattern:
    'The value contains characters that are not allowed (tags: letters, digits and `_ . : -`; attachment file names: no control characters, no `/` or `\\`; Content-IDs: no spaces or `< >`).',
  too_large:
    'Subject, bodies, headers and attachments (decoded) together are larger than MAILROOM_MAX_MESSAGE_BYTES.',
  encoding:
    "An attachment's content is not canonical base64 (RFC 4648, padded, on one line). File paths, URLs and data: URLs are refused: Mailroom never reads files or fetches content.",
  mime_type:
    'The value is not a MIME type `type/subtype` without parameters (multipart/ and message/ are refused).',
  duplicate: "The value must be unique within the email (an attachment's content_id).",
  exclusive:
    'Give one of the fields, not both: `template` or `subject`/`html`/`text` in an email; `html` or `mjml` in a template.',
  unknown_template: 'No template with this code, or no such version of it.',
  template_syntax:
    'The template does not compile: a Handlebars or MJML error, a partial, a helper other than if, unless, each, with and lookup, a path through `__proto__`, `constructor` or `prototype`, or blocks nested too deep.',
  template_render_error: 'The template failed while it was rendered with the given variables.',
} as const satisfies Record<string, string>;

export type FieldRule = keyof typeof FIELD_RULES;

export interface ValidationContext {
  /** Sender used when the request names none. */
  defaultFrom?: string;
  /** Limit on to + cc + bcc. */
  maxRecipients: number;
  /** Limit on the UTF-8 size of subject, text, html and headers, plus decoded attachments, together. */
  maxMessageBytes: number;
  /** Epoch ms. */
  now: number;
  maxScheduleAheadMs: number;
}

export interface ValidatedEmail {
  content: EmailContent;
  tags: string[];
  metadata: Record<string, string>;
  priority: Priority;
  /** Epoch ms; present only when send_at is in the future. */
  sendAt?: number;
}

export type ValidationResult<T> =
  | { ok: true; value: T }
  | { ok: false; problems: FieldProblem[]; tooLarge?: boolean };

export type MailboxParseResult =
  | { ok: true; mailbox: Mailbox }
  | { ok: false; rule: FieldRule; message: string };

const SEND_FIELDS = new Set([
  'from',
  'to',
  'cc',
  'bcc',
  'reply_to',
  'subject',
  'text',
  'html',
  'headers',
  'tags',
  'metadata',
  'priority',
  'send_at',
  'attachments',
]);
const COMPAT_FIELDS = new Set(['to', 'subject', 'body']);

const RESERVED_HEADERS = new Set([
  'from',
  'to',
  'cc',
  'bcc',
  'subject',
  'reply-to',
  'sender',
  'message-id',
  'date',
  'mime-version',
  'content-type',
  'content-transfer-encoding',
  'return-path',
  'received',
  'dkim-signature',
]);

const MAX_SUBJECT_CHARS = 998;
const MAX_HEADERS = 50;
const MAX_HEADER_NAME_CHARS = 76;
const MAX_HEADER_VALUE_CHARS = 998;
const MAX_TAGS = 20;
const MAX_TAG_CHARS = 64;
const MAX_METADATA_KEYS = 50;
const MAX_METADATA_KEY_CHARS = 64;
const MAX_METADATA_VALUE_CHARS = 1024;
const MAX_DISPLAY_NAME_CHARS = 256;
const MAX_ADDRESS_OCTETS = 254;
const MAX_LOCAL_OCTETS = 64;
const MAX_DOMAIN_OCTETS = 253;
const MAX_LABEL_OCTETS = 63;
/** No valid mailbox comes close (256-char name, escaped, plus a 254-octet address): reject before parsing. */
const MAX_MAILBOX_INPUT_CHARS = 2048;
const MAX_IDEMPOTENCY_KEY_CHARS = 256;
/** A hostile body can break thousands of rules at once; the answer lists the first ones only. */
const MAX_PROBLEMS = 100;

class Problems {
  readonly list: FieldProblem[] = [];
  tooLarge = false;

  add(field: string, rule: FieldRule, message: string): void {
    this.list.push({ field, rule, message });
    if (rule === 'too_large') this.tooLarge = true;
  }

  get empty(): boolean {
    return this.list.length === 0;
  }

  result<T>(value: () => T): ValidationResult<T> {
    if (this.empty) return { ok: true, value: value() };
    const problems = this.list.slice(0, MAX_PROBLEMS);
    return this.tooLarge ? { ok: false, problems, tooLarge: true } : { ok: false, problems };
  }
}

// ---------------------------------------------------------------------------------------------------------
// Characters

function isAlnum(code: number): boolean {
  return (code >= 0x30 && code <= 0x39) || (code >= 0x41 && code <= 0x5a) || (code >= 0x61 && code <= 0x7a);
}

const ATEXT_SYMBOLS = "!#$%&'*+/=?^_`{|}~-";

function isAtext(ch: string): boolean {
  return isAlnum(ch.charCodeAt(0)) || ATEXT_SYMBOLS.includes(ch);
}

function isLdh(ch: string): boolean {
  return isAlnum(ch.charCodeAt(0)) || ch === '-';
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

function isDigits(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const code = s.charCodeAt(i);
    if (code < 0x30 || code > 0x39) return false;
  }
  return s.length > 0;
}

function hasWhitespace(s: string): boolean {
  return /\s/.test(s);
}

function utf8Bytes(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

// ---------------------------------------------------------------------------------------------------------
// Mailboxes

type Step<T> = { ok: true; value: T } | { ok: false; message: string };

function fail(message: string): { ok: false; message: string } {
  return { ok: false, message };
}

/**
 * Parses one mailbox strictly: `user@example.com`, `Name <user@example.com>` or
 * `"Quoted, Name" <user@example.com>`. No comments, quoted local parts, source routes, address literals or
 * groups. The domain is stored in its lower-case ASCII (punycode) form; the local part keeps its case.
 */
export function parseMailbox(input: string): MailboxParseResult {
  if (hasCrlfOrNul(input)) {
    return { ok: false, rule: 'no_crlf', message: 'must not contain CR, LF or NUL characters' };
  }
  if (input.length > MAX_MAILBOX_INPUT_CHARS) {
    return { ok: false, rule: 'max_length', message: `is longer than ${MAX_MAILBOX_INPUT_CHARS} characters` };
  }
  const parts = splitMailbox(input.trim());
  if (!parts.ok) return { ok: false, rule: 'email', message: parts.message };

  const name = parts.value.name?.trim();
  if (name !== undefined && hasControlChar(name)) {
    return { ok: false, rule: 'email', message: 'display name contains a control character' };
  }
  if (name !== undefined && charLength(name) > MAX_DISPLAY_NAME_CHARS) {
    return {
      ok: false,
      rule: 'max_length',
      message: `display name is longer than ${MAX_DISPLAY_NAME_CHARS} characters`,
    };
  }
  const address = checkAddress(parts.value.address);
  if (!address.ok) return { ok: false, rule: 'email', message: address.message };

  const mailbox: Mailbox = name ? { address: address.value, name } : { address: address.value };
  return { ok: true, mailbox };
}

interface MailboxParts {
  name?: string;
  address: string;
}

/** Separates the display name from the address in `Name <address>`; a bare address has no name. */
function splitMailbox(s: string): Step<MailboxParts> {
  if (s === '') return fail('address is empty');
  if (!s.includes('<') && !s.includes('>')) return { ok: true, value: { address: s } };

  let name: string;
  let rest: string;
  if (s.startsWith('"')) {
    const quoted = readQuotedName(s);
    if (!quoted.ok) return quoted;
    name = quoted.value.name;
    rest = s.slice(quoted.value.end).trimStart();
    if (!rest.startsWith('<')) return fail('a quoted display name must be followed by <address>');
  } else {
    const open = s.indexOf('<');
    if (open === -1) return fail('">" without a matching "<"');
    name = s.slice(0, open);
    if (name.includes('>')) return fail('">" before "<"');
    if (name.includes('"')) return fail('a display name with quotes must be quoted as a whole');
    rest = s.slice(open);
  }

  const close = rest.indexOf('>');
  if (close === -1) return fail('missing closing ">"');
  if (close !== rest.length - 1) return fail('nothing may follow ">"');
  const address = rest.slice(1, close);
  if (address.includes('<')) return fail('nested "<"');
  return { ok: true, value: { name, address } };
}

/** Reads `"…"` at the start of s; only `\"` and `\\` are escapes. */
function readQuotedName(s: string): Step<{ name: string; end: number }> {
  let name = '';
  for (let i = 1; i < s.length; i++) {
    const ch = s[i]!;
    if (ch === '"') return { ok: true, value: { name, end: i + 1 } };
    if (ch === '\\') {
      const next = s[i + 1];
      if (next !== '"' && next !== '\\') return fail('only \\" and \\\\ may be escaped in a display name');
      name += next;
      i++;
    } else {
      name += ch;
    }
  }
  return fail('unterminated quoted display name');
}

/** Checks an addr-spec (`local@domain`) and returns it normalised. */
function checkAddress(address: string): Step<string> {
  if (address === '') return fail('address is empty');
  if (hasWhitespace(address)) return fail('address contains a space');
  if (address.startsWith('@') && address.includes(':'))
    return fail('source routes (@host:) are not accepted');
  if (address.includes('(') || address.includes(')')) return fail('comments "( )" are not accepted');
  if (address.startsWith('"')) return fail('quoted local parts are not accepted');

  const at = address.indexOf('@');
  if (at === -1) return fail('missing "@"');
  if (address.indexOf('@', at + 1) !== -1) return fail('more than one "@"');

  const local = checkLocalPart(address.slice(0, at));
  if (!local.ok) return local;
  const domain = checkDomain(address.slice(at + 1));
  if (!domain.ok) return domain;

  const normalised = `${local.value}@${domain.value}`;
  if (normalised.length > MAX_ADDRESS_OCTETS)
    return fail(`address is longer than ${MAX_ADDRESS_OCTETS} octets`);
  return { ok: true, value: normalised };
}

function checkLocalPart(local: string): Step<string> {
  if (local === '') return fail('local part (before "@") is empty');
  if (!isAscii(local)) return fail('local part must be ASCII');
  if (local.length > MAX_LOCAL_OCTETS) return fail(`local part is longer than ${MAX_LOCAL_OCTETS} octets`);
  if (local.startsWith('.') || local.endsWith('.')) return fail('local part starts or ends with a dot');
  if (local.includes('..')) return fail('local part has two dots in a row');
  for (const ch of local) {
    if (ch !== '.' && !isAtext(ch)) return fail(`local part contains "${ch}"`);
  }
  return { ok: true, value: local };
}

function checkDomain(raw: string): Step<string> {
  if (raw === '') return fail('domain (after "@") is empty');
  if (raw.startsWith('[')) return fail('address literals ([…]) are not accepted');
  // Checked before domainToASCII, which would percent-decode or map them (`ex%61mple` becomes `example`).
  for (const ch of raw) {
    if (ch.charCodeAt(0) <= 0x7f && ch !== '.' && !isLdh(ch)) return fail(`domain contains "${ch}"`);
  }
  const ascii = isAscii(raw) ? raw.toLowerCase() : domainToASCII(raw);
  if (ascii === '') return fail('domain is not a valid internationalised host name');

  const shape = checkDomainShape(ascii);
  if (!shape.ok) return shape;
  // Catches malformed punycode (`xn--zz`) in a domain given in ASCII.
  if (domainToASCII(ascii) !== ascii) return fail('domain is not a valid host name');
  return { ok: true, value: ascii };
}

function checkDomainShape(domain: string): Step<string> {
  if (domain.length > MAX_DOMAIN_OCTETS) return fail(`domain is longer than ${MAX_DOMAIN_OCTETS} octets`);
  const labels = domain.split('.');
  for (const label of labels) {
    const problem = labelProblem(label);
    if (problem) return fail(problem);
  }
  if (labels.length === 1 && domain !== 'localhost') {
    return fail('domain needs a dot (only "localhost" may stand alone)');
  }
  if (isDigits(labels[labels.length - 1]!))
    return fail('top-level domain is all digits (IP addresses are not accepted)');
  return { ok: true, value: domain };
}

function labelProblem(label: string): string | undefined {
  if (label === '') return 'domain has an empty label (leading, trailing or double dot)';
  if (label.length > MAX_LABEL_OCTETS) return `domain label is longer than ${MAX_LABEL_OCTETS} octets`;
  for (const ch of label) {
    if (!isLdh(ch)) return `domain contains "${ch}"`;
  }
  if (label.startsWith('-') || label.endsWith('-')) return 'domain label starts or ends with a hyphen';
  return undefined;
}

// ---------------------------------------------------------------------------------------------------------
// Fields

function readMailbox(problems: Problems, field: string, value: string): Mailbox | undefined {
  const parsed = parseMailbox(value);
  if (parsed.ok) return parsed.mailbox;
  problems.add(field, parsed.rule, parsed.message);
  return undefined;
}

function readFrom(problems: Problems, value: unknown, defaultFrom: string | undefined): Mailbox | undefined {
  if (value === undefined && defaultFrom === undefined) {
    problems.add('from', 'required', 'is required: the server has no default sender');
    return undefined;
  }
  const from = value === undefined ? defaultFrom : value;
  if (typeof from !== 'string') {
    problems.add('from', 'type', `must be a string, not ${jsonType(from)}`);
    return undefined;
  }
  return readMailbox(problems, 'from', from);
}

/** A string or an array of strings; a single string is reported under the bare field name. */
function readAddressList(problems: Problems, field: string, value: unknown, required: boolean): Mailbox[] {
  if (value === undefined) {
    if (required) problems.add(field, 'required', 'is required');
    return [];
  }
  if (typeof value === 'string') {
    const mailbox = readMailbox(problems, field, value);
    return mailbox ? [mailbox] : [];
  }
  if (!Array.isArray(value)) {
    problems.add(field, 'type', `must be a string or an array of strings, not ${jsonType(value)}`);
    return [];
  }
  if (value.length === 0 && required) problems.add(field, 'required', 'needs at least one address');
  const mailboxes: Mailbox[] = [];
  value.forEach((item: unknown, i) => {
    const path = `${field}[${i}]`;
    if (typeof item !== 'string') {
      problems.add(path, 'type', `must be a string, not ${jsonType(item)}`);
      return;
    }
    const mailbox = readMailbox(problems, path, item);
    if (mailbox) mailboxes.push(mailbox);
  });
  return mailboxes;
}

function countAddresses(value: unknown): number {
  if (typeof value === 'string') return 1;
  return Array.isArray(value) ? value.length : 0;
}

function checkRecipientCount(problems: Problems, lists: readonly unknown[], max: number): void {
  const total = lists.reduce<number>((sum, list) => sum + countAddresses(list), 0);
  if (total > max) {
    problems.add(
      'to',
      'max_recipients',
      `to, cc and bcc name ${total} addresses; at most ${max} are allowed`,
    );
  }
}

function readSubject(problems: Problems, value: unknown): string | undefined {
  if (value === undefined) {
    problems.add('subject', 'required', 'is required');
    return undefined;
  }
  if (typeof value !== 'string') {
    problems.add('subject', 'type', `must be a string, not ${jsonType(value)}`);
    return undefined;
  }
  if (value === '') {
    problems.add('subject', 'min_length', 'must not be empty');
    return undefined;
  }
  if (hasCrlfOrNul(value)) {
    problems.add('subject', 'no_crlf', 'must not contain CR, LF or NUL characters');
    return undefined;
  }
  if (charLength(value) > MAX_SUBJECT_CHARS) {
    problems.add('subject', 'max_length', `is longer than ${MAX_SUBJECT_CHARS} characters`);
    return undefined;
  }
  return value;
}

/** An optional string; undefined when absent, empty or of the wrong type (the latter reported). */
function readOptionalBody(problems: Problems, field: string, value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') {
    problems.add(field, 'type', `must be a string, not ${jsonType(value)}`);
    return undefined;
  }
  return value === '' ? undefined : value;
}

function headerNameProblem(name: string): string | undefined {
  if (name.length === 0 || name.length > MAX_HEADER_NAME_CHARS) {
    return `must be 1 to ${MAX_HEADER_NAME_CHARS} characters`;
  }
  for (let i = 0; i < name.length; i++) {
    const code = name.charCodeAt(i);
    if (code < 33 || code > 126 || code === 0x3a) return 'must be printable ASCII without spaces or ":"';
  }
  return undefined;
}

function readHeaders(problems: Problems, value: unknown): Record<string, string> {
  if (value === undefined) return {};
  if (!isPlainObject(value)) {
    problems.add('headers', 'type', `must be an object of strings, not ${jsonType(value)}`);
    return {};
  }
  const entries = Object.entries(value);
  if (entries.length > MAX_HEADERS) {
    problems.add('headers', 'max_items', `has ${entries.length} headers; at most ${MAX_HEADERS} are allowed`);
  }
  const valid: [string, string][] = [];
  for (const [name, headerValue] of entries) {
    const header = readHeader(problems, name, headerValue);
    if (header) valid.push(header);
  }
  // fromEntries defines own properties, so a `__proto__` key stays data instead of changing the prototype.
  return Object.fromEntries(valid);
}

function readHeader(problems: Problems, name: string, value: unknown): [string, string] | undefined {
  const path = `headers.${name}`;
  const problemsBefore = problems.list.length;
  if (hasCrlfOrNul(name)) {
    problems.add(path, 'no_crlf', 'header name must not contain CR, LF or NUL characters');
  } else {
    const nameProblem = headerNameProblem(name);
    if (nameProblem) problems.add(path, 'header_name', `header name ${nameProblem}`);
    else if (RESERVED_HEADERS.has(name.toLowerCase())) {
      problems.add(path, 'reserved_header', `${name} is set by Mailroom and cannot be given`);
    }
  }
  if (typeof value !== 'string') {
    problems.add(path, 'type', `must be a string, not ${jsonType(value)}`);
  } else if (hasCrlfOrNul(value)) {
    problems.add(path, 'no_crlf', 'header value must not contain CR, LF or NUL characters');
  } else if (charLength(value) > MAX_HEADER_VALUE_CHARS) {
    problems.add(path, 'max_length', `header value is longer than ${MAX_HEADER_VALUE_CHARS} characters`);
  }
  return problems.list.length === problemsBefore && typeof value === 'string' ? [name, value] : undefined;
}

function isTagChar(ch: string): boolean {
  return isAlnum(ch.charCodeAt(0)) || ch === '_' || ch === '.' || ch === ':' || ch === '-';
}

function tagProblem(tag: string): { rule: FieldRule; message: string } | undefined {
  if (hasCrlfOrNul(tag)) return { rule: 'no_crlf', message: 'must not contain CR, LF or NUL characters' };
  if (tag === '') return { rule: 'min_length', message: 'must not be empty' };
  if (tag.length > MAX_TAG_CHARS)
    return { rule: 'max_length', message: `is longer than ${MAX_TAG_CHARS} characters` };
  for (const ch of tag) {
    if (!isTagChar(ch)) return { rule: 'pattern', message: 'may contain only letters, digits and _ . : -' };
  }
  return undefined;
}

function readTags(problems: Problems, value: unknown): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) {
    problems.add('tags', 'type', `must be an array of strings, not ${jsonType(value)}`);
    return [];
  }
  if (value.length > MAX_TAGS) {
    problems.add('tags', 'max_items', `has ${value.length} tags; at most ${MAX_TAGS} are allowed`);
  }
  const tags: string[] = [];
  value.forEach((tag: unknown, i) => {
    const path = `tags[${i}]`;
    if (typeof tag !== 'string') {
      problems.add(path, 'type', `must be a string, not ${jsonType(tag)}`);
      return;
    }
    const problem = tagProblem(tag);
    if (problem) problems.add(path, problem.rule, problem.message);
    else tags.push(tag);
  });
  return tags;
}

function metadataProblems(key: string, value: unknown): { rule: FieldRule; message: string }[] {
  const found: { rule: FieldRule; message: string }[] = [];
  if (hasCrlfOrNul(key))
    found.push({ rule: 'no_crlf', message: 'key must not contain CR, LF or NUL characters' });
  else if (key === '') found.push({ rule: 'min_length', message: 'key must not be empty' });
  else if (charLength(key) > MAX_METADATA_KEY_CHARS) {
    found.push({ rule: 'max_length', message: `key is longer than ${MAX_METADATA_KEY_CHARS} characters` });
  }
  if (typeof value !== 'string')
    found.push({ rule: 'type', message: `must be a string, not ${jsonType(value)}` });
  else if (hasCrlfOrNul(value)) {
    found.push({ rule: 'no_crlf', message: 'value must not contain CR, LF or NUL characters' });
  } else if (charLength(value) > MAX_METADATA_VALUE_CHARS) {
    found.push({
      rule: 'max_length',
      message: `value is longer than ${MAX_METADATA_VALUE_CHARS} characters`,
    });
  }
  return found;
}

function readMetadata(problems: Problems, value: unknown): Record<string, string> {
  if (value === undefined) return {};
  if (!isPlainObject(value)) {
    problems.add('metadata', 'type', `must be an object of strings, not ${jsonType(value)}`);
    return {};
  }
  const entries = Object.entries(value);
  if (entries.length > MAX_METADATA_KEYS) {
    problems.add(
      'metadata',
      'max_items',
      `has ${entries.length} keys; at most ${MAX_METADATA_KEYS} are allowed`,
    );
  }
  const valid: [string, string][] = [];
  for (const [key, entry] of entries) {
    const found = metadataProblems(key, entry);
    for (const problem of found) problems.add(`metadata.${key}`, problem.rule, problem.message);
    if (found.length === 0 && typeof entry === 'string') valid.push([key, entry]);
  }
  // fromEntries: see readHeaders.
  return Object.fromEntries(valid);
}

function isPriority(value: string): value is Priority {
  return (PRIORITIES as readonly string[]).includes(value);
}

function readPriority(problems: Problems, value: unknown): Priority {
  if (value === undefined) return 'normal';
  if (typeof value !== 'string') {
    problems.add('priority', 'type', `must be a string, not ${jsonType(value)}`);
  } else if (!isPriority(value)) {
    problems.add('priority', 'enum', `must be one of ${PRIORITIES.join(', ')}`);
  } else {
    return value;
  }
  return 'normal';
}

const DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?([Zz]|([+-])(\d{2}):(\d{2}))$/;

function daysInMonth(year: number, month: number): number {
  if (month === 2) return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0 ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}

/** Parses an ISO 8601 / RFC 3339 date-time that names its timezone; epoch ms, or undefined. */
export function parseDateTime(input: string): number | undefined {
  const m = DATE_TIME.exec(input);
  if (!m) return undefined;
  const [year, month, day, hour, minute] = [m[1], m[2], m[3], m[4], m[5]].map(Number) as [
    number,
    number,
    number,
    number,
    number,
  ];
  const second = m[6] === undefined ? 0 : Number(m[6]);
  const ms = m[7] === undefined ? 0 : Math.floor(Number(m[7]) * 1000);
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return undefined;
  if (hour > 23 || minute > 59 || second > 59) return undefined;
  let offsetMinutes = 0;
  if (m[9] !== undefined) {
    const offsetHours = Number(m[10]);
    const offsetMins = Number(m[11]);
    if (offsetHours > 23 || offsetMins > 59) return undefined;
    offsetMinutes = (m[9] === '-' ? -1 : 1) * (offsetHours * 60 + offsetMins);
  }
  const date = new Date(0);
  // setUTCFullYear, unlike Date.UTC, does not turn years 0–99 into 1900–1999.
  date.setUTCFullYear(year, month - 1, day);
  date.setUTCHours(hour, minute, second, ms);
  return date.getTime() - offsetMinutes * 60_000;
}

function readSendAt(problems: Problems, value: unknown, ctx: ValidationContext): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') {
    problems.add('send_at', 'type', `must be a string, not ${jsonType(value)}`);
    return undefined;
  }
  const at = parseDateTime(value);
  if (at === undefined) {
    problems.add(
      'send_at',
      'datetime',
      'must be an ISO 8601 date-time with a timezone, e.g. 2026-11-23T10:00:00Z',
    );
    return undefined;
  }
  if (at > ctx.now + ctx.maxScheduleAheadMs) {
    const days = Math.floor(ctx.maxScheduleAheadMs / 86_400_000);
    problems.add('send_at', 'too_far_ahead', `must be at most ${days} days ahead`);
    return undefined;
  }
  return at > ctx.now ? at : undefined;
}

function stringOrEmpty(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

function headerBytes(headers: unknown): number {
  if (!isPlainObject(headers)) return 0;
  let bytes = 0;
  for (const [name, value] of Object.entries(headers))
    bytes += utf8Bytes(name) + utf8Bytes(stringOrEmpty(value));
  return bytes;
}

function checkSize(
  problems: Problems,
  parts: readonly unknown[],
  headers: unknown,
  attachments: unknown,
  max: number,
): void {
  const bytes = parts.reduce<number>(
    (sum, part) => sum + utf8Bytes(stringOrEmpty(part)),
    headerBytes(headers) + attachmentBytes(attachments),
  );
  if (bytes > max) {
    problems.add(
      'body',
      'too_large',
      `subject, bodies, headers and attachments take ${bytes} bytes; at most ${max} are allowed`,
    );
  }
}

function snakeCase(key: string): string {
  return key.replace(/[A-Z]/g, (ch) => `_${ch.toLowerCase()}`);
}

function checkUnknownFields(
  problems: Problems,
  body: Record<string, unknown>,
  known: ReadonlySet<string>,
): void {
  for (const key of Object.keys(body)) {
    if (known.has(key)) continue;
    const hint = known.has(snakeCase(key)) ? `; did you mean ${snakeCase(key)}?` : '';
    problems.add(key, 'unknown_field', `is not a known field${hint}`);
  }
}

function bodyTypeProblem(body: unknown): ValidationResult<never> {
  return {
    ok: false,
    problems: [{ field: 'body', rule: 'type', message: `must be a JSON object, not ${jsonType(body)}` }],
  };
}

// ---------------------------------------------------------------------------------------------------------
// Requests

/** Validates the body of `POST /v1/emails`, reporting every problem found. */
export function validateSendEmail(body: unknown, ctx: ValidationContext): ValidationResult<ValidatedEmail> {
  if (!isPlainObject(body)) return bodyTypeProblem(body);
  const problems = new Problems();
  // First, so it survives the cap on the number of problems.
  checkSize(
    problems,
    [body['subject'], body['text'], body['html']],
    body['headers'],
    body['attachments'],
    ctx.maxMessageBytes,
  );
  checkUnknownFields(problems, body, SEND_FIELDS);

  const from = readFrom(problems, body['from'], ctx.defaultFrom);
  const to = readAddressList(problems, 'to', body['to'], true);
  const cc = readAddressList(problems, 'cc', body['cc'], false);
  const bcc = readAddressList(problems, 'bcc', body['bcc'], false);
  checkRecipientCount(problems, [body['to'], body['cc'], body['bcc']], ctx.maxRecipients);
  const replyTo = readAddressList(problems, 'reply_to', body['reply_to'], false);
  if (countAddresses(body['reply_to']) > ctx.maxRecipients) {
    problems.add('reply_to', 'max_items', `names more than ${ctx.maxRecipients} addresses`);
  }
  const subject = readSubject(problems, body['subject']);
  const text = readOptionalBody(problems, 'text', body['text']);
  const html = readOptionalBody(problems, 'html', body['html']);
  if (text === undefined && html === undefined) {
    problems.add('text', 'body_required', 'text or html (or both) must be given and not empty');
  }
  const headers = readHeaders(problems, body['headers']);
  const tags = readTags(problems, body['tags']);
  const metadata = readMetadata(problems, body['metadata']);
  const priority = readPriority(problems, body['priority']);
  const sendAt = readSendAt(problems, body['send_at'], ctx);
  const attachments = readAttachments(
    (field, rule, message) => problems.add(field, rule, message),
    body['attachments'],
  );

  return problems.result(() => ({
    content: {
      from: from!,
      to,
      cc,
      bcc,
      replyTo,
      subject: subject!,
      ...(text === undefined ? {} : { text }),
      ...(html === undefined ? {} : { html }),
      headers,
      ...(attachments.length > 0 && { attachments }),
    },
    tags,
    metadata,
    priority,
    ...(sendAt === undefined ? {} : { sendAt }),
  }));
}

/** Anything that looks like a tag: `<p>`, `</div>`, `<br/>`, `<a href="…">`, `<!DOCTYPE html>`, `<!-- -->`. */
const HTML_TAG = /<\/?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?\/?>|<!(?:--|doctype\s)/i;

export function looksLikeHtml(text: string): boolean {
  return HTML_TAG.test(text);
}

function readCompatBody(problems: Problems, value: unknown): string | undefined {
  if (value === undefined) {
    problems.add('body', 'required', 'is required');
    return undefined;
  }
  if (typeof value !== 'string') {
    problems.add('body', 'type', `must be a string, not ${jsonType(value)}`);
    return undefined;
  }
  if (value === '') {
    problems.add('body', 'body_required', 'must not be empty');
    return undefined;
  }
  return value;
}

/**
 * Validates the Distributed Email Sender compatible body `{to, subject, body}`. The body is sent as text,
 * and also as HTML when it contains a tag; the sender is the server's default.
 */
export function validateCompatEmail(body: unknown, ctx: ValidationContext): ValidationResult<ValidatedEmail> {
  if (!isPlainObject(body)) return bodyTypeProblem(body);
  const problems = new Problems();
  const bodyText = body['body'];
  const html = typeof bodyText === 'string' && looksLikeHtml(bodyText) ? bodyText : undefined;
  checkSize(problems, [body['subject'], bodyText, html], undefined, undefined, ctx.maxMessageBytes);
  checkUnknownFields(problems, body, COMPAT_FIELDS);

  const from = readFrom(problems, undefined, ctx.defaultFrom);
  const to = readAddressList(problems, 'to', body['to'], true);
  checkRecipientCount(problems, [body['to']], ctx.maxRecipients);
  const subject = readSubject(problems, body['subject']);
  const text = readCompatBody(problems, bodyText);

  return problems.result(() => ({
    content: {
      from: from!,
      to,
      cc: [],
      bcc: [],
      replyTo: [],
      subject: subject!,
      text: text!,
      ...(html === undefined ? {} : { html }),
      headers: {},
    },
    tags: [],
    metadata: {},
    priority: 'normal',
  }));
}

/** An Idempotency-Key: 1 to 256 printable ASCII characters; spaces only between other characters. */
export function isValidIdempotencyKey(key: string): boolean {
  if (key.length === 0 || key.length > MAX_IDEMPOTENCY_KEY_CHARS) return false;
  if (key.startsWith(' ') || key.endsWith(' ')) return false;
  for (let i = 0; i < key.length; i++) {
    const code = key.charCodeAt(i);
    if (code < 0x20 || code > 0x7e) return false;
  }
  return true;
}
