//! Durable run state for the rotation engine, in embedded SQLite (this file), or in a
//! PostgreSQL database several rekey processes share (`postgres/`); [`Journal`]
//! (`backend.rs`) is either, with the same records and semantics. What follows
//! describes the SQLite journal; `postgres/mod.rs` says where the other differs.
//!
//! Every step that changes the world (at a provider or in Vault) is bracketed by two
//! records: an **intent**, committed and synced before the step starts, and an
//! **outcome** after it ends. When rekey dies (SIGKILL, power cut, panic) the intents
//! without an outcome ([`Journal::open_intents`]) are exactly the steps that might or
//! might not have happened; `rekey resume` re-reads real state for those and moves
//! forward or back. Beside that log the journal keeps each credential's position in the
//! rotation state machine ([`Journal::set_state`]), the runs themselves, and leases that
//! stop two processes from rotating the same credential.
//!
//! Invariant: the journal never holds a secret value. Every `detail` the engine passes
//! (and every outcome message) may contain credential ids, provider key ids, Vault paths
//! and versions, HMAC fingerprints ([`crate::secret::Secret::fingerprint`]), step names
//! and error kinds: never a password, key or token, nor a provider response body that
//! could echo one. The journal cannot tell a secret from an id, so this is the caller's
//! promise; the tests grep the raw database and write-ahead log for a canary value.
//!
//! Durability: the file is in WAL mode with `synchronous=FULL`, so every committed record
//! is fsynced before the call returns, and a committed intent survives a power cut. Each
//! call is one short transaction (a few hundred microseconds to a few milliseconds,
//! dominated by the fsync). The engine switches to group commit ([`Journal::defer_sync`]):
//! commits do not sync, and it syncs the WAL and the trail itself before every step
//! that changes the world (`engine/durable.rs`).
//!
//! Concurrency: a [`Journal`] is one SQLite connection: `Send`, not `Sync`; share it behind
//! a mutex or open one per thread. Several processes may open the same file: WAL lets
//! readers run beside a writer, writers queue for up to the busy timeout (5 s by default),
//! and then fail with [`JournalError::Busy`].

mod anchor;
mod backend;
mod error;
mod file;
mod mirror;
pub mod postgres;
mod schema;

pub use anchor::TrailAnchor;
pub use backend::{Journal, Location, SyncTarget};
pub use error::JournalError;
pub use mirror::{Event, Mirror};

use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// How long a write waits for another process's write to finish before giving up with
/// [`JournalError::Busy`]. Journal writes take milliseconds, so five seconds of waiting
/// means the other process is stuck, not busy.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A run's id: `r-<yyyymmdd>-<hhmm>-<4 hex>` (UTC start time plus randomness), short
/// enough to type into `rekey resume`.
pub type RunId = String;

/// An intent's id: its position in the journal, increasing, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IntentId(pub i64);

impl fmt::Display for IntentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the engine knows when a run starts. None of it is secret: `selection` is the
/// filter the operator gave (`--tag`, `--only`, ...), `actor` who ran it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewRun {
    pub playbook_name: String,
    pub playbook_path: String,
    /// SHA-256 of the playbook bytes, hex: `resume` refuses a playbook that changed.
    pub playbook_sha256: String,
    /// `breach` or `routine`.
    pub mode: String,
    pub selection: Value,
    pub actor: String,
    /// SHA-256 of the playbook as expanded (`${VAR}` values included), hex:
    /// `resume` refuses an expansion that differs (another `VAULT_ADDR`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expanded_sha256: Option<String>,
}

/// Where a run stands. Stored as lowercase text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started and not stopped, or the process died without saying so.
    Running,
    Succeeded,
    Failed,
    /// Stopped on purpose before the end (Ctrl-C): `rekey resume` picks it up.
    Interrupted,
    /// Ended with at least one credential a human must look at.
    Quarantined,
    /// Everything else ended; manual steps wait for an operator: `rekey resume`
    /// with the value finishes them.
    AwaitingOperator,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Quarantined => "quarantined",
            RunStatus::AwaitingOperator => "awaiting_operator",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "interrupted" => RunStatus::Interrupted,
            "quarantined" => RunStatus::Quarantined,
            "awaiting_operator" => RunStatus::AwaitingOperator,
            other => return Err(format!("unknown run status `{other}`")),
        })
    }
}

/// A credential's place in the rotation state machine, as the journal records it.
/// The first six are where a rotation is while it runs (their detail is the
/// engine's resume checkpoint); the rest are how it ended. Stored as snake_case text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
    /// Dual: about to create the new key.
    Creating,
    /// The new value is in the Vault staging entry.
    Staged,
    /// Single: the provider holds the new value.
    Changed,
    /// Dual: the new key works.
    Verified,
    /// The new value is at the consumers' path.
    Promoted,
    /// Dual: the old key is gone.
    Retired,
    Rotated,
    RolledBack,
    Quarantined,
    Skipped,
    AwaitingOperator,
    /// Never started (Ctrl-C, Vault down, lock held elsewhere): `resume` starts it.
    NotStarted,
}

impl CredentialState {
    pub const ALL: [CredentialState; 12] = [
        CredentialState::Creating,
        CredentialState::Staged,
        CredentialState::Changed,
        CredentialState::Verified,
        CredentialState::Promoted,
        CredentialState::Retired,
        CredentialState::Rotated,
        CredentialState::RolledBack,
        CredentialState::Quarantined,
        CredentialState::Skipped,
        CredentialState::AwaitingOperator,
        CredentialState::NotStarted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CredentialState::Creating => "creating",
            CredentialState::Staged => "staged",
            CredentialState::Changed => "changed",
            CredentialState::Verified => "verified",
            CredentialState::Promoted => "promoted",
            CredentialState::Retired => "retired",
            CredentialState::Rotated => "rotated",
            CredentialState::RolledBack => "rolled_back",
            CredentialState::Quarantined => "quarantined",
            CredentialState::Skipped => "skipped",
            CredentialState::AwaitingOperator => "awaiting_operator",
            CredentialState::NotStarted => "not_started",
        }
    }

    /// Whether the rotation ended (a final outcome is recorded with it).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            CredentialState::Creating
                | CredentialState::Staged
                | CredentialState::Changed
                | CredentialState::Verified
                | CredentialState::Promoted
                | CredentialState::Retired
        )
    }
}

impl fmt::Display for CredentialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `state == "quarantined"`: the stored name, for tests and readers of JSON.
impl PartialEq<&str> for CredentialState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl FromStr for CredentialState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CredentialState::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown credential state `{s}`"))
    }
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// `kind` is the provider's classification (`transient`, `rate_limited`, `fatal`, ...);
    /// `message` is for humans and must not quote a secret.
    Failed {
        kind: String,
        message: String,
    },
}

/// A run as recorded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRow {
    pub id: RunId,
    pub playbook_name: String,
    pub playbook_path: String,
    pub playbook_sha256: String,
    pub mode: String,
    pub selection: Value,
    pub actor: String,
    pub status: RunStatus,
    /// RFC 3339 UTC, milliseconds.
    pub started_at: String,
    /// When a process last stopped working on the run; `None` while it is running (or
    /// since it was reopened). An interrupted run has one, and is still unfinished.
    pub finished_at: Option<String>,
    /// See [`NewRun::expanded_sha256`] (`None` for runs of an older rekey).
    pub expanded_sha256: Option<String>,
    /// The process that last worked on the run, `<pid>-<nonce>@<host>`.
    pub holder: Option<String>,
}

impl RunRow {
    /// Whether the process that last worked on a `running` run is known to be gone:
    /// it ran on this host and its pid no longer exists (or belongs to a process
    /// started since, which `holder` cannot tell; the pid is what the kernel says).
    pub fn process_gone(&self) -> bool {
        self.holder
            .as_deref()
            .is_some_and(|h| h.contains('@') && holder_gone(h))
    }
}

/// This machine's host name, for run holders (`/proc/sys/kernel/hostname`).
pub fn this_host() -> String {
    // Read once: every lock and lease names it.
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into())
    })
    .clone()
}

/// `holder` with this host's name after `@` when it has none (older holders).
fn holder_on_host(holder: &str) -> String {
    if holder.contains('@') {
        holder.to_owned()
    } else {
        format!("{holder}@{}", this_host())
    }
}

/// Whether the process behind lease or run holder `holder` (`<pid>-<nonce>@<host>`,
/// or `<pid>-<nonce>`, meaning this host) is known to be gone: it ran on this host
/// and its pid no longer exists, or it is this very process (an earlier engine in
/// it, which `resume` takes over). A holder on another host is never known to be
/// gone (its lease expires instead): a shared journal's runners live on many machines.
pub fn holder_gone(holder: &str) -> bool {
    let (who, host) = holder.split_once('@').unwrap_or((holder, ""));
    if !host.is_empty() && host != this_host() {
        return false;
    }
    match who.split('-').next().and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => {
            pid == std::process::id() || !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        None => false,
    }
}

/// A credential's position in the rotation state machine within one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CredentialRow {
    pub credential: String,
    pub state: CredentialState,
    pub detail: Value,
    pub updated_at: String,
}

/// Who holds a credential of a run now: a lease that has not expired, or (in a
/// shared journal) a runner's claim on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holding {
    pub credential: String,
    /// `<pid>-<nonce>@<host>`.
    pub holder: String,
    /// RFC 3339 UTC: when this holder took it.
    pub since: String,
    /// When it lapses unless renewed, in milliseconds since the Unix epoch (the
    /// clock of the journal: this host's for SQLite, the database's for PostgreSQL).
    pub expires_at_ms: i64,
    /// The runner's zone, for a runner's claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// An intent and, once the step ended, its outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IntentRow {
    pub id: IntentId,
    pub credential: String,
    pub step: String,
    pub detail: Value,
    pub started_at: String,
    /// `None`: the step was in flight when the process stopped (or still is).
    pub outcome: Option<RecordedOutcome>,
}

/// The outcome record of an intent.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecordedOutcome {
    pub outcome: Outcome,
    pub detail: Value,
    pub finished_at: String,
}

/// The SQLite journal: one connection to one journal file. Callers use it through
/// [`Journal`], which also has a PostgreSQL backend (`postgres/`).
#[derive(Debug)]
pub struct SqliteJournal {
    conn: Connection,
    path: PathBuf,
    /// Where every committed record is copied (the audit trail), if anywhere.
    mirror: mirror::Slot,
    /// Run, credential and step of each intent this connection recorded and has
    /// not closed yet, so recording its outcome is one `INSERT` (the primary key
    /// refuses a second outcome) instead of a transaction around a lookup. An
    /// intent not found here (another process's, or one whose outcome failed to
    /// record) is looked up in the table.
    open_intents: std::sync::Mutex<HashMap<i64, OpenIntent>>,
}

/// What the mirror needs to know about an open intent: run, credential, step.
type OpenIntent = (String, String, String);

impl SqliteJournal {
    /// Opens the journal at `path`, creating it (mode 0600, parent directories 0700) if it
    /// does not exist, and migrating its schema forward.
    ///
    /// Refuses a file group or others can access, a file that is not a rekey journal, and
    /// a journal written by a newer rekey (schema version above this build's).
    pub fn open(path: &Path) -> Result<SqliteJournal, JournalError> {
        file::ensure_private_file(path)?;
        // No SQLITE_OPEN_CREATE: the file exists, made private above, and if it vanished
        // in between we would rather fail than have SQLite create a 0644 one.
        // NOFOLLOW: SQLite refuses a path that is (or passes through) a link.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| map_sql(path, "opening the database", e))?;
        let journal = SqliteJournal {
            conn,
            path: path.to_path_buf(),
            mirror: mirror::Slot::default(),
            open_intents: std::sync::Mutex::default(),
        };
        journal.configure()?;
        journal.migrate()?;
        Ok(journal)
    }

    /// Switches this connection to group commit: commits no longer sync the disk
    /// themselves (`synchronous=NORMAL` in WAL mode, and the mirror writes without
    /// syncing); the caller must sync the returned files (the mirror's, in order, and
    /// the WAL: chains that may be synced side by side)
    /// before it relies on a record, e.g. before the step an intent announces. Many
    /// credentials' records then share one sync instead of one each.
    pub fn defer_sync(&mut self) -> Result<Vec<SyncTarget>, JournalError> {
        let mut wal_name = self.path.as_os_str().to_owned();
        wal_name.push("-wal");
        let wal_path = PathBuf::from(wal_name);
        let wal = std::fs::OpenOptions::new()
            .read(true)
            .open(&wal_path)
            .map_err(|source| JournalError::Io {
                path: wal_path.clone(),
                action: "open for syncing",
                source,
            })?;
        let trail = self
            .mirror
            .defer_sync()
            .map_err(|message| JournalError::Io {
                path: self.path.clone(),
                action: "sync the audit trail of",
                source: std::io::Error::other(message),
            })?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.sql("configuring group commit", e))?;
        // The trail's files in their order, the WAL beside them.
        Ok(vec![SyncTarget::Files(trail), SyncTarget::Files(vec![wal])])
    }

    /// Copies every record this connection commits from now on to `mirror` (the
    /// audit trail), after the commit and before the call returns. A mirror that
    /// fails makes the journal call fail ([`JournalError::Audit`]): a step is not
    /// attempted unless its intent is in the trail too.
    pub fn set_mirror(&mut self, mirror: Box<dyn Mirror>) {
        self.mirror = mirror::Slot::new(mirror);
    }

    /// Tells the mirror which value the records' `fingerprint` stands for, so the
    /// audit trail can name it by its own HMAC. Records nothing.
    pub fn note_secret(&self, fingerprint: &str, secret: &crate::secret::Secret) {
        self.mirror.note_secret(fingerprint, secret);
    }

    fn mirror(&self, what: &'static str, event: Event<'_>) -> Result<(), JournalError> {
        self.mirror
            .record(event)
            .map_err(|reason| JournalError::Audit {
                path: self.path.clone(),
                what,
                reason,
            })
    }

    /// The journal file this connection writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes how long a write waits for another process before failing with
    /// [`JournalError::Busy`] (default [`DEFAULT_BUSY_TIMEOUT`]).
    pub fn set_busy_timeout(&self, timeout: Duration) -> Result<(), JournalError> {
        self.conn
            .busy_timeout(timeout)
            .map_err(|e| self.sql("setting the busy timeout", e))
    }

    /// A lease holder id for this process: `<pid>-<8 random hex>@<host>`. The pid and
    /// host tell an operator which process holds a credential (runners of a shared
    /// journal run on many machines); the random part keeps two processes apart when
    /// pids are reused (containers, reboots).
    pub fn new_lease_holder() -> String {
        format!(
            "{}-{:08x}@{}",
            std::process::id(),
            rand::random::<u32>(),
            this_host()
        )
    }

    /// Records a new run with status `running` and returns its id.
    ///
    /// Invariant: `run.selection` holds no secret value.
    pub fn create_run(&self, run: &NewRun) -> Result<RunId, JournalError> {
        let now = SystemTime::now();
        let started_at = rfc3339(now);
        // Ids are time plus 16 random bits; two runs started in the same minute collide
        // once in 65,536, and then we draw again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let id = new_run_id(&started_at);
            let inserted = self
                .conn
                .prepare_cached(
                    "INSERT INTO runs (id, playbook_name, playbook_path, playbook_sha256, mode, selection, actor,
                                       status, started_at, expanded_sha256)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', ?8, ?9)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        id,
                        run.playbook_name,
                        run.playbook_path,
                        run.playbook_sha256,
                        run.mode,
                        run.selection.to_string(),
                        run.actor,
                        started_at,
                        run.expanded_sha256,
                    ])
                });
            match inserted {
                Ok(_) => {
                    info!(run = %id, playbook = %run.playbook_name, mode = %run.mode, "Run recorded.");
                    self.mirror(
                        "a new run",
                        Event::RunStarted {
                            run: &id,
                            new_run: run,
                        },
                    )?;
                    self.record_anchor()?;
                    return Ok(id);
                }
                Err(e)
                    if attempts < 8
                        && is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) =>
                {
                    continue;
                }
                Err(e) => return Err(self.sql("recording a new run", e)),
            }
        }
    }

    /// The run `id`, if the journal has it.
    pub fn run(&self, id: &str) -> Result<Option<RunRow>, JournalError> {
        Ok(self.query_runs("WHERE id = ?1", [id])?.pop())
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Result<Vec<RunRow>, JournalError> {
        self.query_runs("ORDER BY seq DESC", [])
    }

    /// The newest run that is `running` (its process may have died) or `interrupted`:
    /// what `rekey resume` continues by default. A run that ended `failed` or
    /// `quarantined` is resumed only when named.
    pub fn latest_unfinished(&self) -> Result<Option<RunRow>, JournalError> {
        Ok(self
            .query_runs(
                "WHERE status IN ('running', 'interrupted', 'awaiting_operator') ORDER BY seq DESC LIMIT 1",
                [],
            )?
            .pop())
    }

    /// Records that the process stopped working on run `id` with `status` (any but
    /// `Running`: see [`Journal::reopen_run`]), and when.
    pub fn finish_run(&self, id: &str, status: RunStatus) -> Result<(), JournalError> {
        if status == RunStatus::Running {
            return Err(JournalError::RunningIsNotFinal {
                path: self.path.clone(),
                id: id.to_owned(),
            });
        }
        let changed = self
            .conn
            .execute(
                "UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1",
                params![id, status.as_str(), rfc3339(SystemTime::now())],
            )
            .map_err(|e| self.sql("finishing a run", e))?;
        if changed == 0 {
            return Err(self.unknown_run(id));
        }
        info!(run = %id, %status, "Run finished.");
        self.mirror("the end of a run", Event::RunFinished { run: id, status })?;
        self.record_anchor()
    }

    /// Marks run `id` as `running` again (and clears `finished_at`): `rekey resume`
    /// calls it before it continues a run.
    pub fn reopen_run(&self, id: &str) -> Result<(), JournalError> {
        let changed = self
            .conn
            .execute(
                "UPDATE runs SET status = 'running', finished_at = NULL WHERE id = ?1",
                [id],
            )
            .map_err(|e| self.sql("reopening a run", e))?;
        if changed == 0 {
            return Err(self.unknown_run(id));
        }
        info!(run = %id, "Run reopened.");
        self.mirror("a resumed run", Event::RunReopened { run: id })?;
        self.record_anchor()
    }

    /// Records that the process `holder` (`<pid>-<nonce>@<host>`, or `<pid>-<nonce>`
    /// on this host) works on run `id` now (at its start and when it is resumed).
    pub fn claim_run(&self, id: &str, holder: &str) -> Result<(), JournalError> {
        let holder = holder_on_host(holder);
        self.conn
            .execute(
                "UPDATE runs SET holder = ?2 WHERE id = ?1",
                params![id, holder],
            )
            .map_err(|e| self.sql("recording who works on a run", e))?;
        Ok(())
    }

    /// Sets `credential`'s state machine position in `run` (e.g. `staged`, `promoted`,
    /// `quarantined`); the first call for a credential fixes its place in
    /// [`Journal::states`].
    ///
    /// Invariant: `detail` holds no secret value (key ids, Vault versions and
    /// fingerprints are fine).
    pub fn set_state(
        &self,
        run: &str,
        credential: &str,
        state: CredentialState,
        detail: &Value,
    ) -> Result<(), JournalError> {
        let state = state.as_str();
        self.conn
            .prepare_cached(UPSERT_STATE)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    run,
                    credential,
                    state,
                    detail.to_string(),
                    rfc3339(SystemTime::now())
                ])
            })
            .map_err(|e| self.write_error(run, "recording a credential state", e))?;
        debug!(run, credential, state, "Credential state recorded.");
        self.mirror(
            "a credential state",
            Event::State {
                run,
                credential,
                state,
                detail,
            },
        )
    }

    /// Every credential's current state in `run`, in the order they were first recorded.
    pub fn states(&self, run: &str) -> Result<Vec<CredentialRow>, JournalError> {
        self.require_run(run)?;
        let doing = "reading credential states";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT credential, state, detail, updated_at FROM credential_states WHERE run_id = ?1 ORDER BY seq",
            )
            .map_err(|e| self.sql(doing, e))?;
        let raw = stmt
            .query_map([run], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get::<_, String>(2)?,
                    row.get(3)?,
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<(String, String, String, String)>, _>>)
            .map_err(|e| self.sql(doing, e))?;
        raw.into_iter()
            .map(|(credential, state, detail, updated_at)| {
                Ok(CredentialRow {
                    state: state.parse().map_err(|e: String| {
                        self.corrupt(format!("credential `{credential}`: {e}"))
                    })?,
                    credential,
                    detail: self.json(&detail, "a credential state's detail")?,
                    updated_at,
                })
            })
            .collect()
    }

    /// Records, durably, that `step` is about to be attempted on `credential`. Call it
    /// before the step touches a provider or Vault, and record its [`Journal::outcome`]
    /// after: when this returns, the intent survives a crash or power cut.
    ///
    /// Invariant: `detail` holds no secret value (what the step will do, by id,
    /// version and fingerprint).
    pub fn intent(
        &self,
        run: &str,
        credential: &str,
        step: &str,
        detail: &Value,
    ) -> Result<IntentId, JournalError> {
        self.conn
            .prepare_cached(
                "INSERT INTO intents (run_id, credential, step, detail, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![run, credential, step, detail.to_string(), rfc3339(SystemTime::now())])
            })
            .map_err(|e| self.write_error(run, "recording an intent", e))?;
        let id = IntentId(self.conn.last_insert_rowid());
        debug!(run, credential, step, intent = %id, "Intent recorded.");
        self.open_intents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.0,
                (run.to_owned(), credential.to_owned(), step.to_owned()),
            );
        self.mirror(
            "an intent",
            Event::Intent {
                run,
                credential,
                step,
                intent: id,
                detail,
            },
        )?;
        Ok(id)
    }

    /// Records how the step of `intent` ended. Each intent gets exactly one outcome; a
    /// retry is a new intent.
    ///
    /// Invariant: neither `detail` nor a failure's `message` holds a secret value (a new
    /// key's id and fingerprint, yes; the key or a response body that quotes it, never).
    pub fn outcome(
        &self,
        intent: IntentId,
        outcome: Outcome,
        detail: &Value,
    ) -> Result<(), JournalError> {
        // One statement: it commits by itself.
        let (run, credential, step) = self.insert_outcome(&self.conn, intent, &outcome, detail)?;
        self.mirror(
            "an outcome",
            Event::Outcome {
                run: &run,
                credential: &credential,
                step: &step,
                intent,
                outcome: &outcome,
                detail,
            },
        )
    }

    /// [`Journal::outcome`] and [`Journal::set_state`] for the intent's credential, in one
    /// transaction: the new state can never be recorded without the outcome that led to
    /// it (or the other way round), and the pair costs one fsync instead of two.
    ///
    /// Invariant: `detail`, a failure's `message` and `state_detail` hold no secret value.
    pub fn outcome_and_state(
        &self,
        intent: IntentId,
        outcome: Outcome,
        detail: &Value,
        state: CredentialState,
        state_detail: &Value,
    ) -> Result<(), JournalError> {
        let state = state.as_str();
        let doing = "recording an outcome and a credential state";
        let tx = self.immediate(doing)?;
        let (run, credential, step) = self.insert_outcome(&tx, intent, &outcome, detail)?;
        tx.prepare_cached(UPSERT_STATE)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    run,
                    credential,
                    state,
                    state_detail.to_string(),
                    rfc3339(SystemTime::now())
                ])
            })
            .map_err(|e| self.sql(doing, e))?;
        tx.commit().map_err(|e| self.sql(doing, e))?;
        debug!(run, credential, state, "Credential state recorded.");
        self.mirror(
            "an outcome",
            Event::Outcome {
                run: &run,
                credential: &credential,
                step: &step,
                intent,
                outcome: &outcome,
                detail,
            },
        )?;
        self.mirror(
            "a credential state",
            Event::State {
                run: &run,
                credential: &credential,
                state,
                detail: state_detail,
            },
        )
    }

    /// Intents in `run` with no outcome, oldest first: what was in flight when the
    /// process died. Each one's step may or may not have happened.
    pub fn open_intents(&self, run: &str) -> Result<Vec<IntentRow>, JournalError> {
        self.require_run(run)?;
        self.query_intents("WHERE i.run_id = ?1 AND o.intent_id IS NULL", &[&run])
    }

    /// Every intent for `credential` in `run`, oldest first, each with its outcome.
    pub fn intents(&self, run: &str, credential: &str) -> Result<Vec<IntentRow>, JournalError> {
        self.require_run(run)?;
        self.query_intents(
            "WHERE i.run_id = ?1 AND i.credential = ?2",
            &[&run, &credential],
        )
    }

    /// The intents of run `run` that tidy Vault (`clear_staging`, `unlock`) and
    /// did not succeed (failed, or no outcome), oldest first: where
    /// `engine::tidy` starts looking for the entries a run could not remove.
    pub fn unfinished_cleanups(&self, run: &str) -> Result<Vec<IntentRow>, JournalError> {
        self.require_run(run)?;
        self.query_intents(
            "WHERE i.run_id = ?1 AND i.step IN ('clear_staging', 'unlock') \
             AND (o.result IS NULL OR o.result <> 'ok')",
            &[&run],
        )
    }

    /// Takes or renews the lease on `credential` for `holder` (see
    /// [`Journal::new_lease_holder`]) until `ttl` from now. Returns `false` if another
    /// holder's lease has not expired: the caller must not touch the credential.
    ///
    /// A lease covers the credential id across all runs in this journal, not just `run`:
    /// two runs started side by side must not rotate the same credential. Expiry is wall
    /// clock time shared by every process on the host; renew well within `ttl`, and treat
    /// a failed renewal as having lost the credential.
    pub fn lease(
        &self,
        run: &str,
        credential: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, JournalError> {
        let now = unix_millis(SystemTime::now());
        let expires = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        // One statement, so the check and the take are atomic: insert, or overwrite a row
        // that is ours or has expired; otherwise the upsert changes nothing.
        let changed = self
            .conn
            .prepare_cached(
                "INSERT INTO leases (credential, run_id, holder, expires_at_ms, taken_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (credential) DO UPDATE SET
                     run_id = excluded.run_id,
                     holder = excluded.holder,
                     expires_at_ms = excluded.expires_at_ms,
                     taken_at = CASE WHEN leases.holder = excluded.holder THEN leases.taken_at
                                     ELSE excluded.taken_at END
                 WHERE leases.holder = excluded.holder OR leases.expires_at_ms <= ?6",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![credential, run, holder, expires, rfc3339(SystemTime::now()), now])
            })
            .map_err(|e| self.write_error(run, "taking a lease", e))?;
        let taken = changed == 1;
        debug!(run, credential, holder, taken, "Lease requested.");
        Ok(taken)
    }

    /// Gives up `holder`'s lease on `credential`. Releasing a lease that was lost (it
    /// expired and someone else took it) is not an error: there is nothing left to give.
    pub fn release(&self, run: &str, credential: &str, holder: &str) -> Result<(), JournalError> {
        let changed = self
            .conn
            .prepare_cached(
                "DELETE FROM leases WHERE credential = ?1 AND holder = ?2 AND run_id = ?3",
            )
            .and_then(|mut stmt| stmt.execute(params![credential, holder, run]))
            .map_err(|e| self.sql("releasing a lease", e))?;
        if changed == 0 {
            warn!(
                run,
                credential, holder, "Released a lease this holder no longer had (it expired)."
            );
        }
        Ok(())
    }

    /// The run and holder of the lease on `credential`, expired or not; `None` when
    /// nobody holds it. For `rekey status` ("held by pid 4242") and for `resume`, which
    /// breaks the lease of a holder whose process is gone instead of waiting out its TTL.
    pub fn lease_holder(&self, credential: &str) -> Result<Option<(RunId, String)>, JournalError> {
        self.conn
            .prepare_cached("SELECT run_id, holder FROM leases WHERE credential = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([credential], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()
            })
            .map_err(|e| self.sql("reading a lease", e))
    }

    /// The leases on credentials of `run` that have not expired, by credential.
    pub fn holders(&self, run: &str) -> Result<Vec<Holding>, JournalError> {
        let now = unix_millis(SystemTime::now());
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT credential, holder, taken_at, expires_at_ms FROM leases
                 WHERE run_id = ?1 AND expires_at_ms > ?2 ORDER BY credential",
            )
            .map_err(|e| self.sql("reading leases", e))?;
        stmt.query_map(params![run, now], |row| {
            Ok(Holding {
                credential: row.get(0)?,
                holder: row.get(1)?,
                since: row.get(2)?,
                expires_at_ms: row.get(3)?,
                zone: None,
            })
        })
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| self.sql("reading leases", e))
    }

    /// Removes `holder`'s lease on `credential` whatever its expiry, for a holder known
    /// to be dead. Only that holder's lease is removed: if someone else took the
    /// credential in the meantime, nothing happens and this returns `false`.
    pub fn break_lease(&self, credential: &str, holder: &str) -> Result<bool, JournalError> {
        let changed = self
            .conn
            .execute(
                "DELETE FROM leases WHERE credential = ?1 AND holder = ?2",
                params![credential, holder],
            )
            .map_err(|e| self.sql("breaking a lease", e))?;
        if changed == 1 {
            warn!(
                credential,
                holder, "Broke the lease of a holder that is gone."
            );
        }
        Ok(changed == 1)
    }

    // ---- private helpers ----

    /// Inserts the outcome of `intent` on `conn` (the connection, or a transaction
    /// around more writes): the intent's primary key in `outcomes` refuses a second
    /// outcome, even one another connection slipped in. Returns the intent's run,
    /// credential and step.
    fn insert_outcome(
        &self,
        conn: &Connection,
        intent: IntentId,
        outcome: &Outcome,
        detail: &Value,
    ) -> Result<(String, String, String), JournalError> {
        let doing = "recording an outcome";
        let known = self
            .open_intents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&intent.0);
        let (run, credential, step) = match known {
            Some(known) => known,
            None => self.closable_intent(conn, intent)?,
        };
        let (result, kind, message) = match outcome {
            Outcome::Ok => ("ok", None, None),
            Outcome::Failed { kind, message } => {
                ("failed", Some(kind.as_str()), Some(message.as_str()))
            }
        };
        conn.prepare_cached(
            "INSERT INTO outcomes (intent_id, result, error_kind, error_message, detail, finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![intent.0, result, kind, message, detail.to_string(), rfc3339(SystemTime::now())])
        })
        .map_err(|e| match e {
            // Another connection recorded it in between.
            rusqlite::Error::SqliteFailure(f, _)
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                JournalError::OutcomeAlreadyRecorded {
                    path: self.path.clone(),
                    id: intent.0,
                }
            }
            e => self.sql(doing, e),
        })?;
        debug!(run, credential, intent = %intent, result, kind, "Outcome recorded.");
        Ok((run, credential, step))
    }

    /// Run, credential and step of `intent`, read from the table: an error when
    /// there is no such intent or its outcome is recorded already.
    fn closable_intent(
        &self,
        conn: &Connection,
        intent: IntentId,
    ) -> Result<OpenIntent, JournalError> {
        let found: Option<(String, String, Option<i64>, String)> = conn
            .prepare_cached(
                "SELECT i.run_id, i.credential, o.intent_id, i.step
                 FROM intents i LEFT JOIN outcomes o ON o.intent_id = i.id WHERE i.id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([intent.0], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })
                .optional()
            })
            .map_err(|e| self.sql("recording an outcome", e))?;
        match found {
            None => Err(JournalError::UnknownIntent {
                path: self.path.clone(),
                id: intent.0,
            }),
            Some((_, _, Some(_), _)) => Err(JournalError::OutcomeAlreadyRecorded {
                path: self.path.clone(),
                id: intent.0,
            }),
            Some((run, credential, None, step)) => Ok((run, credential, step)),
        }
    }

    /// Connection settings. `journal_mode` is stored in the file; the others are per
    /// connection, so they are set on every open.
    fn configure(&self) -> Result<(), JournalError> {
        self.set_busy_timeout(DEFAULT_BUSY_TIMEOUT)?;
        // The first read of the header: a file that is not SQLite fails here, as corrupt.
        let app_id: i64 = self
            .conn
            .pragma_query_value(None, "application_id", |row| row.get(0))
            .map_err(|e| self.sql("reading the file header", e))?;
        if app_id != 0 && app_id != schema::APPLICATION_ID {
            return Err(self.foreign(format!(
                "an SQLite database with application id {app_id:#x}"
            )));
        }
        let mode: String = self
            .conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| self.sql("switching to write-ahead logging", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Io {
                path: self.path.clone(),
                action: "use write-ahead logging for",
                source: std::io::Error::other(format!(
                    "SQLite kept journal_mode `{mode}`; put the journal on a local file system"
                )),
            });
        }
        // FULL, not NORMAL: in WAL mode NORMAL skips the fsync at commit, and a power cut
        // could then lose an intent whose step already ran.
        self.conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.sql("configuring sync", e))?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.sql("configuring foreign keys", e))?;
        Ok(())
    }

    /// Brings the schema to [`schema::CURRENT_VERSION`], or refuses a newer one.
    fn migrate(&self) -> Result<(), JournalError> {
        let doing = "migrating the schema";
        let version = self.user_version()?;
        if version > schema::CURRENT_VERSION {
            return Err(self.newer_schema(version));
        }
        if version == schema::CURRENT_VERSION {
            return Ok(());
        }
        // Migrations may copy a table that others reference (SQLite cannot change a
        // CHECK in place): foreign keys are off meanwhile (the pragma is ignored
        // inside a transaction) and checked before the commit.
        self.conn
            .pragma_update(None, "foreign_keys", "OFF")
            .map_err(|e| self.sql(doing, e))?;
        let migrated = self.migrate_without_foreign_keys(doing);
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.sql(doing, e))?;
        migrated
    }

    fn migrate_without_foreign_keys(&self, doing: &'static str) -> Result<(), JournalError> {
        let tx = self.immediate(doing)?;
        // Read again under the write lock: another process may have migrated meanwhile.
        let version = self.user_version()?;
        if version > schema::CURRENT_VERSION {
            return Err(self.newer_schema(version));
        }
        if version == 0 {
            let app_id: i64 = tx
                .pragma_query_value(None, "application_id", |row| row.get(0))
                .map_err(|e| self.sql(doing, e))?;
            let tables: i64 = tx
                .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
                .map_err(|e| self.sql(doing, e))?;
            if app_id != schema::APPLICATION_ID && tables > 0 {
                return Err(self.foreign(format!(
                    "an SQLite database with {tables} schema objects of its own"
                )));
            }
        }
        for migration in &schema::MIGRATIONS[version as usize..] {
            tx.execute_batch(migration)
                .map_err(|e| self.sql(doing, e))?;
        }
        let broken: i64 = tx
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })
            .map_err(|e| self.sql(doing, e))?;
        if broken > 0 {
            return Err(self.corrupt(format!(
                "{broken} rows refer to records that do not exist after the schema migration"
            )));
        }
        tx.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .map_err(|e| self.sql(doing, e))?;
        tx.pragma_update(None, "user_version", schema::CURRENT_VERSION)
            .map_err(|e| self.sql(doing, e))?;
        tx.commit().map_err(|e| self.sql(doing, e))?;
        info!(path = %self.path.display(), from = version, to = schema::CURRENT_VERSION, "Journal schema migrated.");
        Ok(())
    }

    fn user_version(&self) -> Result<i64, JournalError> {
        self.conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| self.sql("reading the schema version", e))
    }

    /// `BEGIN IMMEDIATE`: takes the write lock now (waiting up to the busy timeout), so a
    /// transaction that reads then writes never fails half way on a lock upgrade.
    fn immediate(&self, doing: &'static str) -> Result<Transaction<'_>, JournalError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(|e| self.sql(doing, e))
    }

    fn query_runs<P: rusqlite::Params>(
        &self,
        tail: &str,
        params: P,
    ) -> Result<Vec<RunRow>, JournalError> {
        let doing = "reading runs";
        let sql = format!(
            "SELECT id, playbook_name, playbook_path, playbook_sha256, mode, selection, actor, status, started_at,
                    finished_at, expanded_sha256, holder
             FROM runs {tail}"
        );
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| self.sql(doing, e))?;
        let raw = stmt
            .query_map(params, |row| {
                Ok((
                    RunRow {
                        id: row.get(0)?,
                        playbook_name: row.get(1)?,
                        playbook_path: row.get(2)?,
                        playbook_sha256: row.get(3)?,
                        mode: row.get(4)?,
                        selection: Value::Null,
                        actor: row.get(6)?,
                        status: RunStatus::Running,
                        started_at: row.get(8)?,
                        finished_at: row.get(9)?,
                        expanded_sha256: row.get(10)?,
                        holder: row.get(11)?,
                    },
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(7)?,
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.sql(doing, e))?;
        raw.into_iter()
            .map(|(mut run, selection, status)| {
                run.selection = self.json(&selection, "a run's selection")?;
                run.status = status.parse().map_err(|detail| self.corrupt(detail))?;
                Ok(run)
            })
            .collect()
    }

    fn query_intents(
        &self,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<IntentRow>, JournalError> {
        let doing = "reading intents";
        let sql = format!(
            "SELECT i.id, i.credential, i.step, i.detail, i.started_at,
                    o.result, o.error_kind, o.error_message, o.detail, o.finished_at
             FROM intents i LEFT JOIN outcomes o ON o.intent_id = i.id
             {filter}
             ORDER BY i.id"
        );
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| self.sql(doing, e))?;
        let raw = stmt
            .query_map(params, |row| {
                let outcome: Option<RawOutcome> = match row.get::<_, Option<String>>(5)? {
                    None => None,
                    Some(result) => {
                        Some((result, row.get(6)?, row.get(7)?, row.get(8)?, row.get(9)?))
                    }
                };
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    outcome,
                ))
            })
            .and_then(Iterator::collect::<Result<Vec<RawIntent>, _>>)
            .map_err(|e| self.sql(doing, e))?;
        raw.into_iter()
            .map(|raw| intent_row(raw, |detail| self.corrupt(detail)))
            .collect()
    }

    /// Readers fail on an unknown run instead of answering "nothing": an empty list of
    /// open intents for a mistyped id would tell `resume` nothing was in flight.
    fn require_run(&self, id: &str) -> Result<(), JournalError> {
        let exists = self
            .conn
            .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")
            .and_then(|mut stmt| stmt.exists([id]))
            .map_err(|e| self.sql("looking up a run", e))?;
        if exists {
            Ok(())
        } else {
            Err(self.unknown_run(id))
        }
    }

    fn json(&self, text: &str, what: &str) -> Result<Value, JournalError> {
        // serde_json's message gives a line and column, never the text itself.
        serde_json::from_str(text)
            .map_err(|e| self.corrupt(format!("{what} is not valid JSON ({e})")))
    }

    /// A write that names a run fails on the foreign key when the run is unknown.
    fn write_error(&self, run: &str, doing: &'static str, e: rusqlite::Error) -> JournalError {
        if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY) {
            self.unknown_run(run)
        } else {
            self.sql(doing, e)
        }
    }

    fn sql(&self, doing: &'static str, e: rusqlite::Error) -> JournalError {
        map_sql(&self.path, doing, e)
    }

    fn corrupt(&self, detail: String) -> JournalError {
        JournalError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn foreign(&self, reason: String) -> JournalError {
        JournalError::Foreign {
            path: self.path.clone(),
            reason,
        }
    }

    fn unknown_run(&self, id: &str) -> JournalError {
        JournalError::UnknownRun {
            path: self.path.clone(),
            id: id.to_owned(),
        }
    }

    fn newer_schema(&self, found: i64) -> JournalError {
        JournalError::NewerSchema {
            path: self.path.clone(),
            found,
            supported: schema::CURRENT_VERSION,
        }
    }
}

/// Sets a credential's state, keeping the row (and so its `seq`, its place in
/// [`Journal::states`]) when it already exists.
const UPSERT_STATE: &str = "INSERT INTO credential_states (run_id, credential, state, detail, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (run_id, credential)
     DO UPDATE SET state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at";

/// Sorts SQLite failures into the ones an operator can act on.
fn map_sql(path: &Path, doing: &'static str, e: rusqlite::Error) -> JournalError {
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            JournalError::Busy { path, source: e }
        }
        Some(ErrorCode::NotADatabase) => JournalError::Corrupt {
            path,
            detail: format!(
                "it is not an SQLite database ({e}): the wrong file, or a damaged journal"
            ),
        },
        Some(code @ (ErrorCode::DiskFull | ErrorCode::ReadOnly)) => JournalError::Disk {
            path,
            doing,
            read_only: code == ErrorCode::ReadOnly,
        },
        Some(ErrorCode::DatabaseCorrupt) => JournalError::Corrupt {
            path,
            detail: format!("{doing}: {e}"),
        },
        _ => JournalError::Sqlite {
            path,
            doing,
            source: e,
        },
    }
}

fn is_constraint(e: &rusqlite::Error, extended_code: std::ffi::c_int) -> bool {
    e.sqlite_error()
        .is_some_and(|err| err.extended_code == extended_code)
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `2026-11-28T07:42:13.123Z` → `r-20261128-0742-3f9a`.
fn new_run_id(started_at: &str) -> RunId {
    let digits: String = started_at.chars().filter(char::is_ascii_digit).collect();
    format!(
        "r-{}-{}-{:04x}",
        &digits[..8],
        &digits[8..12],
        rand::random::<u16>()
    )
}

/// An intent row as both backends store it (id, credential, step, detail,
/// started_at, outcome), before its JSON and outcome are read.
pub(crate) type RawIntent = (i64, String, String, String, String, Option<RawOutcome>);
/// An outcome as stored: result, error kind, error message, detail, finished_at.
pub(crate) type RawOutcome = (String, Option<String>, Option<String>, String, String);

/// Reads a stored intent row, for either backend; `corrupt` names the store.
pub(crate) fn intent_row(
    (id, credential, step, detail, started_at, outcome): RawIntent,
    corrupt: impl Fn(String) -> JournalError,
) -> Result<IntentRow, JournalError> {
    // serde_json's message gives a line and column, never the text itself.
    let json = |text: &str, what: &str| {
        serde_json::from_str(text).map_err(|e| corrupt(format!("{what} is not valid JSON ({e})")))
    };
    let outcome = match outcome {
        None => None,
        Some((result, kind, message, detail, finished_at)) => Some(RecordedOutcome {
            outcome: match (result.as_str(), kind, message) {
                ("ok", None, None) => Outcome::Ok,
                ("failed", Some(kind), Some(message)) => Outcome::Failed { kind, message },
                _ => return Err(corrupt(format!("intent {id} has a malformed outcome"))),
            },
            detail: json(&detail, "an outcome's detail")?,
            finished_at,
        }),
    };
    Ok(IntentRow {
        id: IntentId(id),
        credential,
        step,
        detail: json(&detail, "an intent's detail")?,
        started_at,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_carry_the_start_minute() {
        let id = new_run_id("2026-11-28T07:42:13.123Z");
        assert!(id.starts_with("r-20261128-0742-"), "{id}");
        assert_eq!(id.len(), "r-20261128-0742-3f9a".len());
    }

    /// The statements of a credential's hot path (intent, outcome, state) are
    /// prepared once and reused: a statement SQLite re-prepares costs a parse each
    /// time (the profile of `examples/engine_vs_vault.rs` before outcomes became
    /// one `INSERT` had 8% of rekey's samples re-preparing in the outcome's
    /// lookup-and-insert transaction). SQLite counts re-preparations per statement.
    #[test]
    fn recording_steps_never_reprepares_a_statement() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(&dir.path().join("journal.db")).unwrap();
        let run = journal
            .create_run(&NewRun {
                playbook_name: "p".into(),
                playbook_path: "p.yaml".into(),
                playbook_sha256: "ab".repeat(32),
                mode: "breach".into(),
                selection: serde_json::json!({}),
                actor: "a@h".into(),
                expanded_sha256: None,
            })
            .unwrap();
        for i in 0..50 {
            let credential = format!("c{i}");
            let detail = serde_json::json!({ "path": credential });
            let a = journal.intent(&run, &credential, "stage", &detail).unwrap();
            journal.outcome(a, Outcome::Ok, &detail).unwrap();
            let b = journal
                .intent(&run, &credential, "change", &detail)
                .unwrap();
            journal
                .outcome_and_state(b, Outcome::Ok, &detail, CredentialState::Changed, &detail)
                .unwrap();
            journal
                .set_state(&run, &credential, CredentialState::Promoted, &detail)
                .unwrap();
        }
        // A closed intent goes through the lookup, which refuses it.
        let c = journal
            .intent(&run, "x", "stage", &serde_json::json!({}))
            .unwrap();
        journal
            .outcome(c, Outcome::Ok, &serde_json::json!({}))
            .unwrap();
        assert!(matches!(
            journal.outcome(c, Outcome::Ok, &serde_json::json!({})),
            Err(JournalError::OutcomeAlreadyRecorded { .. })
        ));
        let mut reprepared = Vec::new();
        for sql in [
            "INSERT INTO intents (run_id, credential, step, detail, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            "INSERT INTO outcomes (intent_id, result, error_kind, error_message, detail, finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            UPSERT_STATE,
            "SELECT i.run_id, i.credential, o.intent_id, i.step
                 FROM intents i LEFT JOIN outcomes o ON o.intent_id = i.id WHERE i.id = ?1",
        ] {
            let stmt = journal.conn.prepare_cached(sql).unwrap();
            let n = stmt.get_status(rusqlite::StatementStatus::RePrepare);
            if n > 0 {
                reprepared.push((sql.to_owned(), n));
            }
        }
        assert!(reprepared.is_empty(), "re-prepared: {reprepared:?}");
    }

    #[test]
    fn connections_sync_every_commit_and_enforce_references() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SqliteJournal::open(&dir.path().join("journal.db")).unwrap();
        let get = |name: &str| -> String {
            journal
                .conn
                .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(get("journal_mode"), r#"Text("wal")"#);
        assert_eq!(get("synchronous"), "Integer(2)", "synchronous=FULL");
        assert_eq!(get("foreign_keys"), "Integer(1)");
        assert_eq!(
            get("user_version"),
            format!("Integer({})", schema::CURRENT_VERSION)
        );
    }
}
