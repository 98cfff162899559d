//! After a crash: an interrupted credential is brought to a known state from what
//! its checkpoint says and what the world holds (provider keys, Vault versions, the
//! staging entry), never from memory.
//!
//! ```text
//! dual:   Vault names a key this run created  → finish_promoted (orphans, sinks, retire)
//!         staged key at the provider, works   → promote → finish_promoted
//!         anything else this run created      → revoke_orphan; start over
//! single: staged value logs in                → promote (unless Vault has it) → finish
//!         Vault's value logs in (or none)     → clear staging; start over
//!         neither                             → quarantined
//! ```

use super::ctx::Ctx;
use super::dual::OldKeys;
use crate::engine::{EngineError, Outcome};
use crate::protocol::{Checkpoint, Step};
use crate::secret::Secret;
use crate::store::Entry;
use serde_json::json;
use std::time::{Duration, SystemTime};

impl Ctx<'_> {
    pub(super) fn tag(&self) -> String {
        format!("rekey:{}:{}", self.run, self.credential.id)
    }

    /// Dual: the key this run created is either promoted (finish retiring the old
    /// one), staged and working (promote it), or an orphan (revoke it). `None`
    /// means the credential is back where it started and can simply rotate.
    pub(super) async fn reconcile_dual(
        &self,
        checkpoint: &Checkpoint,
    ) -> Result<Option<Outcome>, EngineError> {
        let id = &self.credential.id;
        let provider = self.provider.clone();
        let target = self.target();
        let current = match self.read_current().await? {
            Ok(c) => c,
            Err(f) => {
                return Ok(Some(Outcome::Quarantined {
                    resumable: true,
                    reason: format!(
                        "cannot read {} to resume: {}",
                        self.credential.vault_path, f.message
                    ),
                    action: "run `rekey resume` again once Vault answers".into(),
                }));
            }
        };
        let keys = match self
            .pstep(Step::List, json!({ "resume": true }), || {
                provider.list(target)
            })
            .await?
        {
            Ok(k) => k,
            Err(f) => {
                return Ok(Some(Outcome::Quarantined {
                    resumable: true,
                    reason: format!("cannot list keys to resume: {}", f.message),
                    action: "run `rekey resume` again once the provider answers".into(),
                }));
            }
        };
        let tag = self.tag();
        let ours: Vec<&crate::provider::KeyInfo> = keys
            .iter()
            .filter(|k| k.tag.as_deref() == Some(tag.as_str()))
            .collect();
        let old = OldKeys::from_checkpoint(checkpoint);
        let recorded_version = checkpoint.vault_version;

        // Promoted already: only the old key's retirement may be missing, once the
        // grace period that was running when the process died is over. The key is
        // ours by the provider's tag, or it is the key this run's checkpoint
        // recorded creating (a provider that keeps no tags) and still listed.
        if let Some(promoted) = current.fields.get("key_id").filter(|k| {
            ours.iter().any(|o| &&o.id == k)
                || (checkpoint.new_key_id.as_ref() == Some(*k) && keys.iter().any(|o| &&o.id == k))
        }) {
            let now = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if let Some(left) = checkpoint
                .retire_after
                .filter(|t| *t > now)
                .map(|t| t - now)
            {
                tracing::info!(credential = %id, seconds = left, "Waiting out the rest of the grace period before retiring the old key.");
                tokio::time::sleep(Duration::from_secs(left)).await;
            }
            let promoted = promoted.clone();
            return self
                .finish_promoted(
                    &ours,
                    &keys,
                    &old,
                    &promoted,
                    current.version,
                    current.value.as_ref(),
                )
                .await
                .map(Some);
        }

        // Staged and still at the provider: verify it and promote it.
        let staged = match self.read_staging().await? {
            Ok(e) => e,
            Err(_) => Entry {
                version: 0,
                value: None,
                fields: Default::default(),
                custom_metadata: Default::default(),
            },
        };
        if let (Some(value), Some(key_id)) =
            (staged.value.clone(), staged.fields.get("key_id").cloned())
            && ours.iter().any(|k| k.id == key_id && k.active)
            && matches!(self.verify(Some(&key_id), &value).await?, Ok(true))
        {
            let cas = recorded_version.unwrap_or(current.version);
            // The fields staged with the value, the provider's included.
            let fields = staged.fields.clone();
            match self
                .promote(&value, &fields, cas, &current.custom_metadata)
                .await?
            {
                Ok(version) => {
                    return self
                        .finish_promoted(&ours, &keys, &old, &key_id, version, Some(&value))
                        .await
                        .map(Some);
                }
                Err(f) if f.conflict => {
                    let _ = self
                        .pstep(Step::RevokeOrphan, json!({ "key_id": key_id }), || {
                            provider.revoke(target, &key_id)
                        })
                        .await?;
                    self.clear_staging().await?;
                    return Ok(Some(Outcome::Quarantined {
                        resumable: false,
                        reason: format!(
                            "{} was changed by someone else while the run was interrupted; rekey never overwrites that",
                            self.credential.vault_path
                        ),
                        action: format!(
                            "find out who wrote {} and why, then run rekey again for `{id}`",
                            self.credential.vault_path
                        ),
                    }));
                }
                Err(f) => {
                    return Ok(Some(Outcome::Quarantined {
                        resumable: true,
                        reason: format!("could not promote the staged key: {}", f.message),
                        action: "run `rekey resume` again".into(),
                    }));
                }
            }
        }

        // Anything else this run created is an orphan: a key created but never
        // safely stored, or one that does not work. Revoke it and start over.
        for orphan in &ours {
            if let Err(f) = self
                .pstep(Step::RevokeOrphan, json!({ "key_id": orphan.id }), || {
                    provider.revoke(target, &orphan.id)
                })
                .await?
            {
                return Ok(Some(Outcome::Quarantined {
                    resumable: false,
                    reason: format!(
                        "the orphan key {} could not be deleted: {}",
                        orphan.id, f.message
                    ),
                    action: format!("delete key {} of `{id}` by hand", orphan.id),
                }));
            }
        }
        self.clear_staging().await?;
        Ok(None)
    }

    /// After a resumed promotion: other keys this run created are orphans; the old
    /// keys (those the provider still has) are retired as in a normal run.
    pub(super) async fn finish_promoted(
        &self,
        ours: &[&crate::provider::KeyInfo],
        keys: &[crate::provider::KeyInfo],
        old: &OldKeys,
        promoted: &str,
        version: u64,
        value: Option<&Secret>,
    ) -> Result<Outcome, EngineError> {
        let provider = self.provider.clone();
        let target = self.target();
        for stray in ours.iter().filter(|k| k.id != promoted) {
            let _ = self
                .pstep(Step::RevokeOrphan, json!({ "key_id": stray.id }), || {
                    provider.revoke(target, &stray.id)
                })
                .await?;
        }
        // The interruption may have come before the sinks ran: push again (a
        // sink that already holds the value is not written twice).
        let sink_failures = match value {
            Some(v) => self.propagate(v).await?,
            None => Vec::new(),
        };
        // Only keys the provider still has are left to retire, and those whose
        // deletion was in flight when the process died: the provider may have
        // applied it without finishing (Redis: the password removed in memory,
        // `ACL SAVE` not run, so a restart brings it back; found by
        // `scripts/chaos`). Asked again, the provider finishes it.
        let in_flight = self.unanswered_revokes()?;
        let old = OldKeys {
            retire: old
                .retire
                .iter()
                .filter(|o| keys.iter().any(|k| &k.id == *o) || in_flight.contains(*o))
                .cloned()
                .collect(),
            ..old.clone()
        };
        let outcome = self.retire(&old, promoted, version, None).await?;
        Ok(self.with_sinks(outcome, sink_failures))
    }

    /// The keys of this credential whose `revoke` in this run has no outcome
    /// recorded: in flight when the process stopped.
    fn unanswered_revokes(&self) -> Result<Vec<String>, EngineError> {
        let intents = self
            .engine
            .journal(|j| j.intents(self.run, &self.credential.id))?;
        Ok(intents
            .iter()
            .filter(|i| i.step == Step::Revoke.as_str() && i.outcome.is_none())
            .filter_map(|i| i.detail.get("key_id")?.as_str().map(str::to_owned))
            .collect())
    }

    /// Single: the staging entry is the write-ahead log. If the staged value
    /// works, the change happened: promote it. If the stored value still works,
    /// it did not: start over. If neither works, a human must look.
    pub(super) async fn reconcile_single(
        &self,
        checkpoint: &Checkpoint,
    ) -> Result<Option<Outcome>, EngineError> {
        let id = &self.credential.id;
        let staged = match self.read_staging().await? {
            Ok(e) => e,
            Err(f) => {
                return Ok(Some(Outcome::Quarantined {
                    resumable: true,
                    reason: format!("cannot read the staging entry to resume: {}", f.message),
                    action: "run `rekey resume` again once Vault answers".into(),
                }));
            }
        };
        let Some(value) = staged.value.clone() else {
            return Ok(None);
        };
        let provider = self.provider.clone();
        let target = self.target();
        // A provider that does not answer proves nothing either way: resume later
        // rather than judge the credential (found by `scripts/chaos`).
        let unreachable = |f: &super::ctx::Failure| {
            Some(Outcome::Quarantined {
                resumable: true,
                reason: format!("cannot probe the account to resume: {}", f.message),
                action: "run `rekey resume` again once the provider answers".into(),
            })
        };
        let staged_works = self
            .pstep(Step::ProbeStaged, json!({}), || {
                provider.verify(target, None, &value)
            })
            .await?;
        if let Err(f) = &staged_works
            && f.transient()
        {
            return Ok(unreachable(f));
        }
        if matches!(staged_works, Ok(true)) {
            let current = match self.read_current().await? {
                Ok(c) => c,
                Err(f) => {
                    return Ok(Some(Outcome::Quarantined {
                        resumable: true,
                        reason: format!(
                            "cannot read {}: {}",
                            self.credential.vault_path, f.message
                        ),
                        action: "run `rekey resume` again".into(),
                    }));
                }
            };
            if current.value.as_ref() == Some(&value) {
                let sessions = self.end_old_sessions(&[]).await?;
                self.clear_staging().await?;
                return Ok(Some(sessions.apply(Outcome::Rotated {
                    key_id: None,
                    version: current.version,
                })));
            }
            let cas = checkpoint.vault_version.unwrap_or(current.version);
            return Ok(Some(
                match self
                    .promote(&value, &self.fields(None), cas, &current.custom_metadata)
                    .await?
                {
                    Ok(version) => {
                        let sessions = self.end_old_sessions(&[]).await?;
                        sessions.apply(self.finish_single(&value, version).await?)
                    }
                    Err(f) => Outcome::Quarantined {
                        resumable: false,
                        reason: format!(
                            "the password of `{id}` was changed before the interruption, but could not be promoted: {}",
                            f.message
                        ),
                        action: format!(
                            "the working value is in Vault at {}/{}; copy it to {}",
                            self.engine.playbook.vault.mount,
                            self.staging_path(),
                            self.credential.vault_path
                        ),
                    },
                },
            ));
        }
        let current = match self.read_current().await? {
            Ok(c) => c,
            Err(f) => {
                return Ok(Some(Outcome::Quarantined {
                    resumable: true,
                    reason: format!("cannot read {}: {}", self.credential.vault_path, f.message),
                    action: "run `rekey resume` again".into(),
                }));
            }
        };
        let old_works = match &current.value {
            Some(old) => match self
                .pstep(Step::ProbeCurrent, json!({}), || {
                    provider.verify(target, None, old)
                })
                .await?
            {
                Ok(works) => works,
                Err(f) if f.transient() => return Ok(unreachable(&f)),
                Err(_) => false,
            },
            None => false,
        };
        if old_works || current.value.is_none() {
            // The change never happened (or there is no old value to keep): start over.
            self.clear_staging().await?;
            return Ok(None);
        }
        Ok(Some(Outcome::Quarantined {
            resumable: false,
            reason: format!(
                "neither the staged value nor the value in {} logs in to `{id}`",
                self.credential.vault_path
            ),
            action: format!(
                "check the account at `{}` by hand; the staged value is in Vault at {}/{}",
                self.credential.provider,
                self.engine.playbook.vault.mount,
                self.staging_path()
            ),
        }))
    }
}
