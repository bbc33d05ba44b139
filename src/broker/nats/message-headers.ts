/**
 * NATS message headers as Mailroom reads and writes them. NATS messages have no content-type or
 * message-id property: both travel as headers (`Content-Type`, and JetStream's `Nats-Msg-Id`), and
 * so does everything Mailroom adds when it gives a message up or copies it.
 */
import { Match, type MsgHdrs, headers as natsHeaders } from '@nats-io/transport-node';
import type { JobMessage } from '../broker.js';

export const HEADERS = {
  contentType: 'Content-Type',
  /** JetStream's dedupe id (read only: a publish sets it from its `msgID`). */
  msgId: 'Nats-Msg-Id',
  /** On a dead letter: why it was given up (a `BrokerDeadLetterReason`). */
  reason: 'Mailroom-Reason',
  /** On a dead letter: the error, on one line, at most 1,000 characters. */
  error: 'Mailroom-Error',
  originalSubject: 'Mailroom-Original-Subject',
  originalStream: 'Mailroom-Original-Stream',
  originalSequence: 'Mailroom-Original-Sequence',
  originalMsgId: 'Mailroom-Original-Msg-Id',
  /** JetStream's delivery count of the message when it was given up. */
  deliveryCount: 'Mailroom-Delivery-Count',
  deadLetteredAt: 'Mailroom-Dead-Lettered-At',
  /**
   * On a copy `retryLater` publishes (only when the original is on its last allowed delivery): the
   * time in ms since the epoch before which the consumer does not hand it out.
   */
  notBefore: 'Mailroom-Not-Before',
  /** On such a copy: the stream sequence of the message it replaces. */
  retryOf: 'Mailroom-Retry-Of',
} as const;

/** Longest `Mailroom-Error` kept; the Store has the full error. */
export const MAX_ERROR_LENGTH = 1000;

/** The first value of a header, whatever the case of its name; undefined when absent or empty. */
export function headerValue(headers: MsgHdrs | undefined, name: string): string | undefined {
  const value = headers?.get(name, Match.IgnoreCase);
  return value === undefined || value === '' ? undefined : value;
}

/**
 * The headers a copy of a message keeps: all of them but JetStream's own (`Nats-Msg-Id`,
 * `Nats-Expected-…`), which belong to one publish, and a stale `Mailroom-Not-Before`.
 */
export function copiedHeaders(headers: MsgHdrs | undefined): MsgHdrs {
  const copy = natsHeaders();
  for (const name of headers?.keys() ?? []) {
    const lower = name.toLowerCase();
    if (lower.startsWith('nats-') || lower === HEADERS.notBefore.toLowerCase()) continue;
    for (const value of headers!.values(name)) copy.append(name, value);
  }
  return copy;
}

/**
 * Propagation headers (W3C trace context and the like) that came as NATS headers: every header but
 * JetStream's, Mailroom's own and `Content-Type`, names in lower case (header names are
 * case-insensitive, and a Go producer sends `Traceparent`), first value only.
 */
export function propagationHeaders(headers: MsgHdrs | undefined): Record<string, string> {
  const found: Record<string, string> = {};
  for (const name of headers?.keys() ?? []) {
    const lower = name.toLowerCase();
    if (lower.startsWith('nats-') || lower.startsWith('mailroom-') || lower === 'content-type') continue;
    const value = headers!.get(name);
    if (value !== '' && !Object.hasOwn(found, lower)) found[lower] = value;
  }
  return found;
}

/** `message` with the propagation headers of its transport added; these win over any in the body. */
export function withTransportHeaders(message: JobMessage, headers: MsgHdrs | undefined): JobMessage {
  const extra = propagationHeaders(headers);
  return Object.keys(extra).length === 0
    ? message
    : { ...message, headers: { ...message.headers, ...extra } };
}

/** The headers of what `publish` sends: the content type and the message's propagation headers. */
export function publishHeaders(contentType: string, propagation: Readonly<Record<string, string>>): MsgHdrs {
  const headers = natsHeaders();
  headers.set(HEADERS.contentType, contentType);
  for (const [name, value] of Object.entries(propagation)) {
    // A name NATS cannot carry is dropped: tracing never stops an email.
    if (!HEADER_NAME.test(name) || name.toLowerCase().startsWith('nats-')) continue;
    headers.set(name, oneLine(value, MAX_ERROR_LENGTH));
  }
  return headers;
}

/** Printable ASCII without spaces or a colon, as in HTTP. */
const HEADER_NAME = /^[!-9;-~]+$/;

/** A header value: control characters (CR and LF would end it) become spaces; cut to `max`. */
export function oneLine(text: string, max: number): string {
  const flat = text.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  return flat.length <= max ? flat : `${flat.slice(0, max - 1)}…`;
}
