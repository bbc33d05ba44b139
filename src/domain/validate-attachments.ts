import type { Attachment } from './email.js';
import type { FieldRule } from './validate-email.js';
import { charLength, hasControlChar, hasCrlfOrNul, isPlainObject, jsonType } from './value-checks.js';

/** Reports one problem: a field path, the rule it broke, a message for people. */
export type Report = (field: string, rule: FieldRule, message: string) => void;

export const MAX_ATTACHMENTS = 20;
const MAX_FILENAME_CHARS = 255;
const MAX_CONTENT_TYPE_CHARS = 127;
const MAX_CONTENT_ID_CHARS = 250;

const FIELDS = new Set(['filename', 'content', 'content_type', 'content_id']);
/** Ways other mail APIs (nodemailer among them) let content come from a file or a URL: never here. */
const FETCHING_FIELDS = new Set(['path', 'href', 'url', 'uri', 'file', 'filepath', 'file_path', 'raw']);

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
/** An RFC 2045 token, twice: `type/subtype`, no parameters. */
const MIME_TYPE = /^[A-Za-z0-9!#$&^_.+-]+\/[A-Za-z0-9!#$&^_.+-]+$/;
/** The dot-atom characters of RFC 5322 plus `@`, as in `logo@acme.test`; no brackets, no spaces. */
const CONTENT_ID = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+$/;

/**
 * Decoded bytes the attachments will take, for the size budget: computed from the base64 length,
 * without decoding, and checked before anything else so it survives the cap on reported problems.
 */
export function attachmentBytes(value: unknown): number {
  if (!Array.isArray(value)) return 0;
  let bytes = 0;
  for (const item of value) {
    const content: unknown = isPlainObject(item) ? item['content'] : undefined;
    if (typeof content !== 'string') continue;
    const padding = content.endsWith('==') ? 2 : content.endsWith('=') ? 1 : 0;
    bytes += Math.max(0, Math.floor((content.length * 3) / 4) - padding);
  }
  return bytes;
}

/** Reads `attachments`: every problem reported under `attachments[i].field`; the valid ones returned. */
export function readAttachments(report: Report, value: unknown): Attachment[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) {
    report('attachments', 'type', `must be an array of objects, not ${jsonType(value)}`);
    return [];
  }
  if (value.length > MAX_ATTACHMENTS) {
    report(
      'attachments',
      'max_items',
      `has ${value.length} attachments; at most ${MAX_ATTACHMENTS} are allowed`,
    );
  }
  const attachments: Attachment[] = [];
  const contentIds = new Set<string>();
  value.forEach((item: unknown, i) => {
    const attachment = readAttachment(report, `attachments[${i}]`, item);
    if (attachment?.contentId === undefined) {
      if (attachment) attachments.push(attachment);
    } else if (contentIds.has(attachment.contentId)) {
      report(`attachments[${i}].content_id`, 'duplicate', 'is used by an earlier attachment of this email');
    } else {
      contentIds.add(attachment.contentId);
      attachments.push(attachment);
    }
  });
  return attachments;
}

function readAttachment(report: Report, path: string, item: unknown): Attachment | undefined {
  if (!isPlainObject(item)) {
    report(path, 'type', `must be an object, not ${jsonType(item)}`);
    return undefined;
  }
  let ok = true;
  const check = (field: string, problem: Problem | undefined) => {
    if (!problem) return;
    report(`${path}.${field}`, problem.rule, problem.message);
    ok = false;
  };
  for (const key of Object.keys(item)) {
    if (!FIELDS.has(key)) check(key, unknownField(key));
  }
  const { filename, content, content_type: contentType, content_id: contentId } = item;
  check('filename', required(filename) ?? filenameProblem(filename as string));
  check('content', required(content) ?? base64Problem(content as string));
  check('content_type', required(contentType) ?? contentTypeProblem(contentType as string));
  if (contentId !== undefined)
    check('content_id', stringProblem(contentId) ?? contentIdProblem(contentId as string));
  if (!ok) return undefined;
  return {
    filename: filename as string,
    contentType: contentType as string,
    content: content as string,
    ...(contentId !== undefined && { contentId: contentId as string }),
  };
}

interface Problem {
  readonly rule: FieldRule;
  readonly message: string;
}

function unknownField(key: string): Problem {
  if (FETCHING_FIELDS.has(key.toLowerCase())) {
    return {
      rule: 'unknown_field',
      message:
        'is not accepted: Mailroom never reads files or URLs; put the file itself, base64-encoded, in content',
    };
  }
  const snake = key.replace(/[A-Z]/g, (ch) => `_${ch.toLowerCase()}`);
  const hint = FIELDS.has(snake) ? `; did you mean ${snake}?` : '';
  return { rule: 'unknown_field', message: `is not a known field${hint}` };
}

function required(value: unknown): Problem | undefined {
  return value === undefined ? { rule: 'required', message: 'is required' } : stringProblem(value);
}

function stringProblem(value: unknown): Problem | undefined {
  return typeof value === 'string'
    ? undefined
    : { rule: 'type', message: `must be a string, not ${jsonType(value)}` };
}

function filenameProblem(name: string): Problem | undefined {
  if (hasCrlfOrNul(name)) return { rule: 'no_crlf', message: 'must not contain CR, LF or NUL characters' };
  if (name.trim() === '') return { rule: 'min_length', message: 'must not be empty' };
  if (charLength(name) > MAX_FILENAME_CHARS) {
    return { rule: 'max_length', message: `is longer than ${MAX_FILENAME_CHARS} characters` };
  }
  if (hasControlChar(name)) return { rule: 'pattern', message: 'must not contain control characters' };
  if (name.includes('/') || name.includes('\\')) {
    return {
      rule: 'pattern',
      message:
        'is a file name, not a path (no / or \\): Mailroom never reads files; send the content as base64',
    };
  }
  return undefined;
}

/** Only canonical base64 passes; the message guesses what was sent instead, to say how to fix it. */
function base64Problem(content: string): Problem | undefined {
  const valid =
    content.length % 4 === 0 &&
    BASE64.test(content) &&
    Buffer.from(content, 'base64').toString('base64') === content;
  if (valid) return undefined;
  const problem = (message: string): Problem => ({ rule: 'encoding', message });
  if (/^data:/i.test(content)) return problem('is a data: URL; send only the base64 after "base64,"');
  if (/^(~|\.{1,2}\/|\/|[A-Za-z]:\\)/.test(content)) {
    return problem(
      'looks like a file path; Mailroom never reads files: send the file itself, base64-encoded',
    );
  }
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(content)) {
    return problem('looks like a URL; Mailroom never fetches content: send the file itself, base64-encoded');
  }
  if (/\s/.test(content)) return problem('contains spaces or line breaks; send the base64 as one line');
  if (/^[A-Za-z0-9_-]*={0,2}$/.test(content) && /[-_]/.test(content)) {
    return problem('uses the URL-safe alphabet (- and _); send standard base64 (+ and /)');
  }
  if (BASE64.test(content) && content.length % 4 === 0) {
    return problem('is not canonical base64: the unused bits of its last character must be zero');
  }
  return problem('is not base64 (RFC 4648: A-Z, a-z, 0-9, + and /, padded with = to a multiple of 4)');
}

function contentTypeProblem(type: string): Problem | undefined {
  if (type.length > MAX_CONTENT_TYPE_CHARS || !MIME_TYPE.test(type)) {
    return {
      rule: 'mime_type',
      message: 'must be a MIME type, type/subtype without parameters, e.g. application/pdf',
    };
  }
  if (/^(multipart|message)\//i.test(type)) {
    return {
      rule: 'mime_type',
      message: 'multipart/ and message/ types cannot be sent base64-encoded; use application/octet-stream',
    };
  }
  return undefined;
}

function contentIdProblem(id: string): Problem | undefined {
  if (hasCrlfOrNul(id)) return { rule: 'no_crlf', message: 'must not contain CR, LF or NUL characters' };
  if (id === '') return { rule: 'min_length', message: 'must not be empty' };
  if (id.length > MAX_CONTENT_ID_CHARS) {
    return { rule: 'max_length', message: `is longer than ${MAX_CONTENT_ID_CHARS} characters` };
  }
  if (!CONTENT_ID.test(id)) {
    return {
      rule: 'pattern',
      message:
        'may contain letters, digits, @ and the symbols of an email address, without < > or spaces (e.g. logo@acme.test)',
    };
  }
  return undefined;
}
