import { randomBytes } from 'node:crypto';
import mimeFuncs from 'nodemailer/lib/mime-funcs/index.js';
import qp from 'nodemailer/lib/qp/index.js';
import type { EmailContent, Job, Mailbox } from '../domain/email.js';
import { attachmentPart } from './attachment-part.js';

const CRLF = '\r\n';
/** RFC 5322 allows 998; 78 is the recommended width for headers and encoded bodies. */
const LINE_WIDTH = 76;
const MAX_7BIT_LINE = 998;

/**
 * Builds a job's MIME message synchronously, in one pass, with nodemailer's own encoders
 * (encoded-words, quoted-printable, header folding).
 *
 * Why not nodemailer's MailComposer: it builds through a chain of streams, ~0.6 ms of CPU and a dozen
 * event-loop turns per message, which at thousands of messages a second was most of the worker's time.
 * Emails here are a text and/or an HTML part, headers and base64 attachments, so a direct builder is
 * short; compose-mime.test.ts parses its output with mailparser to prove it round-trips. Nothing here
 * reads a file or a URL: attachment content is already base64 in the job.
 *
 * The tree, each level only when needed: multipart/mixed [body, attachments…], where body is
 * multipart/alternative [text, html] and html is multipart/related [html, inline parts…] when the
 * email has attachments with a content_id (without an HTML part, those go to mixed, inline).
 */
export function composeMime(job: Job): Buffer {
  const { content } = job;
  const lines: string[] = [];
  const header = (name: string, value: string) => lines.push(fold(`${name}: ${value}`));

  header('From', formatMailboxes([content.from]));
  if (content.to.length > 0) header('To', formatMailboxes(content.to));
  if (content.cc.length > 0) header('Cc', formatMailboxes(content.cc));
  if (content.replyTo.length > 0) header('Reply-To', formatMailboxes(content.replyTo));
  header('Subject', encodeText(content.subject));
  header('Date', new Date(job.createdAt).toUTCString().replace(/GMT$/, '+0000'));
  header('Message-ID', job.messageId);
  for (const [name, value] of Object.entries(content.headers)) header(name, encodeText(value));
  header('MIME-Version', '1.0');

  const root = bodyTree(content);
  const part = render(root, job, leafBodies(root));
  lines.push(...part.headers, '', part.body);
  return Buffer.from(lines.join(CRLF), 'utf8');
}

export interface Part {
  /** Header lines, folded. */
  readonly headers: string[];
  readonly body: string;
}

type MultipartKind = 'mixed' | 'related' | 'alternative';
type Node = Part | { readonly kind: MultipartKind; readonly children: readonly Node[] };

function bodyTree(content: EmailContent): Node {
  const attachments = content.attachments ?? [];
  const text = content.text ? textPart('text/plain', content.text) : undefined;
  let html: Node | undefined = content.html ? textPart('text/html', content.html) : undefined;
  const inline = html ? attachments.filter((attachment) => attachment.contentId !== undefined) : [];
  const files = attachments.filter((attachment) => !inline.includes(attachment));
  if (html && inline.length > 0) html = { kind: 'related', children: [html, ...inline.map(attachmentPart)] };
  const parts = [text, html].filter((node) => node !== undefined);
  const body: Node = parts.length === 1 ? parts[0]! : { kind: 'alternative', children: parts };
  return files.length > 0 ? { kind: 'mixed', children: [body, ...files.map(attachmentPart)] } : body;
}

function render(node: Node, job: Job, leaves: readonly string[]): Part {
  if (!('kind' in node)) return node;
  const boundary = boundaryFor(job, node.kind, leaves);
  const children = node.children.map((child) => {
    const part = render(child, job, leaves);
    return [`--${boundary}`, ...part.headers, '', part.body].join(CRLF);
  });
  return {
    headers: [fold(`Content-Type: multipart/${node.kind}; boundary="${boundary}"`)],
    body: [...children, `--${boundary}--`, ''].join(CRLF),
  };
}

function leafBodies(node: Node): string[] {
  return 'kind' in node ? node.children.flatMap(leafBodies) : [node.body];
}

/** One tag per level, so that no boundary is the start of another. */
const BOUNDARY_TAG: Record<MultipartKind, string> = { alternative: '', related: 'r_', mixed: 'm_' };

/**
 * The job id is already unpredictable (UUIDv7, 74 random bits) and unique, so it makes a boundary
 * without drawing new random bytes per message (a measurable cost at thousands of messages a second),
 * and every attempt of a job sends the same bytes. A part that happens to contain it gets a random one.
 */
function boundaryFor(job: Job, kind: MultipartKind, leaves: readonly string[]): string {
  const fromId = `--_mailroom_${BOUNDARY_TAG[kind]}${job.id}`;
  if (leaves.every((body) => !body.includes(fromId))) return fromId;
  return `--_mailroom_${BOUNDARY_TAG[kind]}${randomBytes(16).toString('hex')}`;
}

function textPart(type: string, text: string): Part {
  const normalized = text.replace(/\r\n|\r|\n/g, CRLF);
  const plain = mimeFuncs.isPlainText(normalized) && !mimeFuncs.hasLongerLines(normalized, MAX_7BIT_LINE);
  return {
    headers: [
      `Content-Type: ${type}; charset=utf-8`,
      `Content-Transfer-Encoding: ${plain ? '7bit' : 'quoted-printable'}`,
    ],
    body: plain ? normalized : qp.wrap(qp.encode(normalized), LINE_WIDTH),
  };
}

function fold(line: string): string {
  return mimeFuncs.foldLines(line, LINE_WIDTH);
}

/** Leaves ASCII as it is; puts anything else in RFC 2047 encoded-words. */
function encodeText(value: string): string {
  return mimeFuncs.isPlainText(value) ? value : mimeFuncs.encodeWords(value, 'Q', 52);
}

function formatMailboxes(mailboxes: readonly Mailbox[]): string {
  return mailboxes.map(formatMailbox).join(', ');
}

function formatMailbox(mailbox: Mailbox): string {
  if (!mailbox.name) return mailbox.address;
  return `${displayName(mailbox.name)} <${mailbox.address}>`;
}

/** A display name as an atom phrase, a quoted string, or encoded-words when it is not ASCII. */
function displayName(name: string): string {
  if (!mimeFuncs.isPlainText(name)) return mimeFuncs.encodeWord(name, 'Q', 52);
  if (/^[\w !#$%&'*+/=?^`{|}~-]+$/.test(name)) return name;
  return `"${name.replace(/["\\]/g, '\\$&')}"`;
}
