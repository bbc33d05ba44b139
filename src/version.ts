import { readFileSync } from 'node:fs';

/**
 * Mailroom's version, from package.json: one level up from this module both in src/ (tsx, tests)
 * and in dist/ (the built CLI).
 */
export const VERSION: string = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;
