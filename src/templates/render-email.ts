import { convert } from 'html-to-text';
import type { TemplateContent } from '../domain/template.js';
import { isPlainObject, jsonType } from '../domain/value-checks.js';
import type { FieldProblem } from '../errors.js';
import { renderParts, TEMPLATE_LIMITS, TemplateRenderError } from './template-engine.js';

export type Rendered =
  | { ok: true; subject: string; html?: string; text: string }
  | { ok: false; problems: FieldProblem[]; tooLarge?: boolean };

/**
 * Checks a request's `variables` against a version (size, depth, every required path present), then
 * renders it. Without a text template the text part is made from the rendered HTML (html-to-text).
 * Problems name the field (`variables.user.name`) and rule (`required`, `too_large`,
 * `template_render_error`).
 */
export function renderEmail(template: TemplateContent, variables: unknown, maxOutputChars: number): Rendered {
  if (variables === undefined) variables = {};
  if (!isPlainObject(variables)) {
    return {
      ok: false,
      problems: [
        { field: 'variables', rule: 'type', message: `must be a JSON object, not ${jsonType(variables)}` },
      ],
    };
  }
  const bytes = Buffer.byteLength(JSON.stringify(variables), 'utf8');
  if (bytes > TEMPLATE_LIMITS.variablesBytes) {
    return {
      ok: false,
      problems: [
        {
          field: 'variables',
          rule: 'max_length',
          message: `take ${bytes} bytes as JSON; at most ${TEMPLATE_LIMITS.variablesBytes} are allowed`,
        },
      ],
    };
  }
  if (depthOf(variables) > TEMPLATE_LIMITS.variablesDepth) {
    return {
      ok: false,
      problems: [
        {
          field: 'variables',
          rule: 'max_items',
          message: `nest objects and arrays more than ${TEMPLATE_LIMITS.variablesDepth} deep`,
        },
      ],
    };
  }
  const missing = template.requiredVariables
    .filter((path) => !hasPath(variables, path))
    .map((path) => ({
      field: `variables.${path}`,
      rule: 'required',
      message: 'is used by the template and must be given',
    }));
  if (missing.length > 0) return { ok: false, problems: missing };

  try {
    const parts = renderParts(template, variables, maxOutputChars);
    const text = parts.text ?? (parts.html === undefined ? '' : htmlToText(parts.html));
    return { ok: true, subject: parts.subject, ...(parts.html !== undefined && { html: parts.html }), text };
  } catch (error) {
    if (!(error instanceof TemplateRenderError)) throw error;
    const rule = error.tooLarge ? 'too_large' : 'template_render_error';
    return {
      ok: false,
      problems: [{ field: 'template', rule, message: error.message }],
      ...(error.tooLarge && { tooLarge: true }),
    };
  }
}

/** A text part for an HTML body: links as `text [url]`, images dropped, lines wrapped at 78. */
export function htmlToText(html: string): string {
  return convert(html, { wordwrap: 78, selectors: [{ selector: 'img', format: 'skip' }] });
}

/** Own, non-null properties all the way down (`user.name`). */
function hasPath(root: Record<string, unknown>, path: string): boolean {
  let value: unknown = root;
  for (const segment of path.split('.')) {
    if (value === null || typeof value !== 'object' || !Object.hasOwn(value, segment)) return false;
    value = (value as Record<string, unknown>)[segment];
  }
  return value !== undefined && value !== null;
}

function depthOf(value: unknown, depth = 0): number {
  if (value === null || typeof value !== 'object') return depth;
  if (depth > TEMPLATE_LIMITS.variablesDepth) return depth;
  let max = depth + 1;
  for (const item of Object.values(value)) max = Math.max(max, depthOf(item, depth + 1));
  return max;
}
