import { type ClientRequest, get, type IncomingMessage } from 'node:http';
import { waitFor } from './wait-for.js';

export interface SseEvent {
  readonly id?: string;
  readonly event: string;
  readonly data: string;
}

/**
 * A Server-Sent Events client written from the spec's parsing rules (fields per line, a blank line
 * ends an event, `:` lines are comments), so the test depends on the wire format, not on a library.
 */
export class SseClient {
  readonly events: SseEvent[] = [];
  status = 0;
  headers: IncomingMessage['headers'] = {};
  ended = false;
  private request: ClientRequest | undefined;
  private buffer = '';

  constructor(
    private readonly url: string,
    private readonly requestHeaders: Record<string, string> = {},
  ) {}

  /** Resolves once the response headers arrived. */
  open(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.request = get(
        this.url,
        { headers: { accept: 'text/event-stream', ...this.requestHeaders } },
        (response) => {
          this.status = response.statusCode ?? 0;
          this.headers = response.headers;
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => this.receive(chunk));
          response.on('end', () => {
            this.ended = true;
          });
          response.on('error', () => {
            this.ended = true;
          });
          resolve();
        },
      );
      this.request.on('error', reject);
    });
  }

  /** Events of type `type` whose JSON data passes `where`. */
  // biome-ignore lint/suspicious/noExplicitAny: tests read whatever JSON came.
  matching(type: string, where: (data: any) => boolean = () => true): SseEvent[] {
    return this.events.filter((event) => event.event === type && where(JSON.parse(event.data)));
  }

  async waitForEvents(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
    await waitFor(what, () => check() || undefined, timeoutMs, 10).catch((error: Error) => {
      throw new Error(
        `${error.message}; got: ${this.events.map((e) => `${e.id ?? '-'} ${e.event}`).join(', ')}`,
      );
    });
  }

  close(): void {
    this.request?.destroy();
  }

  private receive(chunk: string): void {
    this.buffer += chunk;
    for (let end = this.buffer.indexOf('\n\n'); end >= 0; end = this.buffer.indexOf('\n\n')) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      let id: string | undefined;
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'id') id = value;
        else if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
      }
      if (data.length > 0)
        this.events.push({ ...(id !== undefined && { id }), event, data: data.join('\n') });
    }
  }
}
