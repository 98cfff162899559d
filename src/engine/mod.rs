//! The rotation engine: drives each selected credential through the protocol of
//! DESIGN.md (lock, stage in Vault before anything depends on the new value,
//! verify, promote with check-and-set, retire the old), wave by wave, with an
//! intent record in the journal before every external change and an outcome after.
//!
//! Invariant: this module never names a concrete provider; it sees `dyn Provider`.
//! Invariant: no secret value reaches the journal, a log line or an error message:
//! only key ids, Vault versions and HMAC fingerprints.

pub mod durable;
pub mod limits;
mod rotate;
mod schedule;
pub(crate) use schedule::Pollers;
pub mod tidy;

pub use crate::protocol::{Checkpoint, PlannedStep, Step};
pub use rotate::keys_to_retire;

use crate::journal::{CredentialState, Journal, JournalError, NewRun, RunStatus};
use crate::playbook::{Mode, Playbook};
use crate::provider::Provider;
use crate::provider::manual::Operator;
use crate::store::SecretStore;
use indexmap::IndexMap;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How one credential's rotation ended.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// New value verified, promoted to the consumers' path; old one retired.
    Rotated {
        key_id: Option<String>,
        version: u64,
    },
    /// Something failed before anything visible changed; the old credential still works.
    RolledBack { reason: String },
    /// Not brought to a known-good state automatically: a human must act.
    /// `resumable`: what is missing is Vault (it did not answer), and `rekey resume`
    /// finishes the credential once it does.
    Quarantined {
        reason: String,
        action: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resumable: bool,
    },
    /// Not attempted (a dependency failed, or the type cannot run yet).
    Skipped { reason: String },
    /// A manual step waiting for an operator.
    AwaitingOperator { instructions: String },
    /// Not rotated and nothing changed, because the run stopped before it or Vault
    /// did not answer: `rekey resume` starts it.
    NotStarted { reason: String },
}

impl Outcome {
    pub fn state(&self) -> CredentialState {
        match self {
            Outcome::Rotated { .. } => CredentialState::Rotated,
            Outcome::RolledBack { .. } => CredentialState::RolledBack,
            Outcome::Quarantined { .. } => CredentialState::Quarantined,
            Outcome::Skipped { .. } => CredentialState::Skipped,
            Outcome::AwaitingOperator { .. } => CredentialState::AwaitingOperator,
            Outcome::NotStarted { .. } => CredentialState::NotStarted,
        }
    }

    /// A credential a human must act on, with what to do.
    pub fn quarantined(reason: impl Into<String>, action: impl Into<String>) -> Outcome {
        Outcome::Quarantined {
            reason: reason.into(),
            action: action.into(),
            resumable: false,
        }
    }

    /// Whether `rekey resume` takes this credential up again: it never started,
    /// waits for an operator or for a dependency, or waits for Vault to answer.
    pub fn resumable(&self) -> bool {
        matches!(
            self,
            Outcome::AwaitingOperator { .. }
                | Outcome::Skipped { .. }
                | Outcome::NotStarted { .. }
                | Outcome::Quarantined {
                    resumable: true,
                    ..
                }
        )
    }
}

#[derive(Debug, Serialize)]
pub struct CredentialResult {
    pub id: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub results: Vec<CredentialResult>,
    /// Stopped by Ctrl-C before every credential started: `rekey resume` finishes it.
    pub interrupted: bool,
    /// Requests, rate-limited answers, retries and the rate each provider instance
    /// ended at (only instances that were used).
    pub instances: Vec<limits::LimitStats>,
    /// Entries Vault still holds that the run could not remove (see `tidy`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<tidy::Leftover>,
}

impl RunSummary {
    pub fn count(&self, state: CredentialState) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome.state() == state)
            .count()
    }
    /// How the run ended. Unfinished (`resume` picks it up) while anything did
    /// not start or waits for Vault; then quarantined while a human must act; then
    /// waiting for an operator's manual step; failed when something rolled back.
    pub fn status(&self) -> RunStatus {
        let waits_for_vault = self.results.iter().any(|r| {
            matches!(
                r.outcome,
                Outcome::NotStarted { .. }
                    | Outcome::Quarantined {
                        resumable: true,
                        ..
                    }
            )
        });
        if self.interrupted || waits_for_vault {
            RunStatus::Interrupted
        } else if self.count(CredentialState::Quarantined) > 0 {
            RunStatus::Quarantined
        } else if self.count(CredentialState::AwaitingOperator) > 0 {
            RunStatus::AwaitingOperator
        } else if self.count(CredentialState::RolledBack) + self.count(CredentialState::Skipped) > 0
        {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        }
    }

    /// How a shared run ended, from its credentials' final states as the journal
    /// holds them (`rekey runner` ends the run when its last task is done): as
    /// [`RunSummary::status`]; a state that is not an outcome counts as not started.
    pub fn status_of_rows(rows: &[crate::journal::CredentialRow]) -> RunStatus {
        let results = rows
            .iter()
            .map(|row| CredentialResult {
                id: row.credential.clone(),
                outcome: serde_json::from_value(row.detail.clone()).unwrap_or(
                    Outcome::NotStarted {
                        reason: String::new(),
                    },
                ),
            })
            .collect();
        RunSummary {
            run_id: String::new(),
            results,
            interrupted: false,
            instances: Vec::new(),
            leftovers: Vec::new(),
        }
        .status()
    }

    /// Credentials a human must act on now (not those `resume` finishes alone).
    pub fn needs_a_human(&self) -> usize {
        self.results
            .iter()
            .filter(|r| {
                matches!(
                    r.outcome,
                    Outcome::Quarantined {
                        resumable: false,
                        ..
                    }
                )
            })
            .count()
    }
}

/// Retry and timing knobs (tests shrink them).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Attempts for a transient provider or store error before giving up.
    pub attempts: u32,
    /// First backoff delay; doubles, with jitter, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Verify attempts: new credentials can take a moment to work (eventual consistency).
    pub verify_attempts: u32,
    /// How long a lease on a credential lasts.
    pub lease: Duration,
    /// How long one step keeps retrying rate-limited answers (a provider's block
    /// can last minutes: Cloudflare blocks for five) before it counts as failed.
    pub rate_limit_patience: Duration,
    /// How long the run waits for Vault to answer again, once it stopped
    /// answering, before the credentials not started yet are left for `resume`.
    pub vault_patience: Duration,
    /// How often Vault is asked whether it answers again meanwhile.
    pub vault_probe_every: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            attempts: 4,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            verify_attempts: 5,
            lease: Duration::from_secs(600),
            rate_limit_patience: Duration::from_secs(15 * 60),
            vault_patience: Duration::from_secs(5 * 60),
            vault_probe_every: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Setup(String),
}

/// Where the engine reports progress (a terminal display, plain lines, nothing).
pub trait Progress: Send + Sync {
    /// A credential of `instance` starts its rotation.
    fn started(&self, instance: &str, credential: &str);
    /// It ended with `outcome`.
    fn finished(&self, instance: &str, credential: &str, outcome: &Outcome);
    /// Run `run_id` starts (or resumes): its id is known from here on.
    fn run_started(&self, run_id: &str) {
        let _ = run_id;
    }
    /// An operator is asked on the terminal (`true`) or has answered (`false`):
    /// a display drawing on the terminal steps aside meanwhile. Calls nest.
    fn operator_prompt(&self, active: bool) {
        let _ = active;
    }
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn started(&self, _: &str, _: &str) {}
    fn finished(&self, _: &str, _: &str, _: &Outcome) {}
}

/// A promoted credential whose old key is retired when its grace period ends.
#[derive(Debug, Clone)]
pub(crate) struct Retirement {
    pub(crate) index: usize,
    /// The old keys to retire (see `rotate/dual.rs`).
    pub(crate) old: rotate::OldKeys,
    pub(crate) new_key: String,
    pub(crate) version: u64,
    pub(crate) due: tokio::time::Instant,
    /// Sinks that failed at promotion: the credential ends quarantined.
    pub(crate) sink_failures: Vec<String>,
}

/// Everything a run needs. Built with [`Engine::builder`] by the command layer
/// (with Vault and the real providers) or by tests (with an in-memory store).
/// Cloning is cheap (one shared [`Shared`]): each credential in flight holds a
/// clone.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl std::ops::Deref for Engine {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// What every credential of a run shares (see [`Engine`]).
pub struct Shared {
    pub(crate) playbook: Arc<Playbook>,
    pub(crate) store: Arc<dyn SecretStore>,
    pub(crate) journal: Arc<Mutex<Journal>>,
    /// Group commit for the journal (see `durable`).
    durable: Arc<durable::GroupSync>,
    /// Provider per instance name.
    pub(crate) providers: IndexMap<String, Arc<dyn Provider>>,
    pub(crate) tuning: Tuning,
    /// Key for the HMAC fingerprints of values in the journal.
    pub(crate) fingerprint_key: Vec<u8>,
    pub(crate) holder: String,
    /// Set on the first Ctrl-C: no new credential starts; those in flight finish
    /// their protocol (reaching a safe state), and the run ends as interrupted.
    stop: Arc<AtomicBool>,
    pub(crate) progress: Arc<dyn Progress>,
    /// Old keys waiting for their grace period to end.
    pub(crate) pending: Mutex<Vec<Retirement>>,
    /// Rate limit per provider instance (see `limits`).
    pub(crate) limits: IndexMap<String, Arc<limits::InstanceLimit>>,
    /// Who answers manual steps (a terminal, a value given to resume, nobody).
    pub(crate) operator: Arc<dyn Operator>,
    /// Per provider instance: the key ids its credentials' Vault entries name,
    /// read once (see [`Engine::sibling_keys`]).
    siblings: Mutex<IndexMap<String, Arc<tokio::sync::OnceCell<Arc<SiblingKeys>>>>>,
    /// Set when a Vault call still failed as unreachable after its retries: no new
    /// credential starts until Vault answers again (the circuit breaker).
    vault_down: AtomicBool,
    vault_probe: tokio::sync::Mutex<()>,
    /// While the scheduler runs: where a credential reports its new value
    /// promoted (its index), so dependents on other instances may start.
    promoted: Mutex<Option<tokio::sync::mpsc::UnboundedSender<usize>>>,
}

/// Key id → the credential (index) whose Vault entry names it.
pub(crate) type SiblingKeys = rustc_hash::FxHashMap<String, usize>;

/// Builds an [`Engine`]: the playbook, the store, the journal and the fingerprint
/// key are required; everything else has a default (no providers, default tuning,
/// a fresh lease holder and stop flag, no progress display, nobody to answer
/// manual steps, one limiter per provider instance from the playbook's rates).
pub struct EngineBuilder {
    playbook: Arc<Playbook>,
    store: Arc<dyn SecretStore>,
    journal: Journal,
    fingerprint_key: Vec<u8>,
    providers: IndexMap<String, Arc<dyn Provider>>,
    tuning: Tuning,
    holder: String,
    stop: Arc<AtomicBool>,
    progress: Option<Arc<dyn Progress>>,
    limits: IndexMap<String, Arc<limits::InstanceLimit>>,
    operator: Arc<dyn Operator>,
}

impl EngineBuilder {
    /// The provider of instance `name`.
    pub fn provider(mut self, name: impl Into<String>, provider: Arc<dyn Provider>) -> Self {
        self.providers.insert(name.into(), provider);
        self
    }
    pub fn tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }
    /// The flag the first Ctrl-C sets.
    pub fn stop_flag(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }
    pub fn progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }
    pub fn operator(mut self, operator: Arc<dyn Operator>) -> Self {
        self.operator = operator;
        self
    }
    /// The name this engine holds leases and locks under (default: a fresh
    /// [`Journal::new_lease_holder`]); a runner gives its own, which its claims
    /// and heartbeats carry too.
    pub fn holder(mut self, holder: String) -> Self {
        self.holder = holder;
        self
    }
    /// The limiter of each provider instance (a progress display shows them).
    pub fn limits(&self) -> &IndexMap<String, Arc<limits::InstanceLimit>> {
        &self.limits
    }
    /// The engine, with group commit on the journal: one sync for the records of
    /// every credential in flight.
    pub fn build(mut self) -> Result<Engine, EngineError> {
        let durable = Arc::new(durable::GroupSync::new(self.journal.defer_sync()?));
        Ok(Engine {
            shared: Arc::new(Shared {
                playbook: self.playbook,
                store: self.store,
                journal: Arc::new(Mutex::new(self.journal)),
                durable,
                providers: self.providers,
                tuning: self.tuning,
                fingerprint_key: self.fingerprint_key,
                holder: self.holder,
                stop: self.stop,
                progress: self.progress.unwrap_or_else(|| Arc::new(Silent)),
                pending: Mutex::new(Vec::new()),
                limits: self.limits,
                operator: self.operator,
                siblings: Mutex::new(IndexMap::new()),
                vault_down: AtomicBool::new(false),
                vault_probe: tokio::sync::Mutex::new(()),
                promoted: Mutex::new(None),
            }),
        })
    }
}

impl Engine {
    pub fn builder(
        playbook: Arc<Playbook>,
        store: Arc<dyn SecretStore>,
        journal: Journal,
        fingerprint_key: Vec<u8>,
    ) -> EngineBuilder {
        let limits = playbook
            .providers
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    Arc::new(limits::InstanceLimit::new(name.clone(), p.rate)),
                )
            })
            .collect();
        EngineBuilder {
            playbook,
            store,
            journal,
            fingerprint_key,
            providers: IndexMap::new(),
            tuning: Tuning::default(),
            holder: Journal::new_lease_holder(),
            stop: Arc::new(AtomicBool::new(false)),
            progress: None,
            limits,
            operator: Arc::new(crate::provider::manual::Nobody),
        }
    }

    /// How this process names itself in leases and locks: `<pid>-<nonce>@<host>`.
    pub fn holder_name(&self) -> String {
        format!("{}@{}", self.holder, crate::journal::this_host())
    }

    /// Runs `f` on the journal the engine records in (for states, intents, runs).
    pub fn with_journal<T>(&self, f: impl FnOnce(&Journal) -> T) -> T {
        f(&self.journal.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The key ids that the Vault entries of `instance`'s dual credentials name,
    /// read once per run and instance. Breach retirement leaves another
    /// credential's key to that credential's own rotation: one account's list can
    /// hold the keys of several credentials of the playbook (a Twilio account, a
    /// repository's deploy keys). Empty when the instance has one credential.
    pub(crate) async fn sibling_keys(&self, instance: &str) -> Arc<SiblingKeys> {
        let cell = {
            let mut map = self.siblings.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(instance.to_owned()).or_default().clone()
        };
        cell.get_or_init(|| async {
            let members: Vec<&crate::playbook::Credential> = self
                .playbook
                .credentials
                .iter()
                .filter(|c| {
                    c.provider == instance && c.kind == crate::provider::catalog::Kind::Dual
                })
                .collect();
            let mut keys = SiblingKeys::default();
            if members.len() < 2 {
                return Arc::new(keys);
            }
            // As many reads at once as the run's concurrency: all of an instance's
            // thousand entries at once opened a thousand connections to Vault, each
            // with its buffers kept in the pool (found by `scripts/load`: most of
            // a 10,000-credential run's memory).
            let width = self.playbook.defaults.concurrency.max(1) as usize;
            // The reads built first, each owning what it reads: a closure over
            // borrowed credentials inside the stream would keep this future from
            // being sent to another thread (rustc's higher-ranked closure limit).
            let store = &self.store;
            let reads: Vec<_> = members
                .iter()
                .map(|c| (c.index, c.vault_path.clone()))
                .map(|(index, path)| async move { (index, store.read(&path).await) })
                .collect();
            let reads = futures::StreamExt::buffer_unordered(futures::stream::iter(reads), width);
            let reads: Vec<_> = futures::StreamExt::collect(reads).await;
            for (index, read) in reads {
                match read {
                    Ok(entry) => {
                        if let Some(k) = entry.fields.get("key_id") {
                            keys.insert(k.clone(), index);
                        }
                    }
                    Err(e) => tracing::warn!(
                        instance,
                        "Could not read a Vault entry to tell credentials' keys apart: {e}"
                    ),
                }
            }
            Arc::new(keys)
        })
        .await
        .clone()
    }

    /// A Vault call failed as unreachable after its retries: new credentials wait
    /// (see [`Engine::wait_for_vault`]); those in flight finish their protocol.
    pub(crate) fn vault_unreachable(&self, why: &str) {
        if !self.vault_down.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "Vault does not answer ({why}); no new credential starts until it does."
            );
        }
    }

    /// Returns once Vault answers again (`true`), or `false` when it has not
    /// within `Tuning::vault_patience` or the run is stopping. Immediate when Vault
    /// was not seen down.
    async fn wait_for_vault(&self) -> bool {
        if !self.vault_down.load(Ordering::SeqCst) {
            return true;
        }
        // One waiter probes at a time; the others see the flag it clears.
        let _probe = self.vault_probe.lock().await;
        let deadline = tokio::time::Instant::now() + self.tuning.vault_patience;
        while self.vault_down.load(Ordering::SeqCst) {
            if self.stopping() || tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(self.tuning.vault_probe_every).await;
            let probe = tokio::time::timeout(
                self.tuning.vault_probe_every.max(Duration::from_secs(5)),
                self.store.preflight(),
            )
            .await;
            if matches!(probe, Ok(Ok(()))) {
                tracing::info!("Vault answers again; credentials start again.");
                self.vault_down.store(false, Ordering::SeqCst);
            }
        }
        true
    }

    /// Whether credential `index` waits for its grace period to end before its old
    /// key is retired (its lease and lock stay held until then).
    pub(crate) fn retiring_later(&self, index: usize) -> bool {
        self.pending
            .lock()
            .is_ok_and(|p| p.iter().any(|r| r.index == index))
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

impl Engine {
    /// What each used instance's limit saw, logged and returned for the summary.
    fn limit_stats(&self) -> Vec<limits::LimitStats> {
        let stats: Vec<_> = self
            .limits
            .values()
            .map(|l| l.stats())
            .filter(|s| s.requests > 0)
            .collect();
        for s in &stats {
            tracing::info!(
                instance = %s.instance,
                requests = s.requests,
                rate_limited = s.rate_limited,
                retries = s.retries,
                retries_refused = s.retries_refused,
                per_second = s.final_per_second,
                configured_per_second = s.configured_per_second,
                learned_per_second = s.learned_per_second,
                "Instance totals."
            );
        }
        stats
    }

    /// Rotates the credentials at `waves` (indices into the playbook's
    /// credentials, as `plan::order::waves` returns them), recording run `new_run`.
    /// Each credential starts as soon as its own dependencies allow (see
    /// `schedule`).
    pub async fn run(
        &self,
        new_run: &NewRun,
        waves: &[Vec<usize>],
    ) -> Result<RunSummary, EngineError> {
        let run_id = self
            .journal_durable(|j| {
                let id = j.create_run(new_run)?;
                j.claim_run(&id, &self.holder)?;
                Ok(id)
            })
            .await?;
        tracing::info!(run = %run_id, credentials = waves.iter().map(Vec::len).sum::<usize>(), "Run started.");
        self.progress.run_started(&run_id);
        let mut summary = self.drive(&run_id, waves, Work::Rotate).await?;
        summary.leftovers = self.tidy(&run_id).await?;
        self.journal_durable(|j| j.finish_run(&run_id, summary.status()))
            .await?;
        tracing::info!(run = %run_id, status = %summary.status(), "Run finished.");
        Ok(summary)
    }

    /// Finishes run `run_id` after a crash or an interruption: credentials that
    /// ended keep their outcome; the others are reconciled with the real state of
    /// the provider and Vault, then completed, scheduled as `run` schedules them.
    pub async fn resume(
        &self,
        run_id: &str,
        waves: &[Vec<usize>],
    ) -> Result<RunSummary, EngineError> {
        let rows = {
            let journal = self.journal.lock().map_err(poisoned)?;
            journal.reopen_run(run_id)?;
            journal.claim_run(run_id, &self.holder)?;
            journal.states(run_id)?
        };
        tracing::info!(run = %run_id, "Resuming run.");
        self.progress.run_started(run_id);
        let rows: rustc_hash::FxHashMap<String, crate::journal::CredentialRow> = rows
            .into_iter()
            .map(|r| (r.credential.clone(), r))
            .collect();
        let mut summary = self.drive(run_id, waves, Work::Resume(rows)).await?;
        summary.leftovers = self.tidy(run_id).await?;
        self.journal_durable(|j| j.finish_run(run_id, summary.status()))
            .await?;
        tracing::info!(run = %run_id, status = %summary.status(), "Resumed run finished.");
        Ok(summary)
    }

    /// Removes what the run left in Vault (staging entries, locks: see `tidy`)
    /// while Vault answers; returns what is still there. Nothing is tried while
    /// Vault is known down or the run is stopping: the summary names them and
    /// `rekey resume` tries again.
    pub async fn tidy(&self, run_id: &str) -> Result<Vec<tidy::Leftover>, EngineError> {
        let left = self.journal(|j| tidy::leftovers(j, run_id))?;
        if left.is_empty() {
            return Ok(left);
        }
        // Vault seen down: one probe says whether it answers again.
        if self.vault_down.load(Ordering::SeqCst) {
            let probe = tokio::time::timeout(Duration::from_secs(5), self.store.preflight()).await;
            if matches!(probe, Ok(Ok(()))) {
                self.vault_down.store(false, Ordering::SeqCst);
            }
        }
        for leftover in &left {
            if self.stopping() || self.vault_down.load(Ordering::SeqCst) {
                break;
            }
            rotate::tidy(self, run_id, leftover).await?;
        }
        let left = self.journal(|j| tidy::leftovers(j, run_id))?;
        if !left.is_empty() {
            tracing::warn!(run = %run_id, entries = left.len(), "Vault still holds entries this run could not remove.");
        }
        Ok(left)
    }

    /// The position of credential `index`'s provider instance in the playbook; one
    /// past the last for an instance the playbook does not name (the credential
    /// is skipped at once). The scheduler's and the runner's poller for it.
    pub(crate) fn instance_of(&self, index: usize) -> usize {
        let providers = &self.playbook.providers;
        providers
            .get_index_of(&self.playbook.credentials[index].provider)
            .unwrap_or(providers.len())
    }

    /// Estimated seconds of one credential's rotation (the scheduler's priority).
    fn cost(&self, index: usize) -> f64 {
        let credential = &self.playbook.credentials[index];
        crate::plan::estimate::rotation_seconds(&self.playbook, credential)
    }

    /// The scheduler: starts each credential of `waves` once its dependencies
    /// allow, within the global and per-instance concurrency, records each final
    /// outcome, then retires the old keys whose grace period ends.
    async fn drive(
        &self,
        run_id: &str,
        waves: &[Vec<usize>],
        work: Work,
    ) -> Result<RunSummary, EngineError> {
        use schedule::{Graph, Held, Ready, Slots};
        let playbook = &self.playbook;
        let mut graph = Graph::new(playbook, waves, |i| self.cost(i));
        let n = graph.len();
        // Instances by position in the playbook; one more for a credential whose
        // instance is unknown (it is skipped at once).
        let mut caps: Vec<usize> = playbook
            .providers
            .values()
            .map(|p| p.concurrency.max(1) as usize)
            .collect();
        caps.push(usize::MAX);
        let instance_of: Vec<usize> = graph.order.iter().map(|&i| self.instance_of(i)).collect();
        let mut in_flight = vec![0usize; caps.len()];
        let slots = Arc::new(Slots::new(playbook.defaults.concurrency.max(1) as usize));
        let (promoted_tx, mut promoted_rx) = tokio::sync::mpsc::unbounded_channel();
        *self.promoted.lock().map_err(poisoned)? = Some(promoted_tx);
        let run_id_shared: Arc<str> = Arc::from(run_id);
        let rows = match &work {
            Work::Resume(rows) => Some(rows),
            Work::Rotate => None,
        };
        let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
        let mut ready = Ready::new(caps.len());
        let mut freed = graph.roots();
        freed.reverse();
        // The credentials in flight: one poller task per instance (see `Pollers`).
        let mut tasks = schedule::Pollers::new(caps.len());
        let mut running = 0usize;
        let mut first_error: Option<EngineError> = None;
        let mut vault_gave_up = false;
        loop {
            // Credentials with nothing left to wait for: ended already (resume),
            // skipped for a failed dependency, or ready to start.
            while let Some(p) = freed.pop() {
                let credential = &playbook.credentials[graph.order[p]];
                let ended = rows
                    .and_then(|rows| rows.get(&credential.id))
                    .and_then(|r| serde_json::from_value::<Outcome>(r.detail.clone()).ok())
                    // Waiting and never-attempted credentials are taken up again:
                    // a dependency may have rotated since (a manual step finished),
                    // Vault may answer again.
                    .filter(|o| !o.resumable());
                let outcome = match (ended, graph.failed_dependency[p]) {
                    (Some(done), _) => done,
                    (None, Some(dep)) => {
                        // Not attempted: its order exists because it relies on
                        // the dependency's new value.
                        let dep = &playbook.credentials[graph.order[dep]].id;
                        let outcome = Outcome::Skipped {
                            reason: format!("dependency `{dep}` did not rotate"),
                        };
                        self.record_final(run_id, &credential.id, &outcome).await?;
                        outcome
                    }
                    (None, None) => {
                        ready.push(&graph, instance_of[p], p);
                        continue;
                    }
                };
                let rotated = matches!(outcome, Outcome::Rotated { .. });
                outcomes[p] = Some(outcome);
                freed.extend(graph.finished(p, rotated).into_iter().rev());
            }
            // Start what the bounds allow.
            while first_error.is_none() && !self.stopping() && !ready.is_empty() {
                if !slots.try_take_new() {
                    break;
                }
                let held = Held::new(slots.clone());
                let Some(p) = ready.pop(|i| in_flight[i] < caps[i]) else {
                    break; // `held` gives the slot back.
                };
                let index = graph.order[p];
                let credential = &playbook.credentials[index];
                if !vault_gave_up && !self.wait_for_vault().await {
                    vault_gave_up = true;
                }
                if vault_gave_up || self.stopping() {
                    let why = if vault_gave_up {
                        "Vault did not answer, so it was not started"
                    } else {
                        "the run was interrupted before it started"
                    };
                    let outcome = Outcome::NotStarted {
                        reason: format!("{why}; `rekey resume` starts it"),
                    };
                    self.record_final(run_id, &credential.id, &outcome).await?;
                    outcomes[p] = Some(outcome);
                    freed.extend(graph.finished(p, false).into_iter().rev());
                    continue;
                }
                in_flight[instance_of[p]] += 1;
                running += 1;
                let engine = self.clone();
                let run = run_id_shared.clone();
                let last = rows.map(|rows| rows.get(&credential.id).cloned());
                tasks.push(
                    instance_of[p],
                    schedule::holding(held, async move {
                        let outcome = match last {
                            None => engine.rotate_one(&run, index).await,
                            Some(last) => engine.resume_one(&run, index, last.as_ref()).await,
                        };
                        (p, outcome)
                    }),
                );
            }
            if running == 0
                && (ready.is_empty() || first_error.is_some() || self.stopping())
                && freed.is_empty()
            {
                break;
            }
            tokio::select! {
                (p, outcome) = tasks.next() => {
                    running -= 1;
                    in_flight[instance_of[p]] -= 1;
                    match outcome {
                        Ok(outcome) => {
                            let rotated = matches!(outcome, Outcome::Rotated { .. });
                            outcomes[p] = Some(outcome);
                            freed.extend(graph.finished(p, rotated).into_iter().rev());
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                Some(index) = promoted_rx.recv() => {
                    if let Some(&p) = graph.position.get(&index) {
                        freed.extend(graph.promoted(p).into_iter().rev());
                    }
                }
                () = slots.freed() => {}
            }
        }
        *self.promoted.lock().map_err(poisoned)? = None;
        if let Some(e) = first_error {
            return Err(e);
        }
        // What Ctrl-C kept from starting: reported, and left for `resume`.
        let mut list = Vec::with_capacity(n);
        for (p, outcome) in outcomes.into_iter().enumerate() {
            let id = &playbook.credentials[graph.order[p]].id;
            let outcome = match outcome {
                Some(o) => o,
                None => {
                    let outcome = Outcome::NotStarted {
                        reason:
                            "the run was interrupted before it started; `rekey resume` starts it"
                                .into(),
                    };
                    self.record_final(run_id, id, &outcome).await?;
                    outcome
                }
            };
            list.push(CredentialResult {
                id: id.clone(),
                outcome,
            });
        }
        // Grace periods end: retire old keys, earliest first.
        let mut pending = std::mem::take(&mut *self.pending.lock().map_err(poisoned)?);
        pending.sort_by_key(|r| r.due);
        for r in &pending {
            if self.stopping() {
                break; // `rekey resume` retires the rest.
            }
            tokio::time::sleep_until(r.due).await;
            let id = self.playbook.credentials[r.index].id.clone();
            let outcome = rotate::retire(self, run_id, r).await?;
            self.record_final(run_id, &id, &outcome).await?;
            if let Some(slot) = graph.position.get(&r.index).and_then(|&p| list.get_mut(p)) {
                slot.outcome = outcome;
            }
        }
        Ok(RunSummary {
            run_id: run_id.to_owned(),
            results: list,
            interrupted: self.stopping(),
            instances: self.limit_stats(),
            leftovers: Vec::new(),
        })
    }

    /// One credential's rotation in a run; its final outcome recorded as soon as
    /// it ends, so a crash later in the run does not make resume look at it again.
    /// In its grace period a credential is not final yet: its old key still has
    /// to go.
    async fn rotate_one(&self, run_id: &str, index: usize) -> Result<Outcome, EngineError> {
        let credential = &self.playbook.credentials[index];
        self.progress.started(&credential.provider, &credential.id);
        let outcome = rotate::rotate(self, run_id, index).await?;
        self.progress
            .finished(&credential.provider, &credential.id, &outcome);
        self.record_unless_in_grace(run_id, index, &outcome, None)
            .await?;
        Ok(outcome)
    }

    /// One credential of a resumed run: reconciled with the world, then finished.
    async fn resume_one(
        &self,
        run_id: &str,
        index: usize,
        last: Option<&crate::journal::CredentialRow>,
    ) -> Result<Outcome, EngineError> {
        let outcome = rotate::resume(self, run_id, index, last).await?;
        self.record_unless_in_grace(run_id, index, &outcome, last)
            .await?;
        Ok(outcome)
    }

    /// One credential of shared run `run_id` that a runner claimed (`rekey
    /// runner`): skipped when `failed_dependency` names a dependency that did not
    /// rotate; kept when `last` is already a final outcome (its runner recorded it
    /// and died before marking the task done); reconciled and finished as
    /// `resume` does when a runner's claim on it expired (`taken_over`) or it was
    /// started before (`last`); otherwise rotated. A grace period is waited out
    /// here (the claim stays held, renewed by the runner's heartbeat), so the
    /// outcome returned is final and recorded.
    pub async fn work_claimed(
        &self,
        run_id: &str,
        index: usize,
        last: Option<&crate::journal::CredentialRow>,
        taken_over: bool,
        failed_dependency: Option<&str>,
    ) -> Result<Outcome, EngineError> {
        let id = self.playbook.credentials[index].id.clone();
        if let Some(dep) = failed_dependency {
            let outcome = Outcome::Skipped {
                reason: format!("dependency `{dep}` did not rotate"),
            };
            self.record_final(run_id, &id, &outcome).await?;
            return Ok(outcome);
        }
        if let Some(done) = last
            .and_then(|r| serde_json::from_value::<Outcome>(r.detail.clone()).ok())
            .filter(|o| !o.resumable())
        {
            return Ok(done);
        }
        let outcome = if taken_over || last.is_some() {
            self.progress
                .started(&self.playbook.credentials[index].provider, &id);
            let outcome = self.resume_one(run_id, index, last).await?;
            self.progress
                .finished(&self.playbook.credentials[index].provider, &id, &outcome);
            outcome
        } else {
            self.rotate_one(run_id, index).await?
        };
        let waiting = {
            let mut pending = self.pending.lock().map_err(poisoned)?;
            let at = pending.iter().position(|r| r.index == index);
            at.map(|at| pending.remove(at))
        };
        let Some(r) = waiting else {
            return Ok(outcome);
        };
        tokio::time::sleep_until(r.due).await;
        let outcome = rotate::retire(self, run_id, &r).await?;
        self.record_final(run_id, &id, &outcome).await?;
        Ok(outcome)
    }

    /// `last`: the credential's state before a resume (see `record_resumed`).
    async fn record_unless_in_grace(
        &self,
        run_id: &str,
        index: usize,
        outcome: &Outcome,
        last: Option<&crate::journal::CredentialRow>,
    ) -> Result<(), EngineError> {
        let waiting = match self.pending.lock() {
            Ok(p) => p.iter().any(|r| r.index == index),
            Err(_) => false,
        };
        if !waiting {
            let id = &self.playbook.credentials[index].id;
            self.record_resumed(run_id, id, outcome, last).await?;
        }
        Ok(())
    }

    /// A credential's new value is promoted (see `schedule`).
    pub(crate) fn note_promoted(&self, index: usize) {
        if let Ok(tx) = self.promoted.lock()
            && let Some(tx) = tx.as_ref()
        {
            let _ = tx.send(index);
        }
    }
    /// Rolls back run `run_id` (routine mode only; the caller refuses breach mode):
    /// rotated credentials get their previous value back, dependents first.
    pub async fn roll_back(
        &self,
        run_id: &str,
        waves: &[Vec<usize>],
    ) -> Result<RunSummary, EngineError> {
        let rows = self.journal(|j| j.states(run_id))?;
        let rollback_run = {
            let journal = self.journal.lock().map_err(poisoned)?;
            let original = journal
                .run(run_id)?
                .ok_or_else(|| EngineError::Setup(format!("no run {run_id}")))?;
            journal.create_run(&NewRun {
                selection: serde_json::json!({ "rollback_of": run_id }),
                ..NewRun {
                    playbook_name: original.playbook_name,
                    playbook_path: original.playbook_path,
                    playbook_sha256: original.playbook_sha256,
                    mode: original.mode,
                    selection: serde_json::Value::Null,
                    actor: original.actor,
                    expanded_sha256: original.expanded_sha256,
                }
            })?
        };
        let mut results = Vec::new();
        for wave in waves.iter().rev() {
            for &index in wave {
                let credential = &self.playbook.credentials[index];
                let Some(row) = rows.iter().find(|r| r.credential == credential.id) else {
                    continue;
                };
                let Ok(Outcome::Rotated { version, .. }) =
                    serde_json::from_value::<Outcome>(row.detail.clone())
                else {
                    continue;
                };
                // The old key id was recorded by the step that retired it.
                let old_key_id = self
                    .journal
                    .lock()
                    .map_err(poisoned)?
                    .intents(run_id, &credential.id)?
                    .iter()
                    .find(|i| i.step.parse::<Step>().is_ok_and(Step::retires))
                    .and_then(|i| i.detail.get("key_id")?.as_str().map(str::to_owned));
                let checkpoint = Checkpoint {
                    old_key_id,
                    ..Checkpoint::default()
                };
                let outcome =
                    rotate::roll_back(self, &rollback_run, index, version, &checkpoint).await?;
                self.record_final(&rollback_run, &credential.id, &outcome)
                    .await?;
                results.push(CredentialResult {
                    id: credential.id.clone(),
                    outcome,
                });
            }
        }
        let summary = RunSummary {
            run_id: rollback_run.clone(),
            results,
            interrupted: false,
            instances: self.limit_stats(),
            leftovers: Vec::new(),
        };
        let status = if summary.count(CredentialState::Quarantined) > 0 {
            RunStatus::Quarantined
        } else if summary.count(CredentialState::Skipped) > 0 {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        };
        self.journal_durable(|j| j.finish_run(&rollback_run, status))
            .await?;
        Ok(summary)
    }

    /// A credential's final outcome, on disk before the run goes on: a crash later in
    /// the run must not make `resume` take a finished credential up again.
    async fn record_final(
        &self,
        run_id: &str,
        id: &str,
        outcome: &Outcome,
    ) -> Result<(), EngineError> {
        let detail = serde_json::to_value(outcome).unwrap_or_default();
        self.journal_durable(|j| j.set_state(run_id, id, outcome.state(), &detail))
            .await?;
        Ok(())
    }

    /// Records a resumed credential's outcome. One that `resume` takes up again
    /// (a quarantine while Vault or the provider did not answer) keeps the
    /// checkpoint the credential had: the old keys to retire, the check-and-set
    /// version, the end of the grace period. The next resume reconciles from it;
    /// without it, it promoted the staged key and retired nothing (found by
    /// `scripts/chaos`; `tests/it/chaos.rs`).
    async fn record_resumed(
        &self,
        run_id: &str,
        id: &str,
        outcome: &Outcome,
        last: Option<&crate::journal::CredentialRow>,
    ) -> Result<(), EngineError> {
        let mut detail = serde_json::to_value(outcome).unwrap_or_default();
        if outcome.resumable()
            && let Some(fields) = detail.as_object_mut()
        {
            // The newest checkpoint first: this resume may have started the
            // rotation again (a new value staged, a new check-and-set version)
            // before it was interrupted; what it did not record comes from the
            // state before it (found by `scripts/chaos`: the older version made
            // the next resume refuse its own write).
            let newest = self
                .journal(|j| j.states(run_id))?
                .into_iter()
                .find(|row| row.credential == id);
            for row in newest.iter().chain(last) {
                if let serde_json::Value::Object(checkpoint) =
                    Checkpoint::from_detail(&row.detail).to_detail()
                {
                    for (name, value) in checkpoint {
                        fields.entry(name).or_insert(value);
                    }
                }
            }
        }
        self.journal_durable(|j| j.set_state(run_id, id, outcome.state(), &detail))
            .await?;
        Ok(())
    }

    /// Runs `f` on the journal and returns once it is committed, without waiting
    /// for the disk: for records whose loss in a crash changes nothing `resume`
    /// decides (outcomes, intermediate states, leases, reads). They reach the disk
    /// with the next durable record, which every step that changes the world waits
    /// for ([`Engine::journal_durable`]); the journal and the audit trail are
    /// append-only, so a crash can only lose a suffix written after it.
    pub(crate) fn journal<T>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, JournalError>,
    ) -> Result<T, EngineError> {
        self.commit(f).map(|(value, _)| value)
    }

    /// Runs `f` under the journal's lock; its group-commit ticket with the value.
    fn commit<T>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, JournalError>,
    ) -> Result<(T, u64), EngineError> {
        let journal = self.journal.lock().map_err(poisoned)?;
        let value = f(&journal)?;
        Ok((value, self.durable.committed()))
    }

    /// Runs `f` on the journal and returns once its record, and every record before
    /// it, is on disk (a sync of the WAL and the audit trail that started after its
    /// commit, shared with the records other credentials committed meanwhile):
    /// intents of steps that change the world, final outcomes, the start and end of
    /// a run. Waiting for the disk yields to the other credentials in flight.
    pub(crate) async fn journal_durable<T>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, JournalError>,
    ) -> Result<T, EngineError> {
        let (value, ticket) = self.commit(f)?;
        // On disk before the caller goes on (to the step an intent announces).
        self.durable
            .wait(ticket)
            .await
            .map_err(EngineError::Setup)?;
        Ok(value)
    }

    pub(crate) fn breach(&self) -> bool {
        self.playbook.incident.mode == Mode::Breach
    }
}

fn poisoned<T>(_: T) -> EngineError {
    EngineError::Setup("the journal lock was poisoned by a panic".into())
}

/// What the scheduler does with each credential.
enum Work {
    /// A run: rotate each one.
    Rotate,
    /// A resumed run: the journal's last state of each credential.
    Resume(rustc_hash::FxHashMap<String, crate::journal::CredentialRow>),
}
