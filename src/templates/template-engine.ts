/**
 * Handlebars for untrusted templates and variables: what a template may use, what it requires, and a
 * render whose output is bounded.
 *
 * Templates and variables both come from API callers, so:
 * - an isolated Handlebars environment, with only the built-in helpers `if`, `unless`, `each`,
 *   `with` and `lookup` (`knownHelpersOnly`: any other helper is refused when the version is saved);
 *   no `log`, no partials, no decorators, no custom helper that could reach files or the network;
 * - prototype access stays denied (Handlebars 4.7's defaults: `{{constructor}}`, `{{__proto__}}` and
 *   `lookup` only see own properties of the variables);
 * - Handlebars cannot be interrupted, so its work is bounded by size instead: template sources
 *   (TEMPLATE_LIMITS), block nesting, the variables' JSON size, and a meter on the output of every
 *   `each` iteration and every printed variable, which stops a render once it has produced more than
 *   `maxOutputChars` (the largest email; a variable printed inside a loop counts twice, so the meter
 *   is a guard, and the rendered email's exact size is checked after). Without the meter `{{#each a}}{{#each ../a}}…` over a
 *   10,000-item list, or a 60 KiB variable printed 10,000 times, would build gigabytes.
 */
import Handlebars from 'handlebars';

export const TEMPLATE_LIMITS = {
  /** Code: 1 to 64 characters of `a-z A-Z 0-9 _ . -`. */
  codeChars: 64,
  /** Subject source, in characters (the rendered subject still has to fit 998). */
  subjectChars: 4000,
  /** Each of html, text and mjml, in UTF-8 bytes. */
  partBytes: 512 * 1024,
  /** `{{…}}` expressions in one part. */
  expressions: 5000,
  /** Blocks inside blocks. */
  blockDepth: 12,
  /** The request's `variables`, as JSON, in UTF-8 bytes. */
  variablesBytes: 256 * 1024,
  /** Objects and arrays inside each other in `variables`. */
  variablesDepth: 16,
} as const;

const BUILTIN_HELPERS = ['if', 'unless', 'each', 'with', 'lookup'] as const;
const CONDITIONAL_HELPERS: ReadonlySet<string> = new Set(['if', 'unless']);

/** A template part that cannot be saved: a syntax error, a partial, an unknown helper, too deep. */
export class TemplateSyntaxError extends Error {
  override readonly name = 'TemplateSyntaxError';
}

/** A render that failed: a runtime error, or the output meter ran out (`tooLarge`). */
export class TemplateRenderError extends Error {
  override readonly name = 'TemplateRenderError';
  constructor(
    message: string,
    readonly tooLarge = false,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------------
// The environment

const env = Handlebars.create();
env.unregisterHelper('log');
const builtinEach = env.helpers['each'] as (
  this: unknown,
  context: unknown,
  options: HelperOptions,
) => string;

interface HelperOptions {
  fn: (context: unknown, options?: unknown) => string;
  [key: string]: unknown;
}

/** The render in progress: rendering is synchronous, so one meter at a time. */
let activeMeter: OutputMeter | undefined;

class OutputMeter {
  private spent = 0;
  constructor(private readonly limit: number) {}

  spend(chars: number): void {
    this.spent += chars;
    if (this.spent > this.limit) {
      throw new TemplateRenderError(`the rendered email passed ${this.limit} characters`, true);
    }
  }
}

// The built-in `each`, with every iteration's output counted as it is produced.
env.registerHelper('each', function (this: unknown, context: unknown, options: HelperOptions) {
  const fn = options.fn;
  const metered = Object.assign((item: unknown, opts?: unknown) => {
    const out = fn(item, opts);
    activeMeter?.spend(out.length);
    return out;
  }, fn);
  return builtinEach.call(this, context, { ...options, fn: metered });
});

const COMPILE_OPTIONS = {
  knownHelpersOnly: true,
  knownHelpers: { log: false, helperMissing: false, blockHelperMissing: false },
  // Both are the defaults in 4.7: stated so an upgrade cannot quietly change them.
  strict: false,
} as const;
const RUNTIME_OPTIONS = {
  allowProtoPropertiesByDefault: false,
  allowProtoMethodsByDefault: false,
} as const;

/**
 * A printed variable: counts its output against the render's meter when Handlebars turns it into
 * text (`toHTML` where it escapes, `toString` where it does not). The string is in a private field,
 * so no template path can reach it as a property.
 */
class MeteredString {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
  }
  toString(): string {
    activeMeter?.spend(this.#value.length);
    return this.#value;
  }
  toHTML(): string {
    const escaped = env.Utils.escapeExpression(this.#value);
    activeMeter?.spend(escaped.length);
    return escaped;
  }
}

/** A copy of JSON variables whose non-empty strings are metered (empty ones stay falsy for `{{#if}}`). */
function metered(value: unknown): unknown {
  if (typeof value === 'string') return value === '' ? value : new MeteredString(value);
  if (Array.isArray(value)) return value.map(metered);
  if (value !== null && typeof value === 'object') {
    // fromEntries defines own properties: a "__proto__" key stays a key, never a prototype.
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, metered(item)]));
  }
  return value;
}

// ---------------------------------------------------------------------------------------------------
// Analysis at save time

interface Node {
  type: string;
  [key: string]: unknown;
}

interface PathNode extends Node {
  data: boolean;
  depth: number;
  parts: string[];
  original: string;
}

interface Analysis {
  readonly required: Set<string>;
  expressions: number;
}

/**
 * Checks one part (subject, html or text) and returns the variables it requires. Refuses syntax
 * errors, partials, decorators, helpers other than the built-in ones, and nesting past the limit.
 */
export function analyzeTemplate(source: string, part: 'subject' | 'html' | 'text'): string[] {
  let program: Node;
  try {
    program = env.parse(source) as unknown as Node;
  } catch (error) {
    throw new TemplateSyntaxError(firstLine((error as Error).message));
  }
  const analysis: Analysis = { required: new Set(), expressions: 0 };
  walkProgram(program, analysis, 0, true);
  try {
    // Compiles now (compile() would wait for the first render), so an unknown helper is refused here.
    env.precompile(source, { ...COMPILE_OPTIONS, noEscape: part !== 'html' });
  } catch (error) {
    throw new TemplateSyntaxError(firstLine((error as Error).message));
  }
  return [...analysis.required].sort();
}

/** Handlebars' parse errors span lines (the line, a caret, what was expected): keep the first and last. */
function firstLine(message: string): string {
  const lines = message.split('\n').filter((line) => line.trim() !== '');
  if (lines.length <= 1) return message;
  return `${lines[0]} ${lines[lines.length - 1]}`;
}

function walkProgram(program: Node | null | undefined, analysis: Analysis, depth: number, open: boolean) {
  if (!program) return;
  if (depth > TEMPLATE_LIMITS.blockDepth) {
    throw new TemplateSyntaxError(`blocks are nested more than ${TEMPLATE_LIMITS.blockDepth} deep`);
  }
  for (const node of program['body'] as Node[]) walkStatement(node, analysis, depth, open);
}

function walkStatement(node: Node, analysis: Analysis, depth: number, open: boolean): void {
  switch (node.type) {
    case 'ContentStatement':
    case 'CommentStatement':
      return;
    case 'MustacheStatement':
      countExpression(analysis);
      walkCall(node, analysis, open);
      return;
    case 'BlockStatement': {
      countExpression(analysis);
      walkCall(node, analysis, false);
      // Inside a block a variable is optional: a condition may skip it, `each` and `with` change the context.
      walkProgram(node['program'] as Node, analysis, depth + 1, false);
      walkProgram(node['inverse'] as Node, analysis, depth + 1, false);
      return;
    }
    case 'PartialStatement':
    case 'PartialBlockStatement':
      throw new TemplateSyntaxError('partials ({{> name}}) are not supported');
    default:
      throw new TemplateSyntaxError(`${node.type} is not supported`);
  }
}

function countExpression(analysis: Analysis): void {
  analysis.expressions++;
  if (analysis.expressions > TEMPLATE_LIMITS.expressions) {
    throw new TemplateSyntaxError(`more than ${TEMPLATE_LIMITS.expressions} {{…}} expressions`);
  }
}

/** `{{path}}`, `{{helper a b key=c}}` or a block's opening: the paths it prints or passes. */
function walkCall(node: Node, analysis: Analysis, open: boolean): void {
  const path = node['path'] as Node;
  checkSegments(path);
  const params = (node['params'] as Node[] | undefined) ?? [];
  const hashPairs = ((node['hash'] as Node | undefined)?.['pairs'] as Node[] | undefined) ?? [];
  const helper = path.type === 'PathExpression' ? (path as PathNode).original : '';
  const isHelper = params.length > 0 || hashPairs.length > 0 || BUILTIN_HELPERS.some((h) => h === helper);
  if (!isHelper) {
    if (open) requirePath(path, analysis);
    return;
  }
  const argsRequired = open && !CONDITIONAL_HELPERS.has(helper);
  for (const param of params) walkValue(param, analysis, argsRequired);
  for (const pair of hashPairs) walkValue(pair['value'] as Node, analysis, argsRequired);
}

function walkValue(node: Node, analysis: Analysis, required: boolean): void {
  if (node.type === 'SubExpression') {
    countExpression(analysis);
    walkCall(node, analysis, required);
  } else {
    checkSegments(node);
    if (required) requirePath(node, analysis);
  }
}

function requirePath(node: Node, analysis: Analysis): void {
  if (node.type !== 'PathExpression') return;
  const path = node as PathNode;
  if (path.data || path.depth > 0 || path.parts.length === 0) return;
  analysis.required.add(path.parts.join('.'));
}

/** Names that only ever reach JavaScript internals; JSON requests cannot give them anyway. */
const FORBIDDEN_SEGMENTS: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

function checkSegments(node: Node): void {
  if (node.type !== 'PathExpression') return;
  for (const part of (node as PathNode).parts) {
    if (FORBIDDEN_SEGMENTS.has(part))
      throw new TemplateSyntaxError(
        `the path "${(node as PathNode).original}" reaches JavaScript internals (${part})`,
      );
  }
}

// ---------------------------------------------------------------------------------------------------
// Rendering

type Compiled = (context: unknown, options?: object) => string;

/** Compiled parts by source; sources are bounded and few, the cache is cleared when it fills. */
const compiled = new Map<string, Compiled>();
const MAX_COMPILED = 1000;

function compile(source: string, escapeHtml: boolean): Compiled {
  const key = `${escapeHtml ? 'h' : 't'}:${source}`;
  let template = compiled.get(key);
  if (!template) {
    if (compiled.size >= MAX_COMPILED) compiled.clear();
    template = env.compile(source, { ...COMPILE_OPTIONS, noEscape: !escapeHtml }) as Compiled;
    compiled.set(key, template);
  }
  return template;
}

export interface RenderedParts {
  readonly subject: string;
  readonly html?: string;
  readonly text?: string;
}

/**
 * Renders the parts with `variables` (plain JSON). Throws TemplateRenderError when a part fails or
 * the output passes `maxOutputChars` altogether.
 */
export function renderParts(
  parts: { readonly subject: string; readonly html?: string; readonly text?: string },
  variables: Record<string, unknown>,
  maxOutputChars: number,
): RenderedParts {
  const context = metered(variables);
  activeMeter = new OutputMeter(maxOutputChars);
  try {
    const one = (source: string, escapeHtml: boolean) =>
      compile(source, escapeHtml)(context, RUNTIME_OPTIONS);
    const subject = one(parts.subject, false);
    const html = parts.html === undefined ? undefined : one(parts.html, true);
    const text = parts.text === undefined ? undefined : one(parts.text, false);
    return {
      subject,
      ...(html !== undefined && { html }),
      ...(text !== undefined && { text }),
    };
  } catch (error) {
    if (error instanceof TemplateRenderError) throw error;
    // A RangeError (string too long, stack overflow) or a Handlebars runtime error.
    throw new TemplateRenderError(firstLine((error as Error).message ?? String(error)));
  } finally {
    activeMeter = undefined;
  }
}
