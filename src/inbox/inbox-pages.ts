import type { InboxMessage, InboxSummary } from './dev-inbox.js';

/**
 * The inbox pages' Content-Security-Policy. An `<iframe srcdoc>` inherits it, so it also binds the
 * message's HTML part: no scripts, no remote loads (tracking pixels included), no form posts.
 */
export const INBOX_PAGE_CSP =
  "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self'; base-uri 'none'; " +
  "form-action 'none'; frame-ancestors 'none'";

/** The raw source shown inline is cut here; the full source is one link away. */
const RAW_PREVIEW_BYTES = 200 * 1024;

const STYLE = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem 1.5rem; color: #1f2328; }
h1 { font-size: 1.35rem; margin: .5rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
a { color: #0969da; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .35rem .5rem; border-bottom: 1px solid #d0d7de; overflow-wrap: anywhere; }
th { background: #f6f8fa; font-weight: 600; }
.meta th { width: 10rem; background: none; }
.muted { color: #59636e; }
.nowrap { white-space: nowrap; }
pre { background: #f6f8fa; padding: .75rem; overflow: auto; white-space: pre-wrap; overflow-wrap: anywhere; max-height: 40rem; }
iframe { width: 100%; height: 36rem; border: 1px solid #d0d7de; background: #fff; }
`;

/** Escapes text for HTML element content and quoted attribute values alike. */
export function escapeHtml(value: string): string {
  return value
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

export function renderInboxListPage(messages: readonly InboxSummary[], total: number): string {
  const rows = messages.map(renderListRow).join('\n');
  const body =
    messages.length === 0
      ? '<p class="muted">No messages yet. Send mail to the dev inbox SMTP port and it shows up here.</p>'
      : `<table>
<thead><tr><th>Received</th><th>From</th><th>To</th><th>Subject</th></tr></thead>
<tbody>
${rows}
</tbody>
</table>`;
  const shown = messages.length < total ? ` (newest ${messages.length} shown)` : '';
  return page(
    `Inbox (${total})`,
    `<meta http-equiv="refresh" content="5">`,
    `<h1>Mailroom dev inbox</h1>
<p class="muted">${total} message${total === 1 ? '' : 's'}${shown} · refreshes every 5 s · <code>DELETE /v1/inbox/messages</code> clears it</p>
${body}`,
  );
}

function renderListRow(message: InboxSummary): string {
  const href = escapeHtml(messageHref(message.id));
  return `<tr><td class="nowrap"><a href="${href}">${escapeHtml(message.received_at)}</a></td><td>${escapeHtml(message.from)}</td><td>${escapeHtml(message.to.join(', '))}</td><td><a href="${href}">${escapeHtml(subjectOrPlaceholder(message.subject))}</a></td></tr>`;
}

export interface MessagePageOptions {
  /**
   * Link the message's JSON in the API. Off when the API needs a Bearer key, which a browser
   * following a link cannot send.
   */
  readonly apiLinks: boolean;
}

export function renderInboxMessagePage(
  message: InboxMessage,
  raw: Buffer,
  options: MessagePageOptions = { apiLinks: true },
): string {
  const id = encodeURIComponent(message.id);
  const jsonLink = options.apiLinks ? ` · <a href="${escapeHtml(`/v1/inbox/messages/${id}`)}">JSON</a>` : '';
  const rawHref = escapeHtml(`/inbox/${id}/raw`);
  return page(
    subjectOrPlaceholder(message.subject),
    '',
    `<p><a href="/inbox">← Inbox</a>${jsonLink} · <a href="${rawHref}">Raw</a></p>
<h1>${escapeHtml(subjectOrPlaceholder(message.subject))}</h1>
${renderMetaTable(message)}
${renderHtmlPart(message.html)}
<h2>Text</h2>
${message.text === undefined ? '<p class="muted">No text part.</p>' : `<pre>${escapeHtml(message.text)}</pre>`}
<h2>Headers</h2>
${renderHeadersTable(message.headers)}
<h2>Raw source</h2>
${renderRaw(raw, rawHref)}`,
  );
}

export function renderNotFoundPage(id: string): string {
  return page(
    'Not found',
    '',
    `<p><a href="/inbox">← Inbox</a></p>
<h1>No such message</h1>
<p class="muted">Message ${escapeHtml(id)} is not in the inbox: it may have been cleared or pushed out by newer mail.</p>`,
  );
}

function renderMetaTable(message: InboxMessage): string {
  const rows: [string, string][] = [
    ['From', message.from],
    ['To', message.to.join(', ')],
    ['Envelope from', message.envelope.from],
    ['Envelope to', message.envelope.to.join(', ')],
    ['Received', message.received_at],
    ['Size', `${message.size} bytes`],
    ['Message-ID', message.message_id ?? ''],
  ];
  const cells = rows.map(([name, value]) => `<tr><th>${name}</th><td>${escapeHtml(value)}</td></tr>`);
  return `<table class="meta">\n${cells.join('\n')}\n</table>`;
}

/**
 * No `allow-scripts` and no `allow-same-origin` in the sandbox: the message gets an opaque origin and
 * cannot run code or reach this page, even if the CSP were missing.
 */
function renderHtmlPart(html: string | undefined): string {
  if (html === undefined) return '<h2>HTML</h2>\n<p class="muted">No HTML part.</p>';
  return `<h2>HTML</h2>\n<iframe sandbox srcdoc="${escapeHtml(html)}" title="HTML part" referrerpolicy="no-referrer"></iframe>`;
}

function renderHeadersTable(headers: Record<string, string>): string {
  const rows = Object.entries(headers).map(
    ([name, value]) => `<tr><th>${escapeHtml(name)}</th><td>${escapeHtml(value)}</td></tr>`,
  );
  return `<table class="meta">\n${rows.join('\n')}\n</table>`;
}

function renderRaw(raw: Buffer, rawHref: string): string {
  const truncated = raw.length > RAW_PREVIEW_BYTES;
  const source = raw.subarray(0, RAW_PREVIEW_BYTES).toString('utf8');
  const note = truncated
    ? `<p class="muted">First ${RAW_PREVIEW_BYTES} of ${raw.length} bytes; <a href="${rawHref}">download the whole message</a>.</p>\n`
    : '';
  return `${note}<pre>${escapeHtml(source)}</pre>`;
}

function messageHref(id: string): string {
  return `/inbox/${encodeURIComponent(id)}`;
}

function subjectOrPlaceholder(subject: string): string {
  return subject === '' ? '(no subject)' : subject;
}

function page(title: string, head: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
${head}
<title>${escapeHtml(title)} · Mailroom</title>
<style>${STYLE}</style>
</head>
<body>
${body}
</body>
</html>
`;
}
