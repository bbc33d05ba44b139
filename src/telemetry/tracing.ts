/**
 * The tracing port the rest of Mailroom calls. `tracing()` is undefined unless
 * OTEL_EXPORTER_OTLP_ENDPOINT started the OpenTelemetry SDK (`preload.ts`), so every call site is
 * `tracing()?.…` or `if (t)`: with tracing off no OpenTelemetry module is loaded and no span object
 * is made. Only types come from `@opentelemetry/api` here.
 */
import type { Span } from '@opentelemetry/api';
import type { TraceContext } from './trace-context.js';

export type { Span };

export type SpanKindName = 'internal' | 'server' | 'client' | 'producer' | 'consumer';
export type Attributes = Readonly<Record<string, string | number | boolean | readonly string[] | undefined>>;

export interface SpanOptions {
  readonly kind?: SpanKindName;
  readonly attributes?: Attributes;
  /** Epoch ms, when the span began before it could be made (a claim whose parent it returned). */
  readonly startTime?: number;
  /** Other traces this span works for: the requests of a group commit. */
  readonly links?: readonly TraceContext[];
}

export interface Tracing {
  /**
   * A new span: a child of `parent` (a saved trace context), of the active span when `parent` is
   * undefined, or the root of a new trace when it is null.
   */
  startSpan(name: string, options?: SpanOptions, parent?: TraceContext | null): Span;
  /** Runs `fn` with `span` active, its async continuations included (logs and child spans see it). */
  withSpan<T>(span: Span, fn: () => T): T;
  /** Runs `fn` in a saved trace context (a remote parent), as if its span were active. */
  inContext<T>(context: TraceContext, fn: () => T): T;
  /**
   * Runs `fn` with no active span. For store batches that serve many jobs at once: their driver spans
   * (pg) must not land in whichever job's trace happened to start the batch.
   */
  withoutSpan<T>(fn: () => T): T;
  /** The span's context as W3C headers, to save with a job or put on a message. */
  contextOf(span: Span): TraceContext;
  /** The active span, if any. */
  activeSpan(): Span | undefined;
  /** The active span's context, if any. */
  activeContext(): TraceContext | undefined;
  /** Ends `span`; with an error, records it and marks the span failed. */
  end(span: Span, error?: unknown): void;
  /** The active span's ids, for log lines. */
  activeIds(): { readonly trace_id: string; readonly span_id: string } | undefined;
  /** Exports the spans still buffered; called last at shutdown. */
  flush(): Promise<void>;
}

let current: Tracing | undefined;

/** The tracer, when tracing is on. */
export function tracing(): Tracing | undefined {
  return current;
}

/** Runs `fn` outside any trace when tracing is on (see `Tracing.withoutSpan`); else just runs it. */
export function untraced<T>(fn: () => T): T {
  return current ? current.withoutSpan(fn) : fn();
}

/** Called once by start-tracing.ts, before any other Mailroom module runs. */
export function installTracing(implementation: Tracing): void {
  current = implementation;
}

/** Attribute names Mailroom sets on its own spans. */
export const ATTR = {
  jobId: 'mailroom.job_id',
  batchSize: 'mailroom.batch_size',
  attempt: 'mailroom.attempt',
  transport: 'mailroom.transport',
  outcome: 'mailroom.outcome',
  smtpCode: 'mailroom.smtp.response_code',
  smtpResponse: 'mailroom.smtp.response',
} as const;
