import libmime from 'libmime';
import addressparser from 'nodemailer/lib/addressparser/index.js';

/** Headers past this many bytes are not looked at: a header block that large is not a real message. */
const MAX_HEADER_BYTES = 256 * 1024;

export interface HeaderSummary {
  readonly messageId: string | null;
  /** Decoded display form, `Name <address>`; '' when there is no From header. */
  readonly from: string;
  /** Decoded display form of each To address; groups are flattened. */
  readonly to: string[];
  /** Decoded; '' when there is no Subject header. */
  readonly subject: string;
  readonly date: string | null;
  /** Lowercased names, unfolded raw values; repeated headers (Received) joined with '\n'. */
  readonly headers: Record<string, string>;
}

/**
 * Reads only the header block of a raw message (up to the first empty line): cheap enough to run on
 * every received message, unlike a full MIME parse.
 */
export function parseHeaderBlock(raw: Buffer): HeaderSummary {
  const decoded = libmime.decodeHeaders(headerBlock(raw).toString('utf8'), { skipPrototypeKeys: true });
  const headers = Object.fromEntries(
    Object.entries(decoded).map(([name, values]) => [name, values.join('\n')]),
  );
  return {
    messageId: headers['message-id']?.trim() || null,
    from: formatAddresses(headers['from'] ?? '').join(', '),
    to: formatAddresses(headers['to'] ?? ''),
    subject: decodeWords(headers['subject'] ?? ''),
    date: headers['date']?.trim() || null,
    headers,
  };
}

function headerBlock(raw: Buffer): Buffer {
  const head = raw.subarray(0, MAX_HEADER_BYTES);
  const crlf = head.indexOf('\r\n\r\n');
  if (crlf !== -1) return head.subarray(0, crlf);
  const lf = head.indexOf('\n\n');
  return lf === -1 ? head : head.subarray(0, lf);
}

/** Splits an address header into `Name <address>` strings, decoding RFC 2047 encoded-words in names. */
export function formatAddresses(value: string): string[] {
  if (value.trim() === '') return [];
  const parsed = addressparser(value, { flatten: true });
  if (parsed.length === 0) return [decodeWords(value)];
  return parsed.map(({ name, address }) => {
    const display = decodeWords(name);
    if (!display) return address;
    return address ? `${display} <${address}>` : display;
  });
}

function decodeWords(value: string): string {
  try {
    return libmime.decodeWords(value).trim();
  } catch {
    return value.trim();
  }
}
