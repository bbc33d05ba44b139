/**
 * Keeps docs/ true to the code: the configuration table mirrors CONFIG_SCHEMA, the error tables mirror
 * ERROR_CODES and FIELD_RULES, and no page names a MAILROOM_* variable that does not exist.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { CONFIG_SCHEMA, type VariableSpec } from '../src/config/config-schema.js';
import { FIELD_RULES } from '../src/domain/validate-email.js';
import { ERROR_CODES } from '../src/errors.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DOCS = join(ROOT, 'docs');
const NO_DEFAULT = '—';

function read(name: string): string {
  return readFileSync(join(DOCS, name), 'utf8');
}

/** The cells of a Markdown table row, trimmed; `\|` inside a cell does not split it. */
function cells(row: string): string[] {
  return row
    .trim()
    .replace(/^\|/, '')
    .replace(/\|$/, '')
    .split(/(?<!\\)\|/)
    .map((cell) => cell.trim());
}

/**
 * The body rows of the first table whose header row starts with `firstHeader`, as cell arrays.
 * Fails when there is no such table, so a renamed column cannot make a check pass vacuously.
 */
function table(markdown: string, firstHeader: string): string[][] {
  const lines = markdown.split('\n');
  const start = lines.findIndex((line) => line.startsWith('|') && cells(line)[0] === firstHeader);
  assert.notEqual(start, -1, `no table with a "${firstHeader}" column`);
  const rows: string[][] = [];
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    rows.push(cells(line));
  }
  assert.ok(rows.length > 0, `the "${firstHeader}" table has no rows`);
  return rows;
}

/** `` `x` `` → `x`; anything else is left as it is, so a missing backtick shows in the diff. */
function unquote(cell: string): string {
  const match = /^`([^`]*)`$/.exec(cell);
  return match ? match[1]! : cell;
}

function duplicates(values: readonly string[]): string[] {
  return values.filter((value, i) => values.indexOf(value) !== i);
}

const specs = Object.values(CONFIG_SCHEMA) as VariableSpec<unknown>[];

describe('docs/configuration.md', () => {
  const rows = table(read('configuration.md'), 'Variable');

  test('lists exactly the variables of CONFIG_SCHEMA, once each, in backticks', () => {
    const documented = rows.map((row) => row[0]!);
    for (const cell of documented) assert.match(cell, /^`[A-Z0-9_]+`$/, `variable cell ${cell}`);
    const names = documented.map(unquote);
    assert.deepEqual(duplicates(names), [], 'variables listed twice');
    assert.deepEqual(
      [...names].sort(),
      specs.map((spec) => spec.env).sort(),
      'the table must list every CONFIG_SCHEMA variable and nothing else',
    );
  });

  test('documents each default as the schema has it (— when there is none)', () => {
    const documented = new Map(rows.map((row) => [unquote(row[0]!), row[1]!]));
    for (const spec of specs) {
      const expected = spec.default === undefined ? NO_DEFAULT : `\`${spec.default}\``;
      assert.equal(documented.get(spec.env), expected, `default of ${spec.env}`);
    }
  });

  test('every row has an expected form and a description', () => {
    for (const row of rows) {
      assert.equal(row.length, 4, `row ${row[0]} must have 4 cells`);
      assert.ok(row[2] && row[3], `row ${row[0]} needs an expected form and a description`);
    }
  });
});

describe('docs/errors.md', () => {
  const errors = read('errors.md');
  const codeRows = table(errors, 'Code');

  test('the codes table lists exactly the ERROR_CODES, in backticks, once each', () => {
    const documented = codeRows.map((row) => row[0]!);
    for (const cell of documented) assert.match(cell, /^`[A-Z_]+`$/, `code cell ${cell}`);
    const codes = documented.map(unquote);
    assert.deepEqual(duplicates(codes), [], 'codes listed twice');
    const unknown = codes.filter((code) => !Object.hasOwn(ERROR_CODES, code));
    assert.deepEqual(unknown, [], 'codes documented but not in ERROR_CODES');
    const missing = Object.keys(ERROR_CODES).filter((code) => !codes.includes(code));
    assert.deepEqual(missing, [], 'ERROR_CODES missing from docs/errors.md');
  });

  test('each code shows its HTTP status (— for codes that are never an HTTP answer)', () => {
    const documented = new Map(codeRows.map((row) => [unquote(row[0]!), row[1]!]));
    for (const [code, { status }] of Object.entries(ERROR_CODES)) {
      assert.equal(
        documented.get(code),
        status === 0 ? NO_DEFAULT : String(status),
        `HTTP status of ${code}`,
      );
    }
  });

  test('every backticked code-like name on the page is a real error code or a known name', () => {
    // Upper-case names in backticks on this page are error codes, except variables and the registries.
    const allowed = new Set([...specs.map((spec) => spec.env), 'ERROR_CODES', 'FIELD_RULES']);
    const named = [...errors.matchAll(/`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`/g)].map((match) => match[1]!);
    const unknown = named.filter((name) => !Object.hasOwn(ERROR_CODES, name) && !allowed.has(name));
    assert.deepEqual([...new Set(unknown)], [], 'names that look like error codes but are not');
  });

  test('the rules table lists exactly the FIELD_RULES, in backticks', () => {
    const documented = table(errors, 'Rule').map((row) => row[0]!);
    for (const cell of documented) assert.match(cell, /^`[a-z_]+`$/, `rule cell ${cell}`);
    const rules = documented.map(unquote);
    assert.deepEqual(duplicates(rules), [], 'rules listed twice');
    assert.deepEqual([...rules].sort(), Object.keys(FIELD_RULES).sort());
  });
});

describe('docs/*.md and README.md', () => {
  const pages = readdirSync(DOCS)
    .filter((name) => name.endsWith('.md'))
    .map((name) => ({ name: `docs/${name}`, text: read(name) }));
  if (existsSync(join(ROOT, 'README.md'))) {
    pages.push({ name: 'README.md', text: readFileSync(join(ROOT, 'README.md'), 'utf8') });
  }
  const variables = new Set(specs.map((spec) => spec.env));

  test('the pages to check are there', () => {
    const names = pages.map((page) => page.name);
    for (const page of ['configuration', 'errors', 'failure-modes', 'glossary', 'architecture']) {
      assert.ok(names.includes(`docs/${page}.md`), `docs/${page}.md is missing`);
    }
  });

  test('every MAILROOM_* variable they name exists in CONFIG_SCHEMA', () => {
    const unknown: string[] = [];
    for (const page of pages) {
      for (const [token] of page.text.matchAll(/\bMAILROOM_[A-Z0-9_]+/g)) {
        // A prefix written on its own (`MAILROOM_…`, `MAILROOM_*`) names no variable; MAILROOM_TEST_*
        // are the test harness's own (services to test against), not Mailroom's configuration.
        if (token.endsWith('_') || token.startsWith('MAILROOM_TEST_')) continue;
        if (!variables.has(token)) unknown.push(`${page.name}: ${token}`);
      }
    }
    assert.deepEqual([...new Set(unknown)], [], 'variables that do not exist');
  });
});
