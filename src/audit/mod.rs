//! The audit trail: append-only JSON lines, hash-chained, one per journal record,
//! for auditors, insurers and the incident report.
//!
//! Each line names when (`ts`), who (`actor`: the OS user and, when Vault says, the
//! token's entity), which run, credential and provider, what (`event`: run,
//! intent, outcome, state; `action`: the step or state), how it ended (`outcome`,
//! `error`), key ids, the Vault path and version, and the secret it concerns as
//! `secret_hmac` (HMAC-SHA256 under the trail's own key, `<trail>.key`, as Vault's
//! audit devices do): whoever holds a value can check it against the trail
//! (`rekey audit hmac`), the trail alone reveals nothing. `seq`, `prev` and `hash`
//! chain the lines (see `chain`); `<trail>.head` guards the end.
//!
//! Invariant: a line is written before the journal call that committed its record
//! returns, and synced with it: by itself (`fdatasync` per line), or under the
//! engine's group commit with the journal's WAL, before any step that changes the
//! world starts; a trail that cannot be written stops the run.
//! Invariant: no secret value reaches a line: details come from the journal (ids,
//! versions), and the journal's fingerprints are replaced by the trail's HMAC.
//! Invariant: rekey never appends to a trail whose chain does not verify, nor to
//! one that disagrees with what its journal recorded of it (`anchor`).
//! Invariant: the reader (`chain::verify`, `report`) never panics on any bytes.

pub mod anchor;
pub mod chain;
pub mod report;
pub mod sink;
pub mod trail;

pub use chain::{Head, Problem, Verdict};
pub use sink::Sink;
pub use trail::{CredentialInfo, Trail};

use crate::env_vars;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How `secret_hmac` values start, as in Vault's audit log.
pub const HMAC_PREFIX: &str = "hmac-sha256:";

/// Who is acting: on every line, and (the OS user) on the journal's run. The one
/// definition of who ran rekey.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Actor {
    /// The OS user running rekey.
    pub user: String,
    /// The Vault token's entity, when Vault knows one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_entity_id: Option<String>,
    /// The token's display name (e.g. `approle`, `token`, `userpass-alice`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_display_name: Option<String>,
}

impl Actor {
    /// The OS user from the environment (`USER`, then `LOGNAME`), else the uid.
    pub fn from_os() -> Actor {
        let user = env_vars::get(env_vars::USER)
            .filter(|u| !u.is_empty())
            .or_else(|| env_vars::get(env_vars::LOGNAME).filter(|u| !u.is_empty()))
            .or_else(|| {
                let status = std::fs::read_to_string("/proc/self/status").ok()?;
                let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
                Some(format!("uid {}", uid.split_whitespace().next()?))
            })
            .unwrap_or_else(|| "unknown".into());
        Actor {
            user,
            ..Actor::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file or its directory failed a check of `crate::files` (a link,
    /// another owner, a directory others can write).
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error("cannot {action} the audit trail at {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the audit trail at {path} is accessible by group or others (mode {mode:04o}); rekey refuses to use it: run `chmod 600 {path}` and check who changed it"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path} is not a regular file; point --audit-file at a trail file")]
    NotAFile { path: PathBuf },
    #[error(
        "the audit trail at {path} is broken at line {line}: {reason}; rekey will not extend it: keep it as evidence (`rekey audit verify {path}`), move it aside, and run again"
    )]
    Broken {
        path: PathBuf,
        line: u64,
        reason: String,
    },
}

/// The default trail for a journal: `audit.jsonl` in the journal's directory.
pub fn default_path(journal: &Path) -> PathBuf {
    match journal.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.join("audit.jsonl"),
        None => PathBuf::from("audit.jsonl"),
    }
}

/// The trail's HMAC key file: `<trail>.key`.
pub fn key_path(trail: &Path) -> PathBuf {
    trail::side_file(trail, ".key")
}

/// The trail's head record: `<trail>.head`.
pub fn head_path(trail: &Path) -> PathBuf {
    trail::side_file(trail, ".head")
}

/// Reads the trail at `path` (and its head record when present) and verifies it,
/// calling `each` with every line that holds.
///
/// A trail rekey keeps has its key file and its head record beside it: with the
/// key there and the head gone, the head was deleted, and that is a problem (the
/// end can no longer be checked). A trail alone (a collector's copy) verifies
/// with a note.
pub fn verify_file(
    path: &Path,
    each: impl FnMut(u64, serde_json::Map<String, serde_json::Value>),
) -> std::io::Result<Verdict> {
    let open = || std::fs::File::open(path).map(|f| std::io::BufReader::with_capacity(1 << 16, f));
    // Fail on an unreadable trail before looking at its head.
    drop(open()?);
    let unchecked_end = |reason: String, each| -> std::io::Result<Verdict> {
        let mut v = chain::verify_reader(open()?, None, each)?;
        v.notes.clear();
        if v.problem.is_none() {
            v.problem = Some(Problem {
                line: v.lines,
                reason,
            });
        }
        Ok(v)
    };
    let head = match std::fs::read(head_path(path)) {
        Ok(b) => match chain::parse_head(&b) {
            Some(h) => Some(h),
            None => {
                return unchecked_end(
                    format!(
                        "the head record {} is unreadable, so the end of the trail cannot be checked",
                        head_path(path).display()
                    ),
                    each,
                );
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && key_path(path).exists() => {
            return unchecked_end(
                format!(
                    "the head record {} is missing (rekey writes it beside every trail it keeps, with the key file), so lines removed from the end cannot be detected; restore it from a backup",
                    head_path(path).display()
                ),
                each,
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    chain::verify_reader(open()?, head.as_ref(), each)
}
