//! Breach mode: once the old credential is dead, the sessions and connections
//! opened with it are ended too (`Provider::end_sessions`), or the run says they
//! cannot be: an attacker who logged in with a stolen password must not stay
//! logged in.
//!
//! ```text
//! single: … promote → end_sessions → sinks → clear_staging
//! dual:   … revoke (every retired key) → end_sessions → clear_staging
//! ended            → outcome unchanged (the count is in the step's outcome record)
//! unsupported      → outcome unchanged, a warning naming the credential and what to do
//! end_sessions: false on the instance → the same warning, the step recorded as skipped
//! failed           → quarantined, with the exact command to run by hand
//! ```
//!
//! Routine mode, and providers whose credentials open no session that outlives
//! them (`Provider::has_sessions`), skip the step.

use super::ctx::Ctx;
use crate::engine::{EngineError, Outcome};
use crate::journal::Outcome as Recorded;
use crate::protocol::Step;
use crate::provider::SessionsEnded;
use serde_json::json;

/// What ending the sessions left for a human: `Some((reason, action))` when it
/// failed. Applied to the credential's outcome, it makes a rotation quarantined.
#[must_use]
pub(super) struct SessionsLeft(Option<(String, String)>);

impl SessionsLeft {
    /// `outcome`, quarantined if the sessions could not be ended: a credential is
    /// not "rotated" while someone may still be logged in with the old one.
    pub(super) fn apply(self, outcome: Outcome) -> Outcome {
        let Some((why, to_do)) = self.0 else {
            return outcome;
        };
        match outcome {
            Outcome::Rotated { version, .. } => Outcome::Quarantined {
                reason: format!("rotated and promoted (Vault version {version}), but {why}"),
                action: to_do,
                resumable: false,
            },
            Outcome::Quarantined { reason, action, .. } => Outcome::Quarantined {
                reason: format!("{reason}; and {why}"),
                action: format!("{action}; and {to_do}"),
                resumable: false,
            },
            other => other,
        }
    }
}

impl Ctx<'_> {
    /// Whether the credential's instance lets breach mode end sessions (the
    /// `end_sessions` instance setting, on unless `false`).
    fn ends_sessions(&self) -> bool {
        self.engine
            .playbook
            .providers
            .get(&self.credential.provider)
            .is_none_or(crate::playbook::ProviderInstance::ends_sessions)
    }

    /// Breach mode, after the old credential is dead (`retired`: the dual keys just
    /// revoked; empty for single kinds): ends the sessions opened with it, as the
    /// journaled step `end_sessions`.
    pub(super) async fn end_old_sessions(
        &self,
        retired: &[&str],
    ) -> Result<SessionsLeft, EngineError> {
        if !self.engine.breach() || !self.provider.has_sessions() {
            return Ok(SessionsLeft(None));
        }
        let id = &self.credential.id;
        let instance = &self.credential.provider;
        let target = self.target();
        let by_hand = self.provider.end_sessions_by_hand(target, retired);
        if !self.ends_sessions() {
            self.engine.journal(|j| {
                let intent = j.intent(
                    self.run,
                    id,
                    Step::EndSessions.as_str(),
                    &json!({ "retired": retired, "end_sessions": false }),
                )?;
                j.outcome(
                    intent,
                    Recorded::Ok,
                    &json!({ "skipped": "end_sessions: false on the instance" }),
                )
            })?;
            tracing::warn!(credential = %id, instance = %instance, "Sessions opened with the old credential stay open (`end_sessions: false` on the instance); end them by hand: {by_hand}");
            return Ok(SessionsLeft(None));
        }
        let provider = self.provider.clone();
        let ended = self
            .pstep_described(
                Step::EndSessions,
                json!({ "retired": retired }),
                |r: &SessionsEnded| match r {
                    SessionsEnded::Ended { count } => json!({ "ended": count }),
                    SessionsEnded::Unsupported { reason } => json!({ "unsupported": reason }),
                },
                || provider.end_sessions(target, retired),
            )
            .await?;
        Ok(SessionsLeft(match ended {
            Ok(SessionsEnded::Ended { count }) => {
                tracing::info!(credential = %id, count, "Ended the sessions opened with the old credential.");
                None
            }
            Ok(SessionsEnded::Unsupported { reason }) => {
                tracing::warn!(credential = %id, instance = %instance, "Sessions opened with the old credential may stay open: {reason}; end them by hand: {by_hand}");
                None
            }
            Err(f) => Some((
                format!(
                    "the sessions opened with the old credential could not be ended: {}",
                    f.message
                ),
                format!("end them now, the attacker may still be logged in: {by_hand}"),
            )),
        }))
    }
}
