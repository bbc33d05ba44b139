/**
 * Starts the OpenTelemetry SDK: an OTLP/HTTP exporter (protobuf, or JSON with
 * OTEL_EXPORTER_OTLP_PROTOCOL=http/json) behind a batch span processor, the W3C propagator, and
 * the HTTP, pg and amqplib instrumentations. Only preload.ts calls it, and only when
 * OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set.
 *
 * The packages are loaded with `require`, synchronously: preload.ts must finish before the modules
 * after it in the CLI's import list run, because the instrumentations patch pg, amqplib and http
 * when those are first required. A top-level `await import()` would not hold those modules back
 * (ES modules evaluate siblings of an async module without waiting for it), and a static import
 * would load OpenTelemetry with tracing off too. The packages are CommonJS, so `require` works.
 */
import { createRequire } from 'node:module';
import type * as OtelApi from '@opentelemetry/api';
import type * as Instrumentation from '@opentelemetry/instrumentation';
import type * as Amqplib from '@opentelemetry/instrumentation-amqplib';
import type * as Http from '@opentelemetry/instrumentation-http';
import type * as Pg from '@opentelemetry/instrumentation-pg';
import type * as Resources from '@opentelemetry/resources';
import type * as TraceNode from '@opentelemetry/sdk-trace-node';
import { OtelTracing } from './otel-tracing.js';
import type { ServiceTags } from './service-tags.js';
import { installTracing } from './tracing.js';

type Env = Readonly<Record<string, string | undefined>>;

/** True when the standard variables ask for traces: an OTLP endpoint, and the SDK not disabled. */
export function tracingRequested(env: Env): boolean {
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT;
  return Boolean(endpoint) && env.OTEL_SDK_DISABLED !== 'true' && env.OTEL_TRACES_EXPORTER !== 'none';
}

/** Starts the SDK and installs `tracing()`. The resource carries the unified service tags. */
export function startTracing(tags: ServiceTags, env: Env = process.env): void {
  const require = createRequire(import.meta.url);
  const api = require('@opentelemetry/api') as typeof OtelApi;
  const { NodeTracerProvider, BatchSpanProcessor } =
    require('@opentelemetry/sdk-trace-node') as typeof TraceNode;
  const { resourceFromAttributes, detectResources, envDetector } =
    require('@opentelemetry/resources') as typeof Resources;
  const { registerInstrumentations } = require('@opentelemetry/instrumentation') as typeof Instrumentation;
  const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http') as typeof Http;
  const { PgInstrumentation } = require('@opentelemetry/instrumentation-pg') as typeof Pg;
  const { AmqplibInstrumentation } = require('@opentelemetry/instrumentation-amqplib') as typeof Amqplib;

  const protocol =
    env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL || 'http/protobuf';
  if (protocol !== 'http/json' && protocol !== 'http/protobuf') {
    console.warn(
      `OTEL_EXPORTER_OTLP_PROTOCOL=${protocol}: Mailroom exports over HTTP only; using http/protobuf`,
    );
  }
  // Both exporters read the endpoint, headers, timeout and compression from the OTEL_* variables.
  const { OTLPTraceExporter } = (
    protocol === 'http/json'
      ? require('@opentelemetry/exporter-trace-otlp-http')
      : require('@opentelemetry/exporter-trace-otlp-proto')
  ) as { OTLPTraceExporter: new () => TraceNode.SpanExporter };

  // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (the env detector) win over the unified tags.
  const resource = resourceFromAttributes({
    'service.name': tags.service,
    'service.version': tags.version,
    ...(tags.env && { 'deployment.environment': tags.env, 'deployment.environment.name': tags.env }),
  }).merge(detectResources({ detectors: [envDetector] }));

  const provider = new NodeTracerProvider({
    resource,
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
  });
  provider.register();
  registerInstrumentations({
    tracerProvider: provider,
    instrumentations: [
      new HttpInstrumentation({
        // Health checks and scrapes every few seconds would bury the emails' traces.
        ignoreIncomingRequestHook: (request) => /^\/(health|ready|metrics)(\?|$)/.test(request.url ?? ''),
        // Outgoing requests only inside a traced operation (SES sends): webhook POSTs run outside
        // any span, and their own root spans would export receivers' URLs, tokens in them included.
        requireParentforOutgoingSpans: true,
      }),
      // Only queries made for a traced operation: the outbox and embedded-broker polls run every
      // half second and would each start a trace of their own.
      new PgInstrumentation({ requireParentSpan: true }),
      new AmqplibInstrumentation(),
    ],
  });
  installTracing(new OtelTracing(api, () => provider.forceFlush(), tags.version));
}
