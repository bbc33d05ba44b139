import type { TemplateContent } from '../domain/template.js';
import { hasCrlfOrNul, isPlainObject, jsonType } from '../domain/value-checks.js';
import type { FieldProblem } from '../errors.js';
import { analyzeTemplate, TEMPLATE_LIMITS, TemplateSyntaxError } from './template-engine.js';

const CODE = /^[A-Za-z0-9_.-]+$/;
const CREATE_FIELDS = new Set(['code', 'subject', 'html', 'text', 'mjml']);
const UPDATE_FIELDS = new Set(['subject', 'html', 'text', 'mjml']);

export type Prepared<T> = { ok: true; value: T } | { ok: false; problems: FieldProblem[] };

/** Checks a template code (path parameter or body field). */
export function codeProblem(code: unknown, field = 'code'): FieldProblem | undefined {
  if (code === undefined) return { field, rule: 'required', message: 'is required' };
  if (typeof code !== 'string')
    return { field, rule: 'type', message: `must be a string, not ${jsonType(code)}` };
  if (code.length === 0 || code.length > TEMPLATE_LIMITS.codeChars) {
    return { field, rule: 'max_length', message: `must be 1 to ${TEMPLATE_LIMITS.codeChars} characters` };
  }
  if (!CODE.test(code)) return { field, rule: 'pattern', message: 'may hold only letters, digits and _ . -' };
  return undefined;
}

/**
 * Checks the body of `POST /v1/templates` (with `code`) or `PUT /v1/templates/{code}` (without), and
 * compiles it: MJML to HTML (here, once, so no worker ever runs MJML), every part through Handlebars,
 * and the variables the version requires. Every problem is reported.
 */
export async function prepareTemplate(
  body: unknown,
  withCode: boolean,
): Promise<Prepared<{ code?: string; content: TemplateContent }>> {
  if (!isPlainObject(body)) {
    return {
      ok: false,
      problems: [{ field: 'body', rule: 'type', message: `must be a JSON object, not ${jsonType(body)}` }],
    };
  }
  const problems: FieldProblem[] = [];
  const known = withCode ? CREATE_FIELDS : UPDATE_FIELDS;
  for (const key of Object.keys(body)) {
    if (!known.has(key))
      problems.push({ field: key, rule: 'unknown_field', message: 'is not a known field' });
  }
  const codeIssue = withCode ? codeProblem(body['code']) : undefined;
  if (codeIssue) problems.push(codeIssue);

  const subject = readPart(problems, body, 'subject', true);
  const text = readPart(problems, body, 'text', false);
  const mjml = readPart(problems, body, 'mjml', false);
  let html = readPart(problems, body, 'html', false);
  if (subject !== undefined && hasCrlfOrNul(subject)) {
    problems.push({ field: 'subject', rule: 'no_crlf', message: 'must not contain CR, LF or NUL' });
  }
  if (mjml !== undefined && body['html'] !== undefined) {
    problems.push({ field: 'html', rule: 'exclusive', message: 'give html or mjml, not both' });
  } else if (mjml !== undefined) {
    html = await compileMjml(problems, mjml);
  } else if (
    html === undefined &&
    text === undefined &&
    body['html'] === undefined &&
    body['text'] === undefined
  ) {
    problems.push({ field: 'text', rule: 'body_required', message: 'html, mjml or text must be given' });
  }

  const required = new Set<string>();
  for (const [field, source] of [
    ['subject', subject],
    ['html', html],
    ['text', text],
  ] as const) {
    if (source === undefined) continue;
    try {
      for (const path of analyzeTemplate(source, field)) required.add(path);
    } catch (error) {
      if (!(error instanceof TemplateSyntaxError)) throw error;
      problems.push({
        field: field === 'html' && mjml !== undefined ? 'mjml' : field,
        rule: 'template_syntax',
        message: error.message,
      });
    }
  }
  if (problems.length > 0) return { ok: false, problems };
  return {
    ok: true,
    value: {
      ...(withCode && { code: body['code'] as string }),
      content: {
        subject: subject!,
        ...(html !== undefined && { html }),
        ...(text !== undefined && { text }),
        ...(mjml !== undefined && { mjml }),
        requiredVariables: [...required].sort(),
      },
    },
  };
}

function readPart(
  problems: FieldProblem[],
  body: Record<string, unknown>,
  field: string,
  required: boolean,
): string | undefined {
  const value = body[field];
  if (value === undefined || value === null) {
    if (required) problems.push({ field, rule: 'required', message: 'is required' });
    return undefined;
  }
  if (typeof value !== 'string') {
    problems.push({ field, rule: 'type', message: `must be a string, not ${jsonType(value)}` });
    return undefined;
  }
  if (value === '') {
    problems.push({ field, rule: 'min_length', message: 'must not be empty' });
    return undefined;
  }
  const limit = field === 'subject' ? TEMPLATE_LIMITS.subjectChars : TEMPLATE_LIMITS.partBytes;
  const size = field === 'subject' ? value.length : Buffer.byteLength(value, 'utf8');
  if (size > limit) {
    problems.push({
      field,
      rule: 'max_length',
      message: `must be at most ${limit} ${field === 'subject' ? 'characters' : 'bytes'}`,
    });
    return undefined;
  }
  return value;
}

/**
 * MJML → HTML, strict: any MJML error refuses the version. `mj-include` is ignored (it would read
 * files). Handlebars expressions pass through MJML as text and are compiled afterwards.
 */
async function compileMjml(problems: FieldProblem[], source: string): Promise<string | undefined> {
  // Loaded on first use: MJML takes about a second to load, which every process start would pay.
  const { default: mjml2html } = await import('mjml');
  try {
    const result = await mjml2html(source, { validationLevel: 'strict', ignoreIncludes: true });
    if (result.errors.length > 0) {
      problems.push({
        field: 'mjml',
        rule: 'template_syntax',
        message: result.errors.map((e) => e.formattedMessage ?? e.message).join('; '),
      });
      return undefined;
    }
    return result.html;
  } catch (error) {
    const { message, errors } = error as {
      message?: string;
      errors?: { formattedMessage?: string; message: string }[];
    };
    const detail = errors?.length
      ? errors.map((e) => e.formattedMessage ?? e.message).join('; ')
      : (message ?? String(error));
    problems.push({ field: 'mjml', rule: 'template_syntax', message: detail.trim() });
    return undefined;
  }
}
