//! The shared journal's schema (`rekey.*` in the database the URL names) and its
//! forward-only migrations.
//!
//! The version lives in `rekey.meta`; every migration runs in one transaction with
//! the version bump under a transaction-scoped advisory lock, so runners starting
//! together migrate once and a crash mid-migration leaves the previous version. A
//! database whose version is above this build's is refused (an older rekey could
//! misread what is in flight).
//!
//! The tables mirror the SQLite journal's (runs, credential states, intents,
//! outcomes, leases) with what a shared run adds: the playbook and the values its
//! `${VAR}`s expanded to (runners on other machines load the run from here), the
//! per-credential work queue (`tasks`: zone, dependencies, the runner holding it
//! and until when), the runners, the audit trail (one hash chain per run, its head
//! on the run's row), the HMAC keys, and the requests already applied (a write
//! whose commit was cut by a lost connection is not applied twice).

/// Marks the schema as rekey's: a database with a `rekey` schema of another
/// program is refused rather than written into.
pub(super) const APPLICATION: &str = "rekey journal";

/// Serialises migrations across runners: `pg_advisory_xact_lock(MIGRATION_LOCK)`.
pub(super) const MIGRATION_LOCK: i64 = 0x726b_796a_0001;

/// Migration `n` (0-based) takes the schema from version `n` to `n + 1`. Append
/// only: a released migration is never edited.
pub(super) const MIGRATIONS: &[&str] = &[V1];

/// The schema version this build writes and understands.
pub(super) const CURRENT_VERSION: i32 = MIGRATIONS.len() as i32;

/// Version 1. Details are the engine's JSON as text (key order kept, as in the
/// SQLite journal); times are RFC 3339 text for display, and leases and claims
/// expire on the database's clock in milliseconds (`rekey.now_ms()`), so runners
/// on machines whose clocks disagree still agree on who holds what.
const V1: &str = "
CREATE FUNCTION rekey.now_ms() RETURNS bigint LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

CREATE TABLE rekey.keys (
    name  text PRIMARY KEY,
    key   bytea NOT NULL CHECK (length(key) = 32)
);

CREATE TABLE rekey.runs (
    seq             bigserial PRIMARY KEY,
    id              text NOT NULL UNIQUE,
    playbook_name   text NOT NULL,
    playbook_path   text NOT NULL,
    playbook_sha256 text NOT NULL,
    mode            text NOT NULL,
    selection       text NOT NULL,
    actor           text NOT NULL,
    status          text NOT NULL
                    CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'quarantined',
                                      'awaiting_operator')),
    started_at      text NOT NULL,
    finished_at     text,
    expanded_sha256 text,
    holder          text,
    -- A shared run: the playbook as `rekey run` read it, and the value of each
    -- `${VAR}` it expanded (never a secret: interpolation refuses those).
    playbook_text   text,
    variables       text,
    -- The head of the run's audit chain: lines so far and the SHA-256 of the last
    -- (64 zeros before the first, as a file trail starts).
    audit_lines     bigint NOT NULL DEFAULT 0,
    audit_last      text NOT NULL DEFAULT repeat('0', 64)
);

CREATE TABLE rekey.credential_states (
    seq         bigserial PRIMARY KEY,
    run_id      text NOT NULL REFERENCES rekey.runs (id),
    credential  text NOT NULL,
    state       text NOT NULL,
    detail      text NOT NULL,
    updated_at  text NOT NULL,
    UNIQUE (run_id, credential)
);

CREATE TABLE rekey.intents (
    id          bigserial PRIMARY KEY,
    run_id      text NOT NULL REFERENCES rekey.runs (id),
    credential  text NOT NULL,
    step        text NOT NULL,
    detail      text NOT NULL,
    started_at  text NOT NULL
);
CREATE INDEX intents_by_credential ON rekey.intents (run_id, credential, id);

CREATE TABLE rekey.outcomes (
    intent_id     bigint PRIMARY KEY REFERENCES rekey.intents (id),
    result        text NOT NULL CHECK (result IN ('ok', 'failed')),
    error_kind    text,
    error_message text,
    detail        text NOT NULL,
    finished_at   text NOT NULL,
    CHECK ((result = 'ok') = (error_kind IS NULL AND error_message IS NULL))
);

CREATE TABLE rekey.leases (
    credential    text PRIMARY KEY,
    run_id        text NOT NULL REFERENCES rekey.runs (id),
    holder        text NOT NULL,
    expires_at_ms bigint NOT NULL,
    taken_at      text NOT NULL
);
CREATE INDEX leases_by_holder ON rekey.leases (holder);

CREATE TABLE rekey.audit (
    run_id  text NOT NULL REFERENCES rekey.runs (id),
    seq     bigint NOT NULL,
    line    text NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- The work of a shared run, one row per selected credential, in playbook order.
CREATE TABLE rekey.tasks (
    run_id        text NOT NULL REFERENCES rekey.runs (id),
    credential    text NOT NULL,
    position      integer NOT NULL,
    zone          text NOT NULL,
    -- Selected credentials this one waits for.
    depends_on    text[] NOT NULL,
    status        text NOT NULL CHECK (status IN ('pending', 'claimed', 'done')),
    holder        text,
    claimed_at    text,
    expires_at_ms bigint,
    -- Claims taken over from a runner whose claim expired.
    reclaims      integer NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, credential)
);
CREATE INDEX tasks_open ON rekey.tasks (zone, run_id, position) WHERE status <> 'done';

CREATE TABLE rekey.runners (
    holder        text PRIMARY KEY,
    zones         text[] NOT NULL,
    host          text NOT NULL,
    pid           integer NOT NULL,
    version       text NOT NULL,
    started_at    text NOT NULL,
    last_seen_ms  bigint NOT NULL,
    stopped_at    text
);

-- Writes whose commit may have been lost with the connection: a retry finds its
-- request here and takes the stored result instead of writing twice.
CREATE TABLE rekey.applied (
    request  text PRIMARY KEY,
    result   text NOT NULL,
    at_ms    bigint NOT NULL
);

-- One row per connection that flushed: group commit's durable no-op write.
CREATE TABLE rekey.flushes (
    backend  integer PRIMARY KEY,
    n        bigint NOT NULL
);
";
