//! The audit trail of a shared journal, as `rekey audit` reads it: one hash chain
//! per run (`rekey.audit`), its head (line count and last hash) on the run's row.
//! Lines are appended in the transaction of their record (`worker.rs`, `Lines`),
//! so a record and its line commit together, and the lock the head's update takes
//! on the run's row orders the lines of runners appending to one run.

use super::PgJournal;
use crate::journal::JournalError;
use serde::{Deserialize, Serialize};

/// One run's chain as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunChain {
    pub run: String,
    /// The lines in `seq` order.
    pub lines: Vec<String>,
    /// The head: how many lines the run's row says were appended, and the
    /// SHA-256 of the last.
    pub head_lines: u64,
    pub head_last: String,
}

impl PgJournal {
    /// The audit chain of every run (or of `run`), oldest run first.
    pub fn chains(&self, run: Option<&str>) -> Result<Vec<RunChain>, JournalError> {
        let run = run.map(str::to_owned);
        self.call(move |w| {
            w.transact("reading the audit trail", false, async |tx, _| {
                let heads = tx
                    .query(
                        "SELECT id, audit_lines, audit_last FROM rekey.runs
                         WHERE $1::text IS NULL OR id = $1 ORDER BY seq",
                        &[&run],
                    )
                    .await?;
                let mut chains = Vec::with_capacity(heads.len());
                for head in &heads {
                    let id: String = head.get(0);
                    let lines = tx
                        .query(
                            "SELECT line FROM rekey.audit WHERE run_id = $1 ORDER BY seq",
                            &[&id],
                        )
                        .await?
                        .iter()
                        .map(|r| r.get::<_, String>(0))
                        .collect();
                    chains.push(RunChain {
                        run: id,
                        lines,
                        head_lines: head.get::<_, i64>(1).max(0) as u64,
                        head_last: head.get(2),
                    });
                }
                Ok(chains)
            })
        })
    }
}
