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
  {
    version: 3,
    name: 'webhook endpoints, deliveries and their tries',
    // Deliveries are written by a trigger in the transaction that writes the event, so no committed
    // transition can miss its webhook. `events` holds the subscribed types space-separated with a
    // space at each end, so one instr() tells whether a type is among them.
    sql: `
      CREATE TABLE webhook_endpoints (
        id              TEXT PRIMARY KEY,
        url             TEXT NOT NULL,
        events          TEXT NOT NULL,
        description     TEXT,
        secret          TEXT NOT NULL,
        enabled         INTEGER NOT NULL,
        disabled_reason TEXT,
        source          TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
      ) STRICT;

      CREATE TABLE webhook_deliveries (
        id              INTEGER PRIMARY KEY,
        endpoint_id     TEXT NOT NULL,
        event_id        INTEGER NOT NULL,
        event_type      TEXT NOT NULL,
        job_id          TEXT NOT NULL,
        status          TEXT NOT NULL,                  -- pending, delivered, failed
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,                        -- NULL once delivered or failed
        created_at      INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
        WHERE next_attempt_at IS NOT NULL;
      CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
      CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries (endpoint_id, next_attempt_at)
        WHERE next_attempt_at IS NOT NULL;
      CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);

      CREATE TABLE webhook_attempts (
        delivery_id INTEGER NOT NULL,
        at          INTEGER NOT NULL,
        status_code INTEGER,
        error       TEXT,
        duration_ms INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, at);

      CREATE TRIGGER job_events_webhooks AFTER INSERT ON job_events
      WHEN NEW.type IN ('queued', 'scheduled', 'sent', 'deferred', 'failed', 'cancelled')
      BEGIN
        INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, job_id, status, next_attempt_at, created_at)
        SELECT id, NEW.id, 'email.' || NEW.type, NEW.job_id, 'pending', NEW.at, NEW.at
          FROM webhook_endpoints
         WHERE enabled = 1 AND instr(events, ' email.' || NEW.type || ' ') > 0;
      END;
    `,
  },
];
