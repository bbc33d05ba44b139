/**
 * `Tracing` on the OpenTelemetry API. Loaded only by start-tracing.ts, which hands it the API module
 * it required: this file imports nothing from OpenTelemetry at run time.
 */
import type * as OtelApi from '@opentelemetry/api';
import type { Context, Link, Span } from '@opentelemetry/api';
import type { TraceContext } from './trace-context.js';
import type { SpanKindName, SpanOptions, Tracing } from './tracing.js';

export class OtelTracing implements Tracing {
  private readonly tracer: OtelApi.Tracer;
  private readonly kinds: Record<SpanKindName, OtelApi.SpanKind>;

  constructor(
    private readonly api: typeof OtelApi,
    private readonly flushSpans: () => Promise<void>,
    version: string,
  ) {
    this.tracer = api.trace.getTracer('mailroom', version);
    const { SpanKind } = api;
    this.kinds = {
      internal: SpanKind.INTERNAL,
      server: SpanKind.SERVER,
      client: SpanKind.CLIENT,
      producer: SpanKind.PRODUCER,
      consumer: SpanKind.CONSUMER,
    };
  }

  startSpan(name: string, options: SpanOptions = {}, parent?: TraceContext | null): Span {
    const context =
      parent === undefined
        ? this.api.context.active()
        : parent === null
          ? this.api.ROOT_CONTEXT
          : this.extract(parent);
    const links = options.links?.flatMap((link): Link[] => {
      const spanContext = this.api.trace.getSpanContext(this.extract(link));
      return spanContext ? [{ context: spanContext }] : [];
    });
    return this.tracer.startSpan(
      name,
      {
        kind: this.kinds[options.kind ?? 'internal'],
        ...(options.attributes && { attributes: definedOnly(options.attributes) }),
        ...(options.startTime !== undefined && { startTime: options.startTime }),
        ...(links && links.length > 0 && { links }),
        ...(parent === null && { root: true }),
      },
      context,
    );
  }

  withSpan<T>(span: Span, fn: () => T): T {
    return this.api.context.with(this.api.trace.setSpan(this.api.context.active(), span), fn);
  }

  inContext<T>(context: TraceContext, fn: () => T): T {
    return this.api.context.with(this.extract(context), fn);
  }

  withoutSpan<T>(fn: () => T): T {
    return this.api.context.with(this.api.ROOT_CONTEXT, fn);
  }

  contextOf(span: Span): TraceContext {
    const carrier: Record<string, string> = {};
    this.api.propagation.inject(this.api.trace.setSpan(this.api.ROOT_CONTEXT, span), carrier);
    return toTraceContext(carrier, span);
  }

  activeSpan(): Span | undefined {
    return this.api.trace.getActiveSpan();
  }

  activeContext(): TraceContext | undefined {
    const span = this.api.trace.getActiveSpan();
    return span && this.api.isSpanContextValid(span.spanContext()) ? this.contextOf(span) : undefined;
  }

  end(span: Span, error?: unknown): void {
    if (error !== undefined) {
      span.recordException(error instanceof Error ? error : String(error));
      span.setStatus({
        code: this.api.SpanStatusCode.ERROR,
        message: error instanceof Error ? error.message : String(error),
      });
    }
    span.end();
  }

  activeIds(): { trace_id: string; span_id: string } | undefined {
    const spanContext = this.api.trace.getActiveSpan()?.spanContext();
    if (!spanContext || !this.api.isSpanContextValid(spanContext)) return undefined;
    return { trace_id: spanContext.traceId, span_id: spanContext.spanId };
  }

  flush(): Promise<void> {
    return this.flushSpans();
  }

  private extract(context: TraceContext): Context {
    return this.api.propagation.extract(this.api.ROOT_CONTEXT, { ...context });
  }
}

/** The carrier the W3C propagator filled; built by hand if another propagator was configured. */
function toTraceContext(carrier: Record<string, string>, span: Span): TraceContext {
  if (carrier.traceparent) {
    return carrier.tracestate
      ? { traceparent: carrier.traceparent, tracestate: carrier.tracestate }
      : { traceparent: carrier.traceparent };
  }
  const { traceId, spanId, traceFlags } = span.spanContext();
  return { traceparent: `00-${traceId}-${spanId}-${traceFlags.toString(16).padStart(2, '0')}` };
}

function definedOnly(attributes: SpanOptions['attributes']): OtelApi.Attributes {
  const out: OtelApi.Attributes = {};
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value !== undefined) out[name] = typeof value === 'object' ? [...value] : value;
  }
  return out;
}
