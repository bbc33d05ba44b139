/**
 * Numbered schema migrations for the SQLite store. The database's `user_version` records the last
 * one applied; each runs once, in its own transaction. Never edit a released migration: add one.
 */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'jobs, events, recipients, tags, idempotency keys',
    sql: `
      CREATE TABLE jobs (
        id                 TEXT PRIMARY KEY,
        status             TEXT NOT NULL,
        priority           INTEGER NOT NULL,           -- 0 high, 1 normal, 2 low
        attempts           INTEGER NOT NULL DEFAULT 0,
        -- When the job next needs a worker: due time (queued, scheduled, deferred) or lease expiry
        -- (processing). NULL once the job is finished, so the partial index holds only live jobs.
        run_at             INTEGER,
        send_at            INTEGER,
        lease_token        TEXT,
        lease_owner        TEXT,
        message_id         TEXT NOT NULL,
        content            TEXT NOT NULL,              -- JSON EmailContent
        tags               TEXT NOT NULL,              -- JSON array
        metadata           TEXT NOT NULL,              -- JSON object
        last_error         TEXT,
        dead_letter_reason TEXT,
        dead_lettered_at   INTEGER,
        created_at         INTEGER NOT NULL,
        updated_at         INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX jobs_due ON jobs (priority, run_at) WHERE run_at IS NOT NULL;
      CREATE INDEX jobs_created ON jobs (created_at, id);
      CREATE INDEX jobs_status_created ON jobs (status, created_at);
      CREATE INDEX jobs_dead_letters ON jobs (dead_lettered_at) WHERE dead_letter_reason IS NOT NULL;

      CREATE TABLE job_events (
        id       INTEGER PRIMARY KEY,
        job_id   TEXT NOT NULL,
        type     TEXT NOT NULL,
        at       INTEGER NOT NULL,
        attempt  INTEGER NOT NULL,
        detail   TEXT NOT NULL                         -- JSON object
      ) STRICT;
      CREATE INDEX job_events_job ON job_events (job_id, id);

      CREATE TABLE job_recipients (
        address TEXT NOT NULL,
        job_id  TEXT NOT NULL,
        PRIMARY KEY (address, job_id)
      ) STRICT, WITHOUT ROWID;

      CREATE TABLE job_tags (
        tag    TEXT NOT NULL,
        job_id TEXT NOT NULL,
        PRIMARY KEY (tag, job_id)
      ) STRICT, WITHOUT ROWID;

      CREATE TABLE idempotency_keys (
        scope        TEXT NOT NULL,
        key          TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        job_id       TEXT NOT NULL,
        status       TEXT NOT NULL,                    -- the status first answered, replayed to repeats
        created_at   INTEGER NOT NULL,
        PRIMARY KEY (scope, key)
      ) STRICT, WITHOUT ROWID;
      CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
    `,
  },
  {
    version: 2,
    name: 'templates and their versions',
    sql: `
      CREATE TABLE templates (
        code           TEXT PRIMARY KEY,
        latest_version INTEGER NOT NULL,
        created_at     INTEGER NOT NULL
      ) STRICT;

      CREATE TABLE template_versions (
        code               TEXT NOT NULL,
        version            INTEGER NOT NULL,
        subject            TEXT NOT NULL,
        html               TEXT,                       -- compiled from mjml when that is set
        text               TEXT,
        mjml               TEXT,
        required_variables TEXT NOT NULL,              -- JSON array of dotted paths
        saved_at           INTEGER NOT NULL,
        PRIMARY KEY (code, version)
      ) STRICT;
    `,
  },
];
