/**
 * Mailroom's own spans along an email's way, for the steps no instrumentation sees: the group
 * commit, the outbox publish, the worker's claim and process, the transport send. Each helper takes
 * the `Tracing` (callers only reach here when `tracing()` is defined) and keeps span details out of
 * the hot-path modules.
 */
import type { JobMessage } from '../broker/broker.js';
import type { SendResult } from '../transport/transport.js';
import { type TraceContext, traceContextIn, withTraceContext } from './trace-context.js';
import { ATTR, type Span, type Tracing } from './tracing.js';

/**
 * A group commit serves many requests, each in its own trace. It gets one span of its own, the root
 * of a short trace, linked to every request's `store commit` span (the context saved with each job);
 * the driver's spans (pg) nest under it. Parenting it to one request would put every other request's
 * commit in a stranger's trace.
 */
export async function inBatchSpan<T>(
  t: Tracing,
  name: string,
  jobs: readonly { readonly traceContext?: TraceContext }[],
  work: () => Promise<T>,
): Promise<T> {
  const links = jobs.flatMap((job) => (job.traceContext ? [job.traceContext] : []));
  const span = t.startSpan(name, { links, attributes: { [ATTR.batchSize]: jobs.length } }, null);
  return ended(t, span, () => t.withSpan(span, work));
}

/** Runs `work`, then ends `span`, recording the error if it threw. */
export async function ended<T>(t: Tracing, span: Span, work: () => Promise<T>): Promise<T> {
  try {
    const result = await work();
    t.end(span);
    return result;
  } catch (error) {
    t.end(span, error);
    throw error;
  }
}

/** The attributes that say which jobs a span is about: one id, or the list for a batch request. */
export function jobAttributes(ids: readonly string[]): Record<string, string | number | string[]> {
  return ids.length === 1 && ids[0] !== undefined
    ? { [ATTR.jobId]: ids[0] }
    : { 'mailroom.job_ids': [...ids], [ATTR.batchSize]: ids.length };
}

/**
 * The worker's span for one delivery (semantic conventions for messaging: a `process` consumer
 * span). Its parent is the trace context on the message (what a network broker carried), else the
 * one the claim read from the store (the embedded broker has no headers), else the active span.
 * It starts when the claim was asked for; the claim itself is a child span over that wait.
 */
export function startProcessSpan(
  t: Tracing,
  options: {
    readonly broker: string;
    readonly jobId: string;
    readonly headers: Readonly<Record<string, string>>;
    readonly saved?: TraceContext;
    readonly claimAskedAt: number;
    readonly attempt?: number;
    readonly deliveryCount: number;
  },
): Span {
  const parent = traceContextIn(options.headers) ?? options.saved;
  const span = t.startSpan(
    'process',
    {
      kind: 'consumer',
      startTime: options.claimAskedAt,
      attributes: {
        'messaging.system': options.broker,
        'messaging.operation.type': 'process',
        'messaging.operation.name': 'process',
        'messaging.message.id': options.jobId,
        [ATTR.jobId]: options.jobId,
        [ATTR.attempt]: options.attempt,
        'mailroom.delivery_count': options.deliveryCount,
      },
    },
    parent,
  );
  if (options.attempt !== undefined) {
    const claim = t.withSpan(span, () =>
      t.startSpan('claim', { startTime: options.claimAskedAt, attributes: { [ATTR.jobId]: options.jobId } }),
    );
    t.end(claim);
  }
  return span;
}

/** One attempt at the transport: a client span with the relay's reply code and the outcome. */
export async function tracedSend(
  t: Tracing,
  transport: string,
  jobId: string,
  send: () => Promise<SendResult>,
): Promise<SendResult> {
  const span = t.startSpan(`send ${transport}`, {
    kind: 'client',
    attributes: { [ATTR.jobId]: jobId, [ATTR.transport]: transport },
  });
  let result: SendResult;
  try {
    result = await t.withSpan(span, send);
  } catch (error) {
    t.end(span, error);
    throw error;
  }
  if (result.kind === 'accepted') {
    const code = Number(/^\d{3}/.exec(result.response)?.[0]);
    span.setAttributes({
      [ATTR.outcome]: 'accepted',
      [ATTR.smtpResponse]: result.response.slice(0, 200),
      ...(Number.isFinite(code) && { [ATTR.smtpCode]: code }),
    });
    t.end(span);
  } else {
    span.setAttributes({
      [ATTR.outcome]: result.kind,
      'error.type': result.code,
      ...(result.responseCode !== undefined && { [ATTR.smtpCode]: result.responseCode }),
    });
    t.end(span, new Error(`${result.code}: ${result.message}`));
  }
  return result;
}

/**
 * The outbox dispatcher's publish of a batch: one span per message, each in its own email's trace
 * (a child of the context saved at acceptance), so the consumer continues from it. The message's
 * headers carry that span's context. All end when the broker confirmed the batch.
 */
export async function publishInTraces(
  t: Tracing,
  broker: string,
  messages: readonly JobMessage[],
  publish: (messages: readonly JobMessage[]) => Promise<void>,
): Promise<void> {
  const spans = messages.map((message) =>
    t.startSpan(
      'outbox publish',
      {
        attributes: {
          [ATTR.jobId]: message.jobId,
          [ATTR.batchSize]: messages.length,
          'messaging.system': broker,
        },
      },
      traceContextIn(message.headers) ?? null,
    ),
  );
  const traced = messages.map((message, index) => ({
    ...message,
    headers: withTraceContext(message.headers, t.contextOf(spans[index]!)),
  }));
  try {
    await publish(traced);
  } catch (error) {
    for (const span of spans) t.end(span, error);
    throw error;
  }
  for (const span of spans) t.end(span);
}

/**
 * A broker's own publish of one message (NATS: no instrumentation exists): a producer span in the
 * message's trace, whose context replaces the message's, so the consumer's span is its child.
 */
export async function producerSpan<T>(
  t: Tracing,
  options: { readonly system: string; readonly destination: string; readonly message: JobMessage },
  publish: (headers: Readonly<Record<string, string>>) => Promise<T>,
): Promise<T> {
  const { message } = options;
  const span = t.startSpan(
    `send ${options.destination}`,
    {
      kind: 'producer',
      attributes: {
        'messaging.system': options.system,
        'messaging.operation.type': 'send',
        'messaging.operation.name': 'publish',
        'messaging.destination.name': options.destination,
        'messaging.message.id': message.jobId,
        [ATTR.jobId]: message.jobId,
      },
    },
    traceContextIn(message.headers) ?? null,
  );
  return ended(t, span, () => publish(withTraceContext(message.headers, t.contextOf(span))));
}

/**
 * Runs `work` (a publish by a client library that has its own instrumentation, amqplib) with the
 * message's trace active, so the library's producer span joins the email's trace.
 */
export function inMessageTrace<T>(t: Tracing, headers: Readonly<Record<string, string>>, work: () => T): T {
  const context = traceContextIn(headers);
  return context ? t.inContext(context, work) : work();
}
