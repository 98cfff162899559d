//! What can go wrong with the journal, each error naming the journal's path and what the
//! operator can do about it. Messages never carry detail values (which are the
//! engine's JSON) or SQL parameters: only paths, ids and SQLite's own diagnostics.

use std::path::PathBuf;

/// An error from the journal. Every variant names the journal file, because an operator
/// mid-incident may have several (one per state directory) and needs to know which.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file or its directory failed a check of `crate::files` (a link,
    /// another owner, a directory others can write).
    #[error(transparent)]
    File(#[from] crate::files::FileError),

    #[error(
        "cannot {action} the journal at {path}: {source}{}",
        crate::files::disk_hint(source)
    )]
    Io {
        path: PathBuf,
        /// What was being attempted, as a verb phrase ("create", "check the permissions of").
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the journal at {path} is accessible by group or others (mode {mode:04o}); it records which \
         credentials were rotated and when, so rekey refuses to use it: run `chmod 600 {path}` and try again"
    )]
    Permissions { path: PathBuf, mode: u32 },

    #[error(
        "{path} is not a regular file; point rekey at a journal file (or a path where it may create one)"
    )]
    NotAFile { path: PathBuf },

    #[error(
        "{path} is not a rekey journal ({reason}); choose another path, or move that file aside if it is a \
         leftover"
    )]
    Foreign { path: PathBuf, reason: String },

    #[error(
        "the journal at {path} has schema version {found}, newer than this rekey understands ({supported}); \
         use the rekey version that wrote it (or a newer one): an older one could misread what was in flight"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    #[error(
        "the journal at {path} is locked by another rekey process (still busy after waiting); wait for it to \
         finish, or stop it, then try again"
    )]
    Busy {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error(
        "the journal at {path} is corrupt: {detail}; keep the file for the investigation, and check the Vault \
         staging paths and the providers by hand: resume cannot trust it"
    )]
    Corrupt { path: PathBuf, detail: String },

    #[error("run {id} is not in the journal at {path}; `rekey status` lists the runs it holds")]
    UnknownRun { path: PathBuf, id: String },

    #[error(
        "intent {id} is not in the journal at {path} (an engine bug: an outcome must follow its own intent)"
    )]
    UnknownIntent { path: PathBuf, id: i64 },

    #[error(
        "intent {id} in the journal at {path} already has an outcome (an engine bug: each step is recorded once; \
         a retry is a new intent)"
    )]
    OutcomeAlreadyRecorded { path: PathBuf, id: i64 },

    #[error(
        "run {id} in the journal at {path} cannot be finished with status `running` (an engine bug: use \
         `reopen_run` to resume a run)"
    )]
    RunningIsNotFinal { path: PathBuf, id: String },

    #[error(
        "the journal at {path} could not be written while {doing}: {}; nothing more was done: {}, then \
         `rekey resume` (what was in flight is in the journal)",
        if *.read_only { "its file system is read-only" } else { "its file system is full" },
        if *.read_only { "make it writable (or copy the journal's directory elsewhere and point --journal at it)" }
        else { "free space there (or move the journal's directory to a larger disk and point --journal at it)" }
    )]
    Disk {
        path: PathBuf,
        doing: &'static str,
        read_only: bool,
    },

    #[error("the journal at {path} failed while {doing}: {source}")]
    Sqlite {
        path: PathBuf,
        /// What the journal was doing, as a gerund phrase ("recording an intent").
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    #[error("the journal at {path} failed while {doing}: {message}")]
    Postgres {
        path: PathBuf,
        /// What the journal was doing, as a gerund phrase ("recording an intent").
        doing: &'static str,
        /// The server's message and SQLSTATE, or the client's error (never a row).
        message: String,
    },

    #[error(
        "the journal at {path} did not answer for {waited} s ({message}); nothing more was recorded: \
         check that PostgreSQL is up and reachable from here, then run the command again (`rekey runner` \
         picks up where the run stands)"
    )]
    Unreachable {
        path: PathBuf,
        waited: u64,
        message: String,
    },

    #[error(
        "the journal at {path} recorded {what}, but the audit trail could not be written: {reason}; nothing \
         more was done: fix the trail (`rekey audit verify`), then `rekey resume`"
    )]
    Audit {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
}
