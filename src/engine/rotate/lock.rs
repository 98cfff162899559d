//! The cross-process lock on a credential's Vault path: one entry per consumers'
//! path under the staging prefix (`<staging_prefix>/locks/<vault_path>`), written
//! with check-and-set, naming its holder, run, credential and expiry. Every rekey
//! process sees it, whatever its journal (two responders with two journals, a
//! hygiene cron beside an emergency run): the journal lease only keeps apart the
//! processes that share a journal.
//!
//! ```text
//! take:    write CAS 0 ─▶ held
//!          conflict → read: ours (same run: a resume) or expired → write CAS v ─▶ held
//!                                  (an expired lock of another run: its leftovers
//!                                   are reconciled first, as resume would)
//!                           otherwise → busy: the credential is skipped, naming who
//! renew:   write CAS v (with the journal lease, every quarter of the lease time);
//!          a conflict means another process took it: stop touching the credential
//! release: delete every version (after the old key is retired)
//! ```
//!
//! The lock is not a secret; it goes through the same store calls as values (the
//! "value" is the holder's name).

use super::ctx::{Ctx, Failure};
use crate::engine::{EngineError, Outcome};
use crate::protocol::Step;
use crate::secret::Secret;
use crate::store::{Entry, StoreError};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What taking the lock found.
pub(super) enum Taken {
    /// Held at this version of the lock entry.
    Held(u64),
    /// Another process holds it: the credential is skipped with this outcome.
    Busy(Outcome),
}

impl Ctx<'_> {
    /// `<staging_prefix>/locks/<vault_path>`.
    pub(super) fn lock_path(&self) -> String {
        format!(
            "{}/locks/{}",
            self.engine.playbook.vault.staging_prefix, self.credential.vault_path
        )
    }

    /// How long a lock lasts without renewal: the lease, plus the grace period
    /// (the old key is retired at its end, still under the lock).
    fn lock_ttl(&self) -> Duration {
        self.engine.tuning.lease + self.credential.grace
    }

    fn lock_fields(&self) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        fields.insert("holder".into(), self.engine.holder_name());
        fields.insert("run".into(), self.run.to_owned());
        fields.insert("credential".into(), self.credential.id.clone());
        fields.insert("playbook".into(), self.engine.playbook.name.clone());
        fields.insert(
            "expires".into(),
            (now() + self.lock_ttl().as_secs()).to_string(),
        );
        fields
    }

    /// Takes the credential's lock, or says who holds it.
    pub(super) async fn take_lock(&self) -> Result<Result<Taken, Failure>, EngineError> {
        let store = self.engine.store.clone();
        let path = self.lock_path();
        let fields = self.lock_fields();
        let holder = Secret::new(fields["holder"].clone());
        let run = self.run.to_owned();
        let found = self
            .vstep(Step::Lock, json!({ "path": path }), || {
                let store = store.clone();
                let path = path.clone();
                let fields = fields.clone();
                let holder = holder.clone();
                let run = run.clone();
                async move {
                    match store.write_cas(&path, &holder, &fields, 0).await {
                        Ok(v) => Ok(Found::Taken(v, None)),
                        Err(StoreError::CasConflict { .. }) => {
                            let entry = store.read(&path).await?;
                            let ours = entry.fields.get("run") == Some(&run);
                            let expired = entry
                                .fields
                                .get("expires")
                                .and_then(|e| e.parse::<u64>().ok())
                                .is_none_or(|e| e <= now());
                            if entry.value.is_some() && !ours && !expired {
                                return Ok(Found::Busy(entry));
                            }
                            // Ours (a resume of this run) or abandoned: take it over,
                            // with check-and-set on what was read.
                            let v = store
                                .write_cas(&path, &holder, &fields, entry.version)
                                .await?;
                            let abandoned = (!ours && entry.value.is_some()).then_some(entry);
                            Ok(Found::Taken(v, abandoned))
                        }
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        let found = match found {
            Ok(f) => f,
            Err(f) => return Ok(Err(f)),
        };
        match found {
            Found::Taken(version, None) => Ok(Ok(Taken::Held(version))),
            Found::Taken(version, Some(abandoned)) => {
                // The holder died without releasing it: what its run left is tidied
                // before this run touches the credential.
                let run = abandoned.fields.get("run").cloned().unwrap_or_default();
                let credential = abandoned
                    .fields
                    .get("credential")
                    .cloned()
                    .unwrap_or_default();
                tracing::warn!(credential = %self.credential.id, run = %run, holder = abandoned.fields.get("holder").map(String::as_str).unwrap_or("?"), "Took over an expired lock; reconciling what its run left.");
                if let Some(outcome) = self.reconcile_foreign(&run, &credential).await? {
                    self.release_lock().await?;
                    return Ok(Ok(Taken::Busy(outcome)));
                }
                Ok(Ok(Taken::Held(version)))
            }
            Found::Busy(entry) => {
                let field = |k: &str| entry.fields.get(k).map(String::as_str).unwrap_or("?");
                let until = entry
                    .fields
                    .get("expires")
                    .and_then(|e| e.parse::<u64>().ok())
                    .map(|e| {
                        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e))
                            .to_string()
                    })
                    .unwrap_or_else(|| "?".into());
                Ok(Ok(Taken::Busy(Outcome::Skipped {
                    reason: format!(
                        "another rekey process holds {}: {} (run {}, playbook `{}`, credential `{}`), until {until} unless it renews; nothing was changed: run again once it finished",
                        self.credential.vault_path,
                        field("holder"),
                        field("run"),
                        field("playbook"),
                        field("credential"),
                    ),
                })))
            }
        }
    }

    /// Writes the lock again with a later expiry: the new version, `None` when
    /// another process took it (it expired meanwhile), so this one must stop
    /// touching the credential. One attempt, recorded like any step (it runs from
    /// inside the step machinery, which renews leases, so it records itself).
    pub(super) async fn renew_lock(&self, version: u64) -> Result<Option<u64>, EngineError> {
        let path = self.lock_path();
        let fields = self.lock_fields();
        let holder = Secret::new(fields["holder"].clone());
        let detail = json!({ "path": path, "renew": version });
        let intent = self
            .engine
            .journal_durable(|j| {
                j.intent(self.run, &self.credential.id, Step::Lock.as_str(), &detail)
            })
            .await?;
        let renewed = self
            .engine
            .store
            .write_cas(&path, &holder, &fields, version)
            .await;
        let recorded = match &renewed {
            Ok(_) => crate::journal::Outcome::Ok,
            Err(e) => crate::journal::Outcome::Failed {
                kind: if e.is_transient() {
                    "transient"
                } else {
                    "fatal"
                }
                .into(),
                message: e.to_string(),
            },
        };
        self.engine
            .journal(|j| j.outcome(intent, recorded, &json!({})))?;
        Ok(match renewed {
            Ok(v) => Some(v),
            Err(StoreError::CasConflict { .. }) => None,
            // Vault did not answer: the lock still runs until its expiry.
            Err(_) => Some(version),
        })
    }

    /// Deletes the lock entry. A failure is logged: the lock expires by itself.
    pub(super) async fn release_lock(&self) -> Result<(), EngineError> {
        let store = self.engine.store.clone();
        let path = self.lock_path();
        let released = self
            .vstep(Step::Unlock, json!({ "path": path }), || {
                let store = store.clone();
                let path = path.clone();
                async move { store.delete_all(&path).await }
            })
            .await?;
        if let Err(f) = released {
            tracing::warn!(credential = %self.credential.id, "Could not release the lock on {}; it expires by itself: {}", self.credential.vault_path, f.message);
        }
        Ok(())
    }

    /// The lock this run could not release (Vault did not answer), removed after
    /// the run: deleted while it still names this run and has at least a minute
    /// left, so no other process can have taken it over meanwhile. Gone, another
    /// run's, or expired (its next taker replaces it): nothing to remove.
    pub(super) async fn tidy_lock(&self) -> Result<(), EngineError> {
        let store = self.engine.store.clone();
        let path = self.lock_path();
        let run = self.run.to_owned();
        let released = self
            .vstep(Step::Unlock, json!({ "path": path, "tidy": true }), || {
                let store = store.clone();
                let path = path.clone();
                let run = run.clone();
                async move {
                    let entry = store.read(&path).await?;
                    let ours = entry.fields.get("run") == Some(&run);
                    let expires = entry
                        .fields
                        .get("expires")
                        .and_then(|e| e.parse::<u64>().ok())
                        .unwrap_or(0);
                    if ours && expires > now() + 60 {
                        store.delete_all(&path).await
                    } else {
                        Ok(())
                    }
                }
            })
            .await?;
        if let Err(f) = released {
            tracing::warn!(credential = %self.credential.id, "Could not remove the lock on {}; it expires by itself: {}", self.credential.vault_path, f.message);
        }
        Ok(())
    }

    /// What run `run` left behind for `credential` when its process died holding
    /// the lock, tidied as `resume` would: keys it created (tagged
    /// `rekey:<run>:<credential>`) that Vault does not name are revoked, its staging
    /// entry is promoted when it holds a changed password that works and Vault's
    /// does not, then cleared. `Some` when something is left for a human.
    async fn reconcile_foreign(
        &self,
        run: &str,
        credential: &str,
    ) -> Result<Option<Outcome>, EngineError> {
        let staging = format!(
            "{}/{run}/{credential}",
            self.engine.playbook.vault.staging_prefix
        );
        let tag = format!("rekey:{run}:{credential}");
        let current = match self.read_current().await? {
            Ok(c) => c,
            Err(f) => {
                return Ok(Some(self.nothing_changed(
                    "cannot read the path to reconcile an abandoned lock",
                    &f,
                )));
            }
        };
        let provider = self.provider.clone();
        let target = self.target();
        if self.credential.kind == crate::catalog::Kind::Dual && self.provider.lists_keys() {
            let keys = match self
                .pstep(Step::List, json!({ "abandoned_run": run }), || {
                    provider.list(target)
                })
                .await?
            {
                Ok(k) => k,
                Err(f) => {
                    return Ok(Some(Outcome::RolledBack {
                        reason: format!(
                            "cannot list keys to reconcile run {run}'s abandoned lock: {}",
                            f.message
                        ),
                    }));
                }
            };
            let named = current.fields.get("key_id");
            for orphan in keys
                .iter()
                .filter(|k| k.tag.as_deref() == Some(tag.as_str()) && Some(&k.id) != named)
            {
                if let Err(f) = self
                    .pstep(
                        Step::RevokeOrphan,
                        json!({ "key_id": orphan.id, "run": run }),
                        || provider.revoke(target, &orphan.id),
                    )
                    .await?
                {
                    return Ok(Some(Outcome::Quarantined {
                        resumable: false,
                        reason: format!(
                            "run {run} died holding the lock and left key {} at the provider, which could not be deleted: {}",
                            orphan.id, f.message
                        ),
                        action: format!(
                            "delete key {} of `{}` by hand, then run rekey again",
                            orphan.id, self.credential.id
                        ),
                    }));
                }
            }
        }
        let leftover = self
            .vstep(Step::ReadStaging, json!({ "path": staging }), || {
                let store = self.engine.store.clone();
                let staging = staging.clone();
                async move { store.read(&staging).await }
            })
            .await?
            .unwrap_or_default();
        if let Some(value) = leftover.value.clone()
            && self.credential.kind == crate::catalog::Kind::Single
            && current.value.as_ref() != Some(&value)
        {
            let staged_works = matches!(
                self.pstep(Step::ProbeStaged, json!({ "run": run }), || provider
                    .verify(target, None, &value))
                    .await?,
                Ok(true)
            );
            if staged_works {
                // The abandoned run changed the password and never promoted it:
                // Vault is brought back in line with the world first.
                let fields: BTreeMap<String, String> = leftover.fields.clone();
                if let Err(f) = self
                    .promote(&value, &fields, current.version, &current.custom_metadata)
                    .await?
                {
                    return Ok(Some(Outcome::Quarantined {
                        resumable: f.transient(),
                        reason: format!(
                            "run {run} died holding the lock after changing the password, and its value could not be promoted: {}",
                            f.message
                        ),
                        action: format!(
                            "the working value is in Vault at {}/{staging}; copy it to {}",
                            self.engine.playbook.vault.mount, self.credential.vault_path
                        ),
                    }));
                }
            }
        }
        if leftover.version > 0 {
            let _ = self
                .vstep(Step::ClearStaging, json!({ "path": staging }), || {
                    let store = self.engine.store.clone();
                    let staging = staging.clone();
                    async move { store.delete_all(&staging).await }
                })
                .await?;
        }
        Ok(None)
    }
}

/// What the take call found at the store.
enum Found {
    /// Written at this version; with the entry of an abandoned lock of another run.
    Taken(u64, Option<Entry>),
    Busy(Entry),
}
