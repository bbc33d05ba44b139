import type { TemplateVersion } from '../domain/template.js';
import type { ValidationResult } from '../domain/validate-email.js';
import { isPlainObject } from '../domain/value-checks.js';
import type { FieldProblem } from '../errors.js';
import type { Store } from '../store/store.js';
import { codeProblem } from '../templates/prepare-template.js';
import { renderEmail } from '../templates/render-email.js';

const TEMPLATE_FIELDS = ['template', 'variables', 'template_version'] as const;
const CONTENT_FIELDS = ['subject', 'html', 'text'] as const;

/** The send body with the template rendered into subject, html and text; or the problems. */
export type Expanded =
  | { ok: true; body: unknown; template?: TemplateVersion }
  | Extract<ValidationResult<never>, { ok: false }>;

/**
 * Rendering happens here, when the email is accepted: the job stores the rendered content, so the
 * worker builds and sends it as any other email and a template edited or deleted later does not
 * change an accepted email. A body without `template` passes through untouched.
 */
export async function expandTemplate(
  store: Pick<Store, 'getTemplate'>,
  body: unknown,
  maxOutputChars: number,
): Promise<Expanded> {
  if (!isPlainObject(body)) return { ok: true, body };
  if (body['template'] === undefined) {
    const stray = TEMPLATE_FIELDS.filter((field) => body[field] !== undefined);
    if (stray.length === 0) return { ok: true, body };
    return fail(stray.map((field) => ({ field, rule: 'required', message: `${field} needs template` })));
  }
  const problems: FieldProblem[] = [];
  const codeIssue = codeProblem(body['template'], 'template');
  if (codeIssue) problems.push(codeIssue);
  for (const field of CONTENT_FIELDS) {
    if (body[field] !== undefined) {
      problems.push({
        field,
        rule: 'exclusive',
        message: `comes from the template; give ${field} or template, not both`,
      });
    }
  }
  const pinned = body['template_version'];
  if (pinned !== undefined && (typeof pinned !== 'number' || !Number.isInteger(pinned) || pinned < 1)) {
    problems.push({ field: 'template_version', rule: 'type', message: 'must be an integer from 1' });
  }
  if (problems.length > 0) return fail(problems);

  const code = body['template'] as string;
  const version = pinned as number | undefined;
  const template = await store.getTemplate(code, version);
  if (!template) {
    const what = version === undefined ? `no template ${code}` : `template ${code} has no version ${version}`;
    return fail([
      {
        field: version === undefined ? 'template' : 'template_version',
        rule: 'unknown_template',
        message: what,
      },
    ]);
  }
  const rendered = renderEmail(template, body['variables'], maxOutputChars);
  if (!rendered.ok)
    return { ok: false, problems: rendered.problems, ...(rendered.tooLarge && { tooLarge: true }) };

  const rest = Object.fromEntries(
    Object.entries(body).filter(([key]) => !(TEMPLATE_FIELDS as readonly string[]).includes(key)),
  );
  return {
    ok: true,
    template,
    body: {
      ...rest,
      subject: rendered.subject,
      ...(rendered.html !== undefined && { html: rendered.html }),
      ...(rendered.text !== '' && { text: rendered.text }),
    },
  };
}

function fail(problems: FieldProblem[]): Expanded {
  return { ok: false, problems };
}

/**
 * A Store reader for one batch: each template version is read once, however many of the batch's
 * emails use it.
 */
export function templatesOnce(store: Pick<Store, 'getTemplate'>): Pick<Store, 'getTemplate'> {
  const read = new Map<string, ReturnType<Store['getTemplate']>>();
  return {
    getTemplate: (code, version) => {
      const key = `${code}@${version ?? 'latest'}`;
      let template = read.get(key);
      if (!template) {
        template = store.getTemplate(code, version);
        read.set(key, template);
      }
      return template;
    },
  };
}
