//! The one journal interface: [`Journal`] is the SQLite file (`mod.rs`, the
//! zero-setup default) or a PostgreSQL database shared by runners (`postgres/`),
//! with the same records, leases and group-commit semantics. The engine and the
//! commands hold a `Journal` and never ask which backend it has; only the shared
//! run's queue (runners, zones, claims) is PostgreSQL's alone ([`Journal::shared`]).

use super::postgres::{PgJournal, PgLocation};
use super::{
    CredentialRow, CredentialState, IntentId, IntentRow, JournalError, Mirror, NewRun, Outcome,
    RunId, RunRow, RunStatus, SqliteJournal, TrailAnchor,
};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where a journal lives, as `--journal` (or `REKEY_JOURNAL`) gives it.
#[derive(Clone, Debug)]
pub enum Location {
    /// An SQLite file.
    File(PathBuf),
    /// `postgres://user@host:port/database?sslmode=...`.
    Postgres(PgLocation),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL is a shared journal (refused when it
    /// holds a password, or asks for plain text to a host that is not loopback);
    /// anything else is a file path.
    pub fn parse(given: &OsStr) -> Result<Location, String> {
        match given.to_str() {
            Some(text) if PgLocation::is_url(text) => {
                PgLocation::parse(text).map(Location::Postgres)
            }
            _ => Ok(Location::File(PathBuf::from(given))),
        }
    }

    /// How messages name it (a URL without any password).
    pub fn display(&self) -> String {
        match self {
            Location::File(p) => p.display().to_string(),
            Location::Postgres(pg) => pg.to_string(),
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }
}

/// What the group commit of the engine (`engine/durable.rs`) syncs before it relies
/// on a record: files, synced in order within one target, targets side by side
/// (the audit trail and its head, the SQLite WAL); or a flush of a database that
/// commits without waiting for its disk (PostgreSQL with `synchronous_commit = off`).
pub enum SyncTarget {
    Files(Vec<std::fs::File>),
    Flush(Arc<dyn Fn() -> Result<(), String> + Send + Sync>),
}

/// The journal: see the module documentation of `crate::journal`.
#[derive(Debug)]
pub struct Journal {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Sqlite(SqliteJournal),
    Postgres(PgJournal),
}

/// The same call on whichever backend this journal has.
macro_rules! each {
    ($self:ident, $j:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($j) => $call,
            Backend::Postgres($j) => $call,
        }
    };
}

impl From<SqliteJournal> for Journal {
    fn from(j: SqliteJournal) -> Journal {
        Journal {
            backend: Backend::Sqlite(j),
        }
    }
}

impl From<PgJournal> for Journal {
    fn from(j: PgJournal) -> Journal {
        Journal {
            backend: Backend::Postgres(j),
        }
    }
}

impl Journal {
    /// Opens (creating and migrating) the SQLite journal at `path`: see
    /// [`SqliteJournal::open`].
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        SqliteJournal::open(path).map(Journal::from)
    }

    /// Opens the journal at `location`: the SQLite file, or a connection to the
    /// PostgreSQL database with `password` (its schema created or migrated first).
    pub fn open_at(
        location: &Location,
        password: Option<&crate::secret::Secret>,
    ) -> Result<Journal, JournalError> {
        match location {
            Location::File(path) => Journal::open(path),
            Location::Postgres(pg) => PgJournal::connect(pg, password).map(Journal::from),
        }
    }

    /// The PostgreSQL journal, for what only a shared journal does (runners, zones,
    /// claims, the trail kept in the database).
    pub fn shared(&self) -> Option<&PgJournal> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Sqlite(_) => None,
        }
    }

    /// See [`SqliteJournal::defer_sync`]; a shared journal commits without waiting
    /// for PostgreSQL's disk and returns the flush that waits for it.
    pub fn defer_sync(&mut self) -> Result<Vec<SyncTarget>, JournalError> {
        match &mut self.backend {
            Backend::Sqlite(j) => j.defer_sync(),
            Backend::Postgres(j) => j.defer_sync(),
        }
    }

    /// Copies every record committed from now on to `mirror` (the audit trail).
    pub fn set_mirror(&mut self, mirror: Box<dyn Mirror>) {
        match &mut self.backend {
            Backend::Sqlite(j) => j.set_mirror(mirror),
            Backend::Postgres(j) => j.set_mirror(mirror),
        }
    }

    /// Tells the mirror which value a record's `fingerprint` stands for.
    pub fn note_secret(&self, fingerprint: &str, secret: &crate::secret::Secret) {
        each!(self, j => j.note_secret(fingerprint, secret))
    }

    /// The journal file, or the database URL (without a password) as a path, for
    /// messages.
    pub fn path(&self) -> &Path {
        each!(self, j => j.path())
    }

    /// How long a write waits for another writer (SQLite) before
    /// [`JournalError::Busy`]; PostgreSQL queues writers itself.
    pub fn set_busy_timeout(&self, timeout: Duration) -> Result<(), JournalError> {
        match &self.backend {
            Backend::Sqlite(j) => j.set_busy_timeout(timeout),
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// A lease holder id for this process: see [`SqliteJournal::new_lease_holder`].
    pub fn new_lease_holder() -> String {
        SqliteJournal::new_lease_holder()
    }

    pub fn create_run(&self, run: &NewRun) -> Result<RunId, JournalError> {
        each!(self, j => j.create_run(run))
    }

    pub fn run(&self, id: &str) -> Result<Option<RunRow>, JournalError> {
        each!(self, j => j.run(id))
    }

    pub fn runs(&self) -> Result<Vec<RunRow>, JournalError> {
        each!(self, j => j.runs())
    }

    pub fn latest_unfinished(&self) -> Result<Option<RunRow>, JournalError> {
        each!(self, j => j.latest_unfinished())
    }

    pub fn finish_run(&self, id: &str, status: RunStatus) -> Result<(), JournalError> {
        each!(self, j => j.finish_run(id, status))
    }

    pub fn reopen_run(&self, id: &str) -> Result<(), JournalError> {
        each!(self, j => j.reopen_run(id))
    }

    pub fn claim_run(&self, id: &str, holder: &str) -> Result<(), JournalError> {
        each!(self, j => j.claim_run(id, holder))
    }

    pub fn set_state(
        &self,
        run: &str,
        credential: &str,
        state: CredentialState,
        detail: &Value,
    ) -> Result<(), JournalError> {
        each!(self, j => j.set_state(run, credential, state, detail))
    }

    pub fn states(&self, run: &str) -> Result<Vec<CredentialRow>, JournalError> {
        each!(self, j => j.states(run))
    }

    pub fn intent(
        &self,
        run: &str,
        credential: &str,
        step: &str,
        detail: &Value,
    ) -> Result<IntentId, JournalError> {
        each!(self, j => j.intent(run, credential, step, detail))
    }

    pub fn outcome(
        &self,
        intent: IntentId,
        outcome: Outcome,
        detail: &Value,
    ) -> Result<(), JournalError> {
        each!(self, j => j.outcome(intent, outcome, detail))
    }

    pub fn outcome_and_state(
        &self,
        intent: IntentId,
        outcome: Outcome,
        detail: &Value,
        state: CredentialState,
        state_detail: &Value,
    ) -> Result<(), JournalError> {
        each!(self, j => j.outcome_and_state(intent, outcome, detail, state, state_detail))
    }

    pub fn open_intents(&self, run: &str) -> Result<Vec<IntentRow>, JournalError> {
        each!(self, j => j.open_intents(run))
    }

    pub fn intents(&self, run: &str, credential: &str) -> Result<Vec<IntentRow>, JournalError> {
        each!(self, j => j.intents(run, credential))
    }

    pub fn unfinished_cleanups(&self, run: &str) -> Result<Vec<IntentRow>, JournalError> {
        each!(self, j => j.unfinished_cleanups(run))
    }

    pub fn lease(
        &self,
        run: &str,
        credential: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, JournalError> {
        each!(self, j => j.lease(run, credential, holder, ttl))
    }

    pub fn release(&self, run: &str, credential: &str, holder: &str) -> Result<(), JournalError> {
        each!(self, j => j.release(run, credential, holder))
    }

    pub fn lease_holder(&self, credential: &str) -> Result<Option<(RunId, String)>, JournalError> {
        each!(self, j => j.lease_holder(credential))
    }

    pub fn break_lease(&self, credential: &str, holder: &str) -> Result<bool, JournalError> {
        each!(self, j => j.break_lease(credential, holder))
    }

    /// Who holds each credential of `run` now, and since when (leases that have
    /// not expired; for a shared journal, the runners' claims too).
    pub fn holders(&self, run: &str) -> Result<Vec<super::Holding>, JournalError> {
        each!(self, j => j.holders(run))
    }

    /// What the journal last recorded of the file trail at `trail`. A shared
    /// journal keeps its trail in the database, with nothing to anchor.
    pub fn trail_anchor(&self, trail: &Path) -> Result<Option<TrailAnchor>, JournalError> {
        match &self.backend {
            Backend::Sqlite(j) => j.trail_anchor(trail),
            Backend::Postgres(_) => Ok(None),
        }
    }

    pub fn run_count(&self) -> Result<u64, JournalError> {
        each!(self, j => j.run_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_is_a_shared_journal_and_anything_else_a_file() {
        let at = |s: &str| Location::parse(OsStr::new(s));
        assert!(matches!(at(".rekey/journal.db"), Ok(Location::File(_))));
        assert!(matches!(at("postgres.db"), Ok(Location::File(_))));
        assert!(
            at("postgres://rekey@127.0.0.1:5432/rekey?sslmode=disable")
                .unwrap()
                .is_shared()
        );
        assert!(
            at("postgresql://rekey@db.internal/rekey")
                .unwrap()
                .is_shared()
        );
    }
}
