import type { Socket } from 'node:net';
import type { SMTPServerAddress, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import { SMTPServer } from 'smtp-server';

/**
 * How the sink answers a mail transaction.
 * - `accept`: 250 at the end of DATA, the message is recorded.
 * - `tempfail`: 451 4.3.0 at the end of DATA.
 * - `tempfail-rcpt`: 450 4.2.0 at RCPT TO.
 * - `throttle-rcpt`: 421 4.7.0 "try again later" at RCPT TO, as a provider throttling a sender does.
 * - `permfail`: 550 5.1.1 at RCPT TO.
 * - `permfail-data`: 554 5.7.1 at the end of DATA.
 * - `stall`: the end of DATA is never answered until the behaviour changes or the sink closes.
 * - `delay`: a slow relay. The end of DATA is answered 250 after `delayMs`, and the message is
 *   recorded then, unless the client has gone by that time. Counted as `delay` when the wait starts
 *   (so `waitForAttempts('delay', n)` means n sends are in progress) and as `accept` once answered.
 * - `drop`: the socket is destroyed once the message is in, before any reply.
 * - `refuse`: the sink stops listening and drops every open connection, so connections are refused.
 *   Returned by a behaviour function for one transaction, it destroys that connection at RCPT TO.
 */
export type SinkBehaviour =
  | 'accept'
  | 'tempfail'
  | 'tempfail-rcpt'
  | 'throttle-rcpt'
  | 'permfail'
  | 'permfail-data'
  | 'stall'
  | 'delay'
  | 'drop'
  | 'refuse';

export interface SinkContext {
  /** The recipient of this RCPT TO. */
  readonly rcpt: string;
  readonly mailFrom: string;
  /** The transaction's number among all the sink has seen since start or reset, from 0. */
  readonly sequence: number;
}

export type SinkBehaviourSetting = SinkBehaviour | ((ctx: SinkContext) => SinkBehaviour);

export interface SinkMessage {
  /** The Message-ID header as written, angle brackets included; '' when the message has none. */
  readonly messageId: string;
  readonly envelope: { readonly from: string; readonly to: readonly string[] };
  readonly raw: Buffer;
  /** Date.now() when the sink accepted the message. */
  readonly receivedAt: number;
}

export interface SmtpSinkOptions {
  /** 0 (the default) picks a free port. */
  readonly port?: number;
  readonly behaviour?: SinkBehaviourSetting;
  /** How long 'delay' waits before answering; default 1000 ms. */
  readonly delayMs?: number;
  readonly onMessage?: (message: SinkMessage) => void;
  /**
   * When set, the sink offers AUTH PLAIN and LOGIN over plain text (loopback only) and refuses any
   * transaction from a client that has not logged in with exactly these credentials.
   */
  readonly auth?: { readonly user: string; readonly pass: string };
}

export const SINK_BEHAVIOURS: readonly SinkBehaviour[] = [
  'accept',
  'tempfail',
  'tempfail-rcpt',
  'throttle-rcpt',
  'permfail',
  'permfail-data',
  'stall',
  'delay',
  'drop',
  'refuse',
];

const REJECTIONS: Partial<Record<SinkBehaviour, { readonly code: number; readonly text: string }>> = {
  tempfail: { code: 451, text: '4.3.0 Temporary failure, try again later' },
  'tempfail-rcpt': { code: 450, text: '4.2.0 Mailbox temporarily unavailable' },
  'throttle-rcpt': { code: 421, text: '4.7.0 Too many messages from you, try again later' },
  permfail: { code: 550, text: '5.1.1 No such user' },
  'permfail-data': { code: 554, text: '5.7.1 Message rejected' },
};

type DataCallback = (err?: Error | null, message?: string) => void;

interface Transaction {
  readonly sequence: number;
  readonly mailFrom: string;
  /** The context of the first accepted recipient: it decides the end of DATA. */
  dataContext: SinkContext | undefined;
  dataBehaviour: SinkBehaviour | undefined;
}

/** A mail transaction whose message is in, waiting for the sink to answer the end of DATA. */
interface PendingAnswer {
  readonly session: SMTPServerSession;
  readonly context: SinkContext;
  readonly raw: Buffer;
  readonly callback: DataCallback;
}

interface Delayed {
  readonly pending: PendingAnswer;
  readonly timer: NodeJS.Timeout;
}

interface Waiter {
  readonly ready: () => boolean;
  readonly resolve: () => void;
  readonly reject: (err: Error) => void;
  readonly timer: NodeJS.Timeout;
}

function smtpError(code: number, text: string): Error {
  return Object.assign(new Error(text), { responseCode: code });
}

function emptyAttempts(): Record<SinkBehaviour, number> {
  return {
    accept: 0,
    tempfail: 0,
    'tempfail-rcpt': 0,
    'throttle-rcpt': 0,
    permfail: 0,
    'permfail-data': 0,
    stall: 0,
    delay: 0,
    drop: 0,
    refuse: 0,
  };
}

/** The Message-ID header value from the header block of a raw message, '' if there is none. */
export function extractMessageId(raw: Buffer): string {
  const end = raw.indexOf('\r\n\r\n');
  const head = raw.toString('latin1', 0, end === -1 ? raw.length : end);
  const match = /^message-id:((?:[^\r\n]|\r\n[ \t])*)/im.exec(head);
  return match ? match[1]!.replace(/\r\n/g, '').trim() : '';
}

/** A controllable SMTP server on 127.0.0.1 for integration tests. */
export class SmtpSink {
  onMessage: ((message: SinkMessage) => void) | undefined;
  /** How long 'delay' waits before answering 250; applies to transactions that start waiting after a change. */
  delayMs: number;

  private readonly server: SMTPServer;
  private readonly requestedPort: number;
  private boundPort: number | undefined;
  private listening = false;
  private closed = false;
  private transition: Promise<void> = Promise.resolve();
  private behaviour: SinkBehaviourSetting;
  private sequence = 0;
  private received: SinkMessage[] = [];
  private counts = emptyAttempts();
  private readonly transactions = new Map<string, Transaction>();
  private readonly stalled = new Set<PendingAnswer>();
  private readonly delayed = new Set<Delayed>();
  private readonly sockets = new Map<number, Socket>();
  private readonly waiters = new Set<Waiter>();

  constructor(options: SmtpSinkOptions = {}) {
    this.requestedPort = options.port ?? 0;
    this.behaviour = options.behaviour ?? 'accept';
    this.delayMs = options.delayMs ?? 1000;
    this.onMessage = options.onMessage;
    const auth = options.auth;
    this.server = new SMTPServer({
      disabledCommands: ['STARTTLS'],
      authOptional: auth === undefined,
      ...(auth && {
        allowInsecureAuth: true,
        authMethods: ['PLAIN', 'LOGIN'],
        onAuth: (login, _session, callback) =>
          login.username === auth.user && login.password === auth.pass
            ? callback(null, { user: login.username })
            : callback(smtpError(535, '5.7.8 Authentication credentials invalid')),
      }),
      logger: false,
      disableReverseLookup: true,
      onMailFrom: (address, session, callback) => this.handleMailFrom(address, session, callback),
      onRcptTo: (address, session, callback) => this.handleRcptTo(address, session, callback),
      onData: (stream, session, callback) => this.handleData(stream, session, callback),
      onClose: (session) => this.forgetSession(session),
    });
    // Connection errors (a client resetting, our own 'drop') are part of the tests, not failures.
    this.server.on('error', () => undefined);
    this.server.server.on('connection', (socket: Socket) => {
      const port = socket.remotePort;
      if (port === undefined) return;
      this.sockets.set(port, socket);
      socket.once('close', () => {
        if (this.sockets.get(port) === socket) this.sockets.delete(port);
      });
    });
  }

  /** The port the sink listens on; set by start(). */
  get port(): number {
    if (this.boundPort === undefined) throw new Error('SmtpSink: start() has not completed');
    return this.boundPort;
  }

  async start(): Promise<void> {
    if (this.boundPort !== undefined) throw new Error('SmtpSink: already started');
    await this.listen(this.requestedPort);
    const address = this.server.server.address();
    if (address === null || typeof address === 'string') throw new Error('SmtpSink: no TCP address');
    this.boundPort = address.port;
    if (this.behaviour === 'refuse') await this.setListening(false);
  }

  /**
   * Changes how the next transactions are answered. Stalled transactions are answered again with the
   * new behaviour; delayed ones keep their answer (250 when their delay is over). Await it when
   * switching to or from 'refuse': the listener stops or starts then.
   */
  setBehaviour(behaviour: SinkBehaviourSetting): Promise<void> {
    if (this.closed) return Promise.reject(new Error('SmtpSink: closed'));
    this.behaviour = behaviour;
    if (behaviour === 'refuse') this.destroySockets();
    this.releaseStalled();
    return this.boundPort === undefined ? Promise.resolve() : this.setListening(behaviour !== 'refuse');
  }

  messages(): readonly SinkMessage[] {
    return this.received.slice();
  }

  countByMessageId(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const message of this.received)
      counts.set(message.messageId, (counts.get(message.messageId) ?? 0) + 1);
    return counts;
  }

  /** Message-IDs the sink accepted more than once. */
  duplicates(): string[] {
    return [...this.countByMessageId()].filter(([, count]) => count > 1).map(([id]) => id);
  }

  /** How many transactions (or recipients, for the RCPT behaviours) were answered with each behaviour. */
  get attempts(): Readonly<Record<SinkBehaviour, number>> {
    return { ...this.counts };
  }

  /** Resolves once the sink has accepted at least `count` messages since the last reset. */
  waitForCount(count: number, timeoutMs: number): Promise<void> {
    return this.waitFor(
      () => this.received.length >= count,
      timeoutMs,
      () =>
        `SmtpSink.waitForCount: expected ${count} messages within ${timeoutMs} ms, got ${this.received.length}`,
    );
  }

  /** Resolves once at least `count` transactions were answered with `behaviour` since the last reset. */
  waitForAttempts(behaviour: SinkBehaviour, count: number, timeoutMs: number): Promise<void> {
    return this.waitFor(
      () => this.counts[behaviour] >= count,
      timeoutMs,
      () =>
        `SmtpSink.waitForAttempts: expected ${count} '${behaviour}' answers within ${timeoutMs} ms, ` +
        `got ${this.counts[behaviour]}`,
    );
  }

  /**
   * Forgets recorded messages and counters, restarts the sequence and goes back to 'accept'.
   * Stalled and delayed transactions are dropped so nothing from before lands after the reset.
   */
  reset(): Promise<void> {
    for (const stall of this.stalled) this.sockets.get(stall.session.remotePort)?.destroy();
    this.stalled.clear();
    for (const { pending, timer } of this.delayed) {
      clearTimeout(timer);
      this.sockets.get(pending.session.remotePort)?.destroy();
    }
    this.delayed.clear();
    this.received = [];
    this.counts = emptyAttempts();
    this.sequence = 0;
    return this.setBehaviour('accept');
  }

  /**
   * Stops the sink: open connections are destroyed, stalled and delayed transactions released,
   * waiters rejected.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const waiter of this.waiters) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error('SmtpSink: closed while waiting'));
    }
    this.waiters.clear();
    this.destroySockets();
    for (const stall of this.stalled) stall.callback(smtpError(421, '4.3.2 Sink closed'));
    this.stalled.clear();
    for (const { pending, timer } of this.delayed) {
      clearTimeout(timer);
      pending.callback(smtpError(421, '4.3.2 Sink closed'));
    }
    this.delayed.clear();
    await this.transition;
    await new Promise<void>((resolve) => this.server.close(resolve));
    this.listening = false;
  }

  private listen(port: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const net = this.server.server;
      const onError = (err: Error): void => {
        net.off('listening', onListening);
        reject(err);
      };
      const onListening = (): void => {
        net.off('error', onError);
        this.listening = true;
        resolve();
      };
      net.once('error', onError);
      net.once('listening', onListening);
      net.listen(port, '127.0.0.1');
    });
  }

  private setListening(want: boolean): Promise<void> {
    const next = this.transition.then(async () => {
      if (this.closed || want === this.listening) return;
      if (want) {
        await this.listen(this.port);
        return;
      }
      this.listening = false;
      await new Promise<void>((resolve) => {
        this.server.server.close(() => resolve());
        this.destroySockets();
      });
    });
    this.transition = next.catch(() => undefined);
    return next;
  }

  private destroySockets(): void {
    for (const socket of this.sockets.values()) socket.destroy();
  }

  private resolveBehaviour(context: SinkContext): SinkBehaviour {
    return typeof this.behaviour === 'function' ? this.behaviour(context) : this.behaviour;
  }

  private count(behaviour: SinkBehaviour): void {
    this.counts[behaviour] += 1;
    this.notify();
  }

  private handleMailFrom(
    address: SMTPServerAddress,
    session: SMTPServerSession,
    callback: (err?: Error | null) => void,
  ): void {
    this.transactions.set(session.id, {
      sequence: this.sequence++,
      mailFrom: address.address,
      dataContext: undefined,
      dataBehaviour: undefined,
    });
    callback();
  }

  private handleRcptTo(
    address: SMTPServerAddress,
    session: SMTPServerSession,
    callback: (err?: Error | null) => void,
  ): void {
    const tx = this.transactions.get(session.id);
    if (tx === undefined) {
      callback(smtpError(503, '5.5.1 Error: need MAIL command'));
      return;
    }
    const context: SinkContext = { rcpt: address.address, mailFrom: tx.mailFrom, sequence: tx.sequence };
    const behaviour = this.resolveBehaviour(context);
    if (behaviour === 'refuse') {
      this.count('refuse');
      this.sockets.get(session.remotePort)?.destroy();
      return;
    }
    const rejection =
      behaviour === 'tempfail-rcpt' || behaviour === 'throttle-rcpt' || behaviour === 'permfail'
        ? REJECTIONS[behaviour]
        : undefined;
    if (rejection !== undefined) {
      this.count(behaviour);
      callback(smtpError(rejection.code, rejection.text));
      return;
    }
    if (tx.dataBehaviour === undefined) {
      tx.dataBehaviour = behaviour;
      tx.dataContext = context;
    }
    callback();
  }

  private handleData(stream: SMTPServerDataStream, session: SMTPServerSession, callback: DataCallback): void {
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.once('end', () => {
      const tx = this.transactions.get(session.id);
      if (tx?.dataBehaviour === undefined || tx.dataContext === undefined) {
        callback(smtpError(503, '5.5.1 Error: no transaction'));
        return;
      }
      this.answer(
        { session, context: tx.dataContext, raw: Buffer.concat(chunks), callback },
        tx.dataBehaviour,
      );
    });
  }

  private answer(pending: PendingAnswer, behaviour: SinkBehaviour): void {
    const { session, callback } = pending;
    if (behaviour === 'stall') {
      this.stalled.add(pending);
      this.count('stall');
      return;
    }
    if (behaviour === 'delay') {
      const delayed: Delayed = {
        pending,
        timer: setTimeout(() => {
          this.delayed.delete(delayed);
          if (this.clientGone(session)) callback(smtpError(421, '4.4.2 Client gone'));
          else this.accept(pending);
        }, this.delayMs),
      };
      this.delayed.add(delayed);
      this.count('delay');
      return;
    }
    if (behaviour === 'drop' || behaviour === 'refuse') {
      this.sockets.get(session.remotePort)?.destroy();
      this.count(behaviour);
      callback(smtpError(421, '4.4.2 Dropped'));
      return;
    }
    const rejection = REJECTIONS[behaviour];
    if (rejection !== undefined) {
      this.count(behaviour);
      callback(smtpError(rejection.code, rejection.text));
      return;
    }
    this.accept(pending);
  }

  /** Records the message and answers 250. */
  private accept({ session, raw, callback }: PendingAnswer): void {
    const message: SinkMessage = {
      messageId: extractMessageId(raw),
      envelope: {
        from: session.envelope.mailFrom === false ? '' : session.envelope.mailFrom.address,
        to: session.envelope.rcptTo.map((rcpt) => rcpt.address),
      },
      raw,
      receivedAt: Date.now(),
    };
    this.received.push(message);
    this.onMessage?.(message);
    this.count('accept');
    callback(null, `2.0.0 Ok: queued as ${this.received.length}`);
  }

  private releaseStalled(): void {
    const stalled = [...this.stalled];
    this.stalled.clear();
    for (const stall of stalled) {
      if (this.clientGone(stall.session)) {
        stall.callback(smtpError(421, '4.4.2 Client gone'));
        continue;
      }
      this.answer(stall, this.resolveBehaviour(stall.context));
    }
  }

  private clientGone(session: SMTPServerSession): boolean {
    const socket = this.sockets.get(session.remotePort);
    return socket === undefined || socket.destroyed || socket.readableEnded;
  }

  private forgetSession(session: SMTPServerSession): void {
    this.transactions.delete(session.id);
    for (const stall of this.stalled) if (stall.session.id === session.id) this.stalled.delete(stall);
    // The client left mid-wait: it never sees the 250, so the message was not accepted.
    for (const delayed of this.delayed) {
      if (delayed.pending.session.id !== session.id) continue;
      clearTimeout(delayed.timer);
      this.delayed.delete(delayed);
    }
  }

  private waitFor(ready: () => boolean, timeoutMs: number, describe: () => string): Promise<void> {
    if (ready()) return Promise.resolve();
    if (this.closed) return Promise.reject(new Error('SmtpSink: closed'));
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        ready,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(waiter);
          reject(new Error(describe()));
        }, timeoutMs),
      };
      this.waiters.add(waiter);
    });
  }

  private notify(): void {
    for (const waiter of this.waiters) {
      if (!waiter.ready()) continue;
      clearTimeout(waiter.timer);
      this.waiters.delete(waiter);
      waiter.resolve();
    }
  }
}

/**
 * A sink that gives every outcome once: `bad@…` is refused for good (550 at RCPT TO), `later@…` is
 * refused once for now (451) and then accepted, everyone else is accepted.
 */
export function mixedOutcomeSink(): SmtpSink {
  let laterTries = 0;
  return new SmtpSink({
    behaviour: ({ rcpt }) => {
      if (rcpt.startsWith('bad@')) return 'permfail';
      if (rcpt.startsWith('later@')) return laterTries++ === 0 ? 'tempfail' : 'accept';
      return 'accept';
    },
  });
}
