//! What a run leaves in Vault after its credentials ended: a staging entry (a
//! copy of a promoted value) whose `clear_staging` Vault did not answer, or a lock
//! entry whose `unlock` it did not answer (found by `scripts/chaos`, finding 3).
//! Neither undoes a rotation: the credential's outcome stands. They are found
//! from the journal (the last `clear_staging` or `unlock` of a path did not
//! succeed, and the credential's rotation ended), removed at the end of `run` and
//! `resume` while Vault answers, and otherwise named by the run's summary and by
//! `rekey status`, with `rekey resume RUN` to remove them later.
//!
//! ```text
//! staging entry: <staging_prefix>/<run>/<credential>: this run's own path, deleted
//! lock entry:    <staging_prefix>/locks/<vault_path>: deleted only while it still
//!                names this run and has not expired (an expired lock may be
//!                another process's by now: it is left to its next taker)
//! ```

use crate::journal::{Journal, JournalError, Outcome};
use serde::Serialize;

/// One entry a run could not remove from Vault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Leftover {
    pub credential: String,
    /// `staging` (a copy of the promoted value) or `lock`.
    pub kind: &'static str,
    /// The KV path under the mount.
    pub path: String,
}

/// The leftovers of run `run`, from its journal: a cleanup that did not
/// succeed (usually none, so this is one small query), unless a later attempt on
/// the same path did.
pub fn leftovers(journal: &Journal, run: &str) -> Result<Vec<Leftover>, JournalError> {
    let failed = journal.unfinished_cleanups(run)?;
    if failed.is_empty() {
        return Ok(Vec::new());
    }
    let ended: rustc_hash::FxHashSet<String> = journal
        .states(run)?
        .into_iter()
        .filter(|s| s.state.is_final())
        .map(|s| s.credential)
        .collect();
    let mut credentials: Vec<&str> = failed.iter().map(|i| i.credential.as_str()).collect();
    credentials.sort_unstable();
    credentials.dedup();
    // The last attempt on each path decides.
    let mut last: indexmap::IndexMap<(String, &'static str, String), bool> =
        indexmap::IndexMap::new();
    for credential in credentials.into_iter().filter(|c| ended.contains(*c)) {
        for intent in journal.intents(run, credential)? {
            let kind = match intent.step.as_str() {
                "clear_staging" => "staging",
                "unlock" => "lock",
                _ => continue,
            };
            let Some(path) = intent.detail.get("path").and_then(|p| p.as_str()) else {
                continue;
            };
            let done = matches!(
                intent.outcome.as_ref().map(|o| &o.outcome),
                Some(Outcome::Ok)
            );
            last.insert((intent.credential, kind, path.to_owned()), done);
        }
    }
    Ok(last
        .into_iter()
        .filter(|(_, done)| !done)
        .map(|((credential, kind, path), _)| Leftover {
            credential,
            kind,
            path,
        })
        .collect())
}

/// The line a summary or `status` prints about `leftovers` of run `run`.
pub fn describe(run: &str, leftovers: &[Leftover], journal_arg: &str) -> String {
    let staging = leftovers.iter().filter(|l| l.kind == "staging").count();
    let locks = leftovers.len() - staging;
    let mut what = Vec::new();
    if staging > 0 {
        what.push(format!(
            "{staging} staging entr{} (a copy of a promoted value)",
            if staging == 1 { "y" } else { "ies" }
        ));
    }
    if locks > 0 {
        what.push(format!(
            "{locks} lock{} (expiring by itself)",
            if locks == 1 { "" } else { "s" }
        ));
    }
    format!(
        "Vault still holds {} that run {run} could not remove (Vault did not answer): {}; `rekey resume {run}{journal_arg}` removes them once Vault answers",
        what.join(" and "),
        leftovers
            .iter()
            .map(|l| l.path.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
