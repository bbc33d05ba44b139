import { WEBHOOK_EVENT_TYPES, type WebhookEndpointChange, type WebhookEventType } from '../domain/webhook.js';
import type { FieldProblem } from '../errors.js';
import { forbiddenHost, type Resolve, resolveAll } from './address-guard.js';

export const WEBHOOK_LIMITS = { urlChars: 2048, descriptionChars: 256 } as const;

export interface WebhookRules {
  /** MAILROOM_WEBHOOKS_ALLOW_PRIVATE: skip the address check. */
  readonly allowPrivate: boolean;
  readonly resolve?: Resolve;
}

export type Checked<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly problems: FieldProblem[] };

/**
 * Checks a webhook registration (`partial` for PATCH: every field optional). Reports every problem
 * at once; the URL's host is resolved only once the rest is valid.
 */
export async function validateWebhook(
  body: unknown,
  rules: WebhookRules,
  partial = false,
): Promise<Checked<WebhookEndpointChange & { url?: string }>> {
  const problems: FieldProblem[] = [];
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    return { ok: false, problems: [{ field: '(body)', rule: 'object', message: 'expected a JSON object' }] };
  }
  const input = body as Record<string, unknown>;
  for (const key of Object.keys(input)) {
    const known = partial ? ['url', 'events', 'description', 'enabled'] : ['url', 'events', 'description'];
    if (!known.includes(key))
      problems.push({ field: key, rule: 'unknown_field', message: `unknown field ${key}` });
  }
  const url = checkUrl(input.url, !partial, problems);
  const events = checkEvents(input.events, problems);
  const description = checkDescription(input.description, problems);
  if (input.enabled !== undefined && typeof input.enabled !== 'boolean') {
    problems.push({ field: 'enabled', rule: 'boolean', message: 'expected true or false' });
  }
  if (problems.length === 0 && url !== undefined && !rules.allowPrivate) {
    const reason = await forbiddenHost(url.hostname, rules.resolve ?? resolveAll);
    if (reason) {
      problems.push({
        field: 'url',
        rule: 'public_address',
        message: `webhooks may only target public addresses: ${reason}`,
      });
    }
  }
  if (problems.length > 0) return { ok: false, problems };
  return {
    ok: true,
    value: {
      ...(url && { url: url.href }),
      ...(events && { events }),
      ...(description !== undefined && { description }),
      ...(typeof input.enabled === 'boolean' && { enabled: input.enabled }),
    },
  };
}

function checkUrl(value: unknown, required: boolean, problems: FieldProblem[]): URL | undefined {
  if (value === undefined) {
    if (required) problems.push({ field: 'url', rule: 'required', message: 'url is required' });
    return undefined;
  }
  if (typeof value !== 'string' || value.length > WEBHOOK_LIMITS.urlChars) {
    problems.push({
      field: 'url',
      rule: 'max_length',
      message: `expected a string of at most ${WEBHOOK_LIMITS.urlChars} characters`,
    });
    return undefined;
  }
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    problems.push({
      field: 'url',
      rule: 'http_url',
      message: 'expected an absolute http:// or https:// URL',
    });
    return undefined;
  }
  if (!['http:', 'https:'].includes(url.protocol) || url.hostname === '') {
    problems.push({
      field: 'url',
      rule: 'http_url',
      message: 'expected an absolute http:// or https:// URL',
    });
    return undefined;
  }
  if (url.username !== '' || url.password !== '') {
    // Credentials in a URL end up in logs and in every listing of the endpoint.
    problems.push({
      field: 'url',
      rule: 'no_credentials',
      message: 'the URL must not carry a user name or password',
    });
    return undefined;
  }
  return url;
}

function checkEvents(value: unknown, problems: FieldProblem[]): WebhookEventType[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.length === 0) {
    problems.push({
      field: 'events',
      rule: 'non_empty_array',
      message: 'expected a non-empty array of event types',
    });
    return undefined;
  }
  const events: WebhookEventType[] = [];
  value.forEach((event, index) => {
    if (!(WEBHOOK_EVENT_TYPES as readonly unknown[]).includes(event)) {
      problems.push({
        field: `events[${index}]`,
        rule: 'one_of',
        message: `expected one of ${WEBHOOK_EVENT_TYPES.join(', ')}`,
      });
    } else if (!events.includes(event as WebhookEventType)) {
      events.push(event as WebhookEventType);
    }
  });
  return events;
}

function checkDescription(value: unknown, problems: FieldProblem[]): string | undefined {
  if (value === undefined) return undefined;
  if (
    typeof value !== 'string' ||
    value.length > WEBHOOK_LIMITS.descriptionChars ||
    /[\u0000-\u001f]/.test(value)
  ) {
    problems.push({
      field: 'description',
      rule: 'max_length',
      message: `expected a single-line string of at most ${WEBHOOK_LIMITS.descriptionChars} characters`,
    });
    return undefined;
  }
  return value;
}
