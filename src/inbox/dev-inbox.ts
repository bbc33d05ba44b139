import type { AddressInfo } from 'node:net';
import { simpleParser } from 'mailparser';
import type { Logger } from 'pino';
import type {
  SMTPServerAuthentication,
  SMTPServerAuthenticationResponse,
  SMTPServerDataStream,
  SMTPServerEnvelope,
  SMTPServerSession,
} from 'smtp-server';
import { SMTPServer } from 'smtp-server';
import { parseHeaderBlock } from './parse-header-block.js';
import { RingBuffer } from './ring-buffer.js';

export const DEFAULT_MAX_MESSAGES = 1000;

/** How long close() lets open SMTP connections (a pooled client) finish before cutting them. */
const CLOSE_GRACE_MS = 1000;

/** One received message without its body: the JSON shape of the inbox list. */
export interface InboxSummary {
  readonly id: string;
  /** The Message-ID header as sent, angle brackets included; null when there is none. */
  readonly message_id: string | null;
  /** The decoded From header; the envelope sender when the message has no From. */
  readonly from: string;
  /** The decoded To addresses; the envelope recipients when the message has no To (Bcc only). */
  readonly to: string[];
  readonly subject: string;
  readonly received_at: string;
  /** Bytes of the raw message. */
  readonly size: number;
  /** Lowercased names, unfolded raw values; repeated headers (Received) joined with '\n'. */
  readonly headers: Record<string, string>;
}

export interface InboxMessage extends InboxSummary {
  readonly text?: string;
  readonly html?: string;
  /** What the SMTP client said in MAIL FROM and RCPT TO, which may differ from the headers. */
  readonly envelope: InboxEnvelope;
}

export interface InboxEnvelope {
  readonly from: string;
  readonly to: string[];
}

export interface DevInboxOptions {
  readonly host: string;
  /** 0 picks a free port; read `port` after start(). */
  readonly smtpPort: number;
  /** Ring-buffer size: past it the oldest message is dropped. Default 1000. */
  readonly maxMessages?: number;
  readonly maxMessageBytes: number;
  readonly logger: Logger;
}

export type InboxListener = (message: InboxSummary) => void;

interface StoredMessage {
  readonly summary: InboxSummary;
  readonly envelope: InboxEnvelope;
  readonly raw: Buffer;
  /** Filled by the first get(): parsing is deferred because messages may arrive by the thousand per second. */
  body?: Promise<MessageBody>;
}

interface MessageBody {
  readonly text?: string;
  readonly html?: string;
}

type DataCallback = (err?: Error | null, message?: string) => void;

/**
 * A development mailbox: an SMTP server that accepts every message (and any AUTH) and keeps the last
 * `maxMessages` in memory for the inbox pages and API.
 */
export class DevInbox {
  private readonly host: string;
  private readonly requestedPort: number;
  private readonly maxMessageBytes: number;
  private readonly logger: Logger;
  private readonly messages: RingBuffer<StoredMessage>;
  private readonly byId = new Map<string, StoredMessage>();
  private readonly listeners = new Set<InboxListener>();
  private readonly server: SMTPServer;
  private sequence = 0;
  private listeningPort: number | undefined;
  private closing: Promise<void> | undefined;

  constructor(options: DevInboxOptions) {
    const maxMessages = options.maxMessages ?? DEFAULT_MAX_MESSAGES;
    if (!Number.isInteger(options.maxMessageBytes) || options.maxMessageBytes < 1) {
      throw new RangeError(`maxMessageBytes must be a positive integer, got ${options.maxMessageBytes}`);
    }
    this.host = options.host;
    this.requestedPort = options.smtpPort;
    this.maxMessageBytes = options.maxMessageBytes;
    this.logger = options.logger.child({ component: 'dev-inbox' });
    this.messages = new RingBuffer<StoredMessage>(maxMessages);
    this.server = this.createServer();
  }

  /** The port the SMTP server listens on; only known after start() when smtpPort was 0. */
  get port(): number {
    if (this.listeningPort === undefined) throw new Error('DevInbox is not started');
    return this.listeningPort;
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onListenError = (err: Error): void => reject(err);
      this.server.once('error', onListenError);
      this.server.listen(this.requestedPort, this.host, () => {
        this.server.off('error', onListenError);
        this.listeningPort = (this.server.server.address() as AddressInfo).port;
        this.logger.info({ host: this.host, port: this.listeningPort }, 'dev inbox SMTP server listening');
        resolve();
      });
    });
  }

  close(): Promise<void> {
    if (this.listeningPort === undefined) return Promise.resolve();
    this.closing ??= new Promise((resolve) => this.server.close(() => resolve()));
    return this.closing;
  }

  /** Summaries, newest first. */
  list(limit?: number): InboxSummary[] {
    return this.messages.newestFirst(limit).map((stored) => stored.summary);
  }

  /** The message with its text and HTML parts, parsed on the first call and cached. */
  async get(id: string): Promise<InboxMessage | undefined> {
    const stored = this.byId.get(id);
    if (!stored) return undefined;
    stored.body ??= this.parseBody(stored);
    const body = await stored.body;
    return { ...stored.summary, ...body, envelope: stored.envelope };
  }

  raw(id: string): Buffer | undefined {
    return this.byId.get(id)?.raw;
  }

  clear(): void {
    this.messages.clear();
    this.byId.clear();
  }

  count(): number {
    return this.messages.size;
  }

  /** Calls `listener` with each message as it arrives; returns the unsubscribe function. */
  onMessage(listener: InboxListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  private createServer(): SMTPServer {
    const server = new SMTPServer({
      disabledCommands: ['STARTTLS'],
      authOptional: true,
      size: this.maxMessageBytes,
      rejectOversized: true,
      disableReverseLookup: true,
      closeTimeout: CLOSE_GRACE_MS,
      logger: false,
      noDelay: true,
      onAuth: acceptAnyAuth,
      onData: (stream, session, callback) => this.receive(stream, session, callback),
    });
    // Without a listener, a client resetting its connection would crash the process.
    server.on('error', (err) => this.logger.warn({ err }, 'dev inbox SMTP error'));
    return server;
  }

  private receive(stream: SMTPServerDataStream, session: SMTPServerSession, callback: DataCallback): void {
    const chunks: Buffer[] = [];
    let bytes = 0;
    stream.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes <= this.maxMessageBytes) chunks.push(chunk);
    });
    stream.once('error', (err: Error) => callback(err));
    stream.once('end', () => {
      if (stream.sizeExceeded || bytes > this.maxMessageBytes) {
        this.logger.warn({ bytes, limit: this.maxMessageBytes }, 'dev inbox refused an oversized message');
        callback(messageTooBig(this.maxMessageBytes));
        return;
      }
      const stored = this.store(Buffer.concat(chunks, bytes), session.envelope);
      callback(null, `OK: queued as ${stored.summary.id}`);
    });
  }

  private store(raw: Buffer, smtpEnvelope: SMTPServerEnvelope): StoredMessage {
    const id = String(++this.sequence);
    const envelope: InboxEnvelope = {
      from: smtpEnvelope.mailFrom ? smtpEnvelope.mailFrom.address : '',
      to: smtpEnvelope.rcptTo.map((rcpt) => rcpt.address),
    };
    const headers = parseHeaderBlock(raw);
    const summary: InboxSummary = {
      id,
      message_id: headers.messageId,
      from: headers.from || envelope.from,
      to: headers.to.length > 0 ? headers.to : envelope.to,
      subject: headers.subject,
      received_at: new Date().toISOString(),
      size: raw.length,
      headers: headers.headers,
    };
    const stored: StoredMessage = { summary, envelope, raw };
    const evicted = this.messages.push(stored);
    if (evicted) this.byId.delete(evicted.summary.id);
    this.byId.set(id, stored);
    this.logger.debug(
      { id, size: raw.length, messageId: summary.message_id },
      'dev inbox received a message',
    );
    this.notify(summary);
    return stored;
  }

  private notify(summary: InboxSummary): void {
    for (const listener of this.listeners) {
      try {
        listener(summary);
      } catch (err) {
        this.logger.error({ err, id: summary.id }, 'dev inbox listener failed');
      }
    }
  }

  private async parseBody(stored: StoredMessage): Promise<MessageBody> {
    try {
      const parsed = await simpleParser(stored.raw, { skipHtmlToText: true, skipTextToHtml: true });
      return { text: parsed.text, html: parsed.html === false ? undefined : parsed.html };
    } catch (err) {
      this.logger.warn({ err, id: stored.summary.id }, 'dev inbox could not parse a message body');
      return {};
    }
  }
}

function acceptAnyAuth(
  auth: SMTPServerAuthentication,
  _session: SMTPServerSession,
  callback: (err: Error | null | undefined, response?: SMTPServerAuthenticationResponse) => void,
): void {
  callback(null, { user: auth.username ?? 'dev' });
}

function messageTooBig(limit: number): Error {
  return Object.assign(new Error(`Error: message exceeds fixed maximum message size ${limit}`), {
    responseCode: 552,
  });
}
