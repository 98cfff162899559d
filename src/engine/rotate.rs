//! One credential through the rotation protocol. Each function returns the
//! credential's `Outcome`; `Err` only for the journal failing (then nothing can
//! be recorded safely and the run stops).

use super::limits::InstanceLimit;
use super::{Engine, EngineError, Outcome};
use crate::journal::Outcome as Recorded;
use crate::playbook::Credential;
use crate::provider::catalog::Kind;
use crate::provider::{Provider, ProviderError, Target};
use crate::secret::Secret;
use crate::store::{Entry, StoreError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod manual;
mod sinks;

pub(super) async fn rotate(
    engine: &Engine,
    run: &str,
    index: usize,
) -> Result<Outcome, EngineError> {
    let credential = &engine.playbook.credentials[index];
    let provider = match engine.providers.get(&credential.provider).cloned() {
        Some(p) => p,
        None if credential.kind == Kind::Manual => manual::no_provider(),
        None => {
            return Ok(Outcome::Skipped {
                reason: format!(
                    "provider instance `{}` cannot run in this build",
                    credential.provider
                ),
            });
        }
    };
    let holder = engine.holder.clone();
    // The lease outlives the grace period: the old key is retired at its end.
    if !engine.journal(|j| {
        j.lease(
            run,
            &credential.id,
            &holder,
            engine.tuning.lease + credential.grace,
        )
    })? {
        return Ok(Outcome::Skipped {
            reason: "another rekey process holds this credential".into(),
        });
    }
    let ctx = Ctx {
        engine,
        run,
        index,
        credential,
        provider,
        leased_at: Some(std::sync::Mutex::new(tokio::time::Instant::now())),
    };
    let outcome = match credential.kind {
        Kind::Dual => ctx.dual().await,
        Kind::Single => ctx.single().await,
        Kind::Manual => ctx.manual().await,
    };
    engine.journal(|j| j.release(run, &credential.id, &holder))?;
    outcome
}

/// Whether a step changes something outside the journal (a provider, Vault, a
/// sink). Those wait for their intent record to be on disk; the reads below do not
/// (a crash that loses a read's records loses nothing `resume` needs: it reads
/// the real state again).
fn changes_world(step: &str) -> bool {
    !matches!(
        step,
        "read_current"
            | "read_staging"
            | "list"
            | "verify"
            | "probe_new"
            | "probe_staged"
            | "probe_current"
    )
}

/// After a crash: brings one credential of run `run` to a known state from what
/// the journal says it was doing and what the world really holds (provider keys,
/// Vault versions, the staging entry), then finishes or restarts its rotation.
pub(super) async fn resume(
    engine: &Engine,
    run: &str,
    index: usize,
    last: Option<&crate::journal::CredentialRow>,
) -> Result<Outcome, EngineError> {
    let credential = &engine.playbook.credentials[index];
    let Some(provider) = engine.providers.get(&credential.provider).cloned() else {
        return rotate(engine, run, index).await;
    };
    {
        // The process that held the lease is gone (this is a resume): take it over.
        let journal = engine.journal.lock().map_err(super::poisoned)?;
        if let Some((_, holder)) = journal.lease_holder(&credential.id)? {
            let pid = holder.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| {
                p != std::process::id() && std::path::Path::new(&format!("/proc/{p}")).exists()
            });
            if !alive {
                journal.break_lease(&credential.id, &holder)?;
            }
        }
    }
    let ctx = Ctx {
        engine,
        run,
        index,
        credential,
        provider,
        leased_at: None,
    };
    let detail = last.map(|r| r.detail.clone()).unwrap_or(Value::Null);
    let reconciled = match credential.kind {
        Kind::Dual => ctx.reconcile_dual(&detail).await?,
        Kind::Single => ctx.reconcile_single(&detail).await?,
        Kind::Manual => None,
    };
    match reconciled {
        Some(outcome) => Ok(outcome),
        // Nothing was half done (or it was undone): rotate from the start.
        None => rotate(engine, run, index).await,
    }
}

struct Ctx<'a> {
    engine: &'a Engine,
    run: &'a str,
    /// Position of the credential in the playbook.
    index: usize,
    credential: &'a Credential,
    provider: Arc<dyn Provider>,
    /// When this context last took or renewed its lease on the credential (`None`
    /// when it works without one: retirement, rollback).
    leased_at: Option<std::sync::Mutex<tokio::time::Instant>>,
}

/// A failed step: what kind, and a message without secrets.
struct Failure {
    kind: &'static str,
    message: String,
    /// A Vault check-and-set conflict: someone else wrote the path.
    conflict: bool,
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Self {
        Failure {
            kind: e.kind(),
            message: e.to_string(),
            conflict: false,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let kind = if e.is_transient() {
            "transient"
        } else {
            "fatal"
        };
        Failure {
            kind,
            conflict: matches!(e, StoreError::CasConflict { .. }),
            message: e.to_string(),
        }
    }
}

impl<'a> Ctx<'a> {
    fn target(&self) -> Target<'a> {
        Target {
            credential: &self.credential.id,
            account: self.credential.account.as_deref(),
            settings: &self.credential.settings,
        }
    }

    /// Renews the lease once a quarter of its time has passed, so a credential that
    /// waits out long rate limits keeps it. `false`: it expired and another process
    /// holds it now.
    fn renew_lease(&self) -> Result<bool, EngineError> {
        let Some(leased_at) = &self.leased_at else {
            return Ok(true);
        };
        let now = tokio::time::Instant::now();
        let mut at = leased_at.lock().map_err(super::poisoned)?;
        if now.duration_since(*at) < self.engine.tuning.lease / 4 {
            return Ok(true);
        }
        let ttl = self.engine.tuning.lease + self.credential.grace;
        let renewed = self
            .engine
            .journal(|j| j.lease(self.run, &self.credential.id, &self.engine.holder, ttl))?;
        *at = now;
        Ok(renewed)
    }

    fn staging_path(&self) -> String {
        format!(
            "{}/{}/{}",
            self.engine.playbook.vault.staging_prefix, self.run, self.credential.id
        )
    }

    fn fingerprint(&self, secret: &Secret) -> String {
        let fingerprint = secret.fingerprint(&self.engine.fingerprint_key);
        // The audit trail names the value by an HMAC under its own key.
        if let Ok(journal) = self.engine.journal.lock() {
            journal.note_secret(&fingerprint, secret);
        }
        fingerprint
    }

    fn state(&self, state: &str, detail: Value) -> Result<(), EngineError> {
        self.engine
            .journal(|j| j.set_state(self.run, &self.credential.id, state, &detail))?;
        Ok(())
    }

    /// Runs one external step with an intent record before and an outcome after,
    /// retrying what is worth retrying: transient failures with jittered
    /// exponential backoff, a bounded number of times and only while `limit`'s retry
    /// budget allows; rate-limited answers for as long as the provider asks (the
    /// instance's pause paces them), up to `Tuning::rate_limit_patience`.
    async fn step<T, F, Fut, E>(
        &self,
        step: &str,
        detail: Value,
        call: F,
    ) -> Result<Result<T, Failure>, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Failure> + RetryHint,
    {
        self.limited_step(step, detail, None, call).await
    }

    /// [`Ctx::step`], with transient retries drawn from `limit`'s retry budget.
    async fn limited_step<T, F, Fut, E>(
        &self,
        step: &str,
        detail: Value,
        limit: Option<&InstanceLimit>,
        mut call: F,
    ) -> Result<Result<T, Failure>, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Failure> + RetryHint,
    {
        if !self.renew_lease()? {
            return Ok(Err(Failure {
                kind: "fatal",
                message: "the lease on this credential expired and another rekey process took it over; this process stopped touching it".into(),
                conflict: false,
            }));
        }
        let record =
            |j: &crate::journal::Journal| j.intent(self.run, &self.credential.id, step, &detail);
        // The intent of a step that changes the world is on disk before the step;
        // a read's intent rides along with the next one that is.
        let intent = if changes_world(step) {
            self.engine.journal_durable(record).await?
        } else {
            self.engine.journal(record)?
        };
        let tuning = &self.engine.tuning;
        let started = tokio::time::Instant::now();
        let mut delay = tuning.backoff;
        let mut attempt = 1;
        let mut rate_limited = 0u32;
        let result = loop {
            match call().await {
                Ok(v) => break Ok(v),
                Err(e) => {
                    let retry = e.retry_hint();
                    let failure: Failure = e.into();
                    match retry {
                        Retry::RateLimited(after)
                            if started.elapsed() < tuning.rate_limit_patience =>
                        {
                            rate_limited += 1;
                            tracing::warn!(credential = %self.credential.id, step, rate_limited, kind = failure.kind, "Retrying when the instance may send again: {}", failure.message);
                            if limit.is_none() {
                                tokio::time::sleep(after.unwrap_or_else(|| jitter(delay))).await;
                            }
                        }
                        Retry::Transient
                            if attempt < tuning.attempts
                                && limit.is_none_or(InstanceLimit::allow_retry) =>
                        {
                            let wait = jitter(delay);
                            tracing::warn!(credential = %self.credential.id, step, attempt, kind = failure.kind, wait_ms = wait.as_millis() as u64, "Step failed; retrying: {}", failure.message);
                            tokio::time::sleep(wait).await;
                            delay = (delay * 2).min(tuning.max_backoff);
                            attempt += 1;
                        }
                        _ => break Err(failure),
                    }
                }
            }
        };
        let recorded = match &result {
            Ok(_) => Recorded::Ok,
            Err(f) => Recorded::Failed {
                kind: f.kind.into(),
                message: f.message.clone(),
            },
        };
        self.engine.journal(|j| {
            j.outcome(
                intent,
                recorded,
                &json!({ "attempts": attempt, "rate_limited": rate_limited }),
            )
        })?;
        Ok(result)
    }

    /// A provider call: every attempt waits for the instance's rate limit and
    /// reports how it went, so a rate-limited answer pauses the whole instance.
    async fn pstep<T, F, Fut>(
        &self,
        step: &str,
        detail: Value,
        mut call: F,
    ) -> Result<Result<T, Failure>, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let limit = self.engine.limits.get(&self.credential.provider).cloned();
        let shared = limit.clone();
        let provider = self.provider.clone();
        self.limited_step(step, detail, limit.as_deref(), move || {
            let request = call();
            let limit = shared.clone();
            let provider = provider.clone();
            async move {
                let Some(limit) = limit else {
                    return request.await;
                };
                let ticket = limit.acquire().await;
                let result = request.await;
                match &result {
                    Ok(_) => ticket.succeeded_with(provider.rate_hint()),
                    Err(ProviderError::RateLimited { retry_after, .. }) => {
                        ticket.throttled(*retry_after)
                    }
                    Err(_) => drop(ticket),
                }
                result
            }
        })
        .await
    }

    /// Authenticates with the new value, with backoff: some providers take a
    /// moment before a new credential works.
    async fn verify(
        &self,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<Result<bool, Failure>, EngineError> {
        if !self.credential.verify {
            return Ok(Ok(true));
        }
        let provider = self.provider.clone();
        let target = self.target();
        let attempts = self.engine.tuning.verify_attempts.max(1);
        let mut delay = self.engine.tuning.backoff;
        let mut last = Ok(false);
        for attempt in 1..=attempts {
            last = self
                .pstep(
                    "verify",
                    json!({ "key_id": key_id, "attempt": attempt }),
                    || provider.verify(target, key_id, secret),
                )
                .await?;
            match &last {
                Ok(true) => break,
                Ok(false) | Err(_) if attempt < attempts => {
                    tokio::time::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(self.engine.tuning.max_backoff);
                }
                _ => {}
            }
        }
        Ok(last)
    }

    async fn read_current(&self) -> Result<Result<Entry, Failure>, EngineError> {
        let store = self.engine.store.clone();
        let path = self.credential.vault_path.clone();
        self.step("read_current", json!({ "path": path }), || {
            let store = store.clone();
            let path = path.clone();
            async move { store.read(&path).await }
        })
        .await
    }

    async fn stage(
        &self,
        secret: &Secret,
        fields: &BTreeMap<String, String>,
    ) -> Result<Result<u64, Failure>, EngineError> {
        let store = self.engine.store.clone();
        let path = self.staging_path();
        self.step(
            "stage",
            json!({ "path": path, "fingerprint": self.fingerprint(secret), "fields": fields }),
            || {
                let store = store.clone();
                let path = path.clone();
                async move {
                    // The path is this run's own and new, so one write usually does;
                    // a leftover from an earlier attempt of this run is overwritten.
                    match store.write_cas(&path, secret, fields, 0).await {
                        Err(StoreError::CasConflict { .. }) => {
                            let current = store.read(&path).await?.version;
                            store.write_cas(&path, secret, fields, current).await
                        }
                        other => other,
                    }
                }
            },
        )
        .await
    }

    async fn clear_staging(&self) -> Result<(), EngineError> {
        let store = self.engine.store.clone();
        let path = self.staging_path();
        let result = self
            .step("clear_staging", json!({ "path": path }), || {
                let store = store.clone();
                let path = path.clone();
                async move { store.delete_all(&path).await }
            })
            .await?;
        if let Err(f) = result {
            // The value is promoted; a leftover staging entry is tidied by resume.
            tracing::warn!(credential = %self.credential.id, "Could not clear the staging entry: {}", f.message);
        }
        Ok(())
    }

    /// Writes the consumers' path with check-and-set on the version read before
    /// the change, then its custom metadata unless `seen` (what the read found)
    /// already says it.
    async fn promote(
        &self,
        secret: &Secret,
        fields: &BTreeMap<String, String>,
        cas: u64,
        seen: &BTreeMap<String, String>,
    ) -> Result<Result<u64, Failure>, EngineError> {
        let store = self.engine.store.clone();
        let path = self.credential.vault_path.clone();
        let result = self
            .step(
                "promote",
                json!({ "path": path, "cas": cas, "fingerprint": self.fingerprint(secret) }),
                || {
                    let store = store.clone();
                    let path = path.clone();
                    async move { store.write_cas(&path, secret, fields, cas).await }
                },
            )
            .await?;
        if let Ok(version) = &result {
            // Which rekey credential owns the path. When it rotated, and in which
            // run, Vault's own version timestamps and the audit trail say; keys
            // that stay the same from one rotation to the next are written once,
            // not on every rotation.
            let mut meta = BTreeMap::new();
            meta.insert(
                "rekey_provider".to_owned(),
                self.credential.provider.clone(),
            );
            meta.insert("rekey_credential".to_owned(), self.credential.id.clone());
            meta.insert(
                "rekey_playbook".to_owned(),
                self.engine.playbook.name.clone(),
            );
            if meta.iter().all(|(k, v)| seen.get(k) == Some(v)) {
                return Ok(result);
            }
            let meta_result = self
                .step(
                    "set_metadata",
                    json!({ "path": path, "version": version }),
                    || {
                        let store = store.clone();
                        let path = path.clone();
                        let meta = meta.clone();
                        async move { store.set_metadata(&path, &meta).await }
                    },
                )
                .await?;
            if let Err(f) = meta_result {
                tracing::warn!(credential = %self.credential.id, "Promoted, but custom metadata could not be written: {}", f.message);
            }
        }
        Ok(result)
    }

    fn fields(&self, key_id: Option<&str>) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        if let Some(k) = key_id {
            fields.insert("key_id".to_owned(), k.to_owned());
        }
        if let Some(a) = &self.credential.account {
            fields.insert("account".to_owned(), a.clone());
        }
        fields
    }

    /// Dual kinds: a new key is created, staged, verified and promoted while the
    /// old one still works; then the old one is retired.
    async fn dual(&self) -> Result<Outcome, EngineError> {
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
            .pstep("list", json!({}), || provider.list(target))
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
                .pstep("revoke_stray", json!({ "key_id": stray_id }), || {
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

        self.state(
            "creating",
            json!({ "old_key_id": old_key, "vault_version": current.version }),
        )?;
        let tag = format!("rekey:{}:{id}", self.run);
        let issued = match self
            .pstep("create", json!({ "tag": tag }), || {
                provider.create_replacing(target, &tag, old_key.as_deref())
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
        self.state("staged", json!({ "new_key_id": issued.key_id, "old_key_id": old_key, "vault_version": current.version }))?;

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
        self.state("verified", json!({ "new_key_id": issued.key_id, "old_key_id": old_key, "vault_version": current.version }))?;

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
        self.state("promoted", json!({ "new_key_id": issued.key_id, "old_key_id": old_key, "version": version, "retire_after": retire_after }))?;
        let sink_failures = self.propagate(&issued.secret).await?;

        // Grace: consumers pick up the new value (zero in breach mode). The wait
        // happens after every wave, without holding a concurrency slot, so
        // dependents go on as soon as this value is promoted.
        if !self.credential.grace.is_zero() {
            let due = tokio::time::Instant::now() + self.credential.grace;
            self.engine
                .pending
                .lock()
                .map_err(super::poisoned)?
                .push(super::Retirement {
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
    async fn identify_old_key(
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
                .pstep("identify_old_key", json!({ "key_id": key }), || {
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
    async fn retire(
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
                .pstep("deactivate", json!({ "key_id": old }), || {
                    provider.deactivate(target, old)
                })
                .await?
            {
                tracing::warn!(credential = %id, "Could not deactivate the old key {old}: {}", f.message);
            }
            if let Err(f) = self
                .pstep("revoke", json!({ "key_id": old }), || {
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
        self.clear_staging().await?;
        self.state(
            "retired",
            json!({ "new_key_id": new_key, "old_key_id": old_key }),
        )?;
        Ok(Outcome::Rotated {
            key_id: Some(new_key.to_owned()),
            version,
        })
    }

    /// Before promotion nothing visible changed: revoking the new key and clearing
    /// staging puts the world back.
    async fn undo_new_key(&self, key_id: &str, reason: String) -> Result<Outcome, EngineError> {
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
            .pstep("rollback_revoke_new", json!({ "key_id": key_id }), || {
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

    /// Single kinds: the new value goes to Vault staging (the write-ahead log)
    /// before the change call, so a crash after the change never loses it.
    async fn single(&self) -> Result<Outcome, EngineError> {
        let id = &self.credential.id;
        let current = match self.read_current().await? {
            Ok(c) => c,
            Err(f) => {
                return Ok(Outcome::RolledBack {
                    reason: format!("cannot read {}: {}", self.credential.vault_path, f.message),
                });
            }
        };
        let policy = &self.credential.password;
        let new = Secret::generate(policy.length as usize, &policy.alphabet);
        let fields = self.fields(None);
        if let Err(f) = self.stage(&new, &fields).await? {
            return Ok(Outcome::RolledBack {
                reason: format!("could not stage the new value in Vault: {}", f.message),
            });
        }
        self.state(
            "staged",
            json!({ "fingerprint": self.fingerprint(&new), "vault_version": current.version }),
        )?;

        let provider = self.provider.clone();
        let target = self.target();
        let changed = self
            .pstep(
                "change",
                json!({ "fingerprint": self.fingerprint(&new) }),
                || provider.change(target, &new),
            )
            .await?;
        if let Err(f) = changed {
            // Did the change happen anyway? Ask the provider rather than guess.
            let took = matches!(
                self.pstep("probe_new", json!({}), || provider
                    .verify(target, None, &new))
                    .await?,
                Ok(true)
            );
            if !took {
                self.clear_staging().await?;
                return Ok(Outcome::RolledBack {
                    reason: format!("change failed: {}", f.message),
                });
            }
        }
        self.state(
            "changed",
            json!({ "fingerprint": self.fingerprint(&new), "vault_version": current.version }),
        )?;

        let verified = self.verify(None, &new).await?;
        if !matches!(verified, Ok(true)) {
            return self.single_verify_failed(&new, &current).await;
        }
        let version = match self
            .promote(&new, &fields, current.version, &current.custom_metadata)
            .await?
        {
            Ok(v) => v,
            Err(f) => {
                return Ok(Outcome::Quarantined {
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
        self.finish_single(&new, version).await
    }

    /// The changed value does not work. Routine mode puts the old value back;
    /// breach mode never restores a compromised value.
    async fn single_verify_failed(
        &self,
        new: &Secret,
        current: &Entry,
    ) -> Result<Outcome, EngineError> {
        let id = &self.credential.id;
        if self.engine.breach() {
            return Ok(Outcome::Quarantined {
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
                "rollback_change",
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

impl Ctx<'_> {
    fn tag(&self) -> String {
        format!("rekey:{}:{}", self.run, self.credential.id)
    }

    async fn read_staging(&self) -> Result<Result<Entry, Failure>, EngineError> {
        let store = self.engine.store.clone();
        let path = self.staging_path();
        self.step("read_staging", json!({ "path": path }), || {
            let store = store.clone();
            let path = path.clone();
            async move { store.read(&path).await }
        })
        .await
    }

    /// Dual: the key this run created is either promoted (finish retiring the old
    /// one), staged and working (promote it), or an orphan (revoke it). `None`
    /// means the credential is back where it started and can simply rotate.
    async fn reconcile_dual(&self, detail: &Value) -> Result<Option<Outcome>, EngineError> {
        let id = &self.credential.id;
        let provider = self.provider.clone();
        let target = self.target();
        let current = match self.read_current().await? {
            Ok(c) => c,
            Err(f) => {
                return Ok(Some(Outcome::Quarantined {
                    reason: format!(
                        "cannot read {} to resume: {}",
                        self.credential.vault_path, f.message
                    ),
                    action: "run `rekey resume` again once Vault answers".into(),
                }));
            }
        };
        let keys = match self
            .pstep("list", json!({ "resume": true }), || provider.list(target))
            .await?
        {
            Ok(k) => k,
            Err(f) => {
                return Ok(Some(Outcome::Quarantined {
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
        let old_key = detail
            .get("old_key_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let recorded_version = detail.get("vault_version").and_then(Value::as_u64);

        // Promoted already: only the old key's retirement may be missing, once the
        // grace period that was running when the process died is over.
        if let Some(promoted) = current
            .fields
            .get("key_id")
            .filter(|k| ours.iter().any(|o| &&o.id == k))
        {
            let now = SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if let Some(left) = detail
                .get("retire_after")
                .and_then(Value::as_u64)
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
                    old_key.as_deref(),
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
                        .finish_promoted(
                            &ours,
                            &keys,
                            old_key.as_deref(),
                            &key_id,
                            version,
                            Some(&value),
                        )
                        .await
                        .map(Some);
                }
                Err(f) if f.conflict => {
                    let _ = self
                        .pstep("revoke_orphan", json!({ "key_id": key_id }), || {
                            provider.revoke(target, &key_id)
                        })
                        .await?;
                    self.clear_staging().await?;
                    return Ok(Some(Outcome::Quarantined {
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
                .pstep("revoke_orphan", json!({ "key_id": orphan.id }), || {
                    provider.revoke(target, &orphan.id)
                })
                .await?
            {
                return Ok(Some(Outcome::Quarantined {
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
    /// key (if the provider still has it) is retired as in a normal run.
    async fn finish_promoted(
        &self,
        ours: &[&crate::provider::KeyInfo],
        keys: &[crate::provider::KeyInfo],
        old_key: Option<&str>,
        promoted: &str,
        version: u64,
        value: Option<&Secret>,
    ) -> Result<Outcome, EngineError> {
        let provider = self.provider.clone();
        let target = self.target();
        for stray in ours.iter().filter(|k| k.id != promoted) {
            let _ = self
                .pstep("revoke_orphan", json!({ "key_id": stray.id }), || {
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
        let old_key = old_key.filter(|o| keys.iter().any(|k| k.id == *o));
        let outcome = self.retire(old_key, promoted, version).await?;
        Ok(self.with_sinks(outcome, sink_failures))
    }

    /// Single: the staging entry is the write-ahead log. If the staged value
    /// works, the change happened: promote it. If the stored value still works,
    /// it did not: start over. If neither works, a human must look.
    async fn reconcile_single(&self, detail: &Value) -> Result<Option<Outcome>, EngineError> {
        let id = &self.credential.id;
        let staged = match self.read_staging().await? {
            Ok(e) => e,
            Err(f) => {
                return Ok(Some(Outcome::Quarantined {
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
        if matches!(
            self.pstep("probe_staged", json!({}), || provider
                .verify(target, None, &value))
                .await?,
            Ok(true)
        ) {
            let current = match self.read_current().await? {
                Ok(c) => c,
                Err(f) => {
                    return Ok(Some(Outcome::Quarantined {
                        reason: format!(
                            "cannot read {}: {}",
                            self.credential.vault_path, f.message
                        ),
                        action: "run `rekey resume` again".into(),
                    }));
                }
            };
            if current.value.as_ref() == Some(&value) {
                self.clear_staging().await?;
                return Ok(Some(Outcome::Rotated {
                    key_id: None,
                    version: current.version,
                }));
            }
            let cas = detail
                .get("vault_version")
                .and_then(Value::as_u64)
                .unwrap_or(current.version);
            return Ok(Some(
                match self
                    .promote(&value, &self.fields(None), cas, &current.custom_metadata)
                    .await?
                {
                    Ok(version) => self.finish_single(&value, version).await?,
                    Err(f) => Outcome::Quarantined {
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
                    reason: format!("cannot read {}: {}", self.credential.vault_path, f.message),
                    action: "run `rekey resume` again".into(),
                }));
            }
        };
        let old_works = match &current.value {
            Some(old) => matches!(
                self.pstep("probe_current", json!({}), || provider
                    .verify(target, None, old))
                    .await?,
                Ok(true)
            ),
            None => false,
        };
        if old_works || current.value.is_none() {
            // The change never happened (or there is no old value to keep): start over.
            self.clear_staging().await?;
            return Ok(None);
        }
        Ok(Some(Outcome::Quarantined {
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

/// Retires the old key of a credential whose grace period is over.
pub(super) async fn retire(
    engine: &Engine,
    run: &str,
    r: &super::Retirement,
) -> Result<Outcome, EngineError> {
    let credential = &engine.playbook.credentials[r.index];
    let Some(provider) = engine.providers.get(&credential.provider).cloned() else {
        return Ok(Outcome::Rotated {
            key_id: Some(r.new_key.clone()),
            version: r.version,
        });
    };
    let ctx = Ctx {
        engine,
        run,
        index: r.index,
        credential,
        provider,
        leased_at: None,
    };
    let outcome = ctx
        .retire(r.old_key.as_deref(), &r.new_key, r.version)
        .await?;
    Ok(ctx.with_sinks(outcome, r.sink_failures.clone()))
}

/// Undoes one rotated credential of a routine-mode run: the previous value goes
/// back to the consumers' path (check-and-set on the version rekey wrote), and for
/// single kinds to the provider; a dual key is only restored while the old key
/// still exists (during its grace period); after that, roll forward only.
pub(super) async fn roll_back(
    engine: &Engine,
    run: &str,
    index: usize,
    rotated_version: u64,
    detail: &Value,
) -> Result<Outcome, EngineError> {
    let credential = &engine.playbook.credentials[index];
    let Some(provider) = engine.providers.get(&credential.provider).cloned() else {
        return Ok(Outcome::Skipped {
            reason: format!(
                "provider instance `{}` cannot run in this build",
                credential.provider
            ),
        });
    };
    let ctx = Ctx {
        engine,
        run,
        index,
        credential,
        provider: provider.clone(),
        leased_at: None,
    };
    let target = ctx.target();
    let id = &credential.id;
    let current = match ctx.read_current().await? {
        Ok(c) => c,
        Err(f) => {
            return Ok(Outcome::Skipped {
                reason: format!("cannot read {}: {}", credential.vault_path, f.message),
            });
        }
    };
    if current.version != rotated_version {
        return Ok(Outcome::Skipped {
            reason: format!(
                "{} changed since the run (version {} now, {} then); not rolled back",
                credential.vault_path, current.version, rotated_version
            ),
        });
    }
    let store = engine.store.clone();
    let path = credential.vault_path.clone();
    let previous = match ctx
        .step(
            "read_previous",
            json!({ "path": path, "version": rotated_version.saturating_sub(1) }),
            || {
                let store = store.clone();
                let path = path.clone();
                async move {
                    store
                        .read_version(&path, rotated_version.saturating_sub(1))
                        .await
                }
            },
        )
        .await?
    {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Ok(Outcome::Skipped {
                reason: "there is no previous value to restore".into(),
            });
        }
        Err(f) => {
            return Ok(Outcome::Skipped {
                reason: format!("cannot read the previous value: {}", f.message),
            });
        }
    };
    match credential.kind {
        Kind::Single => {
            if let Err(f) = ctx
                .pstep(
                    "restore_change",
                    json!({ "fingerprint": ctx.fingerprint(&previous) }),
                    || provider.change(target, &previous),
                )
                .await?
            {
                return Ok(Outcome::Skipped {
                    reason: format!("could not set the previous password again: {}", f.message),
                });
            }
            let fields = ctx.fields(None);
            match ctx
                .promote(
                    &previous,
                    &fields,
                    current.version,
                    &current.custom_metadata,
                )
                .await?
            {
                Ok(v) => {
                    let failed = ctx.propagate(&previous).await?;
                    Ok(sinks_rolled_back(
                        format!("previous value restored (Vault version {v})"),
                        failed,
                    ))
                }
                Err(f) => Ok(Outcome::Quarantined {
                    reason: format!(
                        "the previous password is set again at the provider, but Vault could not be updated: {}",
                        f.message
                    ),
                    action: format!(
                        "write Vault version {} of {} back by hand",
                        rotated_version.saturating_sub(1),
                        credential.vault_path
                    ),
                }),
            }
        }
        Kind::Dual => {
            let old = detail
                .get("old_key_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let new = current.fields.get("key_id").cloned();
            let keys = match ctx
                .pstep("list", json!({ "rollback": true }), || {
                    provider.list(target)
                })
                .await?
            {
                Ok(k) => k,
                Err(f) => {
                    return Ok(Outcome::Skipped {
                        reason: format!("cannot list keys: {}", f.message),
                    });
                }
            };
            let Some(old) = old.filter(|o| keys.iter().any(|k| &k.id == o && k.active)) else {
                return Ok(Outcome::Skipped {
                    reason: format!(
                        "the old key of `{id}` is already retired; roll forward only (run rekey again)"
                    ),
                });
            };
            let mut fields = ctx.fields(Some(&old));
            fields.retain(|k, _| k != "value");
            match ctx
                .promote(
                    &previous,
                    &fields,
                    current.version,
                    &current.custom_metadata,
                )
                .await?
            {
                Ok(v) => {
                    if let Some(new) = new {
                        let _ = ctx
                            .pstep("revoke_new", json!({ "key_id": new }), || {
                                provider.revoke(target, &new)
                            })
                            .await?;
                    }
                    let failed = ctx.propagate(&previous).await?;
                    Ok(sinks_rolled_back(
                        format!("old key {old} restored (Vault version {v})"),
                        failed,
                    ))
                }
                Err(f) => Ok(Outcome::Skipped {
                    reason: format!("could not write the old key back: {}", f.message),
                }),
            }
        }
        Kind::Manual => Ok(Outcome::Skipped {
            reason: "manual steps are rolled back by hand".into(),
        }),
    }
}

/// How an error may be retried.
pub(super) enum Retry {
    /// Not at all: retrying cannot help.
    Never,
    /// With backoff, a bounded number of times, from the retry budget.
    Transient,
    /// When the provider allows again (after this long, if it said).
    RateLimited(Option<Duration>),
}

/// Which errors are worth retrying, and how.
pub(super) trait RetryHint {
    fn retry_hint(&self) -> Retry;
}

impl RetryHint for ProviderError {
    fn retry_hint(&self) -> Retry {
        match self {
            ProviderError::Transient(_) => Retry::Transient,
            ProviderError::RateLimited { retry_after, .. } => Retry::RateLimited(*retry_after),
            ProviderError::Fatal(_) => Retry::Never,
        }
    }
}

impl RetryHint for StoreError {
    fn retry_hint(&self) -> Retry {
        if self.is_transient() {
            Retry::Transient
        } else {
            Retry::Never
        }
    }
}

/// Full jitter: a random delay up to `d`, so retries of many credentials spread out.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// A rollback whose sinks could not all be given the previous value back.
fn sinks_rolled_back(reason: String, failed: Vec<String>) -> Outcome {
    if failed.is_empty() {
        return Outcome::RolledBack { reason };
    }
    Outcome::Quarantined {
        action: format!(
            "write the previous value to the failed sinks by hand: {}",
            failed.join("; ")
        ),
        reason: format!(
            "{reason}, but {} sink(s) still hold the newer value",
            failed.len()
        ),
    }
}
