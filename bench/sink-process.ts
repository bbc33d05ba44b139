/**
 * An SMTP sink in its own process for the benchmark: accepts everything and reports what it received.
 * Spawn with an IPC channel: `node --import tsx bench/sink-process.ts [port]`.
 * It sends `{ type: 'ready', port }`, then every 100 ms `{ type: 'received', items: [messageId, receivedAt][] }`
 * while messages arrive; `{ type: 'stop' }` or a parent disconnect closes it.
 */
import type { SMTPServerDataStream } from 'smtp-server';
import { SMTPServer } from 'smtp-server';

export type SinkProcessMessage =
  | { readonly type: 'ready'; readonly port: number }
  | { readonly type: 'received'; readonly items: [messageId: string, receivedAt: number][] };

export type SinkProcessCommand = { readonly type: 'stop' };

const FLUSH_EVERY_MS = 100;
const STOP_DEADLINE_MS = 2_000;
/** A header block longer than this is not scanned: the Message-ID is reported as ''. */
const MAX_HEAD_BYTES = 64 * 1024;
const HEADER_END = Buffer.from('\r\n\r\n');
const MESSAGE_ID = /^message-id:[ \t]*((?:[^\r\n]|\r\n[ \t])*)/im;

function send(message: SinkProcessMessage): void {
  if (process.connected) process.send?.(message);
}

function messageIdOf(head: Buffer, end: number): string {
  const match = MESSAGE_ID.exec(head.toString('latin1', 0, end));
  return match ? match[1]!.replace(/\r\n[ \t]/g, ' ').trim() : '';
}

let items: [string, number][] = [];

/** Reads the stream, scanning only the header block; later chunks are dropped as they come. */
function receive(stream: SMTPServerDataStream, done: (messageId: string) => void): void {
  let head: Buffer | undefined;
  let messageId: string | undefined;
  stream.on('data', (chunk: Buffer) => {
    if (messageId !== undefined) return;
    head = head === undefined ? chunk : Buffer.concat([head, chunk]);
    const end = head.indexOf(HEADER_END);
    if (end !== -1) messageId = messageIdOf(head, end);
    else if (head.length > MAX_HEAD_BYTES) messageId = '';
    if (messageId !== undefined) head = undefined;
  });
  stream.once('end', () => done(messageId ?? (head === undefined ? '' : messageIdOf(head, head.length))));
}

const server = new SMTPServer({
  disabledCommands: ['STARTTLS'],
  authOptional: true,
  logger: false,
  disableReverseLookup: true,
  // The benchmark holds pooled connections through idle phases between runs.
  socketTimeout: 10 * 60_000,
  onData(stream, _session, callback) {
    receive(stream, (messageId) => {
      items.push([messageId, Date.now()]);
      callback();
    });
  },
});
server.on('error', () => undefined);

function flush(): void {
  if (items.length === 0) return;
  send({ type: 'received', items });
  items = [];
}

const flusher = setInterval(flush, FLUSH_EVERY_MS);

let stopping = false;
function stop(): void {
  if (stopping) return;
  stopping = true;
  clearInterval(flusher);
  flush();
  for (const connection of server.connections) connection.close();
  setTimeout(() => process.exit(0), STOP_DEADLINE_MS).unref();
  server.close(() => process.exit(0));
}

process.on('message', (message: Partial<SinkProcessCommand> | null) => {
  if (message?.type === 'stop') stop();
});
process.on('disconnect', stop);
process.on('SIGTERM', stop);

const requested = Number(process.argv[2] ?? 0);
server.listen(Number.isInteger(requested) && requested >= 0 ? requested : 0, '127.0.0.1', () => {
  const address = server.server.address();
  if (address === null || typeof address === 'string') throw new Error('sink-process: no TCP address');
  send({ type: 'ready', port: address.port });
});
