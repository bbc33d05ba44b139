/**
 * A local stand-in for Amazon SES v2, enough of it for Mailroom's SES transport: `SendEmail`
 * (`POST /v2/email/outbound-emails`) and `GetAccount` (`GET /v2/email/account`), JSON in and out,
 * errors the way SES sends them (status, `x-amzn-ErrorType`, `{"message"}`).
 *
 * Every request must be signed with Signature Version 4 for this server's key, region and service
 * `ses`. The signature is recomputed here from the request with node:crypto, independently of the
 * SDK's signer, so a wrong key, scope, header set or body hash is refused with 403 and listed in
 * `refusals()` (tests assert it stays empty). A `SendEmail` body must have what the transport
 * promises: raw content (base64), a sender and recipients; anything else is answered 400
 * `BadRequestException` and listed there too.
 */
import { createHash, createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** How the next `SendEmail` is answered. */
export type SesAnswer =
  | 'accept'
  /** 429 TooManyRequestsException, as SES answers over the sending rate. */
  | 'throttle'
  /** 400 MessageRejected, as for an unverified recipient in the sandbox. */
  | 'reject'
  /** 400 SendingPausedException. */
  | 'pause'
  /** 500 InternalFailure. */
  | 'fail'
  /** Reads the request and never answers (until close). */
  | 'hang';

export interface FakeSesOptions {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly region: string;
}

/** A `SendEmail` that passed the checks, as the fake understood it. */
export interface ReceivedEmail {
  readonly from: string;
  readonly to: readonly string[];
  readonly raw: Buffer;
  readonly configurationSet: string | undefined;
  readonly answer: SesAnswer;
  /** The id answered on `accept`. */
  readonly messageId: string | undefined;
  /** The SDK's `amz-sdk-request` header: `attempt=N; max=M`. */
  readonly attempt: string | undefined;
}

const SIGNATURE =
  /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/;
const CLOCK_SKEW_MS = 5 * 60 * 1000;

export class FakeSes {
  private server: Server | undefined;
  private behaviour: SesAnswer | ((email: ReceivedEmail) => SesAnswer) = 'accept';
  private readonly queued: SesAnswer[] = [];
  private readonly received: ReceivedEmail[] = [];
  private readonly refused: string[] = [];
  /** What `GetAccount` answers: SendingEnabled, or 'fail' for a 500. */
  account: { sendingEnabled: boolean } | 'fail' = { sendingEnabled: true };
  accountCalls = 0;

  constructor(private readonly options: FakeSesOptions) {}

  get port(): number {
    return (this.server!.address() as AddressInfo).port;
  }

  /** The endpoint to give the SDK: MAILROOM_SES_ENDPOINT. */
  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.server = createServer((request, response) => {
      void this.handle(request, response).catch((error: Error) => {
        this.refused.push(`fake-ses crashed: ${error.stack}`);
        response.destroy();
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
  }

  /** How every later `SendEmail` is answered (after any queued answers are used up). */
  setBehaviour(behaviour: SesAnswer | ((email: ReceivedEmail) => SesAnswer)): void {
    this.behaviour = behaviour;
  }

  /** Answers the next `SendEmail` requests with these, in order, before the behaviour applies again. */
  answerNext(...answers: SesAnswer[]): void {
    this.queued.push(...answers);
  }

  /** Every `SendEmail` that passed the checks, whatever it was answered. */
  emails(): readonly ReceivedEmail[] {
    return [...this.received];
  }

  /** Why requests were refused before reaching the behaviour: bad signature, bad body, unknown path. */
  refusals(): readonly string[] {
    return [...this.refused];
  }

  reset(): void {
    this.behaviour = 'accept';
    this.queued.length = 0;
    this.received.length = 0;
    this.refused.length = 0;
    this.account = { sendingEnabled: true };
    this.accountCalls = 0;
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const body = await readBody(request);
    const path = (request.url ?? '/').split('?')[0]!;
    const problem = this.checkSignature(request, body);
    if (problem) {
      this.refused.push(`${request.method} ${path}: ${problem}`);
      return sendError(response, 403, 'InvalidSignatureException', problem);
    }
    if (request.method === 'GET' && path === '/v2/email/account') {
      this.accountCalls++;
      if (this.account === 'fail') return sendError(response, 500, 'InternalFailure', 'fake failure');
      return sendJson(response, 200, {
        SendingEnabled: this.account.sendingEnabled,
        ProductionAccessEnabled: true,
        EnforcementStatus: 'HEALTHY',
        SendQuota: { Max24HourSend: 50000, MaxSendRate: 14, SentLast24Hours: this.received.length },
      });
    }
    if (request.method === 'POST' && path === '/v2/email/outbound-emails') {
      return this.sendEmail(request, body, response);
    }
    this.refused.push(`${request.method} ${path}: no such operation`);
    return sendError(response, 404, 'UnknownOperationException', `${request.method} ${path}`);
  }

  private sendEmail(request: IncomingMessage, body: Buffer, response: ServerResponse): void {
    const parsed = parseSendEmail(request, body);
    if (typeof parsed === 'string') {
      this.refused.push(`SendEmail: ${parsed}`);
      sendError(response, 400, 'BadRequestException', parsed);
      return;
    }
    const attempt = header(request, 'amz-sdk-request');
    const draft = { ...parsed, answer: 'accept' as SesAnswer, messageId: undefined, attempt };
    const answer =
      this.queued.shift() ?? (typeof this.behaviour === 'function' ? this.behaviour(draft) : this.behaviour);
    const messageId = answer === 'accept' ? sesMessageId() : undefined;
    this.received.push({ ...draft, answer, messageId });
    if (answer === 'hang') return;
    if (answer === 'accept') {
      sendJson(response, 200, { MessageId: messageId });
      return;
    }
    const errors = {
      throttle: [429, 'TooManyRequestsException', 'Maximum sending rate exceeded.'],
      reject: [
        400,
        'MessageRejected',
        `Email address is not verified. The following identities failed the check in region ${this.options.region.toUpperCase()}: ${parsed.to.join(', ')}`,
      ],
      pause: [400, 'SendingPausedException', 'Sending is paused for this account.'],
      fail: [500, 'InternalFailure', 'We encountered an internal error.'],
    } as const;
    const [status, type, text] = errors[answer];
    sendError(response, status, type, text);
  }

  /** Verifies a SigV4 `Authorization` header; returns what is wrong, or undefined. */
  private checkSignature(request: IncomingMessage, body: Buffer): string | undefined {
    const authorization = header(request, 'authorization');
    if (!authorization) return 'no Authorization header';
    const match = SIGNATURE.exec(authorization);
    if (!match) return `malformed Authorization header: ${authorization}`;
    const [, keyId, date, region, service, signedHeaderList, signature] = match as unknown as string[];
    const amzDate = header(request, 'x-amz-date') ?? '';
    if (!/^\d{8}T\d{6}Z$/.test(amzDate))
      return `x-amz-date ${JSON.stringify(amzDate)} is not YYYYMMDDTHHMMSSZ`;
    if (keyId !== this.options.accessKeyId) return `unknown access key ${keyId}`;
    if (date !== amzDate.slice(0, 8)) return `credential date ${date} is not the x-amz-date's day`;
    if (region !== this.options.region) return `signed for region ${region}, not ${this.options.region}`;
    if (service !== 'ses') return `signed for service ${service}, not ses`;
    const signedHeaders = signedHeaderList!.split(';');
    for (const required of ['host', 'x-amz-date']) {
      if (!signedHeaders.includes(required)) return `SignedHeaders lacks ${required}`;
    }
    if ([...signedHeaders].sort().join(';') !== signedHeaderList) return 'SignedHeaders are not sorted';
    const sent = Date.parse(
      `${amzDate.slice(0, 4)}-${amzDate.slice(4, 6)}-${amzDate.slice(6, 8)}T${amzDate.slice(9, 11)}:${amzDate.slice(11, 13)}:${amzDate.slice(13, 15)}Z`,
    );
    if (Math.abs(Date.now() - sent) > CLOCK_SKEW_MS) return `x-amz-date ${amzDate} is more than 5 min off`;
    const payloadHash = sha256(body);
    const declaredHash = header(request, 'x-amz-content-sha256');
    if (declaredHash !== undefined && declaredHash !== payloadHash)
      return 'x-amz-content-sha256 is not the body';

    const [path = '/', query = ''] = (request.url ?? '/').split('?');
    const canonicalRequest = [
      request.method,
      canonicalPath(path),
      canonicalQuery(query),
      ...signedHeaders.map((name) => `${name}:${canonicalHeaderValue(header(request, name) ?? '')}`),
      '',
      signedHeaderList,
      payloadHash,
    ].join('\n');
    const scope = `${date}/${region}/${service}/aws4_request`;
    const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256(canonicalRequest)].join('\n');
    let key: Buffer = hmac(`AWS4${this.options.secretAccessKey}`, date!);
    for (const part of [region!, service!, 'aws4_request']) key = hmac(key, part);
    const expected = hmac(key, stringToSign);
    const given = Buffer.from(signature!, 'hex');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      return 'signature does not match (recomputed with the secret key)';
    }
    return undefined;
  }
}

function parseSendEmail(
  request: IncomingMessage,
  body: Buffer,
): Omit<ReceivedEmail, 'answer' | 'messageId' | 'attempt'> | string {
  if (!/^application\/json\b/.test(header(request, 'content-type') ?? '')) return 'content-type is not JSON';
  let input: {
    FromEmailAddress?: unknown;
    Destination?: { ToAddresses?: unknown; CcAddresses?: unknown; BccAddresses?: unknown };
    Content?: { Raw?: { Data?: unknown }; Simple?: unknown; Template?: unknown };
    ConfigurationSetName?: unknown;
  };
  try {
    input = JSON.parse(body.toString('utf8'));
  } catch {
    return 'body is not JSON';
  }
  if (typeof input.FromEmailAddress !== 'string' || input.FromEmailAddress === '') {
    return 'FromEmailAddress missing';
  }
  const to = input.Destination?.ToAddresses;
  if (!Array.isArray(to) || to.length === 0 || !to.every((address) => typeof address === 'string')) {
    return 'Destination.ToAddresses must list the recipients';
  }
  if (input.Content?.Simple !== undefined || input.Content?.Template !== undefined) {
    return 'expected raw content only';
  }
  const data = input.Content?.Raw?.Data;
  if (typeof data !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(data)) {
    return 'Content.Raw.Data must be base64';
  }
  const configurationSet = input.ConfigurationSetName;
  if (configurationSet !== undefined && typeof configurationSet !== 'string') {
    return 'ConfigurationSetName must be a string';
  }
  return {
    from: input.FromEmailAddress,
    to: to as string[],
    raw: Buffer.from(data, 'base64'),
    configurationSet,
  };
}

function readBody(request: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => resolve(Buffer.concat(chunks)));
    request.on('error', reject);
  });
}

function header(request: IncomingMessage, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value.join(',') : value;
}

function sendJson(response: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'x-amzn-requestid': randomUUID(),
  });
  response.end(text);
}

function sendError(response: ServerResponse, status: number, type: string, message: string): void {
  const text = JSON.stringify({ message });
  response.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'x-amzn-requestid': randomUUID(),
    'x-amzn-errortype': type,
  });
  response.end(text);
}

/** An id in the shape SES gives: `0100` + 12 hex digits, a UUID, `-000000`. */
function sesMessageId(): string {
  return `0100${randomBytes(6).toString('hex')}-${randomUUID()}-000000`;
}

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function hmac(key: string | Buffer, data: string): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

/** RFC 3986 encoding, as SigV4 wants it: everything but unreserved characters. */
function encode(text: string): string {
  return encodeURIComponent(text).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/**
 * The canonical URI of every service but S3: each segment of the path as sent (already encoded
 * once) is encoded again.
 */
function canonicalPath(path: string): string {
  return path.split('/').map(encode).join('/');
}

function canonicalQuery(query: string): string {
  if (query === '') return '';
  return query
    .split('&')
    .map((pair) => {
      const [name = '', value = ''] = pair.split('=');
      return [encode(decodeURIComponent(name)), encode(decodeURIComponent(value))];
    })
    .sort(([a, x], [b, y]) => (a! < b! ? -1 : a! > b! ? 1 : x! < y! ? -1 : x! > y! ? 1 : 0))
    .map(([name, value]) => `${name}=${value}`)
    .join('&');
}

function canonicalHeaderValue(value: string): string {
  return value.trim().replace(/\s+/g, ' ');
}
