//! `Ctx`: one credential in one run, and the machinery every protocol step goes
//! through: the intent record before, bounded retries (transient errors with
//! jittered backoff from the instance's budget, rate-limited answers as the
//! instance's pause allows), the outcome record after, the lease, fingerprints.

use crate::engine::limits::InstanceLimit;
use crate::engine::{Engine, EngineError};
use crate::journal::{CredentialState, Outcome as Recorded};
use crate::playbook::Credential;
use crate::protocol::{Checkpoint, Step};
use crate::provider::{Provider, ProviderError, Target};
use crate::secret::Secret;
use crate::store::StoreError;
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub(super) struct Ctx<'a> {
    pub(super) engine: &'a Engine,
    pub(super) run: &'a str,
    /// Position of the credential in the playbook.
    pub(super) index: usize,
    pub(super) credential: &'a Credential,
    pub(super) provider: Arc<dyn Provider>,
    /// When this context last took or renewed its lease on the credential (`None`
    /// when it works without one: retirement, rollback).
    leased_at: Option<std::sync::Mutex<tokio::time::Instant>>,
    /// The version of the Vault lock entry this context holds (see `lock.rs`).
    pub(super) locked: std::sync::Mutex<Option<u64>>,
}

/// How a failed step failed: the provider's classification, or the store's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FailureKind {
    Transient,
    RateLimited,
    Fatal,
}

impl FailureKind {
    /// The name in the journal (`journal::Outcome::Failed.kind`).
    pub(super) fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::Fatal => "fatal",
        }
    }
}

/// A failed step: what kind, and a message without secrets.
pub(super) struct Failure {
    pub(super) kind: FailureKind,
    pub(super) message: String,
    /// A Vault check-and-set conflict: someone else wrote the path.
    pub(super) conflict: bool,
}

impl Failure {
    pub(super) fn fatal(message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Fatal,
            message: message.into(),
            conflict: false,
        }
    }
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Self {
        let kind = match &e {
            ProviderError::Transient(_) => FailureKind::Transient,
            ProviderError::RateLimited { .. } => FailureKind::RateLimited,
            ProviderError::Fatal(_) => FailureKind::Fatal,
        };
        Failure {
            kind,
            message: e.to_string(),
            conflict: false,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let kind = if e.is_transient() {
            FailureKind::Transient
        } else {
            FailureKind::Fatal
        };
        Failure {
            kind,
            conflict: matches!(e, StoreError::CasConflict { .. }),
            message: e.to_string(),
        }
    }
}

impl Failure {
    /// Whether the store (or provider) could not be reached: worth trying again
    /// later rather than a reason to give up on the credential.
    pub(super) fn transient(&self) -> bool {
        self.kind == FailureKind::Transient
    }
}

impl<'a> Ctx<'a> {
    /// The outcome of a rotation that stopped at a Vault step before anything
    /// visible changed: not started when Vault did not answer (`resume` starts
    /// it), rolled back otherwise.
    pub(super) fn nothing_changed(&self, what: &str, f: &Failure) -> crate::engine::Outcome {
        if f.transient() {
            crate::engine::Outcome::NotStarted {
                reason: format!(
                    "Vault did not answer ({what}: {}); nothing changed, and `rekey resume` starts it once Vault answers",
                    f.message
                ),
            }
        } else {
            crate::engine::Outcome::RolledBack {
                reason: format!("{what}: {}", f.message),
            }
        }
    }

    /// A context for credential `index` of run `run`. `leased`: the caller took the
    /// journal lease on the credential (rotate), and steps renew it as they go.
    pub(super) fn new(
        engine: &'a Engine,
        run: &'a str,
        index: usize,
        provider: Arc<dyn Provider>,
        leased: bool,
    ) -> Ctx<'a> {
        Ctx {
            engine,
            run,
            index,
            credential: &engine.playbook.credentials[index],
            provider,
            leased_at: leased.then(|| std::sync::Mutex::new(tokio::time::Instant::now())),
            locked: std::sync::Mutex::new(None),
        }
    }

    pub(super) fn target(&self) -> Target<'a> {
        Target {
            credential: &self.credential.id,
            account: self.credential.account.as_deref(),
            settings: &self.credential.settings,
        }
    }

    /// Renews the journal lease and the Vault lock once a quarter of the lease
    /// time has passed, so a credential that waits out long rate limits keeps
    /// them. `false`: one expired and another process holds it now.
    async fn renew_lease(&self) -> Result<bool, EngineError> {
        let Some(leased_at) = &self.leased_at else {
            return Ok(true);
        };
        let now = tokio::time::Instant::now();
        {
            let mut at = leased_at.lock().map_err(crate::engine::poisoned)?;
            if now.duration_since(*at) < self.engine.tuning.lease / 4 {
                return Ok(true);
            }
            *at = now;
        }
        let ttl = self.engine.tuning.lease + self.credential.grace;
        if !self
            .engine
            .journal(|j| j.lease(self.run, &self.credential.id, &self.engine.holder, ttl))?
        {
            return Ok(false);
        }
        let held = *self.locked.lock().map_err(crate::engine::poisoned)?;
        if let Some(version) = held {
            match self.renew_lock(version).await? {
                Some(v) => *self.locked.lock().map_err(crate::engine::poisoned)? = Some(v),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    pub(super) fn staging_path(&self) -> String {
        format!(
            "{}/{}/{}",
            self.engine.playbook.vault.staging_prefix, self.run, self.credential.id
        )
    }

    pub(super) fn fingerprint(&self, secret: &Secret) -> String {
        let fingerprint = secret.fingerprint(&self.engine.fingerprint_key);
        // The audit trail names the value by an HMAC under its own key.
        if let Ok(journal) = self.engine.journal.lock() {
            journal.note_secret(&fingerprint, secret);
        }
        fingerprint
    }

    /// Records where the rotation is, with what `resume` needs to pick it up.
    pub(super) fn state(
        &self,
        state: CredentialState,
        checkpoint: &Checkpoint,
    ) -> Result<(), EngineError> {
        let detail = checkpoint.to_detail();
        self.engine
            .journal(|j| j.set_state(self.run, &self.credential.id, state, &detail))?;
        Ok(())
    }

    /// Runs one external step with an intent record before and an outcome after,
    /// retrying what is worth retrying: transient failures with jittered
    /// exponential backoff, a bounded number of times and only while `limit`'s retry
    /// budget allows; rate-limited answers for as long as the provider asks (the
    /// instance's pause paces them), up to `Tuning::rate_limit_patience`.
    pub(super) async fn step<T, F, Fut, E>(
        &self,
        step: Step,
        detail: Value,
        call: F,
    ) -> Result<Result<T, Failure>, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Failure> + RetryHint,
    {
        self.limited_step(step, detail, None, true, |_| Value::Null, call)
            .await
    }

    /// [`Ctx::step`] for a call to Vault: when it still fails as unreachable after
    /// its retries, the engine stops starting new credentials until Vault answers
    /// again (see `Engine::vault_unreachable`).
    pub(super) async fn vstep<T, F, Fut>(
        &self,
        step: Step,
        detail: Value,
        call: F,
    ) -> Result<Result<T, Failure>, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let result = self.step(step, detail, call).await?;
        if let Err(f) = &result
            && f.transient()
        {
            self.engine.vault_unreachable(&f.message);
        }
        Ok(result)
    }

    /// [`Ctx::step`], with transient retries drawn from `limit`'s retry budget (none
    /// unless `retry_transient`), and `describe`'s account of a result (an object)
    /// added to the outcome record.
    async fn limited_step<T, F, Fut, E>(
        &self,
        step: Step,
        detail: Value,
        limit: Option<&InstanceLimit>,
        retry_transient: bool,
        describe: impl Fn(&T) -> Value,
        mut call: F,
    ) -> Result<Result<T, Failure>, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<Failure> + RetryHint,
    {
        if !Box::pin(self.renew_lease()).await? {
            return Ok(Err(Failure::fatal(
                "the lease on this credential expired and another rekey process took it over; this process stopped touching it",
            )));
        }
        let record = |j: &crate::journal::Journal| {
            j.intent(self.run, &self.credential.id, step.as_str(), &detail)
        };
        // The intent of a step that changes the world is on disk before the step;
        // a read's intent rides along with the next one that is.
        let intent = if step.changes_world() {
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
                            tracing::warn!(credential = %self.credential.id, step = %step, rate_limited, kind = failure.kind.as_str(), "Retrying when the instance may send again: {}", failure.message);
                            if limit.is_none() {
                                tokio::time::sleep(after.unwrap_or_else(|| jitter(delay))).await;
                            }
                        }
                        Retry::Transient
                            if retry_transient
                                && attempt < tuning.attempts
                                && limit.is_none_or(InstanceLimit::allow_retry) =>
                        {
                            let wait = jitter(delay);
                            tracing::warn!(credential = %self.credential.id, step = %step, attempt, kind = failure.kind.as_str(), wait_ms = wait.as_millis() as u64, "Step failed; retrying: {}", failure.message);
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
                kind: f.kind.as_str().into(),
                message: f.message.clone(),
            },
        };
        let mut outcome = json!({ "attempts": attempt, "rate_limited": rate_limited });
        if let (Ok(v), Some(o)) = (&result, outcome.as_object_mut())
            && let Value::Object(found) = describe(v)
        {
            o.extend(found);
        }
        self.engine
            .journal(|j| j.outcome(intent, recorded, &outcome))?;
        Ok(result)
    }

    /// A provider call: every attempt waits for the instance's rate limit and
    /// reports how it went, so a rate-limited answer pauses the whole instance.
    pub(super) async fn pstep<T, F, Fut>(
        &self,
        step: Step,
        detail: Value,
        call: F,
    ) -> Result<Result<T, Failure>, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        self.provider_step(step, detail, true, |_| Value::Null, call)
            .await
    }

    /// [`Ctx::pstep`], with `describe`'s account of the result (a JSON object: what
    /// the step found or did) in its outcome record, for the journal and the trail.
    pub(super) async fn pstep_described<T, F, Fut>(
        &self,
        step: Step,
        detail: Value,
        describe: impl Fn(&T) -> Value,
        call: F,
    ) -> Result<Result<T, Failure>, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        self.provider_step(step, detail, true, describe, call).await
    }

    /// [`Ctx::pstep`] with a single attempt for transient errors (rate-limited
    /// answers are still retried: a refused request changed nothing). For calls
    /// whose retry is not safe as such: a create whose answer was lost made a key.
    pub(super) async fn pstep_once<T, F, Fut>(
        &self,
        step: Step,
        detail: Value,
        call: F,
    ) -> Result<Result<T, Failure>, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        self.provider_step(step, detail, false, |_| Value::Null, call)
            .await
    }

    async fn provider_step<T, F, Fut>(
        &self,
        step: Step,
        detail: Value,
        retry_transient: bool,
        describe: impl Fn(&T) -> Value,
        mut call: F,
    ) -> Result<Result<T, Failure>, EngineError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let limit = self.engine.limits.get(&self.credential.provider).cloned();
        let shared = limit.clone();
        let provider = self.provider.clone();
        let limit_ref = limit.as_deref();
        self.limited_step(
            step,
            detail,
            limit_ref,
            retry_transient,
            describe,
            move || {
                let request = call();
                let limit = shared.clone();
                let provider = provider.clone();
                async move {
                    let Some(limit) = limit else {
                        return request.await;
                    };
                    // Waiting for the permit holds no global slot.
                    let ticket = crate::engine::schedule::without_slot(limit.acquire()).await;
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
            },
        )
        .await
    }

    /// Authenticates with the new value, with backoff: some providers take a
    /// moment before a new credential works.
    pub(super) async fn verify(
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
                    Step::Verify,
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
}

/// How an error may be retried.
pub(crate) enum Retry {
    /// Not at all: retrying cannot help.
    Never,
    /// With backoff, a bounded number of times, from the retry budget.
    Transient,
    /// When the provider allows again (after this long, if it said).
    RateLimited(Option<Duration>),
}

/// Which errors are worth retrying, and how.
pub(crate) trait RetryHint {
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

/// Equal jitter: a random delay in [d/2, d), so retries of many credentials spread
/// out while each still waits at least half the backoff.
pub(super) fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}
