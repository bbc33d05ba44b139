/**
 * deploy/ cannot be run here (no Docker engine), so this test holds it to Mailroom itself:
 * (a) every variable set on a Mailroom container is one Mailroom reads, and the values pass its own
 * configuration checks; (b) every command a container runs is a real `mailroom` command; (c) every
 * metric the dashboard queries is in the /metrics of a running Mailroom, with the labels it uses;
 * (d) the Dockerfile builds in stages and runs as a non-root user with a health check; (e) every
 * service another waits for can say it is ready, and the ports the pieces use agree.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { CONFIG_SCHEMA, type Config, OTEL_VARIABLES } from '../src/config/config-schema.js';
import { loadConfig, storeKind } from '../src/config/load-config.js';
import { mixedOutcomeSink } from './support/smtp-sink.js';
import { SAMPLE_EMAIL, startTestApp, type TestApp } from './support/test-app.js';
import { waitFor } from './support/wait-for.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DEPLOY = join(ROOT, 'deploy');
const read = (path: string) => readFileSync(join(DEPLOY, path), 'utf8');

interface Healthcheck {
  test?: string | string[];
  disable?: boolean;
}
interface Service {
  image?: string;
  build?: unknown;
  command?: string | string[];
  entrypoint?: unknown;
  environment?: Record<string, unknown> | string[];
  healthcheck?: Healthcheck;
  depends_on?: string[] | Record<string, { condition?: string }>;
  restart?: string;
  ports?: (string | { published?: string | number })[];
  volumes?: (string | { source?: string; target?: string })[];
}
interface Compose {
  services: Record<string, Service>;
}

/**
 * Compose's interpolation, resolved as on a machine with nothing set: `${VAR:-default}` and
 * `${VAR-default}` give the default, `$$` is a dollar. A reference without a default would be empty
 * there, so it is refused: the file must work as it is.
 */
function interpolate(value: string, where: string): string {
  return value.replace(/\$(?:\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g, (match, braced?: string) => {
    if (match === '$$') return '$';
    const parts = braced === undefined ? undefined : /^[A-Za-z_][A-Za-z0-9_]*:?-(.*)$/s.exec(braced);
    if (!parts) throw new Error(`${where}: ${match} has no default, so it is empty unless the user sets it`);
    return parts[1]!;
  });
}

function interpolateAll(node: unknown, where: string): unknown {
  if (typeof node === 'string') return interpolate(node, where);
  if (Array.isArray(node)) return node.map((item, i) => interpolateAll(item, `${where}[${i}]`));
  if (node !== null && typeof node === 'object') {
    return Object.fromEntries(
      Object.entries(node).map(([key, value]) => [key, interpolateAll(value, `${where}.${key}`)]),
    );
  }
  return node;
}

// `merge`: the file shares settings through YAML merge keys (`<<: *mailroom-env`), as Compose does.
const rawCompose = parse(read('docker-compose.yml'), { merge: true }) as Compose;
const compose = interpolateAll(rawCompose, 'docker-compose.yml') as Compose;
const services = compose.services;

/** The Mailroom containers: the ones that run the image deploy/Dockerfile builds. */
const mailroomServices = Object.entries(services).filter(
  ([, service]) => service.build !== undefined || /^mailroom[:/]/.test(service.image ?? ''),
);

/** A service's environment as Compose hands it over: list or map form, values as strings. */
function environmentOf(name: string, service: Service): Record<string, string> {
  const env: Record<string, string> = {};
  const entries = Array.isArray(service.environment)
    ? service.environment.map((line) => {
        const at = line.indexOf('=');
        // `- NAME` alone passes the host's value through: unknown here.
        if (at < 0) throw new Error(`${name}: ${line} takes its value from the host`);
        return [line.slice(0, at), line.slice(at + 1)] as const;
      })
    : Object.entries(service.environment ?? {});
  for (const [key, value] of entries) {
    if (value === null || value === undefined)
      throw new Error(`${name}: ${key} takes its value from the host`);
    env[key] = String(value);
  }
  return env;
}

function commandOf(service: Service): string[] {
  if (Array.isArray(service.command)) return service.command.map(String);
  return (service.command ?? '').split(/\s+/).filter(Boolean);
}

/** Each Mailroom service's configuration, as Mailroom would load it from that environment. */
function configOf(name: string): Config {
  return loadConfig(environmentOf(name, services[name]!));
}

/** Mailroom's own variables, and the standard OpenTelemetry ones its tracing honours. */
const SCHEMA_VARIABLES = new Set<string>([
  ...Object.values(CONFIG_SCHEMA).map((spec) => spec.env),
  ...OTEL_VARIABLES,
]);

describe('deploy/docker-compose.yml: environment', () => {
  test('the Mailroom services are there', () => {
    assert.deepEqual(mailroomServices.map(([name]) => name).sort(), ['api', 'inbox', 'migrate', 'worker']);
  });

  test('sets only variables that are in CONFIG_SCHEMA', () => {
    const unknown = mailroomServices.flatMap(([name, service]) =>
      Object.keys(environmentOf(name, service))
        .filter((variable) => !SCHEMA_VARIABLES.has(variable))
        .map((variable) => `${name}: ${variable}`),
    );
    assert.deepEqual(unknown, [], 'variables Mailroom does not read (see src/config/config-schema.ts)');
  });

  test("the values pass Mailroom's own configuration checks", () => {
    const invalid: string[] = [];
    for (const [name] of mailroomServices) {
      try {
        configOf(name);
      } catch (error) {
        invalid.push(`${name}: ${(error as Error).message}`);
      }
    }
    assert.deepEqual(invalid, [], 'services whose configuration would stop Mailroom at start');
  });

  test('the API and the workers share PostgreSQL (the CLI refuses them apart on SQLite)', () => {
    for (const [name, service] of mailroomServices) {
      if (!['api', 'worker'].includes(commandOf(service)[0]!)) continue;
      assert.equal(storeKind(configOf(name)), 'postgres', `${name}: MAILROOM_DATABASE_URL`);
      assert.match(configOf(name).brokerUrl, /^amqp:\/\/[^@]+@rabbitmq:5672/, `${name}: MAILROOM_BROKER_URL`);
    }
  });

  test('no variable the Dockerfile or deploy/README.md names is unknown to Mailroom', () => {
    const fromDockerfile = [...dockerfileInstructions().matchAll(/^ENV\s+(.+)$/gm)].flatMap(([, rest]) =>
      [...rest!.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=/g)].map(([, name]) => name!),
    );
    const fromReadme = [...read('README.md').matchAll(/\bMAILROOM_[A-Z0-9_]*[A-Z0-9]\b/g)].map(
      ([name]) => name,
    );
    const unknown = [...new Set([...fromDockerfile, ...fromReadme])].filter(
      (name) => !SCHEMA_VARIABLES.has(name),
    );
    assert.deepEqual(unknown, []);
  });
});

/** The command words of `mailroom help`, from the CLI itself (run from source, as test/cli.test.ts does). */
function cliCommands(): Set<string> {
  const cwd = mkdtempSync(join(tmpdir(), 'mailroom-deploy-'));
  try {
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([name]) => !name.startsWith('MAILROOM_') && name !== 'LOG_LEVEL'),
    );
    const run = spawnSync(
      process.execPath,
      ['--import', import.meta.resolve('tsx'), join(ROOT, 'src/cli.ts'), 'help'],
      { cwd, env, encoding: 'utf8', timeout: 30_000 },
    );
    assert.equal(run.status, 0, `mailroom help failed: ${run.stderr}`);
    const [, commands = ''] = run.stdout.split(/^Commands:$/m);
    return new Set([...commands.matchAll(/^ {2}([a-z][a-z-]*)\b/gm)].map(([, word]) => word!));
  } finally {
    rmSync(cwd, { recursive: true, force: true });
  }
}

describe('commands', () => {
  let commands: Set<string>;
  before(() => {
    commands = cliCommands();
  });

  test('`mailroom help` lists the commands (the parse below works)', () => {
    for (const word of ['start', 'api', 'worker', 'migrate', 'inbox', 'send'])
      assert.ok(commands.has(word), word);
  });

  test('every Mailroom service runs a real command, the one its role needs', () => {
    const unknown: string[] = [];
    const run: Record<string, string> = {};
    for (const [name, service] of mailroomServices) {
      assert.equal(service.entrypoint, undefined, `${name}: the image's entrypoint is the CLI; keep it`);
      const [word = '(none: the image runs start)'] = commandOf(service);
      if (!commands.has(word)) unknown.push(`${name}: ${word}`);
      run[name] = word;
    }
    assert.deepEqual(unknown, [], `not commands of \`mailroom help\` (${[...commands].join(', ')})`);
    assert.deepEqual(run, { migrate: 'migrate', api: 'api', worker: 'worker', inbox: 'inbox' });
  });

  test("the image's entry point is the CLI and its default command is real", () => {
    const text = dockerfileInstructions();
    assert.match(text, /^ENTRYPOINT \["node", "bin\/mailroom\.js"\]$/m);
    assert.ok(existsSync(join(ROOT, 'bin/mailroom.js')));
    const cmd = /^CMD (\[.*\])$/m.exec(text);
    assert.ok(cmd, 'CMD');
    const [word] = JSON.parse(cmd[1]!) as string[];
    assert.ok(commands.has(word!), `CMD ${word}`);
  });
});

// ---- (c) metrics ------------------------------------------------------------------------------------

const PROMQL_KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'and',
  'or',
  'unless',
  'offset',
  'inf',
  'nan',
]);

/**
 * The metric (series) names a PromQL expression reads. Strings, Grafana variables, range and
 * subquery brackets, label matchers and the label lists of `by`/`without`/`on`/`ignoring`/`group_*`
 * are taken out first; what is left that looks like a name and is not called (`rate(`) or a keyword
 * is a metric.
 */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\$\{[^}]*\}|\$\w+/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\boffset\s+-?[0-9a-z]+/g, ' ');
  // Whole names only: the look-ahead must not let `rate(` match as `rat`.
  const names = [...stripped.matchAll(/(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*(?![\w:]|\s*\()/g)].map(
    ([name]) => name,
  );
  return [...new Set(names.filter((name) => !PROMQL_KEYWORDS.has(name.toLowerCase())))];
}

/** `name{label=…, other!~…}` in an expression: the selector's metric and the labels it matches on. */
function selectors(expr: string): { metric: string; labels: string[] }[] {
  const noStrings = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  return [...noStrings.matchAll(/([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}/g)].map(([, metric, body]) => ({
    metric: metric!,
    labels: [...body!.matchAll(/([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)/g)].map(([, label]) => label!),
  }));
}

/** Labels grouped on: `by (a, b)`, `without (c)`. */
function groupingLabels(expr: string): string[] {
  return [...expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)].flatMap(([, list]) =>
    list!
      .split(',')
      .map((label) => label.trim())
      .filter(Boolean),
  );
}

interface Exposition {
  /** Every series name a query can read: counters and gauges by name, histograms' _bucket/_sum/_count. */
  readonly series: Set<string>;
  /** The label names seen on each series name's samples (none when it has no sample yet). */
  readonly labels: Map<string, Set<string>>;
}

function readExposition(text: string): Exposition {
  const series = new Set<string>();
  const labels = new Map<string, Set<string>>();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const suffixes =
      type === 'histogram'
        ? ['_bucket', '_sum', '_count']
        : type === 'summary'
          ? ['', '_sum', '_count']
          : [''];
    for (const suffix of suffixes) series.add(name! + suffix);
  }
  for (const [, name, body = ''] of text.matchAll(/^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? \S+$/gm)) {
    const seen = labels.get(name!) ?? new Set<string>();
    for (const [, label] of body.matchAll(/([A-Za-z_][A-Za-z0-9_]*)="(?:[^"\\]|\\.)*"/g)) seen.add(label!);
    labels.set(name!, seen);
  }
  return { series, labels };
}

/** Every PromQL expression under `node` (`expr` keys: Grafana targets, Prometheus rules), with where. */
function expressions(node: unknown, where: string): { where: string; expr: string }[] {
  if (Array.isArray(node))
    return node.flatMap((item, i) =>
      expressions(item, where.endsWith('.targets') ? where : `${where}[${i}]`),
    );
  if (node === null || typeof node !== 'object') return [];
  const object = node as Record<string, unknown>;
  const here = typeof object.title === 'string' ? object.title : where;
  return Object.entries(object).flatMap(([key, value]) =>
    key === 'expr' && typeof value === 'string'
      ? [
          {
            where:
              typeof object.refId === 'string' ? `${where.replace(/\.targets$/, '')} ${object.refId}` : here,
            expr: value,
          },
        ]
      : expressions(value, `${here}.${key}`),
  );
}

const dashboard = JSON.parse(read('grafana/dashboards/mailroom.json')) as { panels: unknown[] };
const prometheus = parse(read('prometheus/prometheus.yml')) as {
  scrape_configs: {
    job_name: string;
    metrics_path?: string;
    static_configs?: { targets: string[] }[];
    dns_sd_configs?: { names: string[]; port: number; type?: string }[];
  }[];
  rule_files?: string[];
};
const queries = [
  ...expressions(dashboard, 'mailroom.json'),
  ...expressions(prometheus, 'prometheus.yml'),
  ...(prometheus.rule_files ?? []).flatMap((file) =>
    expressions(parse(read(join('prometheus', file))), `prometheus/${file}`),
  ),
];

/** Labels every scraped series gets from Prometheus (target labels), whatever Mailroom exports. */
const TARGET_LABELS = ['instance', 'job'];

describe('metricNames (the extractor the dashboard check relies on)', () => {
  const cases: [string, string[]][] = [
    [
      'histogram_quantile(0.99, sum by (le, route) (rate(mailroom_http_request_duration_seconds_bucket[$__rate_interval])))',
      ['mailroom_http_request_duration_seconds_bucket'],
    ],
    ['max by (status) (mailroom_jobs{status=~"queued|deferred"})', ['mailroom_jobs']],
    [
      'sum(rate(a_sum[5m])) / sum(rate(a_count[5m] offset 1h)) > bool 0.5 and on (instance) up',
      ['a_sum', 'a_count', 'up'],
    ],
    ['sum(rate(x_total{job="mailroom-api"}[1m])) by (route) * 1e3', ['x_total']],
    ['topk(5, sum without (instance) (increase(y_total[$window])))', ['y_total']],
    ['rate(z_total[5m:1m])', ['z_total']],
  ];
  for (const [expr, expected] of cases) {
    test(expr, () => assert.deepEqual(metricNames(expr), expected));
  }
});

describe('metrics the dashboard and Prometheus query', () => {
  let t: TestApp;
  let exposition: Exposition;
  before(async () => {
    // One email sent, one failed at once (5xx), one deferred once (4xx) then sent: every outcome's
    // series exists with its labels. A transport rate (2/s, burst 1) makes the sends after the first
    // wait in place, so the rate-limit wait series have samples whose labels are checked too.
    const sink = mixedOutcomeSink();
    t = await startTestApp({ MAILROOM_RATE_PER_SEC: '2', MAILROOM_RATE_BURST: '1' }, sink, 'embedded');
    const ids = [
      await t.send(SAMPLE_EMAIL),
      await t.send({ ...SAMPLE_EMAIL, to: 'bad@example.com' }),
      await t.send({ ...SAMPLE_EMAIL, to: 'later@example.com' }),
    ];
    for (const id of ids) await t.waitForStatus(id, ['sent', 'failed']);
    const view = await t.waitForStatus(ids[0]!, 'sent');
    assert.equal(view.status, 'sent');
    const text = await waitFor('/metrics to count the sent emails', async () => {
      const response = await t.request('GET', '/metrics');
      assert.equal(response.statusCode, 200);
      return /^mailroom_emails_sent_total\{[^}]*\} 2$/m.test(response.body) && response.body;
    });
    exposition = readExposition(text);
  });
  after(() => t?.stop());

  test('there are queries to check', () => {
    assert.ok(queries.length >= 10, `${queries.length} queries found`);
    const empty = queries.filter(({ expr }) => metricNames(expr).length === 0);
    assert.deepEqual(empty, [], 'queries that read no metric');
  });

  test('every metric they read is in /metrics', () => {
    const unknown = queries.flatMap(({ where, expr }) =>
      metricNames(expr)
        .filter((name) => !exposition.series.has(name))
        .map((name) => `${where}: ${name}`),
    );
    assert.deepEqual(
      unknown,
      [],
      'metrics that Mailroom does not export (or with the wrong suffix for its type)',
    );
  });

  test('every label they match, group or name in a legend is on those metrics', (context) => {
    const wrong: string[] = [];
    const unchecked = new Set<string>();
    const targets = (node: unknown): { where: string; expr: string; legend: string }[] => {
      if (Array.isArray(node)) return node.flatMap(targets);
      if (node === null || typeof node !== 'object') return [];
      const object = node as Record<string, unknown>;
      const found = Array.isArray(object.targets)
        ? (object.targets as { expr?: string; legendFormat?: string; refId?: string }[]).map((target) => ({
            where: `${String(object.title)} ${target.refId}`,
            expr: target.expr ?? '',
            legend: target.legendFormat ?? '',
          }))
        : [];
      return [...found, ...Object.values(object).flatMap(targets)];
    };
    const legendOf = new Map(targets(dashboard).map((target) => [target.where, target.legend]));
    for (const { where, expr } of queries) {
      const names = metricNames(expr);
      const missing = names.filter((name) => (exposition.labels.get(name)?.size ?? 0) === 0);
      if (missing.length > 0) {
        for (const name of missing) unchecked.add(name);
        continue;
      }
      const available = new Set([
        ...TARGET_LABELS,
        ...names.flatMap((name) => [...exposition.labels.get(name)!]),
      ]);
      for (const { metric, labels } of selectors(expr)) {
        for (const label of labels) {
          if (!exposition.labels.get(metric)?.has(label)) wrong.push(`${where}: ${metric}{${label}}`);
        }
      }
      for (const label of groupingLabels(expr)) {
        if (!available.has(label)) wrong.push(`${where}: by (${label})`);
      }
      for (const [, label] of (legendOf.get(where) ?? '').matchAll(/\{\{\s*(\w+)\s*\}\}/g)) {
        if (!available.has(label!)) wrong.push(`${where}: legend {{${label}}}`);
      }
    }
    if (unchecked.size > 0)
      context.diagnostic(`no sample yet, labels not checked: ${[...unchecked].sort().join(', ')}`);
    assert.deepEqual(wrong, [], 'labels those metrics do not have');
  });

  test('every panel uses the provisioned Prometheus datasource', () => {
    const datasources = parse(read('grafana/provisioning/datasources/datasources.yml')) as {
      datasources: { uid: string; type: string; url: string }[];
    };
    const uids = new Set(datasources.datasources.map((source) => source.uid));
    const refs = JSON.stringify(dashboard).matchAll(/"datasource":\{"type":"([^"]+)","uid":"([^"]+)"\}/g);
    const unknown = [...refs].filter(([, , uid]) => !uids.has(uid!)).map(([ref]) => ref);
    assert.deepEqual(unknown, []);
    const source = datasources.datasources.find((candidate) => candidate.type === 'prometheus');
    assert.equal(source?.url, 'http://prometheus:9090');
    assert.ok(services.prometheus, 'a prometheus service');
  });
});

// ---- (d) Dockerfile ---------------------------------------------------------------------------------

/** The Dockerfile's instructions, one a line: comments dropped, continuation lines joined. */
function dockerfileInstructions(): string {
  return read('Dockerfile')
    .split('\n')
    .filter((line) => !/^\s*#/.test(line))
    .join('\n')
    .replace(/\\\n\s*/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
    .join('\n');
}

describe('deploy/Dockerfile', () => {
  const lines = dockerfileInstructions().split('\n');
  const stages: { name: string; lines: string[] }[] = [];
  for (const line of lines) {
    const from = /^FROM\s+\S+(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from) stages.push({ name: from[1] ?? String(stages.length), lines: [] });
    else stages.at(-1)?.lines.push(line);
  }
  const last = stages.at(-1)!;
  const inLast = (instruction: string) => last.lines.filter((line) => line.startsWith(`${instruction} `));

  test('builds in two or more stages', () => {
    assert.ok(stages.length >= 2, `${stages.length} FROM`);
    assert.match(lines.find((line) => line.startsWith('ARG NODE_IMAGE=')) ?? '', /=node:20[-.]/);
  });

  test('the last stage runs as a non-root user', () => {
    const user = inLast('USER').at(-1)?.split(/\s+/)[1];
    assert.ok(user, 'no USER in the last stage: the process would run as root');
    assert.doesNotMatch(user, /^(root|0)(:|$)/);
  });

  test('the last stage has a health check against /health', () => {
    const check = inLast('HEALTHCHECK').at(-1);
    assert.ok(check, 'no HEALTHCHECK in the last stage');
    assert.doesNotMatch(check, /HEALTHCHECK\s+NONE/);
    assert.match(check, /\/health/);
    assert.doesNotMatch(check, /\bcurl\b|\bwget\b/, 'slim images have neither');
  });

  test('the last stage gets production dependencies only, with dist/, bin/ and package.json', () => {
    for (const run of inLast('RUN')) {
      if (/npm (ci|install|i)\b/.test(run)) assert.match(run, /--omit=dev/, run);
      assert.doesNotMatch(run, /\bg\+\+|build-essential/, 'no build toolchain at run time');
    }
    const copies = inLast('COPY').join('\n');
    for (const needed of ['dist', 'bin', 'package.json', 'node_modules']) {
      assert.match(copies, new RegExp(`[ /]${needed.replace('.', '\\.')}\\b`), `COPY ${needed}`);
    }
    const modules = inLast('COPY').find((copy) => /node_modules/.test(copy));
    const from = /--from=(\S+)/.exec(modules ?? '')?.[1];
    const source = stages.find((stage) => stage.name === from);
    assert.ok(source, `node_modules comes from stage ${from}`);
    assert.ok(
      source.lines.some((line) => /^RUN .*npm (prune|ci)\b[^&]*--omit=dev/.test(line)),
      `stage ${from} must prune dev dependencies`,
    );
    assert.ok(
      source.lines.some((line) => /^RUN .*better-sqlite3/.test(line)),
      `stage ${from} must build better-sqlite3's addon (npm ci --ignore-scripts skips it)`,
    );
  });

  test('what it copies from the build context exists and is not excluded', () => {
    const ignored = readFileSync(join(DEPLOY, 'Dockerfile.dockerignore'), 'utf8')
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line && !line.startsWith('#'));
    for (const copy of lines.filter((line) => /^COPY /.test(line) && !/--from=/.test(line))) {
      const sources = copy.split(/\s+/).slice(1, -1);
      for (const path of sources) {
        assert.ok(existsSync(join(ROOT, path)), `${copy}: ${path} is not in the repository`);
        assert.ok(
          !ignored.includes(path.replace(/\/$/, '')),
          `${copy}: ${path} is in Dockerfile.dockerignore`,
        );
      }
    }
  });

  test('exposes the API and metrics ports', () => {
    const exposed = lines
      .filter((line) => line.startsWith('EXPOSE '))
      .flatMap((line) => line.split(/\s+/).slice(1));
    for (const port of ['3000', '9464', '8025']) assert.ok(exposed.includes(port), `EXPOSE ${port}`);
  });
});

// ---- (e) health checks and ports ------------------------------------------------------------------

function hasHealthcheck(service: Service | undefined): boolean {
  return service?.healthcheck?.test !== undefined && service.healthcheck.disable !== true;
}

describe('deploy/docker-compose.yml: dependencies, health checks, ports', () => {
  test('every dependency has a condition, and can meet it', () => {
    const problems: string[] = [];
    for (const [name, service] of Object.entries(services)) {
      const dependsOn = service.depends_on ?? {};
      if (Array.isArray(dependsOn)) {
        problems.push(`${name}: depends_on as a list only waits for the container to start; give conditions`);
        continue;
      }
      for (const [dependency, { condition } = {}] of Object.entries(dependsOn)) {
        const target = services[dependency];
        if (!target) problems.push(`${name} → ${dependency}: no such service`);
        else if (condition === 'service_healthy' && !hasHealthcheck(target))
          problems.push(`${name} → ${dependency}: waits for it to be healthy, but it has no health check`);
        else if (condition === 'service_completed_successfully' && target.restart !== 'no')
          problems.push(`${name} → ${dependency}: waits for it to exit, but it restarts`);
        else if (condition !== 'service_healthy' && condition !== 'service_completed_successfully')
          problems.push(`${name} → ${dependency}: condition ${condition ?? '(none)'}`);
      }
    }
    assert.deepEqual(problems, []);
  });

  test('every long-running service has a health check', () => {
    const without = Object.entries(services)
      .filter(([, service]) => service.restart !== 'no' && !hasHealthcheck(service))
      .map(([name]) => name);
    assert.deepEqual(without, []);
  });

  test("Mailroom's health checks ask the port its role listens on", () => {
    const expected: Record<string, (config: Config) => string> = {
      api: (config) => `http://127.0.0.1:${config.port}/ready`,
      worker: (config) => `http://127.0.0.1:${config.metricsPort}/ready`,
      inbox: (config) => `http://127.0.0.1:${config.inboxHttpPort}/health`,
    };
    for (const [name, service] of mailroomServices) {
      const role = commandOf(service)[0]!;
      if (!expected[role]) continue;
      const check = [service.healthcheck?.test ?? []].flat().join(' ');
      assert.ok(check.includes(expected[role](configOf(name))), `${name}: ${check}`);
    }
  });

  test("Prometheus scrapes the ports Mailroom's roles serve /metrics on", () => {
    const portOf = (host: string): number | undefined => {
      const service = services[host];
      if (!service) return undefined;
      const config = configOf(host);
      const role = commandOf(service)[0];
      return role === 'worker'
        ? config.metricsPort
        : role === 'api' || role === 'start'
          ? config.port
          : undefined;
    };
    const targets = prometheus.scrape_configs.flatMap((job) => {
      assert.equal(job.metrics_path ?? '/metrics', '/metrics', job.job_name);
      return [
        ...(job.static_configs ?? []).flatMap((group) => group.targets),
        ...(job.dns_sd_configs ?? []).flatMap((sd) => sd.names.map((host) => `${host}:${sd.port}`)),
      ];
    });
    const wrong = targets.filter((target) => {
      const [host, port] = target.split(':');
      return portOf(host!) !== Number(port);
    });
    assert.deepEqual(wrong, [], 'targets that are not a Mailroom role on its metrics port');
    for (const role of ['api', 'worker']) {
      assert.ok(
        targets.some((target) => target.startsWith(`${role}:`)),
        `Prometheus does not scrape ${role}`,
      );
    }
  });

  test('no two services publish the same host port', () => {
    const published = Object.entries(services).flatMap(([name, service]) =>
      (service.ports ?? []).map((port) => {
        const host =
          typeof port === 'string' ? port.split(':').slice(0, -1).join(':') : String(port.published);
        return [host, name] as const;
      }),
    );
    const seen = new Map<string, string>();
    for (const [port, name] of published) {
      assert.ok(port, `${name}: publish on a fixed host port`);
      assert.ok(!seen.has(port), `${name} and ${seen.get(port)} both publish ${port}`);
      seen.set(port, name);
    }
  });

  test('Grafana gets its provisioning and the dashboard where the provider looks', () => {
    const provider = parse(read('grafana/provisioning/dashboards/dashboards.yml')) as {
      providers: { options: { path: string } }[];
    };
    const mounts = (services.grafana?.volumes ?? []).map(String);
    assert.ok(mounts.some((mount) => mount.startsWith('./grafana/provisioning:/etc/grafana/provisioning')));
    assert.ok(
      mounts.some((mount) => mount.startsWith(`./grafana/dashboards:${provider.providers[0]!.options.path}`)),
      `mount ./grafana/dashboards at ${provider.providers[0]!.options.path}`,
    );
  });
});
