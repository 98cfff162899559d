//! The protocol's vocabulary: the steps the engine journals, the checkpoint a
//! credential's state carries for `resume`, and the steps a plan shows.
//!
//! The names are the journal's and the audit trail's (`Step::as_str`): they are a
//! format, so a name never changes; a new step gets a new name.

use serde::{Deserialize, Serialize};

/// One external call of the protocol, as the journal records its intent and outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    // Vault.
    ReadCurrent,
    ReadStaging,
    ReadPrevious,
    Stage,
    Promote,
    SetMetadata,
    ClearStaging,
    /// The cross-process lock entry of a credential's Vault path (take, renew, release).
    Lock,
    Unlock,
    // Provider, dual kinds.
    List,
    IdentifyOldKey,
    RevokeStray,
    Create,
    Verify,
    Deactivate,
    Revoke,
    /// After retirement: the provider's list again, to confirm the old keys are gone.
    ConfirmRetired,
    RollbackRevokeNew,
    RevokeOrphan,
    RevokeNew,
    // Provider, single kinds.
    Change,
    ProbeNew,
    ProbeStaged,
    ProbeCurrent,
    /// Breach mode: the old value must no longer log in.
    ProbeOld,
    RollbackChange,
    RestoreChange,
    /// Breach mode: sessions opened with the old credential are ended.
    EndSessions,
    // Elsewhere.
    Sink,
    SinkReload,
    OperatorConfirmed,
}

impl Step {
    /// Every step, for tests that check the vocabulary.
    pub const ALL: [Step; 31] = [
        Step::ReadCurrent,
        Step::ReadStaging,
        Step::ReadPrevious,
        Step::Stage,
        Step::Promote,
        Step::SetMetadata,
        Step::ClearStaging,
        Step::Lock,
        Step::Unlock,
        Step::List,
        Step::IdentifyOldKey,
        Step::RevokeStray,
        Step::Create,
        Step::Verify,
        Step::Deactivate,
        Step::Revoke,
        Step::ConfirmRetired,
        Step::RollbackRevokeNew,
        Step::RevokeOrphan,
        Step::RevokeNew,
        Step::Change,
        Step::ProbeNew,
        Step::ProbeStaged,
        Step::ProbeCurrent,
        Step::ProbeOld,
        Step::RollbackChange,
        Step::RestoreChange,
        Step::EndSessions,
        Step::Sink,
        Step::SinkReload,
        Step::OperatorConfirmed,
    ];

    /// The name in the journal and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::ReadCurrent => "read_current",
            Step::ReadStaging => "read_staging",
            Step::ReadPrevious => "read_previous",
            Step::Stage => "stage",
            Step::Promote => "promote",
            Step::SetMetadata => "set_metadata",
            Step::ClearStaging => "clear_staging",
            Step::Lock => "lock",
            Step::Unlock => "unlock",
            Step::List => "list",
            Step::IdentifyOldKey => "identify_old_key",
            Step::RevokeStray => "revoke_stray",
            Step::Create => "create",
            Step::Verify => "verify",
            Step::Deactivate => "deactivate",
            Step::Revoke => "revoke",
            Step::ConfirmRetired => "confirm_retired",
            Step::RollbackRevokeNew => "rollback_revoke_new",
            Step::RevokeOrphan => "revoke_orphan",
            Step::RevokeNew => "revoke_new",
            Step::Change => "change",
            Step::ProbeNew => "probe_new",
            Step::ProbeStaged => "probe_staged",
            Step::ProbeCurrent => "probe_current",
            Step::ProbeOld => "probe_old",
            Step::RollbackChange => "rollback_change",
            Step::RestoreChange => "restore_change",
            Step::EndSessions => "end_sessions",
            Step::Sink => "sink",
            Step::SinkReload => "sink_reload",
            Step::OperatorConfirmed => "operator_confirmed",
        }
    }

    /// Whether the step changes something outside the journal (a provider, Vault, a
    /// sink). Its intent must be on disk before it starts; a read's intent rides
    /// along with the next durable record (a crash that loses it loses nothing
    /// `resume` needs: it reads the real state again). Exhaustive on purpose: a new
    /// step's author must decide.
    pub fn changes_world(self) -> bool {
        match self {
            Step::ReadCurrent
            | Step::ReadStaging
            | Step::ReadPrevious
            | Step::List
            | Step::IdentifyOldKey
            | Step::Verify
            | Step::ConfirmRetired
            | Step::ProbeNew
            | Step::ProbeStaged
            | Step::ProbeCurrent
            | Step::ProbeOld
            // Records who confirmed a manual step; the final outcome after it is durable.
            | Step::OperatorConfirmed => false,
            Step::Stage
            | Step::Promote
            | Step::SetMetadata
            | Step::ClearStaging
            | Step::Lock
            | Step::Unlock
            | Step::RevokeStray
            | Step::Create
            | Step::Deactivate
            | Step::Revoke
            | Step::RollbackRevokeNew
            | Step::RevokeOrphan
            | Step::RevokeNew
            | Step::Change
            | Step::RollbackChange
            | Step::RestoreChange
            | Step::EndSessions
            | Step::Sink
            | Step::SinkReload => true,
        }
    }

    /// Whether a step retires an old credential (what rollback looks for).
    pub fn retires(self) -> bool {
        matches!(self, Step::Deactivate | Step::Revoke)
    }
}

impl std::str::FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Step, String> {
        Step::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| format!("unknown step `{s}`"))
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a credential's intermediate state carries for `resume`: the detail of its
/// `creating`, `staged`, `verified`, `changed`, `promoted` and `retired` records.
/// Fields a state does not know are left out of the JSON (the journal's format).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The key Vault named (or the one identified) before this run's create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_key_id: Option<String>,
    /// The key this run created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_key_id: Option<String>,
    /// The consumers' path version read before the change: promote's check-and-set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_version: Option<u64>,
    /// The version promote wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Unix seconds after which the old key may be retired (the grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_after: Option<u64>,
    /// Single kinds: the new value's fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Breach mode: every key of the account that existed before this run's create
    /// and is not kept; all of them are retired after promotion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retire: Vec<String>,
    /// Routine mode: active keys rekey could not tie to Vault's value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unidentified: Vec<String>,
    /// Breach mode: the provider could not list the account's keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlisted: bool,
}

impl Checkpoint {
    /// The checkpoint in a state's detail; an empty one when there is none (a final
    /// outcome, or a state written by an older rekey with other fields).
    pub fn from_detail(detail: &serde_json::Value) -> Checkpoint {
        serde_json::from_value(detail.clone()).unwrap_or_default()
    }

    pub fn to_detail(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A step as `rekey plan` shows it (docs/plan-json.md). Some are several engine
/// steps (`check_quota` is a list and maybe a revoke of a stray), some none at all
/// (`generate` happens in memory, `grace` is a wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlannedStep {
    Lock,
    CheckQuota,
    Create,
    Generate,
    Stage,
    Change,
    AwaitOperator,
    Verify,
    Promote,
    Propagate,
    EndSessions,
    Grace,
    Deactivate,
    Revoke,
    ClearStaging,
}

impl PlannedStep {
    pub const ALL: [PlannedStep; 15] = [
        PlannedStep::Lock,
        PlannedStep::CheckQuota,
        PlannedStep::Create,
        PlannedStep::Generate,
        PlannedStep::Stage,
        PlannedStep::Change,
        PlannedStep::AwaitOperator,
        PlannedStep::Verify,
        PlannedStep::Promote,
        PlannedStep::Propagate,
        PlannedStep::EndSessions,
        PlannedStep::Grace,
        PlannedStep::Deactivate,
        PlannedStep::Revoke,
        PlannedStep::ClearStaging,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlannedStep::Lock => "lock",
            PlannedStep::CheckQuota => "check_quota",
            PlannedStep::Create => "create",
            PlannedStep::Generate => "generate",
            PlannedStep::Stage => "stage",
            PlannedStep::Change => "change",
            PlannedStep::AwaitOperator => "await_operator",
            PlannedStep::Verify => "verify",
            PlannedStep::Promote => "promote",
            PlannedStep::Propagate => "propagate",
            PlannedStep::EndSessions => "end_sessions",
            PlannedStep::Grace => "grace",
            PlannedStep::Deactivate => "deactivate",
            PlannedStep::Revoke => "revoke",
            PlannedStep::ClearStaging => "clear_staging",
        }
    }

    /// The engine steps a planned step stands for (empty: no external call).
    pub fn engine_steps(self) -> &'static [Step] {
        match self {
            PlannedStep::Lock => &[Step::Lock],
            PlannedStep::CheckQuota => &[Step::List, Step::RevokeStray],
            PlannedStep::Create => &[Step::Create],
            PlannedStep::Generate | PlannedStep::Grace | PlannedStep::AwaitOperator => &[],
            PlannedStep::Stage => &[Step::Stage],
            PlannedStep::Change => &[Step::Change],
            PlannedStep::Verify => &[Step::Verify],
            PlannedStep::Promote => &[Step::Promote],
            PlannedStep::Propagate => &[Step::Sink, Step::SinkReload],
            PlannedStep::EndSessions => &[Step::EndSessions],
            PlannedStep::Deactivate => &[Step::Deactivate],
            PlannedStep::Revoke => &[Step::Revoke],
            PlannedStep::ClearStaging => &[Step::ClearStaging],
        }
    }
}

impl Serialize for PlannedStep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for PlannedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_unique_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for s in Step::ALL {
            assert!(seen.insert(s.as_str()), "{s} twice");
            assert!(
                s.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
    }

    #[test]
    fn reads_do_not_wait_for_the_disk_and_changes_do() {
        for s in [Step::ReadCurrent, Step::IdentifyOldKey, Step::ReadPrevious] {
            assert!(!s.changes_world(), "{s}");
        }
        for s in [
            Step::Create,
            Step::Stage,
            Step::Promote,
            Step::Revoke,
            Step::Lock,
        ] {
            assert!(s.changes_world(), "{s}");
        }
    }

    /// docs/plan-json.md lists the vocabulary of plan steps: it and `PlannedStep`
    /// say the same, and every planned step stands for engine steps or none.
    #[test]
    fn the_plan_vocabulary_is_documented_and_tied_to_engine_steps() {
        let doc = include_str!("../docs/plan-json.md");
        let row = doc
            .lines()
            .find(|l| l.starts_with("| `waves[].credentials[].steps`"))
            .expect("the steps row of docs/plan-json.md");
        let vocabulary = row.split("vocabulary:").nth(1).expect("a vocabulary");
        let vocabulary = vocabulary.split(". ").next().unwrap_or(vocabulary);
        let documented: Vec<&str> = vocabulary
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        let ours: Vec<&str> = PlannedStep::ALL.iter().map(|s| s.as_str()).collect();
        for s in &ours {
            assert!(documented.contains(s), "`{s}` is not in docs/plan-json.md");
        }
        for d in &documented {
            assert!(
                ours.contains(d),
                "docs/plan-json.md lists `{d}`, which no step is"
            );
        }
        for s in PlannedStep::ALL {
            for e in s.engine_steps() {
                assert!(Step::ALL.contains(e));
            }
        }
    }

    #[test]
    fn a_checkpoint_keeps_the_journal_format() {
        let c = Checkpoint {
            old_key_id: Some("k1".into()),
            vault_version: Some(3),
            ..Default::default()
        };
        assert_eq!(
            c.to_detail(),
            serde_json::json!({ "old_key_id": "k1", "vault_version": 3 })
        );
        let back = Checkpoint::from_detail(&serde_json::json!({
            "old_key_id": null, "new_key_id": "k2", "vault_version": 3, "other": 1
        }));
        assert_eq!(back.new_key_id.as_deref(), Some("k2"));
        assert_eq!(back.old_key_id, None);
    }
}
