/**
 * The first module the CLI imports (`import './telemetry/preload.js'` at the top of cli.ts), so it
 * runs before any module that loads pg, amqplib or node:http: with OTEL_EXPORTER_OTLP_ENDPOINT set
 * it starts tracing, whose instrumentations must be in place before those are first required.
 * Synchronous on purpose (see start-tracing.ts). With the variable unset it loads nothing more.
 */
import { existsSync } from 'node:fs';
import dotenv from 'dotenv';
import { loadConfig } from '../config/load-config.js';
import { serviceTags } from './service-tags.js';
import { startTracing, tracingRequested } from './start-tracing.js';

// The CLI reads .env too; reading it here first lets .env turn tracing on.
if (existsSync('.env')) dotenv.config({ path: '.env', quiet: true });

if (tracingRequested(process.env)) {
  let tags: ReturnType<typeof serviceTags> | undefined;
  try {
    tags = serviceTags(loadConfig());
  } catch {
    // An invalid configuration: the command reports it in a moment; nothing is worth tracing.
  }
  if (tags) startTracing(tags);
}
