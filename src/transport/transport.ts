/**
 * The Transport port: how one built message leaves Mailroom.
 * A transport never throws for a delivery problem; it classifies the outcome instead.
 */

/** A message ready to send: the envelope and the MIME source, built once per attempt. */
export interface OutgoingMessage {
  readonly jobId: string;
  readonly messageId: string;
  readonly envelope: { readonly from: string; readonly to: readonly string[] };
  /** The complete RFC 5322 message, CRLF line endings. */
  readonly raw: Buffer;
}

export type SendResult =
  | {
      readonly kind: 'accepted';
      /** The relay's reply, e.g. `250 2.0.0 Ok: queued as 3F2A`. */
      readonly response: string;
      readonly remoteId?: string;
      /** Recipients the relay refused while accepting the others. */
      readonly rejected: readonly string[];
    }
  | {
      /** Worth retrying: 4xx, connection refused or dropped, timeout, throttling. */
      readonly kind: 'transient';
      readonly code: string;
      readonly message: string;
      readonly responseCode?: number;
      /**
       * Set when the answer was "slow down, try later" (SMTP 421/450/451/452, SES throttling) rather
       * than a failure: flow control lowers the rate of what it concerns — the recipients' domains
       * (a reply to RCPT TO or DATA) or the whole transport — and the circuit breaker does not count
       * it, since the relay is there and answering.
       */
      readonly throttle?: 'recipients' | 'transport';
    }
  | {
      /** Retrying cannot help: 5xx, every recipient refused, message refused. */
      readonly kind: 'permanent';
      readonly code: string;
      readonly message: string;
      readonly responseCode?: number;
    };

export interface ComponentHealth {
  readonly ok: boolean;
  readonly detail?: string;
}

export interface Transport {
  /** A short name for logs and metrics: `smtp`, `ses`. */
  readonly name: string;
  /** Sends one message. Never rejects for a delivery problem: the result says what happened. */
  send(message: OutgoingMessage): Promise<SendResult>;
  /** Whether the relay answers right now (a connection and greeting, not a send). */
  health(): Promise<ComponentHealth>;
  /** Closes pooled connections. Sends in progress finish or fail first. */
  close(): Promise<void>;
}
