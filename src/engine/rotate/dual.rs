//! Dual kinds (API keys, access keys, tokens, secret-ids): a second key is issued
//! while the first still works.
//!
//! ```text
//! read_current → list (quota: revoke an inactive stray; identify the old key)
//!   ─▶creating → create → stage ─▶staged → verify ─▶verified
//!   → promote ─▶promoted → sinks → [grace] → deactivate → revoke → clear_staging ─▶retired
//! any failure before promote → undo_new_key (revoke the new key, clear staging)
//! ```

use super::ctx::Ctx;
use super::step::{Checkpoint, Step};
use crate::engine::{EngineError, Outcome};
use crate::journal::CredentialState;
use crate::secret::Secret;
use serde_json::json;
use std::time::SystemTime;

impl Ctx<'_> {
    /// Dual kinds: a new key is created, staged, verified and promoted while the
    /// old one still works; then the old one is retired.
    pub(super) async fn dual(&self) -> Result<Outcome, EngineError> {
        let id = &self.credential.id;
        let current = match self.read_current().await? {
            Ok(c) => c,
            Err(f) => {
                return Ok(Outcome::RolledBack {
                    reason: format!("cannot read {}: {}", self.credential.vault_path, f.message),
                });
            }
        };
        let old_key = current.fields.get("key_id").cloned();
        let provider = self.provider.clone();
        let target = self.target();

        // Quota: make room by deleting an inactive stray, never the current key.
        let keys = match self
            .pstep(Step::List, json!({}), || provider.list(target))
            .await?
        {
            Ok(k) => k,
            Err(f) => {
                return Ok(Outcome::RolledBack {
                    reason: format!("cannot list keys: {}", f.message),
                });
            }
        };
        // Vault holds a value but names no key (an entry written before rekey
        // managed it): find the key that value belongs to, so that it is retired
        // like any old key instead of staying active after the rotation.
        let old_key = match (old_key, &current.value) {
            (None, Some(value)) => self.identify_old_key(&keys, value).await?,
            (old_key, _) => old_key,
        };
        if let Some(stray) = keys
            .iter()
            .find(|k| !k.active && Some(&k.id) != old_key.as_ref())
            && keys.len() >= 2
        {
            let stray_id = stray.id.clone();
            if let Err(f) = self
                .pstep(Step::RevokeStray, json!({ "key_id": stray_id }), || {
                    provider.revoke(target, &stray_id)
                })
                .await?
            {
                return Ok(Outcome::RolledBack {
                    reason: format!(
                        "quota full and the inactive key {stray_id} could not be deleted: {}",
                        f.message
                    ),
                });
            }
        }

        let mut checkpoint = Checkpoint {
            old_key_id: old_key.clone(),
            vault_version: Some(current.version),
            ..Checkpoint::default()
        };
        self.state(CredentialState::Creating, &checkpoint)?;
        let tag = format!("rekey:{}:{id}", self.run);
        let issued = match self
            .pstep(Step::Create, json!({ "tag": tag }), || {
                provider.create(target, &tag)
            })
            .await?
        {
            Ok(i) => i,
            Err(f) => {
                return Ok(Outcome::RolledBack {
                    reason: format!("create failed: {}", f.message),
                });
            }
        };
        let mut fields = self.fields(Some(&issued.key_id));
        // The provider's non-secret fields (a login name that changes with the key).
        fields.extend(issued.fields.clone());
        // Stored at once: until the staging write succeeds the new key exists only
        // in memory, and a crash here leaves an orphan that resume finds by its tag.
        if let Err(f) = self.stage(&issued.secret, &fields).await? {
            return self
                .undo_new_key(
                    &issued.key_id,
                    format!("could not stage the new key in Vault: {}", f.message),
                )
                .await;
        }
        checkpoint.new_key_id = Some(issued.key_id.clone());
        self.state(CredentialState::Staged, &checkpoint)?;

        match self.verify(Some(&issued.key_id), &issued.secret).await? {
            Ok(true) => {}
            Ok(false) => {
                return self
                    .undo_new_key(
                        &issued.key_id,
                        "the new key did not work when verified".into(),
                    )
                    .await;
            }
            Err(f) => {
                return self
                    .undo_new_key(&issued.key_id, format!("verify failed: {}", f.message))
                    .await;
            }
        }
        self.state(CredentialState::Verified, &checkpoint)?;

        let version = match self
            .promote(
                &issued.secret,
                &fields,
                current.version,
                &current.custom_metadata,
            )
            .await?
        {
            Ok(v) => v,
            Err(f) => {
                let conflict = f.conflict;
                let undone = self.undo_new_key(&issued.key_id, String::new()).await?;
                let reason = if conflict {
                    format!(
                        "{} was changed by someone else since it was read (version {}); rekey never overwrites that",
                        self.credential.vault_path, current.version
                    )
                } else {
                    format!("could not promote: {}", f.message)
                };
                return Ok(match undone {
                    Outcome::RolledBack { .. } if conflict => Outcome::Quarantined {
                        reason,
                        action: format!(
                            "find out who wrote {} and why, then run rekey again for `{id}`; the old key still works",
                            self.credential.vault_path
                        ),
                    },
                    Outcome::RolledBack { .. } => Outcome::RolledBack { reason },
                    other => other,
                });
            }
        };
        // When the old key may go: after a crash, resume waits out the rest of the
        // grace period instead of cutting consumers off early.
        let retire_after = SystemTime::now()
            .checked_add(self.credential.grace)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        checkpoint.vault_version = None;
        checkpoint.version = Some(version);
        checkpoint.retire_after = Some(retire_after);
        self.state(CredentialState::Promoted, &checkpoint)?;
        let sink_failures = self.propagate(&issued.secret).await?;

        // Grace: consumers pick up the new value (zero in breach mode). The wait
        // happens after every wave, without holding a concurrency slot, so
        // dependents go on as soon as this value is promoted.
        if !self.credential.grace.is_zero() {
            let due = tokio::time::Instant::now() + self.credential.grace;
            self.engine
                .pending
                .lock()
                .map_err(crate::engine::poisoned)?
                .push(crate::engine::Retirement {
                    index: self.index,
                    old_key: old_key.clone(),
                    new_key: issued.key_id.clone(),
                    version,
                    due,
                    sink_failures: sink_failures.clone(),
                });
            return Ok(self.with_sinks(
                Outcome::Rotated {
                    key_id: Some(issued.key_id),
                    version,
                },
                sink_failures,
            ));
        }
        let outcome = self
            .retire(old_key.as_deref(), &issued.key_id, version)
            .await?;
        Ok(self.with_sinks(outcome, sink_failures))
    }

    /// The active key that Vault's current `value` authenticates as, when Vault names
    /// none: each active key is verified with that value, and only a single match
    /// counts (a provider whose verify ignores the key id matches every key, and
    /// then rekey cannot tell). `None` leaves every existing key alone, with a
    /// warning, as before.
    pub(super) async fn identify_old_key(
        &self,
        keys: &[crate::provider::KeyInfo],
        value: &Secret,
    ) -> Result<Option<String>, EngineError> {
        let id = &self.credential.id;
        let active: Vec<&str> = keys
            .iter()
            .filter(|k| k.active)
            .map(|k| k.id.as_str())
            .collect();
        if active.is_empty() || !self.credential.verify || self.provider.replaces_old_on_create() {
            return Ok(None);
        }
        let provider = self.provider.clone();
        let target = self.target();
        let mut matches = Vec::new();
        for key in active.iter().take(5) {
            let works = self
                .pstep(Step::IdentifyOldKey, json!({ "key_id": key }), || {
                    provider.verify(target, Some(key), value)
                })
                .await?;
            if matches!(works, Ok(true)) {
                matches.push(*key);
            }
        }
        match matches.as_slice() {
            [one] => {
                tracing::info!(credential = %id, key_id = %one, "Vault names no key id; its value belongs to this key, which is retired after the rotation.");
                Ok(Some((*one).to_owned()))
            }
            _ => {
                tracing::warn!(credential = %id, active = active.len(), matching = matches.len(), "Vault names no key id and rekey cannot tell which active key its value belongs to: no old key will be retired; delete it by hand after the run, or put `key_id` in the Vault entry.");
                Ok(None)
            }
        }
    }

    /// Deactivates then deletes the old key, clears staging.
    pub(super) async fn retire(
        &self,
        old_key: Option<&str>,
        new_key: &str,
        version: u64,
    ) -> Result<Outcome, EngineError> {
        let id = &self.credential.id;
        let provider = self.provider.clone();
        let target = self.target();
        // The provider handed back the key Vault already named: there is no other
        // key to retire. A create that retires the old value itself (Cloudflare's
        // roll keeps the token's id) is a rotation like any other; a provider that
        // reuses key ids (two roles taking turns) changed the key in use in place,
        // and a human should know.
        if old_key == Some(new_key) && !self.provider.replaces_old_on_create() {
            self.clear_staging().await?;
            return Ok(Outcome::Quarantined {
                reason: format!(
                    "the provider issued key {new_key} again, the key Vault already named: it was changed in place while in use, and there is no other key to retire (not retiring {new_key}, which holds the promoted value)"
                ),
                action: format!(
                    "check that nothing still uses the previous value of key {new_key} of `{id}`, then run rekey again to move to a fresh key"
                ),
            });
        }
        let old_key = old_key.filter(|o| *o != new_key);
        if let Some(old) = old_key {
            if let Err(f) = self
                .pstep(Step::Deactivate, json!({ "key_id": old }), || {
                    provider.deactivate(target, old)
                })
                .await?
            {
                tracing::warn!(credential = %id, "Could not deactivate the old key {old}: {}", f.message);
            }
            if let Err(f) = self
                .pstep(Step::Revoke, json!({ "key_id": old }), || {
                    provider.revoke(target, old)
                })
                .await?
            {
                self.clear_staging().await?;
                return Ok(Outcome::Quarantined {
                    reason: format!(
                        "the new key is promoted, but the old key {old} could not be deleted: {}",
                        f.message
                    ),
                    action: format!(
                        "delete key {old} of `{id}` at `{}` by hand",
                        self.credential.provider
                    ),
                });
            }
        }
        let sessions = self.end_old_sessions(&Vec::from_iter(old_key)).await?;
        self.clear_staging().await?;
        self.state(
            CredentialState::Retired,
            &Checkpoint {
                new_key_id: Some(new_key.to_owned()),
                old_key_id: old_key.map(str::to_owned),
                ..Checkpoint::default()
            },
        )?;
        Ok(sessions.apply(Outcome::Rotated {
            key_id: Some(new_key.to_owned()),
            version,
        }))
    }

    /// Before promotion nothing visible changed: revoking the new key and clearing
    /// staging puts the world back.
    pub(super) async fn undo_new_key(
        &self,
        key_id: &str,
        reason: String,
    ) -> Result<Outcome, EngineError> {
        if self.provider.replaces_old_on_create() {
            // The old value died when the new one was issued: deleting the new one
            // would leave nothing that works. Keep it staged for a human.
            let reason = if reason.is_empty() {
                "the rotation could not be finished".to_owned()
            } else {
                reason
            };
            return Ok(Outcome::Quarantined {
                reason: format!(
                    "{reason}; `{}` retired the old value when it issued new key {key_id}",
                    self.credential.provider
                ),
                action: format!(
                    "the new value is at Vault staging path `{}`: check it works at the provider, then copy it to `{}` by hand and delete the staging entry (or run rekey again for a fresh one)",
                    self.staging_path(),
                    self.credential.vault_path
                ),
            });
        }
        let provider = self.provider.clone();
        let target = self.target();
        let revoked = self
            .pstep(Step::RollbackRevokeNew, json!({ "key_id": key_id }), || {
                provider.revoke(target, key_id)
            })
            .await?;
        self.clear_staging().await?;
        Ok(match revoked {
            Ok(()) => Outcome::RolledBack { reason },
            Err(f) => Outcome::Quarantined {
                reason: format!(
                    "{reason}; and the new key {key_id} could not be deleted: {}",
                    f.message
                ),
                action: format!(
                    "delete key {key_id} of `{}` at `{}` by hand; the old key still works",
                    self.credential.id, self.credential.provider
                ),
            },
        })
    }
}
