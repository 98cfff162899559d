//! The journal's schema and its forward-only migrations.
//!
//! The version lives in `PRAGMA user_version` and every migration runs in one
//! `BEGIN IMMEDIATE` transaction together with the version bump, so a crash mid-migration
//! leaves the previous version intact, and two processes opening a fresh journal at once
//! migrate it once. `PRAGMA application_id` marks the file as a rekey journal so rekey
//! never writes its tables into somebody else's database.

/// `PRAGMA application_id` of a rekey journal: "rkyj" in ASCII.
pub(super) const APPLICATION_ID: i64 = 0x726b_796a;

/// Migration `n` (0-based) takes a journal from version `n` to `n + 1`. Append only: a
/// released migration is never edited, because journals in the field already ran it.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The schema version this build writes and understands.
pub(super) const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Version 1. Tables are STRICT so a type mistake is an error, not a silently coerced
/// value. Rows in `intents` and `outcomes` are only ever inserted: the journal is a log,
/// and an outcome is a separate record so that "no outcome row" is exactly "in flight
/// when the process stopped". Insertion order is the `seq`/`id` integer keys, never
/// timestamps, because wall clocks step.
const V1: &str = "
CREATE TABLE runs (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    playbook_name   TEXT NOT NULL,
    playbook_path   TEXT NOT NULL,
    playbook_sha256 TEXT NOT NULL,
    mode            TEXT NOT NULL,
    selection       TEXT NOT NULL,
    actor           TEXT NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'quarantined')),
    started_at      TEXT NOT NULL,
    finished_at     TEXT
) STRICT;

CREATE TABLE credential_states (
    seq         INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs (id),
    credential  TEXT NOT NULL,
    state       TEXT NOT NULL,
    detail      TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (run_id, credential)
) STRICT;

CREATE TABLE intents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL REFERENCES runs (id),
    credential  TEXT NOT NULL,
    step        TEXT NOT NULL,
    detail      TEXT NOT NULL,
    started_at  TEXT NOT NULL
) STRICT;
CREATE INDEX intents_by_credential ON intents (run_id, credential, id);

CREATE TABLE outcomes (
    intent_id     INTEGER PRIMARY KEY REFERENCES intents (id),
    result        TEXT NOT NULL CHECK (result IN ('ok', 'failed')),
    error_kind    TEXT,
    error_message TEXT,
    detail        TEXT NOT NULL,
    finished_at   TEXT NOT NULL,
    CHECK ((result = 'ok') = (error_kind IS NULL AND error_message IS NULL))
) STRICT;

-- One lease per credential id across all runs: two runs of the same playbook started
-- side by side must not rotate the same credential twice.
CREATE TABLE leases (
    credential    TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL REFERENCES runs (id),
    holder        TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    taken_at      TEXT NOT NULL
) STRICT;
";

/// Version 2. The audit trail as the journal last saw it, per trail (its file name
/// when it lies beside the journal, else its absolute path): the number of lines
/// and the SHA-256 of the last one, recorded at each run's start and end once the
/// trail is on disk. A trail deleted, cut back or replaced is noticed against it.
const V2: &str = "
CREATE TABLE trail_anchors (
    trail       TEXT PRIMARY KEY,
    lines       INTEGER NOT NULL,
    last        TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;
";

/// Version 3. Runs gain the `awaiting_operator` status, the SHA-256 of the
/// playbook as it was expanded (`${VAR}` values included: `resume` refuses another
/// expansion) and the process working on the run (`pid-nonce@host`: `status` tells
/// a run whose process is gone from one still running). SQLite cannot change a
/// CHECK in place, so the table is copied (`Journal::migrate` turns foreign keys off
/// around it and checks them before committing).
const V3: &str = "
CREATE TABLE runs_v3 (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    playbook_name   TEXT NOT NULL,
    playbook_path   TEXT NOT NULL,
    playbook_sha256 TEXT NOT NULL,
    mode            TEXT NOT NULL,
    selection       TEXT NOT NULL,
    actor           TEXT NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'quarantined',
                                      'awaiting_operator')),
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    expanded_sha256 TEXT,
    holder          TEXT
) STRICT;
INSERT INTO runs_v3 (seq, id, playbook_name, playbook_path, playbook_sha256, mode, selection, actor,
                     status, started_at, finished_at)
    SELECT seq, id, playbook_name, playbook_path, playbook_sha256, mode, selection, actor,
           status, started_at, finished_at FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v3 RENAME TO runs;
";
