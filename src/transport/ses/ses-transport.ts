import { GetAccountCommand, SESv2Client, SendEmailCommand } from '@aws-sdk/client-sesv2';
import type { ComponentHealth, OutgoingMessage, SendResult, Transport } from '../transport.js';
import { classifySesError, type SesErrorLike } from './classify-ses-error.js';

export interface SesTransportOptions {
  /** The AWS region of the SES account, e.g. `eu-west-1`; also the region requests are signed for. */
  readonly region: string;
  /** Another SES v2 endpoint, e.g. a VPC endpoint or a local stand-in; default: the region's own. */
  readonly endpoint?: string;
  /** SES configuration set named on every send (event publishing, dedicated IPs). */
  readonly configurationSet?: string;
  /** Deadline for a whole send, the SDK's one retry included, and for the health check. */
  readonly timeoutMs: number;
  /** Kept-open connections to SES; sends beyond it wait for a free one. Default 50. */
  readonly maxSockets?: number;
}

const HEALTH_CACHE_MS = 5000;

/**
 * The SDK's attempts per call: one retry at once, for what a second try a moment later fixes (a
 * kept-alive connection SES closed just as we reused it, a one-second burst over the sending rate).
 * Longer waits are Mailroom's own backoff, which is stored with the job and holds no worker. Every
 * call runs under one deadline (`timeoutMs`) that covers both attempts and the pause between them,
 * so MAILROOM_LEASE_MS > the timeout still guarantees a send never outlives its lease.
 */
const SDK_MAX_ATTEMPTS = 2;

/**
 * Sends through Amazon SES with the v2 `SendEmail` API. The message goes as built (`Content.Raw`),
 * so headers, Message-ID and Bcc handling are those of the SMTP transport; the envelope goes in
 * `FromEmailAddress` and `Destination`. Credentials come from the AWS SDK's default chain
 * (environment, shared files, SSO, web identity, container or instance roles).
 */
export class SesTransport implements Transport {
  readonly name = 'ses';
  private readonly client: SESv2Client;
  private readonly inFlight = new Set<Promise<SendResult>>();
  private lastHealth: { at: number; result: ComponentHealth } | undefined;
  private closed: Promise<void> | undefined;

  constructor(private readonly options: SesTransportOptions) {
    const agent = { maxSockets: options.maxSockets ?? 50 };
    this.client = new SESv2Client({
      region: options.region,
      ...(options.endpoint !== undefined && { endpoint: options.endpoint }),
      maxAttempts: SDK_MAX_ATTEMPTS,
      requestHandler: { httpAgent: agent, httpsAgent: agent },
    });
  }

  send(message: OutgoingMessage): Promise<SendResult> {
    const sending = this.sendOnce(message);
    this.inFlight.add(sending);
    void sending.finally(() => this.inFlight.delete(sending));
    return sending;
  }

  private async sendOnce(message: OutgoingMessage): Promise<SendResult> {
    const signal = AbortSignal.timeout(this.options.timeoutMs);
    try {
      const command = new SendEmailCommand({
        FromEmailAddress: message.envelope.from,
        // For raw content Destination is the envelope: SES sends to these and leaves the headers as
        // they are, so Bcc recipients stay out of them.
        Destination: { ToAddresses: [...message.envelope.to] },
        Content: { Raw: { Data: message.raw } },
        ...(this.options.configurationSet !== undefined && {
          ConfigurationSetName: this.options.configurationSet,
        }),
      });
      const output = await this.client.send(command, { abortSignal: signal });
      const remoteId = output.MessageId;
      return {
        kind: 'accepted',
        response: `SES SendEmail HTTP ${output.$metadata.httpStatusCode ?? 200}: MessageId ${remoteId ?? '(none)'}`,
        rejected: [],
        ...(remoteId && { remoteId }),
      };
    } catch (error) {
      return classifySesError(signal.aborted ? this.timedOut() : (error as SesErrorLike));
    }
  }

  /** `GetAccount`: proves credentials, signing and reachability without sending; cached 5 s. */
  async health(): Promise<ComponentHealth> {
    const now = Date.now();
    if (this.lastHealth && now - this.lastHealth.at < HEALTH_CACHE_MS) return this.lastHealth.result;
    let result: ComponentHealth;
    const signal = AbortSignal.timeout(this.options.timeoutMs);
    try {
      const account = await this.client.send(new GetAccountCommand({}), { abortSignal: signal });
      result =
        account.SendingEnabled === false
          ? { ok: false, detail: 'SES sending is paused for this account (GetAccount: SendingEnabled false)' }
          : {
              ok: true,
              ...(account.EnforcementStatus &&
                account.EnforcementStatus !== 'HEALTHY' && {
                  detail: `SES enforcement status ${account.EnforcementStatus}`,
                }),
            };
    } catch (error) {
      result = {
        ok: false,
        detail: classifySesError(signal.aborted ? this.timedOut() : (error as SesErrorLike)).message,
      };
    }
    this.lastHealth = { at: now, result };
    return result;
  }

  /** Lets sends in progress finish (each within its deadline), then closes the connections. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      await Promise.allSettled([...this.inFlight]);
      this.client.destroy();
    })();
    return this.closed;
  }

  private timedOut(): SesErrorLike {
    return { name: 'TimeoutError', message: `no answer from SES within ${this.options.timeoutMs} ms` };
  }
}
