import type { Config } from '../config/config-schema.js';
import { VERSION } from '../version.js';

export interface ServiceTags {
  readonly service: string;
  readonly env?: string;
  readonly version: string;
}

/**
 * Unified service tagging: the same service, env and version on every metric and log line.
 * MAILROOM_ENV wins over DD_ENV; DD_VERSION over the package version.
 */
export function serviceTags(config: Config): ServiceTags {
  const env = config.environment ?? config.ddEnv;
  return { service: config.ddService, version: config.ddVersion ?? VERSION, ...(env && { env }) };
}
