/**
 * W3C trace context as Mailroom keeps it: the `traceparent` and `tracestate` header values, saved
 * with a job at acceptance (in its first event's detail and, for network brokers, its outbox entry)
 * and carried in every broker message's headers. Plain strings, so that the Store, the wire codec
 * and the brokers need nothing from OpenTelemetry.
 */

export interface TraceContext {
  readonly traceparent: string;
  readonly tracestate?: string;
}

/** version-traceid-spanid-flags, lower-case hex (https://www.w3.org/TR/trace-context/#traceparent-header). */
const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/;
const MAX_TRACESTATE_CHARS = 512;

/** The trace id of a well-formed traceparent, else undefined. */
export function traceIdOf(traceparent: string): string | undefined {
  return TRACEPARENT.exec(traceparent)?.[1];
}

/**
 * The trace context among propagation headers or a stored detail (names in any case), or undefined
 * when there is no well-formed traceparent. A bad value is dropped: tracing never stops an email.
 */
export function traceContextIn(
  values: Readonly<Record<string, unknown>> | undefined,
): TraceContext | undefined {
  if (!values) return undefined;
  let traceparent: string | undefined;
  let tracestate: string | undefined;
  for (const [name, value] of Object.entries(values)) {
    if (typeof value !== 'string') continue;
    const key = name.toLowerCase();
    if (key === 'traceparent' && TRACEPARENT.test(value)) traceparent = value;
    if (key === 'tracestate' && value.length <= MAX_TRACESTATE_CHARS && /^[\x20-\x7e]*$/.test(value))
      tracestate = value;
  }
  if (traceparent === undefined) return undefined;
  return tracestate ? { traceparent, tracestate } : { traceparent };
}

/**
 * What a job's first event records about its trace: the trace id (what to search for in Jaeger)
 * and the full context the worker continues from. Empty without a context.
 */
export function traceDetail(context: TraceContext | undefined): Record<string, string> {
  if (!context) return {};
  return { trace_id: traceIdOf(context.traceparent)!, ...context };
}

/** Propagation headers for a message: `headers` with the trace context replaced by `context`. */
export function withTraceContext(
  headers: Readonly<Record<string, string>>,
  context: TraceContext,
): Record<string, string> {
  const rest = Object.fromEntries(
    Object.entries(headers).filter(([name]) => !/^trace(parent|state)$/i.test(name)),
  );
  return { ...rest, ...context };
}
