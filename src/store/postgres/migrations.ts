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
