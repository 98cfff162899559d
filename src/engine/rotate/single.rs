//! Single kinds (passwords): the value is changed in place; the old one dies at once.
//!
//! ```text
//! read_current → generate → stage ─▶staged → change ─▶changed → verify
//!   → promote → sinks → clear_staging ─▶rotated
//! change failed: probe_new (did it happen anyway?) → if not, clear staging, rolled back;
//!   no answer → quarantined (resumable), staging kept for `resume`
//! verify failed: routine → rollback_change (old value set again); breach → quarantined;
//!   no answer → quarantined (resumable), staging kept for `resume`
//! ```

use super::ctx::Ctx;
use crate::engine::{EngineError, Outcome};
use crate::journal::CredentialState;
use crate::protocol::{Checkpoint, Step};
use crate::secret::Secret;
use crate::store::Entry;
use serde_json::json;

impl Ctx<'_> {
    /// Single kinds: the new value goes to Vault staging (the write-ahead log)
    /// before the change call, so a crash after the change never loses it.
    pub(super) async fn single(&self) -> Result<Outcome, EngineError> {
        let id = &self.credential.id;
        let current = match self.read_current().await? {
            Ok(c) => c,
            Err(f) => {
                let what = format!("cannot read {}", self.credential.vault_path);
                return Ok(self.nothing_changed(&what, &f));
            }
        };
        let policy = &self.credential.password;
        let new = Secret::generate(policy.length as usize, &policy.alphabet);
        let fields = self.fields(None);
        if let Err(f) = self.stage(&new, &fields).await? {
            return Ok(self.nothing_changed("could not stage the new value in Vault", &f));
        }
        let checkpoint = Checkpoint {
            fingerprint: Some(self.fingerprint(&new)),
            vault_version: Some(current.version),
            ..Checkpoint::default()
        };
        self.state(CredentialState::Staged, &checkpoint)?;

        let provider = self.provider.clone();
        let target = self.target();
        let changed = self
            .pstep(
                Step::Change,
                json!({ "fingerprint": self.fingerprint(&new) }),
                || provider.change(target, &new),
            )
            .await?;
        if let Err(f) = changed {
            // Did the change happen anyway? Ask the provider rather than guess.
            match self
                .pstep(Step::ProbeNew, json!({}), || {
                    provider.verify(target, None, &new)
                })
                .await?
            {
                Ok(true) => {}
                Ok(false) => {
                    self.clear_staging().await?;
                    return Ok(Outcome::RolledBack {
                        reason: format!("change failed: {}", f.message),
                    });
                }
                // The provider cannot say: the change may have landed with its
                // answer lost, and the staging entry may hold the only copy of
                // the password in force. Clearing it lost that password (found
                // by `scripts/chaos`: PostgreSQL behind a connection reset).
                // `resume` probes again and promotes or starts over.
                Err(p) => {
                    return Ok(Outcome::Quarantined {
                        resumable: true,
                        reason: format!(
                            "the password change of `{id}` got no clear answer ({}), and the provider did not answer to check whether it happened: {}",
                            f.message, p.message
                        ),
                        action: format!(
                            "run `rekey resume` once `{}` answers: it logs in with the staged value (Vault {}/{}) and with Vault's, then promotes the one in force or starts again",
                            self.credential.provider,
                            self.engine.playbook.vault.mount,
                            self.staging_path()
                        ),
                    });
                }
            }
        }
        self.state(CredentialState::Changed, &checkpoint)?;

        let verified = self.verify(None, &new).await?;
        if let Err(f) = &verified
            && f.transient()
        {
            // Changed, but the provider did not answer the login that checks it:
            // neither "works" nor "does not work" is known, so nothing is undone
            // (an undo that cannot reach the provider would leave a human with
            // it); `resume` logs in again and promotes or starts over.
            return Ok(Outcome::Quarantined {
                resumable: true,
                reason: format!(
                    "the password of `{id}` was changed, but the provider did not answer to verify it: {}",
                    f.message
                ),
                action: format!(
                    "run `rekey resume` once `{}` answers: it logs in with the staged value (Vault {}/{}) and promotes it, or starts again",
                    self.credential.provider,
                    self.engine.playbook.vault.mount,
                    self.staging_path()
                ),
            });
        }
        if !matches!(verified, Ok(true)) {
            return self.single_verify_failed(&new, &current).await;
        }
        let version = match self
            .promote(&new, &fields, current.version, &current.custom_metadata)
            .await?
        {
            Ok(v) => v,
            // The old password is dead and the new one is only in staging: Vault
            // that does not answer is for `resume` (it promotes what works).
            Err(f) if f.transient() => {
                return Ok(Outcome::Quarantined {
                    resumable: true,
                    reason: format!(
                        "the password of `{id}` was changed and verified, but Vault did not answer to promote it: {}",
                        f.message
                    ),
                    action: format!(
                        "run `rekey resume` once Vault answers: it promotes the new value from the staging entry {}/{} to {}",
                        self.engine.playbook.vault.mount,
                        self.staging_path(),
                        self.credential.vault_path
                    ),
                });
            }
            Err(f) => {
                return Ok(Outcome::Quarantined {
                    resumable: false,
                    reason: format!(
                        "the password of `{id}` was changed and verified, but could not be promoted: {}",
                        f.message
                    ),
                    action: format!(
                        "the new value is in Vault at {}/{}; copy it to {} once you know why the write failed",
                        self.engine.playbook.vault.mount,
                        self.staging_path(),
                        self.credential.vault_path
                    ),
                });
            }
        };
        let sessions = self.end_old_sessions(&[]).await?;
        Ok(sessions.apply(self.finish_single(&new, version).await?))
    }

    /// The changed value does not work. Routine mode puts the old value back;
    /// breach mode never restores a compromised value.
    pub(super) async fn single_verify_failed(
        &self,
        new: &Secret,
        current: &Entry,
    ) -> Result<Outcome, EngineError> {
        let id = &self.credential.id;
        if self.engine.breach() {
            return Ok(Outcome::Quarantined {
                resumable: false,
                reason: format!(
                    "the new password of `{id}` did not verify, and breach mode never restores the old one"
                ),
                action: format!(
                    "check the account at `{}`; the value rekey set is in Vault at {}/{}",
                    self.credential.provider,
                    self.engine.playbook.vault.mount,
                    self.staging_path()
                ),
            });
        }
        let Some(old) = current.value.clone() else {
            return Ok(Outcome::Quarantined {
                resumable: false,
                reason: format!(
                    "the new password of `{id}` did not verify and Vault held no previous value to restore"
                ),
                action: format!(
                    "set the account's password by hand; the value rekey set is in Vault at {}/{}",
                    self.engine.playbook.vault.mount,
                    self.staging_path()
                ),
            });
        };
        let _ = new;
        let provider = self.provider.clone();
        let target = self.target();
        match self
            .pstep(
                Step::RollbackChange,
                json!({ "fingerprint": self.fingerprint(&old) }),
                || provider.change(target, &old),
            )
            .await?
        {
            Ok(()) => {
                self.clear_staging().await?;
                Ok(Outcome::RolledBack {
                    reason: "the new password did not verify; the previous one was set again"
                        .into(),
                })
            }
            Err(f) => Ok(Outcome::Quarantined {
                resumable: false,
                reason: format!(
                    "the new password did not verify and the old one could not be restored: {}",
                    f.message
                ),
                action: format!(
                    "set the password of `{id}` by hand to the current value in Vault at {}",
                    self.credential.vault_path
                ),
            }),
        }
    }
}
