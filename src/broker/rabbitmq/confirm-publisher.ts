import type { ConfirmChannel, Message, Options } from 'amqplib';

/**
 * Publishes on one confirm channel and resolves only when RabbitMQ confirmed the message *and*
 * routed it to a queue. Every publish is `mandatory`: RabbitMQ acks an unroutable message (no queue
 * bound, a queue deleted), so an ack alone does not mean "stored". It sends the `basic.return`
 * before that ack, on the same channel, so a return can be matched to the oldest unconfirmed
 * publish with the same exchange, routing key and message id.
 */
export class ConfirmPublisher {
  private readonly unconfirmed = new Set<Pending>();
  private closed = false;

  constructor(private readonly channel: ConfirmChannel) {
    channel.on('return', (message: Message) => this.markReturned(message));
    channel.on('close', () => {
      this.closed = true;
    });
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** Publishes in flight (waiting for their confirm). */
  get inFlight(): number {
    return this.unconfirmed.size;
  }

  publish(exchange: string, routingKey: string, body: Buffer, options: Options.Publish): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.closed) {
        reject(new Error('rabbitmq: the publishing channel is closed'));
        return;
      }
      const pending: Pending = { exchange, routingKey, messageId: options.messageId, returned: false };
      this.unconfirmed.add(pending);
      try {
        this.channel.publish(exchange, routingKey, body, { ...options, mandatory: true }, (error) => {
          this.unconfirmed.delete(pending);
          if (error) reject(new Error(`rabbitmq: publish not confirmed: ${describe(error)}`));
          else if (pending.returned)
            reject(new Error(`rabbitmq: unroutable: no queue bound for '${routingKey}' on '${exchange}'`));
          else resolve();
        });
      } catch (error) {
        // amqplib throws synchronously once the channel is closed.
        this.unconfirmed.delete(pending);
        reject(error);
      }
    });
  }

  private markReturned(message: Message): void {
    const { exchange, routingKey } = message.fields;
    const messageId: unknown = message.properties.messageId;
    for (const pending of this.unconfirmed) {
      if (
        !pending.returned &&
        pending.exchange === exchange &&
        pending.routingKey === routingKey &&
        pending.messageId === messageId
      ) {
        pending.returned = true;
        return;
      }
    }
  }
}

interface Pending {
  readonly exchange: string;
  readonly routingKey: string;
  readonly messageId: string | undefined;
  returned: boolean;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
