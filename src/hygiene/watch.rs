//! `rekey watch`: was a key a run retired used afterwards? In a breach that is
//! how you learn someone still holds the old key. The journal says which keys a
//! run retired and when (a `deactivate` or `revoke` that succeeded; a create
//! that replaced the old value in place); each provider that reports last use
//! (`Provider::last_used`) says when the key last signed a request.
//!
//! Read-only: nothing is changed at any provider.

use crate::engine::Step;
use crate::journal::{Journal, JournalError, Outcome as Recorded};
use crate::plan::age;
use crate::playbook::Playbook;
use crate::provider::{LastUse, Provider, Target};
use indexmap::IndexMap;
use serde::Serialize;
use std::sync::Arc;

/// A key a run retired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Retired {
    pub credential: String,
    pub key_id: String,
    /// `deactivated`, `deleted` or `replaced` (a create that retired it in place).
    pub how: &'static str,
    /// When it was first retired (RFC 3339, from the journal).
    pub at: String,
    #[serde(skip)]
    pub at_epoch: u64,
}

/// What the provider said about one retired key.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub retired: Retired,
    /// `used_after_retirement`, `not_used_since`, `never_used`, `gone`,
    /// `cannot_tell`, `error`.
    pub verdict: Verdict,
    /// The last use the provider reports (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    UsedAfterRetirement,
    NotUsedSince,
    NeverUsed,
    Gone,
    CannotTell,
    Error,
}

/// The keys run `run` retired, oldest retirement first (one entry per key: its
/// first successful deactivation or deletion).
pub fn retired_keys(journal: &Journal, run: &str) -> Result<Vec<Retired>, JournalError> {
    let mut found: Vec<Retired> = Vec::new();
    for state in journal.states(run)? {
        for intent in journal.intents(run, &state.credential)? {
            let Some(outcome) = &intent.outcome else {
                continue;
            };
            if outcome.outcome != Recorded::Ok {
                continue;
            }
            let step = intent.step.parse::<Step>().ok();
            let (how, key) = match step {
                Some(Step::Deactivate) => ("deactivated", intent.detail.get("key_id")),
                Some(Step::Revoke) => ("deleted", intent.detail.get("key_id")),
                Some(Step::Create) => ("replaced", intent.detail.get("retires")),
                _ => continue,
            };
            let Some(key) = key.and_then(|k| k.as_str()) else {
                continue;
            };
            if found
                .iter()
                .any(|r| r.credential == state.credential && r.key_id == key)
            {
                continue;
            }
            found.push(Retired {
                credential: state.credential.clone(),
                key_id: key.to_owned(),
                how,
                at: outcome.finished_at.clone(),
                at_epoch: epoch(&outcome.finished_at),
            });
        }
    }
    found.sort_by_key(|r| r.at_epoch);
    Ok(found)
}

/// Seconds since the epoch of a journal time (RFC 3339 UTC); 0 when unreadable.
fn epoch(text: &str) -> u64 {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Asks each retired key's provider when it was last used. `providers` holds
/// the instances that could be built; `unavailable` why the others could not.
pub async fn check(
    playbook: &Playbook,
    providers: &IndexMap<String, Arc<dyn Provider>>,
    unavailable: &IndexMap<String, String>,
    retired: &[Retired],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for r in retired {
        let finding = |verdict: Verdict, last_used: Option<u64>, detail: String| Finding {
            retired: r.clone(),
            verdict,
            last_used: last_used.map(age::timestamp),
            detail,
        };
        let Some(c) = playbook.credentials.iter().find(|c| c.id == r.credential) else {
            findings.push(finding(
                Verdict::CannotTell,
                None,
                "the playbook no longer has this credential".into(),
            ));
            continue;
        };
        let Some(provider) = providers.get(&c.provider) else {
            let why = unavailable
                .get(&c.provider)
                .cloned()
                .unwrap_or_else(|| format!("provider instance `{}` is not set up", c.provider));
            findings.push(finding(Verdict::Error, None, why));
            continue;
        };
        let target = Target {
            credential: &c.id,
            account: c.account.as_deref(),
            settings: &c.settings,
        };
        findings.push(match provider.last_used(target, &r.key_id).await {
            // Whole seconds: a use in the same second as the retirement is not
            // counted (it may be the retirement itself racing a consumer).
            Ok(LastUse::At(t)) if t > r.at_epoch => finding(
                Verdict::UsedAfterRetirement,
                Some(t),
                format!(
                    "USED AFTER IT WAS {}: someone still holds this key",
                    r.how.to_ascii_uppercase()
                ),
            ),
            Ok(LastUse::At(t)) => finding(
                Verdict::NotUsedSince,
                Some(t),
                format!("not used since it was {}", r.how),
            ),
            Ok(LastUse::Never) => finding(
                Verdict::NeverUsed,
                None,
                "the provider records no use".into(),
            ),
            Ok(LastUse::Gone) => finding(
                Verdict::Gone,
                None,
                "deleted at the provider: it can no longer be used".into(),
            ),
            Ok(LastUse::Unknown(why)) => finding(Verdict::CannotTell, None, why),
            Err(e) => finding(Verdict::Error, None, e.to_string()),
        });
    }
    findings
}

#[cfg(test)]
mod tests {
    #[test]
    fn journal_times_read_as_epoch_seconds() {
        assert_eq!(super::epoch("1970-01-01T00:01:40.250Z"), 100);
        assert_eq!(super::epoch("garbage"), 0);
    }
}
