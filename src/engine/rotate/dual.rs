//! Dual kinds (API keys, access keys, tokens, secret-ids): a second key is issued
//! while the first still works.
//!
//! ```text
//! read_current → list (which keys exist: the old ones to retire; quota: revoke an
//!   inactive stray) ─▶creating → create (any failure: revoke this attempt's tagged
//!   keys, then again if transient; the sweep cannot list → quarantined)
//!   → stage ─▶staged → verify ─▶verified → promote ─▶promoted → sinks → [grace]
//!   → retire: deactivate + revoke each old key → confirm_retired (list again)
//!   → clear_staging ─▶retired → rotated
//! any failure before promote → undo_new_key (revoke the new key, clear staging),
//!   except a promote Vault did not answer (it may have landed): staged, resumable
//! an old key left alive, or one rekey cannot name → quarantined, never rotated
//! ```
//!
//! Which old keys: in breach mode **every** key of the account that existed before
//! this run's create, except the playbook's `keep` (the attacker may hold any of
//! them); in routine mode the key Vault names (or, when it names none, the one
//! active key Vault's value authenticates as). An old key rekey cannot identify
//! is a quarantine, not a warning.

use super::ctx::{Ctx, FailureKind};
use crate::engine::{EngineError, Outcome, SiblingKeys};
use crate::journal::CredentialState;
use crate::protocol::{Checkpoint, Step};
use crate::provider::{Issued, KeyInfo};
use crate::secret::Secret;
use serde_json::json;
use std::time::SystemTime;

/// What retiring the old credential means for one rotation: decided before the
/// create, from the provider's list, and carried in the checkpoint for resume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OldKeys {
    /// The key Vault named (or the one identified): what consumers used.
    pub(crate) vault_key: Option<String>,
    /// Every key to retire after promotion.
    pub(crate) retire: Vec<String>,
    /// Routine mode: active keys rekey could not tie to Vault's value (the old key
    /// is among them, or not); left alive, so the credential is quarantined.
    pub(crate) unidentified: Vec<String>,
    /// Breach mode: the provider's list failed for good, so keys rekey never saw
    /// may still be active: quarantined after the rotation.
    pub(crate) unlisted: bool,
}

impl OldKeys {
    pub(crate) fn from_checkpoint(c: &Checkpoint) -> OldKeys {
        let mut retire = c.retire.clone();
        // A checkpoint of an older rekey names only the one old key.
        if retire.is_empty()
            && let Some(old) = &c.old_key_id
        {
            retire.push(old.clone());
        }
        OldKeys {
            vault_key: c.old_key_id.clone(),
            retire,
            unidentified: c.unidentified.clone(),
            unlisted: c.unlisted,
        }
    }

    fn checkpoint(&self, vault_version: u64) -> Checkpoint {
        Checkpoint {
            old_key_id: self.vault_key.clone(),
            vault_version: Some(vault_version),
            retire: self.retire.clone(),
            unidentified: self.unidentified.clone(),
            unlisted: self.unlisted,
            ..Checkpoint::default()
        }
    }
}

/// The retirement rule, for the engine and for `rekey plan --live`: which of the
/// account's `keys` (listed before the create) a rotation retires, and, in routine
/// mode with no key identified, which active keys it leaves alive unidentified.
/// Breach mode: every key but the kept ones and those `elsewhere` says another
/// credential owns. Routine mode: the key Vault names (`vault_key`), if listed.
pub fn keys_to_retire(
    breach: bool,
    keys: &[KeyInfo],
    vault_key: Option<&str>,
    keep: &[String],
    elsewhere: &dyn Fn(&KeyInfo) -> bool,
) -> (Vec<String>, Vec<String>) {
    let ours = |k: &&KeyInfo| !keep.contains(&k.id) && !elsewhere(k);
    if breach {
        return (
            keys.iter().filter(ours).map(|k| k.id.clone()).collect(),
            Vec::new(),
        );
    }
    match vault_key {
        Some(old) => (
            keys.iter()
                .filter(|k| k.id == old && !keep.contains(&k.id))
                .map(|k| k.id.clone())
                .collect(),
            Vec::new(),
        ),
        // Routine mode retires only the key consumers used; with none named, every
        // active key may be in use somewhere.
        None => (
            Vec::new(),
            keys.iter()
                .filter(|k| k.active)
                .filter(ours)
                .map(|k| k.id.clone())
                .collect(),
        ),
    }
}

impl Ctx<'_> {
    /// Dual kinds: a new key is created, staged, verified and promoted while the
    /// old one still works; then the old ones are retired.
    pub(super) async fn dual(&self) -> Result<Outcome, EngineError> {
        let current = match self.read_current().await? {
            Ok(c) => c,
            Err(f) => {
                let what = format!("cannot read {}", self.credential.vault_path);
                return Ok(self.nothing_changed(&what, &f));
            }
        };
        let provider = self.provider.clone();
        let target = self.target();
        // A provider that cannot list (a definition without a `list` call) is
        // rotated without it: the new key replaces the one Vault names, and the
        // credential ends quarantined because keys rekey never saw may be active.
        let keys = if self.provider.lists_keys() {
            match self
                .pstep(Step::List, json!({}), || provider.list(target))
                .await?
            {
                Ok(k) => Some(k),
                Err(f) => {
                    return Ok(Outcome::RolledBack {
                        reason: format!("cannot list keys: {}", f.message),
                    });
                }
            }
        } else {
            None
        };
        let vault_key = match (current.fields.get("key_id"), &current.value, &keys) {
            (Some(k), _, _) => Some(k.clone()),
            // Vault holds a value but names no key (an entry written before rekey
            // managed it): find the key that value belongs to, so that consumers
            // keep working until the new key is promoted.
            (None, Some(value), Some(keys)) => self.identify_old_key(keys, value).await?,
            _ => None,
        };
        let siblings = if self.engine.breach() || vault_key.is_none() {
            self.engine.sibling_keys(&self.credential.provider).await
        } else {
            Default::default()
        };
        let old = self.old_keys(keys.as_deref(), vault_key, &siblings);
        if let Some(keys) = &keys
            && let Some(refused) = self.make_room(keys, &old).await?
        {
            return Ok(refused);
        }

        let mut checkpoint = old.checkpoint(current.version);
        self.state(CredentialState::Creating, &checkpoint)?;
        let tag = self.tag();
        let issued = match self.create_key(&tag, old.vault_key.as_deref()).await? {
            Ok(i) => i,
            Err(CreateFailed::NothingLeft(message)) => {
                return Ok(Outcome::RolledBack {
                    reason: format!("create failed: {message}"),
                });
            }
            Err(CreateFailed::MayBeLeft(message)) => {
                return Ok(Outcome::Quarantined {
                    reason: format!("create failed: {message}"),
                    action: format!(
                        "a key may have been created without rekey learning its secret: at the provider, delete every key of this account tagged `{tag}` (nobody holds its value); the old value still works"
                    ),
                    resumable: false,
                });
            }
        };
        let mut fields = self.fields(Some(&issued.key_id));
        // The provider's non-secret fields (a login name that changes with the key).
        fields.extend(issued.fields.clone());
        // Stored at once: until the staging write succeeds the new key exists only
        // in memory, and a crash here leaves an orphan that resume finds by its tag.
        if let Err(f) = self.stage(&issued.secret, &fields).await? {
            let undone = self
                .undo_new_key(
                    &issued.key_id,
                    format!("could not stage the new key in Vault: {}", f.message),
                )
                .await?;
            return Ok(match undone {
                Outcome::RolledBack { .. } if f.transient() => {
                    self.nothing_changed("could not stage the new key in Vault", &f)
                }
                other => other,
            });
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
                return self
                    .promote_failed(&issued.key_id, current.version, f)
                    .await;
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
                    old,
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
            .retire(&old, &issued.key_id, version, current.value.as_ref())
            .await?;
        Ok(self.with_sinks(outcome, sink_failures))
    }

    /// Which keys go once the new one is promoted (see the module's doc).
    /// `siblings`: the keys other credentials of the instance own (their Vault
    /// entries name them); those are left to their own rotations.
    fn old_keys(
        &self,
        keys: Option<&[KeyInfo]>,
        vault_key: Option<String>,
        siblings: &SiblingKeys,
    ) -> OldKeys {
        let Some(keys) = keys else {
            return OldKeys {
                retire: vault_key
                    .iter()
                    .filter(|k| !self.credential.keep.contains(k))
                    .cloned()
                    .collect(),
                vault_key,
                unidentified: Vec::new(),
                unlisted: true,
            };
        };
        let (retire, unidentified) = keys_to_retire(
            self.engine.breach(),
            keys,
            vault_key.as_deref(),
            &self.credential.keep,
            &|k| self.owned_elsewhere(k, siblings),
        );
        OldKeys {
            vault_key,
            retire,
            unidentified,
            unlisted: false,
        }
    }

    /// Whether `key` belongs to another credential of this playbook: created by
    /// this run for another credential, created by rekey for a credential of the
    /// same instance (its tag `rekey:<run>:<id>`), or named by such a credential's
    /// Vault entry.
    fn owned_elsewhere(&self, key: &KeyInfo, siblings: &SiblingKeys) -> bool {
        if siblings.get(&key.id).is_some_and(|&i| i != self.index) {
            return true;
        }
        let Some(rest) = key.tag.as_deref().and_then(|t| t.strip_prefix("rekey:")) else {
            return false;
        };
        let Some((run, credential)) = rest.split_once(':') else {
            return false;
        };
        if credential == self.credential.id {
            return false;
        }
        run == self.run
            || self
                .engine
                .playbook
                .credentials
                .iter()
                .any(|c| c.id == credential && c.provider == self.credential.provider)
    }

    /// Quota: makes room for the new key by deleting an inactive key (never the
    /// one consumers use, never a kept one). In breach mode, when none is inactive
    /// and the provider declares its quota, a key being retired anyway goes first
    /// (an attacker's spare key must not block the rotation); routine mode never
    /// deletes an active key before the new one is promoted. Otherwise the create
    /// is tried and the provider says. `Some` when the key could not be deleted.
    async fn make_room(
        &self,
        keys: &[KeyInfo],
        old: &OldKeys,
    ) -> Result<Option<Outcome>, EngineError> {
        // Without a declared quota, an inactive stray goes once there are two keys
        // (most providers' limit).
        let declared = self
            .engine
            .playbook
            .providers
            .get(&self.credential.provider)
            .and_then(|p| p.quota);
        let quota = declared.unwrap_or(2) as usize;
        if keys.len() < quota
            || self.provider.replaces_old_on_create()
            || self.provider.reuses_keys()
        {
            return Ok(None);
        }
        let spare = |k: &&KeyInfo| {
            Some(&k.id) != old.vault_key.as_ref() && !self.credential.keep.contains(&k.id)
        };
        let victim = keys.iter().filter(spare).find(|k| !k.active).or_else(|| {
            keys.iter()
                .filter(spare)
                .find(|k| declared.is_some() && self.engine.breach() && old.retire.contains(&k.id))
        });
        let Some(victim) = victim else {
            return Ok(None);
        };
        let provider = self.provider.clone();
        let target = self.target();
        let stray = victim.id.clone();
        if let Err(f) = self
            .pstep(Step::RevokeStray, json!({ "key_id": stray }), || {
                provider.revoke(target, &stray)
            })
            .await?
        {
            return Ok(Some(Outcome::RolledBack {
                reason: format!(
                    "quota full and the key {stray} could not be deleted first: {}",
                    f.message
                ),
            }));
        }
        Ok(None)
    }

    /// Creates the new key, replacing `old_key` (the key Vault names, when known:
    /// the provider may copy its scopes). A transient failure may hide a key that
    /// was created though its answer was lost: nobody holds its secret, so before
    /// trying again every key carrying this attempt's tag is revoked (it is an
    /// orphan, and it would use up the quota).
    async fn create_key(
        &self,
        tag: &str,
        old_key: Option<&str>,
    ) -> Result<Result<Issued, CreateFailed>, EngineError> {
        let provider = self.provider.clone();
        let target = self.target();
        let attempts = self.engine.tuning.attempts.max(1);
        let mut delay = self.engine.tuning.backoff;
        // A create that retires the old value itself (GitLab's rotate) names it,
        // so `rekey watch` can ask whether it was used afterwards.
        let retires = old_key.filter(|_| provider.replaces_old_on_create());
        for attempt in 1..=attempts {
            let mut detail = json!({ "tag": tag, "attempt": attempt });
            if let Some(old) = retires {
                detail["retires"] = json!(old);
            }
            let created = self
                .pstep_once(Step::Create, detail, || {
                    provider.create_replacing(target, tag, old_key)
                })
                .await?;
            let f = match created {
                Ok(issued) => return Ok(Ok(issued)),
                Err(f) => f,
            };
            // A failed create may still have made a key (an answer lost; Redis
            // adding the password and then failing to persist it): nobody holds
            // its secret, so every key with this attempt's tag goes first. A
            // refusal from a provider that cannot list is taken at its word.
            let transient = f.kind == FailureKind::Transient;
            if (transient || provider.lists_keys())
                && let Err(message) = self.revoke_tagged(None).await?
            {
                return Ok(Err(CreateFailed::MayBeLeft(format!(
                    "{}; and {message}",
                    f.message
                ))));
            }
            if !transient || attempt == attempts {
                return Ok(Err(CreateFailed::NothingLeft(f.message)));
            }
            tokio::time::sleep(super::ctx::jitter(delay)).await;
            delay = (delay * 2).min(self.engine.tuning.max_backoff);
        }
        Ok(Err(CreateFailed::NothingLeft("no attempt left".into())))
    }

    /// Revokes every key carrying this run's tag for this credential, except
    /// `except`: keys whose create answer was lost. `Err` names what is left.
    pub(super) async fn revoke_tagged(
        &self,
        except: Option<&str>,
    ) -> Result<Result<(), String>, EngineError> {
        let provider = self.provider.clone();
        let target = self.target();
        let tag = self.tag();
        let keys = match self
            .pstep(Step::List, json!({ "orphans": true }), || {
                provider.list(target)
            })
            .await?
        {
            Ok(k) => k,
            Err(f) => {
                return Ok(Err(format!(
                    "cannot list keys to find one created without an answer: {}",
                    f.message
                )));
            }
        };
        for orphan in keys
            .iter()
            .filter(|k| k.tag.as_deref() == Some(tag.as_str()) && Some(k.id.as_str()) != except)
        {
            if let Err(f) = self
                .pstep(Step::RevokeOrphan, json!({ "key_id": orphan.id }), || {
                    provider.revoke(target, &orphan.id)
                })
                .await?
            {
                return Ok(Err(format!(
                    "the orphan key {} (created without an answer) could not be deleted: {}",
                    orphan.id, f.message
                )));
            }
        }
        Ok(Ok(()))
    }

    /// The active key that Vault's current `value` authenticates as, when Vault names
    /// none: each active key is verified with that value, and only a single match
    /// counts (a provider whose verify ignores the key id matches every key, and
    /// then rekey cannot tell).
    pub(super) async fn identify_old_key(
        &self,
        keys: &[KeyInfo],
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
                tracing::info!(credential = %id, key_id = %one, "Vault names no key id; its value belongs to this key.");
                Ok(Some((*one).to_owned()))
            }
            _ => {
                tracing::info!(credential = %id, active = active.len(), matching = matches.len(), "Vault names no key id and rekey cannot tell which active key its value belongs to.");
                Ok(None)
            }
        }
    }

    /// Retires the old keys after promotion (deactivate, then delete), confirms
    /// with the provider's list that they are gone and no orphan of this run is
    /// left, clears staging. Anything still alive, or unknown, is a quarantine.
    /// `old_value`: Vault's previous value, when known, to prove a key changed in
    /// place no longer takes it.
    pub(super) async fn retire(
        &self,
        old: &OldKeys,
        new_key: &str,
        version: u64,
        old_value: Option<&Secret>,
    ) -> Result<Outcome, EngineError> {
        let id = &self.credential.id;
        let provider = self.provider.clone();
        let target = self.target();
        let in_place = self.provider.replaces_old_on_create();
        // The provider handed back the key Vault already named: there is no other
        // key to retire. A create that retires the old value itself (Cloudflare's
        // roll keeps the token's id) is a rotation like any other; a provider that
        // reuses key ids (two roles taking turns) changed the key in use in place,
        // and a human should know.
        if old.vault_key.as_deref() == Some(new_key) && !in_place {
            self.clear_staging().await?;
            return Ok(Outcome::Quarantined {
                resumable: false,
                reason: format!(
                    "the provider issued key {new_key} again, the key Vault already named: it was changed in place while in use, and there is no other key to retire (not retiring {new_key}, which holds the promoted value)"
                ),
                action: format!(
                    "check that nothing still uses the previous value of key {new_key} of `{id}`, then run rekey again to move to a fresh key"
                ),
            });
        }
        let mut alive: Vec<String> = Vec::new();
        let mut why: Vec<String> = Vec::new();
        // Whether a human must look: something refused or contradicted the
        // retirement. A provider that only did not answer leaves it to `resume`
        // (found by `scripts/chaos`, finding 4).
        let mut refused = false;
        for key in old.retire.iter().filter(|k| k.as_str() != new_key) {
            if let Err(f) = self
                .pstep(Step::Deactivate, json!({ "key_id": key }), || {
                    provider.deactivate(target, key)
                })
                .await?
            {
                tracing::warn!(credential = %id, "Could not deactivate the old key {key}: {}", f.message);
            }
            if let Err(f) = self
                .pstep(Step::Revoke, json!({ "key_id": key }), || {
                    provider.revoke(target, key)
                })
                .await?
            {
                refused |= f.kind == super::ctx::FailureKind::Fatal;
                why.push(format!("{key} could not be deleted: {}", f.message));
                alive.push(key.clone());
            }
        }
        // A key changed in place must no longer take the old value.
        if in_place && let Some(previous) = old_value {
            let still = self
                .pstep(Step::ProbeOld, json!({ "key_id": new_key }), || {
                    provider.verify(target, Some(new_key), previous)
                })
                .await?;
            if matches!(still, Ok(true)) {
                refused = true;
                why.push(format!("the previous value of {new_key} still works"));
                alive.push(new_key.to_owned());
            }
        }
        // The provider's word that the old keys are gone, and orphans of this run
        // (creates whose answer was lost) tidied.
        if !old.unlisted && !in_place {
            let tag = self.tag();
            match self
                .pstep(Step::ConfirmRetired, json!({}), || provider.list(target))
                .await?
            {
                Ok(keys) => {
                    // Gone, or listed inactive (a retired role keeps its name).
                    for k in &keys {
                        if k.active
                            && k.id != new_key
                            && old.retire.contains(&k.id)
                            && !alive.contains(&k.id)
                        {
                            refused = true;
                            why.push(format!("{} is still active after it was retired", k.id));
                            alive.push(k.id.clone());
                        }
                    }
                    for orphan in keys
                        .iter()
                        .filter(|k| k.id != new_key && k.tag.as_deref() == Some(tag.as_str()))
                    {
                        if let Err(f) = self
                            .pstep(Step::RevokeOrphan, json!({ "key_id": orphan.id }), || {
                                provider.revoke(target, &orphan.id)
                            })
                            .await?
                        {
                            refused |= f.kind == super::ctx::FailureKind::Fatal;
                            why.push(format!(
                                "{} (created by this run without an answer) could not be deleted: {}",
                                orphan.id, f.message
                            ));
                            alive.push(orphan.id.clone());
                        }
                    }
                }
                Err(f) => {
                    refused |= f.kind == super::ctx::FailureKind::Fatal;
                    why.push(format!(
                        "the provider's list could not confirm it: {}",
                        f.message
                    ));
                    let unconfirmed: Vec<String> = old
                        .retire
                        .iter()
                        .filter(|k| k.as_str() != new_key && !alive.contains(k))
                        .cloned()
                        .collect();
                    alive.extend(unconfirmed);
                }
            }
        }
        let dead: Vec<&str> = old
            .retire
            .iter()
            .filter(|k| k.as_str() != new_key && !alive.contains(k))
            .map(String::as_str)
            .collect();
        let sessions = self.end_old_sessions(&dead).await?;
        self.clear_staging().await?;
        let at = &self.credential.provider;
        let account = self.credential.account.as_deref().unwrap_or(id);
        if !alive.is_empty() && !refused {
            // The new key is promoted and stays; `resume` finds Vault naming it
            // and retires what the provider still lists (`finish_promoted`).
            return Ok(sessions.apply(Outcome::Quarantined {
                resumable: true,
                reason: format!(
                    "the new key {new_key} is promoted (Vault version {version}), but the provider did not answer to retire the old key(s) {}: {}",
                    alive.join(", "),
                    why.join("; ")
                ),
                action: format!(
                    "run `rekey resume` once `{at}` answers: it deletes key(s) {} of account `{account}` and confirms the provider lists only {new_key}",
                    alive.join(", ")
                ),
            }));
        }
        if !alive.is_empty() {
            return Ok(sessions.apply(Outcome::Quarantined {
                resumable: false,
                reason: format!(
                    "the new key {new_key} is promoted (Vault version {version}), but old keys may still work: {}",
                    why.join("; ")
                ),
                action: format!(
                    "delete key(s) {} of account `{account}` at `{at}` by hand, then check the provider lists only {new_key}",
                    alive.join(", ")
                ),
            }));
        }
        if old.unlisted {
            return Ok(sessions.apply(Outcome::Quarantined {
                resumable: false,
                reason: format!(
                    "the new key {new_key} is promoted (Vault version {version}){}, but the provider could not list the account's keys, so others may still be active",
                    match old.retire.as_slice() {
                        [] => String::new(),
                        r => format!(" and {} deleted", r.join(", ")),
                    }
                ),
                action: format!(
                    "list the keys of account `{account}` at `{at}` and delete every key other than {new_key}"
                ),
            }));
        }
        if !old.unidentified.is_empty() {
            return Ok(sessions.apply(Outcome::Quarantined {
                resumable: false,
                reason: format!(
                    "the new key {new_key} is promoted (Vault version {version}), but Vault named no old key and rekey could not tell which of {} its value belonged to: they are still active",
                    old.unidentified.join(", ")
                ),
                action: format!(
                    "delete the key(s) of account `{account}` at `{at}` that nothing uses any more ({}); list a key that must stay under `keep:`, and put `key_id` in Vault entries written by hand",
                    old.unidentified.join(", ")
                ),
            }));
        }
        self.state(
            CredentialState::Retired,
            &Checkpoint {
                new_key_id: Some(new_key.to_owned()),
                old_key_id: old.vault_key.clone(),
                retire: old.retire.clone(),
                ..Checkpoint::default()
            },
        )?;
        Ok(sessions.apply(Outcome::Rotated {
            key_id: Some(new_key.to_owned()),
            version,
        }))
    }

    /// Promote failed: the new key is revoked; a check-and-set conflict (someone
    /// wrote the path since it was read) is a quarantine, never an overwrite; a
    /// Vault that did not answer leaves the new key staged for `resume`.
    async fn promote_failed(
        &self,
        new_key: &str,
        read_version: u64,
        f: super::ctx::Failure,
    ) -> Result<Outcome, EngineError> {
        let id = &self.credential.id;
        let conflict = f.conflict;
        let unreachable = f.transient();
        if unreachable && !conflict {
            // Vault did not answer: one of the writes may have landed with its
            // answer lost, so Vault may already name the new key. Revoking it
            // could leave Vault holding a dead key (found by `scripts/chaos`);
            // `resume` reads Vault and either finishes the promotion from the
            // staging entry or sees that it landed.
            return Ok(Outcome::Quarantined {
                resumable: true,
                reason: format!(
                    "the new key {new_key} of `{id}` was verified, but Vault did not answer to promote it (the write may have landed): {}",
                    f.message
                ),
                action: format!(
                    "run `rekey resume` once Vault answers: it promotes the new key from the staging entry {}/{} to {} (or finds it promoted), then retires the old key",
                    self.engine.playbook.vault.mount,
                    self.staging_path(),
                    self.credential.vault_path
                ),
            });
        }
        let undone = self.undo_new_key(new_key, String::new()).await?;
        let reason = if conflict {
            format!(
                "{} was changed by someone else since it was read (version {read_version}); rekey never overwrites that",
                self.credential.vault_path
            )
        } else {
            format!("could not promote: {}", f.message)
        };
        Ok(match undone {
            Outcome::RolledBack { .. } if conflict => Outcome::Quarantined {
                resumable: false,
                reason,
                action: format!(
                    "find out who wrote {} and why, then run rekey again for `{id}`; the old key still works",
                    self.credential.vault_path
                ),
            },
            Outcome::RolledBack { .. } => Outcome::RolledBack { reason },
            other => other,
        })
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
                resumable: false,
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
                resumable: false,
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

/// Why no new key came out of `create`.
enum CreateFailed {
    /// The provider holds no key of this attempt (checked with its list).
    NothingLeft(String),
    /// A key may exist that nobody holds: the list to find it failed.
    MayBeLeft(String),
}
