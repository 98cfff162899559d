//! A copy of every committed journal record, for the audit trail.
//!
//! The journal is where the engine records each intent, outcome, state and run; a
//! mirror sees the same records in the same order, right after each commit, so the
//! audit trail cannot drift from what the engine did. The journal does not know
//! what a mirror does with them (`crate::audit::Trail` writes hash-chained lines).

use super::{IntentId, NewRun, Outcome, RunStatus};
use crate::secret::Secret;
use serde_json::Value;
use std::cell::RefCell;
use std::fmt;

/// One committed journal record. Details are the engine's JSON, as in the journal
/// (ids, versions, fingerprints; never a secret value).
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    RunStarted {
        run: &'a str,
        new_run: &'a NewRun,
    },
    RunFinished {
        run: &'a str,
        status: RunStatus,
    },
    /// `rekey resume` took the run up again.
    RunReopened {
        run: &'a str,
    },
    Intent {
        run: &'a str,
        credential: &'a str,
        step: &'a str,
        intent: IntentId,
        detail: &'a Value,
    },
    Outcome {
        run: &'a str,
        credential: &'a str,
        step: &'a str,
        intent: IntentId,
        outcome: &'a Outcome,
        detail: &'a Value,
    },
    State {
        run: &'a str,
        credential: &'a str,
        state: &'a str,
        detail: &'a Value,
    },
}

/// Receives every record a journal connection commits.
pub trait Mirror: Send {
    /// Records `event` durably. An error (a message without secrets) fails the
    /// journal call that committed the record.
    fn record(&mut self, event: Event<'_>) -> Result<(), String>;

    /// `secret` is the value the journal's records call `fingerprint`: a mirror that
    /// names values its own way (the trail's HMAC key) learns the mapping here.
    fn note_secret(&mut self, _fingerprint: &str, _secret: &Secret) {}

    /// Where the mirror stands, on disk: its file, its number of lines and the
    /// SHA-256 of the last one, after syncing what it wrote. The journal records
    /// it (`trail_anchors`) so a mirror deleted, cut or replaced is noticed.
    fn position(&mut self) -> Result<Option<(std::path::PathBuf, u64, String)>, String> {
        Ok(None)
    }

    /// From now on, records are written but not synced one by one: the caller
    /// syncs the returned files (group commit) before relying on them.
    fn defer_sync(&mut self) -> Result<Vec<std::fs::File>, String> {
        Ok(Vec::new())
    }

    /// For a journal that keeps the trail in its own database (PostgreSQL, one
    /// chain per run), inside the transaction of the record: the sealed line for
    /// `event` as line `seq` of its chain after the line whose SHA-256 is `prev`.
    /// `None`: this mirror writes a file of its own ([`Mirror::record`]).
    fn chain_line(
        &mut self,
        _event: Event<'_>,
        _seq: u64,
        _prev: &str,
    ) -> Option<Result<String, String>> {
        None
    }

    /// A line from [`Mirror::chain_line`] was committed with its record: a mirror
    /// copies it to its extra sinks (never before the commit).
    fn committed(&mut self, _line: &str) {}
}

/// The journal's optional mirror. A `RefCell`: the journal is one connection used
/// by one thread at a time (it is `Send`, not `Sync`), and its methods take `&self`.
#[derive(Default)]
pub(super) struct Slot(Option<RefCell<Box<dyn Mirror>>>);

impl Slot {
    pub(super) fn new(mirror: Box<dyn Mirror>) -> Slot {
        Slot(Some(RefCell::new(mirror)))
    }

    pub(super) fn note_secret(&self, fingerprint: &str, secret: &Secret) {
        if let Some(cell) = &self.0
            && let Ok(mut mirror) = cell.try_borrow_mut()
        {
            mirror.note_secret(fingerprint, secret);
        }
    }

    pub(super) fn defer_sync(&self) -> Result<Vec<std::fs::File>, String> {
        match &self.0 {
            Some(cell) => match cell.try_borrow_mut() {
                Ok(mut mirror) => mirror.defer_sync(),
                Err(_) => Err("the audit trail was re-entered (a bug)".into()),
            },
            None => Ok(Vec::new()),
        }
    }

    pub(super) fn position(&self) -> Result<Option<(std::path::PathBuf, u64, String)>, String> {
        match &self.0 {
            Some(cell) => match cell.try_borrow_mut() {
                Ok(mut mirror) => mirror.position(),
                Err(_) => Err("the audit trail was re-entered (a bug)".into()),
            },
            None => Ok(None),
        }
    }

    pub(super) fn record(&self, event: Event<'_>) -> Result<(), String> {
        match &self.0 {
            Some(cell) => match cell.try_borrow_mut() {
                Ok(mut mirror) => mirror.record(event),
                Err(_) => Err("the audit trail was re-entered (a bug)".into()),
            },
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Mirror(set)"
        } else {
            "Mirror(none)"
        })
    }
}
