/**
 * The standard OpenTelemetry variables Mailroom honours. They are not Mailroom's own (not in
 * CONFIG_SCHEMA, not parsed by loadConfig): the OpenTelemetry SDK reads them, and only when
 * OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on (src/telemetry/start-tracing.ts). Listed so that
 * checks of deployment files (test/deploy.test.ts) recognise them as real.
 * See https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/.
 */
export const OTEL_VARIABLES = [
  'OTEL_EXPORTER_OTLP_ENDPOINT',
  'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT',
  'OTEL_EXPORTER_OTLP_PROTOCOL',
  'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL',
  'OTEL_EXPORTER_OTLP_HEADERS',
  'OTEL_EXPORTER_OTLP_TRACES_HEADERS',
  'OTEL_EXPORTER_OTLP_TIMEOUT',
  'OTEL_EXPORTER_OTLP_COMPRESSION',
  'OTEL_SERVICE_NAME',
  'OTEL_RESOURCE_ATTRIBUTES',
  'OTEL_TRACES_SAMPLER',
  'OTEL_TRACES_SAMPLER_ARG',
  'OTEL_TRACES_EXPORTER',
  'OTEL_SDK_DISABLED',
  'OTEL_BSP_SCHEDULE_DELAY',
  'OTEL_BSP_EXPORT_TIMEOUT',
  'OTEL_BSP_MAX_QUEUE_SIZE',
  'OTEL_BSP_MAX_EXPORT_BATCH_SIZE',
  'OTEL_LOG_LEVEL',
] as const;
