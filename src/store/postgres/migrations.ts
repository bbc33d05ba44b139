/**
 * Numbered schema migrations for the PostgreSQL store, recorded in `schema_migrations`. Each runs
 * once, in its own transaction. Never edit a released migration: add one.
 *
 * Several processes may start at once against one database: every migration transaction first
 * takes a transaction-scoped advisory lock for the schema, so they apply one after another and a
 * process that waited finds the work done.
 */
import type { Database, Sql } from './database.js';

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'jobs, events, recipients, tags, idempotency keys, outbox',
    // Documents (content, tags, metadata, event detail) are `json`, kept verbatim as SQLite keeps
    // its text: jsonb would refuse a body holding \u0000 or a lone surrogate (one such email would
    // fail its whole group commit) and would reorder the email's headers. Nothing queries inside them:
    // recipients and tags have tables of their own. Ids are COLLATE "C": byte order, as in SQLite.
    sql: `
      CREATE TABLE jobs (
        id                 text COLLATE "C" PRIMARY KEY,
        status             text NOT NULL,
        priority           smallint NOT NULL,          -- 0 high, 1 normal, 2 low
        attempts           integer NOT NULL DEFAULT 0,
        -- When the job next needs a worker: due time (queued, scheduled, deferred) or lease expiry
        -- (processing). NULL once the job is finished, so the partial index holds only live jobs.
        run_at             bigint,
        send_at            bigint,
        lease_token        text,
        lease_owner        text,
        message_id         text NOT NULL,
        content            json NOT NULL,              -- EmailContent
        tags               json NOT NULL,              -- array
        metadata           json NOT NULL,              -- object
        last_error         text,
        dead_letter_reason text,
        dead_lettered_at   bigint,
        created_at         bigint NOT NULL,
        updated_at         bigint NOT NULL
      );
      CREATE INDEX jobs_due ON jobs (priority, run_at) WHERE run_at IS NOT NULL;
      CREATE INDEX jobs_created ON jobs (created_at, id);
      CREATE INDEX jobs_status_created ON jobs (status, created_at);
      CREATE INDEX jobs_dead_letters ON jobs (dead_lettered_at) WHERE dead_letter_reason IS NOT NULL;

      CREATE TABLE job_events (
        id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id   text COLLATE "C" NOT NULL,
        type     text NOT NULL,
        at       bigint NOT NULL,
        attempt  integer NOT NULL,
        detail   json NOT NULL
      );
      CREATE INDEX job_events_job ON job_events (job_id, id);

      CREATE TABLE job_recipients (
        address text NOT NULL,
        job_id  text COLLATE "C" NOT NULL,
        PRIMARY KEY (address, job_id)
      );

      CREATE TABLE job_tags (
        tag    text NOT NULL,
        job_id text COLLATE "C" NOT NULL,
        PRIMARY KEY (tag, job_id)
      );

      CREATE TABLE idempotency_keys (
        scope        text NOT NULL,
        key          text NOT NULL,
        request_hash text NOT NULL,
        job_id       text COLLATE "C" NOT NULL,
        status       text NOT NULL,                    -- the status first answered, replayed to repeats
        created_at   bigint NOT NULL,
        PRIMARY KEY (scope, key)
      );
      CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

      -- Jobs whose message a dispatcher must publish to a network broker (see Outbox in store.ts).
      CREATE TABLE outbox (
        job_id       text COLLATE "C" PRIMARY KEY,
        priority     smallint NOT NULL,
        headers      jsonb NOT NULL DEFAULT '{}',      -- propagation headers (W3C trace context)
        available_at bigint NOT NULL                   -- due time, or the end of a dispatcher's hold
      );
      CREATE INDEX outbox_due ON outbox (priority, available_at);
    `,
  },
  {
    version: 2,
    name: 'rate limiter buckets and take function',
    // For src/flow/postgres-rate-limiter.ts; the arithmetic is src/flow/bucket-math.ts's. UNLOGGED:
    // a row updated on every send writes no WAL; a crash empties the table, and an empty table only
    // means every bucket is full. fillfactor leaves room in each page for HOT updates, and full_at
    // has no index for the same reason (the occasional prune scans the table, which stays small).
    sql: `
      CREATE UNLOGGED TABLE rate_buckets (
        key        text COLLATE "C" PRIMARY KEY,
        level      double precision NOT NULL,   -- tokens at updated_at; below zero: reserved
        updated_at timestamptz NOT NULL,
        full_at    timestamptz NOT NULL         -- full again from then on: the row may be deleted
      ) WITH (fillfactor = 50);

      -- One token from every bucket, all or none. keys come sorted (by the caller) and distinct:
      -- rows are locked in that order, so two takes over shared keys queue instead of deadlocking.
      -- The clock is read once every lock is held, so no take can be dated before one it waited for.
      CREATE FUNCTION rate_take(keys text[], rates double precision[], bursts double precision[],
                                max_wait_ms double precision, OUT granted boolean, OUT wait_ms double precision)
      LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
      DECLARE
        levels double precision[] := '{}';
        stamps timestamptz[] := '{}';
        found_level double precision;
        found_at timestamptz;
        now_ts timestamptz;
        exact_ms double precision := 0;
      BEGIN
        FOR i IN 1 .. coalesce(cardinality(keys), 0) LOOP
          LOOP
            SELECT b.level, b.updated_at INTO found_level, found_at FROM rate_buckets b
              WHERE b.key = keys[i] FOR UPDATE;
            EXIT WHEN FOUND;
            -- A new bucket starts full. Another take may be inserting it too (then this waits for it
            -- and inserts nothing), or a prune deleting it: either way, look again.
            INSERT INTO rate_buckets (key, level, updated_at, full_at)
              VALUES (keys[i], bursts[i], clock_timestamp(), clock_timestamp())
              ON CONFLICT (key) DO NOTHING;
          END LOOP;
          levels[i] := found_level;
          stamps[i] := found_at;
        END LOOP;
        now_ts := clock_timestamp();
        FOR i IN 1 .. coalesce(cardinality(keys), 0) LOOP
          levels[i] := least(bursts[i],
            levels[i] + greatest(0, extract(epoch FROM now_ts - stamps[i])::double precision) * rates[i]);
          IF levels[i] < 1 THEN exact_ms := greatest(exact_ms, (1 - levels[i]) / rates[i] * 1000); END IF;
        END LOOP;
        wait_ms := greatest(0, ceil(exact_ms - 1e-6));
        granted := wait_ms <= max_wait_ms;
        IF granted THEN
          UPDATE rate_buckets b
             SET level = v.level - 1, updated_at = now_ts,
                 full_at = now_ts + make_interval(secs => (v.burst - v.level + 1) / v.rate)
            FROM unnest(keys, levels, rates, bursts) AS v(key, level, rate, burst)
           WHERE b.key = v.key;
        END IF;
      END $$;
    `,
  },
  {
    version: 3,
    name: 'rate_take takes several tokens',
    // A batch of emails costs one token each from the API key's bucket, in one atomic take. The
    // 4-argument function is replaced by one whose `tokens` defaults to 1, so a process still
    // calling it the old way (during a rolling upgrade) takes one token as before.
    sql: `
      DROP FUNCTION rate_take(text[], double precision[], double precision[], double precision);

      CREATE FUNCTION rate_take(keys text[], rates double precision[], bursts double precision[],
                                max_wait_ms double precision, tokens double precision DEFAULT 1,
                                OUT granted boolean, OUT wait_ms double precision)
      LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
      DECLARE
        levels double precision[] := '{}';
        stamps timestamptz[] := '{}';
        found_level double precision;
        found_at timestamptz;
        now_ts timestamptz;
        exact_ms double precision := 0;
      BEGIN
        FOR i IN 1 .. coalesce(cardinality(keys), 0) LOOP
          LOOP
            SELECT b.level, b.updated_at INTO found_level, found_at FROM rate_buckets b
              WHERE b.key = keys[i] FOR UPDATE;
            EXIT WHEN FOUND;
            -- A new bucket starts full. Another take may be inserting it too (then this waits for it
            -- and inserts nothing), or a prune deleting it: either way, look again.
            INSERT INTO rate_buckets (key, level, updated_at, full_at)
              VALUES (keys[i], bursts[i], clock_timestamp(), clock_timestamp())
              ON CONFLICT (key) DO NOTHING;
          END LOOP;
          levels[i] := found_level;
          stamps[i] := found_at;
        END LOOP;
        now_ts := clock_timestamp();
        FOR i IN 1 .. coalesce(cardinality(keys), 0) LOOP
          levels[i] := least(bursts[i],
            levels[i] + greatest(0, extract(epoch FROM now_ts - stamps[i])::double precision) * rates[i]);
          IF levels[i] < tokens THEN exact_ms := greatest(exact_ms, (tokens - levels[i]) / rates[i] * 1000); END IF;
        END LOOP;
        wait_ms := greatest(0, ceil(exact_ms - 1e-6));
        granted := wait_ms <= max_wait_ms;
        IF granted THEN
          UPDATE rate_buckets b
             SET level = v.level - tokens, updated_at = now_ts,
                 full_at = now_ts + make_interval(secs => (v.burst - v.level + tokens) / v.rate)
            FROM unnest(keys, levels, rates, bursts) AS v(key, level, rate, burst)
           WHERE b.key = v.key;
        END IF;
      END $$;
    `,
  },
  {
    version: 4,
    name: 'templates and their versions',
    sql: `
      CREATE TABLE templates (
        code           text COLLATE "C" PRIMARY KEY,
        latest_version integer NOT NULL,
        created_at     bigint NOT NULL
      );

      CREATE TABLE template_versions (
        code               text COLLATE "C" NOT NULL REFERENCES templates ON DELETE CASCADE,
        version            integer NOT NULL,
        subject            text NOT NULL,
        html               text,                       -- compiled from mjml when that is set
        text               text,
        mjml               text,
        required_variables json NOT NULL,              -- array of dotted paths
        saved_at           bigint NOT NULL,
        PRIMARY KEY (code, version)
      );
    `,
  },
  {
    version: 5,
    name: 'webhook endpoints, deliveries, tries; events trigger for webhooks and live status',
    // One statement-level trigger on job_events does two things in the transaction that writes the
    // events: adds a webhook delivery for every enabled endpoint subscribed to each event (so no
    // committed transition can miss its webhook), and NOTIFYs the new event ids, which PostgreSQL
    // delivers to listeners when the transaction commits, in commit order (live status across
    // processes). Ids go in chunks: a NOTIFY payload must stay under 8000 bytes.
    // Event ids come from a sequence, so a transaction can commit events with lower ids than one
    // that committed before it. Each event keeps its transaction's id and the oldest transaction
    // still running when it was written (`tx_id`, `tx_xmin`): whatever commits after an event and
    // has a lower id was running then, so its tx_id >= that event's tx_xmin. A resume after an event reads
    // those too (PostgresEvents.eventsAfter). Old rows keep NULL: they predate any resume point.
    sql: `
      ALTER TABLE job_events ADD COLUMN tx_id xid8, ADD COLUMN tx_xmin xid8;
      ALTER TABLE job_events ALTER COLUMN tx_id SET DEFAULT pg_current_xact_id(),
        ALTER COLUMN tx_xmin SET DEFAULT pg_snapshot_xmin(pg_current_snapshot());

      CREATE TABLE webhook_endpoints (
        id              text COLLATE "C" PRIMARY KEY,
        url             text NOT NULL,
        events          text[] NOT NULL,
        description     text,
        secret          text NOT NULL,
        enabled         boolean NOT NULL,
        disabled_reason text,
        source          text NOT NULL,
        created_at      bigint NOT NULL,
        updated_at      bigint NOT NULL
      );

      CREATE TABLE webhook_deliveries (
        id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        endpoint_id     text COLLATE "C" NOT NULL REFERENCES webhook_endpoints ON DELETE CASCADE,
        event_id        bigint NOT NULL,
        event_type      text NOT NULL,
        job_id          text COLLATE "C" NOT NULL,
        status          text NOT NULL,                 -- pending, delivered, failed
        attempts        integer NOT NULL DEFAULT 0,
        next_attempt_at bigint,                        -- NULL once delivered or failed
        created_at      bigint NOT NULL
      );
      CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
        WHERE next_attempt_at IS NOT NULL;
      CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
      CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries (endpoint_id, next_attempt_at)
        WHERE next_attempt_at IS NOT NULL;
      CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);

      CREATE TABLE webhook_attempts (
        delivery_id bigint NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
        at          bigint NOT NULL,
        status_code integer,
        error       text,
        duration_ms integer NOT NULL
      );
      CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, at);

      CREATE FUNCTION job_events_after_insert() RETURNS trigger
      LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
      DECLARE
        ids text;
      BEGIN
        INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, job_id, status, next_attempt_at, created_at)
        SELECT e.id, n.id, 'email.' || n.type, n.job_id, 'pending', n.at, n.at
          FROM inserted n
          JOIN webhook_endpoints e ON e.enabled AND ('email.' || n.type) = ANY (e.events);

        FOR ids IN
          SELECT string_agg(id::text, ',' ORDER BY id)
            FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / 400 AS chunk FROM inserted) numbered
           GROUP BY chunk ORDER BY chunk
        LOOP
          PERFORM pg_notify('job_events.' || TG_TABLE_SCHEMA, ids);
        END LOOP;
        RETURN NULL;
      END $$;

      CREATE TRIGGER job_events_after_insert AFTER INSERT ON job_events
        REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION job_events_after_insert();
    `,
  },
];

/** Creates the schema if missing and applies the migrations it lacks. */
export async function migrate(db: Database, schema: string): Promise<void> {
  await db.transaction(async (sql) => {
    await lockMigrations(sql, schema);
    await createSchema(sql, schema);
  });
  for (const migration of MIGRATIONS) {
    await db.transaction(async (sql) => {
      await lockMigrations(sql, schema);
      const applied = await sql.query('SELECT 1 FROM schema_migrations WHERE version = $1', [
        migration.version,
      ]);
      if (applied.rowCount) return;
      await sql.query(migration.sql);
      await sql.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, now())', [
        migration.version,
        migration.name,
      ]);
    });
  }
}

/** Held until the transaction ends; one lock per schema, so other schemas migrate undisturbed. */
async function lockMigrations(sql: Sql, schema: string): Promise<void> {
  await sql.query("SELECT pg_advisory_xact_lock(hashtext('mailroom:migrate'), hashtext($1))", [schema]);
}

/**
 * CREATE SCHEMA IF NOT EXISTS still needs the CREATE privilege on the database: check first, so a
 * role that was given an existing schema (and no more) can run Mailroom.
 */
async function createSchema(sql: Sql, schema: string): Promise<void> {
  const found = await sql.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
  // The name passed checkSchemaName: a plain identifier, safe to splice in.
  if (!found.rowCount) await sql.query(`CREATE SCHEMA "${schema}"`);
  await sql.query(`CREATE TABLE IF NOT EXISTS "${schema}".schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL
  )`);
}
