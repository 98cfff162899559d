//! The rotation protocol in process, without a server: the engine built with
//! `Engine::builder` over an in-memory KV v2 store (`MemoryStore`) and a scripted
//! provider that keeps its keys or password in memory. A table of cases makes every
//! step fail, lose its answer, be retried, or "crash" (the call never answers, the
//! run is dropped as a dead process would be, and a new engine resumes from the
//! journal), for dual, single and manual credentials in breach and routine mode.
//! After each case the world is checked directly (the store's entries, the
//! provider's keys), never through the engine's own report.

use rekey::engine::{Engine, Outcome, RunSummary, Tuning};
use rekey::journal::{Journal, NewRun};
use rekey::provider::manual::{Answer, Operator, Request};
use rekey::provider::{Issued, KeyInfo, Provider, ProviderError, Target};
use rekey::secret::Secret;
use rekey::store::memory::{Fault, StoreOp};
use rekey::store::{MemoryStore, SecretStore};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A provider operation, for injecting faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    List,
    Create,
    Verify,
    Deactivate,
    Revoke,
    Change,
}

/// What an injected provider fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A fatal error, every time.
    Fatal,
    /// A transient error, once.
    TransientOnce,
    /// Applied, then a transient error as if the answer was lost.
    LoseAnswer,
    /// Never answers, changes nothing (the run is dropped there).
    Crash,
    /// Applied, then never answers.
    CrashAfter,
    /// Applied, then a fatal error (Redis: the password added, `ACL SAVE` refused).
    AppliedThenFatal,
    /// No fault: the call goes through (a slot before the faults that follow).
    Pass,
    /// A transient error every time (the provider is down) until `heal`.
    Unreachable,
}

#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    pub secret: String,
    pub active: bool,
    pub tag: Option<String>,
}

#[derive(Default)]
pub struct World {
    pub keys: Vec<Key>,
    pub password: Option<String>,
    next: u32,
    faults: Vec<(Op, Effect, u32)>,
    /// The provider has no way to list an account's keys.
    pub cannot_list: bool,
    /// Every key id a `revoke` call reached (applied), in order.
    pub revokes: Vec<String>,
}

/// A key service (dual) or a password (single) in memory, with faults.
pub struct Scripted {
    pub world: Arc<Mutex<World>>,
    hung: Arc<Notify>,
}

impl Scripted {
    pub fn new() -> (Arc<Scripted>, Arc<Mutex<World>>, Arc<Notify>) {
        let world = Arc::new(Mutex::new(World::default()));
        let hung = Arc::new(Notify::new());
        (
            Arc::new(Scripted {
                world: world.clone(),
                hung: hung.clone(),
            }),
            world,
            hung,
        )
    }

    /// The effect of the next call of `op`, if a fault is armed.
    fn fault(&self, op: Op) -> Option<Effect> {
        let mut w = self.world.lock().unwrap();
        let hit = w.faults.iter_mut().find(|(o, _, n)| *o == op && *n > 0)?;
        hit.2 -= 1;
        Some(hit.1)
    }

    /// Runs `apply` under the fault of `op`.
    async fn call<T>(
        &self,
        op: Op,
        apply: impl FnOnce(&mut World) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let effect = self.fault(op);
        match effect {
            Some(Effect::Fatal) => return Err(ProviderError::Fatal(format!("{op:?} refused"))),
            Some(Effect::TransientOnce | Effect::Unreachable) => {
                return Err(ProviderError::Transient(format!("{op:?} timed out")));
            }
            Some(Effect::Crash) => {
                self.hung.notify_one();
                std::future::pending::<()>().await;
            }
            _ => {}
        }
        let result = apply(&mut self.world.lock().unwrap());
        match effect {
            Some(Effect::LoseAnswer) => Err(ProviderError::Transient(format!(
                "{op:?}: connection reset before the answer"
            ))),
            Some(Effect::AppliedThenFatal) => Err(ProviderError::Fatal(format!(
                "{op:?}: applied, then refused to persist"
            ))),
            Some(Effect::CrashAfter) => {
                self.hung.notify_one();
                std::future::pending::<()>().await;
                unreachable!()
            }
            _ => result,
        }
    }
}

#[async_trait::async_trait]
impl Provider for Scripted {
    async fn preflight(&self, _: Target<'_>) -> Result<(), ProviderError> {
        Ok(())
    }
    fn lists_keys(&self) -> bool {
        !self.world.lock().unwrap().cannot_list
    }
    async fn list(&self, _: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        self.call(Op::List, |w| {
            Ok(w.keys
                .iter()
                .map(|k| KeyInfo {
                    id: k.id.clone(),
                    active: k.active,
                    created_at: None,
                    tag: k.tag.clone(),
                })
                .collect())
        })
        .await
    }
    async fn create(&self, _: Target<'_>, tag: &str) -> Result<Issued, ProviderError> {
        self.call(Op::Create, |w| {
            if w.keys.len() >= 2 {
                return Err(ProviderError::Fatal("quota: two keys at most".into()));
            }
            w.next += 1;
            let key = Key {
                id: format!("k{}", w.next),
                secret: format!("secret-{}-{}", w.next, rand::random::<u32>()),
                active: true,
                tag: Some(tag.to_owned()),
            };
            w.keys.push(key.clone());
            Ok(Issued::new(key.id, Secret::new(key.secret)))
        })
        .await
    }
    async fn change(&self, _: Target<'_>, new: &Secret) -> Result<(), ProviderError> {
        let new = new.expose().to_owned();
        self.call(Op::Change, move |w| {
            w.password = Some(new);
            Ok(())
        })
        .await
    }
    async fn verify(
        &self,
        _: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let secret = secret.expose().to_owned();
        let key_id = key_id.map(str::to_owned);
        self.call(Op::Verify, move |w| {
            Ok(match key_id {
                Some(id) => w
                    .keys
                    .iter()
                    .any(|k| k.id == id && k.active && k.secret == secret),
                None => {
                    w.password.as_deref() == Some(secret.as_str())
                        || w.keys.iter().any(|k| k.active && k.secret == secret)
                }
            })
        })
        .await
    }
    async fn deactivate(&self, _: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let key_id = key_id.to_owned();
        self.call(Op::Deactivate, move |w| {
            for k in w.keys.iter_mut().filter(|k| k.id == key_id) {
                k.active = false;
            }
            Ok(())
        })
        .await
    }
    async fn revoke(&self, _: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let key_id = key_id.to_owned();
        // Deleting a key that is already gone is done, as real providers answer 404.
        self.call(Op::Revoke, move |w| {
            w.keys.retain(|k| k.id != key_id);
            w.revokes.push(key_id);
            Ok(())
        })
        .await
    }
}

/// Answers every manual step with one value.
struct Gives(String);

impl Operator for Gives {
    fn ask(&self, _: &Request) -> Answer {
        Answer::Value(Secret::new(self.0.clone()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dual,
    Single,
    Manual,
}

/// One credential, its provider, store and journal: everything a case needs.
pub struct Case {
    pub kind: Kind,
    pub breach: bool,
    dir: tempfile::TempDir,
    pub store: Arc<MemoryStore>,
    pub provider: Arc<Scripted>,
    pub world: Arc<Mutex<World>>,
    pub provider_hung: Arc<Notify>,
    playbook: Arc<rekey::playbook::Playbook>,
    /// Clearing staging was refused for good: the rotation stands with a warning.
    pub staging_may_stay: bool,
}

pub const PATH: &str = "app/cred";
const OLD: &str = "old-secret-value";
const MANUAL_VALUE: &str = "manual-new-value";

impl Case {
    /// A credential holding its first value: Vault names key `k0` (dual) or holds
    /// the current password (single, manual).
    pub fn new(kind: Kind, breach: bool) -> Case {
        Case::with_extra(kind, breach, "")
    }

    /// As `new`, with `extra` YAML lines under the credential.
    pub fn with_extra(kind: Kind, breach: bool, extra: &str) -> Case {
        let (provider, world, provider_hung) = Scripted::new();
        let store = Arc::new(MemoryStore::new());
        let (type_name, credential) = match kind {
            Kind::Dual => ("sandbox", "provider: p\n    account: a"),
            Kind::Single => ("sandbox_password", "provider: p\n    account: a"),
            Kind::Manual => (
                "sandbox",
                "provider: manual\n    instructions: Rotate it in the console.",
            ),
        };
        let mode = if breach { "breach" } else { "routine" };
        let text = format!(
            "version: 1\nname: protocol\nincident: {{ mode: {mode} }}\nvault: {{ address: \"http://127.0.0.1:1\" }}\nproviders:\n  p: {{ type: {type_name}, settings: {{ state_file: memory }} }}\ncredentials:\n  - id: cred\n    {credential}\n    vault_path: {PATH}\n{extra}"
        );
        let catalog = rekey::catalog::Catalog::load(None).unwrap();
        let playbook = rekey::playbook::load_str("protocol.yaml", &text, &|_| None, &catalog)
            .unwrap_or_else(|r| panic!("test playbook: {r:?}"))
            .playbook;
        match kind {
            Kind::Dual => {
                world.lock().unwrap().keys.push(Key {
                    id: "k0".into(),
                    secret: OLD.into(),
                    active: true,
                    tag: None,
                });
                store.seed(PATH, OLD, &[("key_id", "k0"), ("account", "a")]);
            }
            Kind::Single | Kind::Manual => {
                world.lock().unwrap().password = Some(OLD.into());
                store.seed(PATH, OLD, &[("account", "a")]);
            }
        }
        Case {
            kind,
            breach,
            dir: tempfile::tempdir().unwrap(),
            store,
            provider,
            world,
            provider_hung,
            playbook: Arc::new(playbook),
            staging_may_stay: false,
        }
    }

    /// Replaces the provider's keys: `(id, secret, active)`.
    pub fn keys(&self, keys: &[(&str, &str, bool)]) {
        self.world.lock().unwrap().keys = keys
            .iter()
            .map(|(id, secret, active)| Key {
                id: (*id).into(),
                secret: (*secret).into(),
                active: *active,
                tag: None,
            })
            .collect();
    }

    /// Empties the consumers' path (a credential Vault never held).
    pub async fn forget_vault(&self) {
        self.store.delete_all(PATH).await.unwrap();
    }

    /// Writes the consumers' path as an operator would by hand: the value, and a
    /// `key_id` only when given.
    pub async fn vault_by_hand(&self, value: &str, key_id: Option<&str>) {
        self.forget_vault().await;
        let mut fields = vec![("account", "a")];
        if let Some(k) = key_id {
            fields.push(("key_id", k));
        }
        self.store.seed(PATH, value, &fields);
    }

    /// The ids of the keys the provider holds.
    pub fn key_ids(&self) -> Vec<String> {
        self.world
            .lock()
            .unwrap()
            .keys
            .iter()
            .map(|k| k.id.clone())
            .collect()
    }

    /// `op` succeeds `times` times, then fails as `effect` says.
    pub fn fail_after(&self, op: Op, times: u32, effect: Effect) {
        self.world
            .lock()
            .unwrap()
            .faults
            .push((op, Effect::Pass, times));
        self.fail(op, effect);
    }

    pub fn fail(&self, op: Op, effect: Effect) {
        let times = if matches!(effect, Effect::Fatal | Effect::Unreachable) {
            u32::MAX
        } else {
            1
        };
        self.world.lock().unwrap().faults.push((op, effect, times));
    }

    /// The provider answers again: every armed fault is dropped.
    pub fn heal(&self) {
        self.world.lock().unwrap().faults.clear();
    }

    fn journal_path(&self) -> std::path::PathBuf {
        self.dir.path().join("journal.db")
    }

    pub fn engine(&self) -> Engine {
        self.engine_with_journal(&self.journal_path())
    }

    /// An engine on another journal: another rekey process.
    pub fn engine_with_journal(&self, path: &std::path::Path) -> Engine {
        self.build_engine(path, |_| {})
    }

    /// An engine with `tune` applied to the test tuning.
    pub fn engine_tuned(&self, tune: impl FnOnce(&mut Tuning)) -> Engine {
        self.build_engine(&self.journal_path(), tune)
    }

    fn build_engine(&self, path: &std::path::Path, tune: impl FnOnce(&mut Tuning)) -> Engine {
        let journal = Journal::open(path).unwrap();
        let mut tuning = Tuning {
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            verify_attempts: 2,
            ..Tuning::default()
        };
        tune(&mut tuning);
        let mut builder = Engine::builder(
            self.playbook.clone(),
            self.store.clone(),
            journal,
            b"protocol-test-key".to_vec(),
        )
        .tuning(tuning)
        .provider("p", self.provider.clone());
        if self.kind == Kind::Manual {
            builder = builder.operator(Arc::new(Gives(MANUAL_VALUE.into())));
        }
        builder.build().unwrap()
    }

    pub fn new_run(&self) -> NewRun {
        NewRun {
            playbook_name: "protocol".into(),
            playbook_path: "protocol.yaml".into(),
            playbook_sha256: "0".repeat(64),
            mode: if self.breach { "breach" } else { "routine" }.into(),
            selection: serde_json::Value::Null,
            actor: "test".into(),
            expanded_sha256: None,
        }
    }

    /// Runs the credential; a call stuck on a crash fault ends the run there (the
    /// engine is dropped mid-step, as a killed process), then a new engine resumes
    /// the run from the journal. Returns the last summary and whether it crashed.
    pub async fn run(&self) -> (RunSummary, bool) {
        let waves = vec![vec![0]];
        let engine = self.engine();
        let new_run = self.new_run();
        let outcome = tokio::select! {
            s = engine.run(&new_run, &waves) => Some(s.unwrap()),
            _ = self.provider_hung.notified() => None,
            _ = self.store.hung() => None,
        };
        if let Some(summary) = outcome {
            return (summary, false);
        }
        drop(engine);
        (self.resume_latest().await, true)
    }

    /// Runs the credential once, with no crash to resume from (the faults, if
    /// any, only fail steps).
    pub async fn run_to_end(&self) -> RunSummary {
        self.engine()
            .run(&self.new_run(), &[vec![0]])
            .await
            .unwrap()
    }

    /// A new engine (a new process) resumes the latest unfinished run.
    pub async fn resume_latest(&self) -> RunSummary {
        let engine = self.engine();
        let run_id = engine
            .with_journal(|j| j.latest_unfinished())
            .unwrap()
            .expect("the run is unfinished, so resume finds it")
            .id;
        engine.resume(&run_id, &[vec![0]]).await.unwrap()
    }

    /// A new engine resumes the latest unfinished run (the faults gone): the
    /// credential must end rotated with the world clean (`check_world`).
    pub async fn resume_rotates(&self, label: &str) {
        let summary = self.resume_latest().await;
        assert!(
            matches!(outcome(&summary), Outcome::Rotated { .. }),
            "{label}: {:?}",
            outcome(&summary)
        );
        assert_eq!(
            self.check_world(outcome(&summary)).await,
            Vec::<String>::new(),
            "{label}"
        );
    }

    /// The value at the consumers' path.
    pub async fn vault_value(&self) -> (Option<String>, Option<String>) {
        let e = self.store.read(PATH).await.unwrap();
        (
            e.value.map(|v| v.expose().to_owned()),
            e.fields.get("key_id").cloned(),
        )
    }

    /// Whether `secret` logs in at the provider (for a manual step, the console
    /// rekey cannot see: the value the operator gave is the one that works).
    pub fn works(&self, secret: &str) -> bool {
        let w = self.world.lock().unwrap();
        match self.kind {
            Kind::Dual => w.keys.iter().any(|k| k.active && k.secret == secret),
            Kind::Single => w.password.as_deref() == Some(secret),
            Kind::Manual => secret == MANUAL_VALUE,
        }
    }

    /// The invariants every case must hold whatever happened: Vault's value works
    /// at the provider (nothing lost), no orphan key exists beside the ones a
    /// human was told about, staging is empty unless the outcome points at it.
    /// Returns what is wrong, if anything.
    pub async fn check_world(&self, outcome: &Outcome) -> Vec<String> {
        let mut wrong = Vec::new();
        let (value, key_id) = self.vault_value().await;
        let Some(value) = value else {
            return vec!["the consumers' path holds no value".into()];
        };
        let (keys, password) = {
            let w = self.world.lock().unwrap();
            (w.keys.clone(), w.password.clone())
        };
        let staging_left = self.store.paths() != [PATH];
        match outcome {
            Outcome::Rotated { .. } => {
                if value == OLD {
                    wrong.push("rotated but Vault holds the old value".into());
                }
                if !self.works(&value) {
                    wrong.push("rotated but Vault's value does not work".into());
                }
                if self.works(OLD) {
                    wrong.push("rotated but the old value still works".into());
                }
                if self.kind == Kind::Dual
                    && (keys.len() != 1 || key_id.as_deref() != Some(keys[0].id.as_str()))
                {
                    wrong.push(format!(
                        "orphan or old keys remain: {keys:?}, Vault names {key_id:?}"
                    ));
                }
                if staging_left && !self.staging_may_stay {
                    wrong.push(format!("staging not cleared: {:?}", self.store.paths()));
                }
            }
            Outcome::RolledBack { .. } => {
                if value != OLD {
                    wrong.push("rolled back but Vault changed".into());
                }
                if self.kind != Kind::Manual && !self.works(OLD) {
                    wrong.push("rolled back but the old value is dead".into());
                }
                if self.kind == Kind::Dual && keys.len() != 1 {
                    wrong.push(format!("the new key was not revoked: {keys:?}"));
                }
                if staging_left {
                    wrong.push(format!("staging not cleared: {:?}", self.store.paths()));
                }
            }
            Outcome::Quarantined { action, reason, .. } => {
                // A human must act: either Vault's value works, or the action names
                // where the working value is.
                if !self.works(&value) && !action.contains("staging") {
                    wrong.push(format!(
                        "Vault's value is dead and the action does not say where the new one is (password {password:?})"
                    ));
                }
                for k in keys.iter().filter(|k| Some(&k.id) != key_id.as_ref()) {
                    if !action.contains(&k.id) && !reason.contains(&k.id) {
                        wrong.push(format!(
                            "key {} is left and the outcome does not name it",
                            k.id
                        ));
                    }
                }
            }
            other => wrong.push(format!("unexpected outcome {other:?}")),
        }
        wrong
    }
}

fn outcome(summary: &RunSummary) -> &Outcome {
    &summary.results[0].outcome
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Rotated,
    RolledBack,
    Quarantined,
}

/// What a fatal fault at provider `op` must end in.
fn fatal_provider(kind: Kind, breach: bool, op: Op) -> Expect {
    match (kind, op) {
        // Deactivation is best effort; revoke is what retires.
        (Kind::Dual, Op::Deactivate) => Expect::Rotated,
        (Kind::Dual, Op::Revoke) => Expect::Quarantined,
        (Kind::Single, Op::Verify) if breach => Expect::Quarantined,
        _ => Expect::RolledBack,
    }
}

/// What a fatal fault at store `op` on the path under `prefix` must end in.
fn fatal_store(kind: Kind, breach: bool, op: StoreOp, staging: bool) -> Expect {
    match (kind, op, staging) {
        // Metadata and clearing staging are tidying: the rotation stands.
        (_, StoreOp::SetMetadata, _) | (_, StoreOp::DeleteAll, _) => Expect::Rotated,
        // Single kinds change the password before promoting: a failed promote
        // leaves the new value in staging for a human.
        (Kind::Single, StoreOp::Write, false) => Expect::Quarantined,
        (Kind::Manual, StoreOp::Write, false) => Expect::Quarantined,
        // A manual value that cannot be staged waits for the operator again.
        (Kind::Manual, _, _) => Expect::RolledBack,
        _ => {
            let _ = breach;
            Expect::RolledBack
        }
    }
}

fn provider_ops(kind: Kind) -> &'static [Op] {
    match kind {
        Kind::Dual => &[Op::List, Op::Create, Op::Verify, Op::Deactivate, Op::Revoke],
        Kind::Single => &[Op::Change, Op::Verify],
        Kind::Manual => &[],
    }
}

const STORE_FAULTS: [(StoreOp, bool); 5] = [
    (StoreOp::Read, false),
    (StoreOp::Write, true),
    (StoreOp::Write, false),
    (StoreOp::SetMetadata, false),
    (StoreOp::DeleteAll, true),
];

/// Runs `case` and returns what went wrong: an outcome other than `expected`, or
/// a world that breaks the invariants.
async fn check(case: &Case, label: &str, expected: Expect) -> Option<String> {
    let (summary, crashed) = case.run().await;
    let o = outcome(&summary).clone();
    let mut wrong = Vec::new();
    // A manual step whose value could not be stored waits for the operator.
    let got = match &o {
        Outcome::AwaitingOperator { .. } if expected == Expect::RolledBack => Some(expected),
        Outcome::Rotated { .. } => Some(Expect::Rotated),
        Outcome::RolledBack { .. } => Some(Expect::RolledBack),
        Outcome::Quarantined { .. } => Some(Expect::Quarantined),
        _ => None,
    };
    if got != Some(expected) {
        wrong.push(format!("expected {expected:?}"));
    }
    case.store.clear_faults();
    if !matches!(o, Outcome::AwaitingOperator { .. }) {
        wrong.extend(case.check_world(&o).await);
    }
    (!wrong.is_empty()).then(|| {
        format!(
            "{label} (crashed: {crashed}): {} -- {o:?}",
            wrong.join("; ")
        )
    })
}

/// Fails with every case that went wrong, not only the first.
fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_step_failing_retried_losing_its_answer_or_crashing() {
    let mut failures = Vec::new();
    for kind in [Kind::Dual, Kind::Single] {
        for breach in [false, true] {
            for &op in provider_ops(kind) {
                for effect in [
                    Effect::Fatal,
                    Effect::TransientOnce,
                    Effect::LoseAnswer,
                    Effect::Crash,
                    Effect::CrashAfter,
                ] {
                    let case = Case::new(kind, breach);
                    case.fail(op, effect);
                    let expected = match effect {
                        Effect::Fatal => fatal_provider(kind, breach, op),
                        _ => Expect::Rotated,
                    };
                    let label = format!("{kind:?} breach={breach} {op:?} {effect:?}");
                    failures.extend(check(&case, &label, expected).await);
                }
            }
        }
    }
    report(failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vault_step_failing_retried_losing_its_answer_or_crashing() {
    let mut failures = Vec::new();
    for kind in [Kind::Dual, Kind::Single, Kind::Manual] {
        for breach in [false, true] {
            for (op, staging) in STORE_FAULTS {
                for fault in [
                    Fault::Unauthorized,
                    Fault::Unavailable,
                    Fault::LoseAnswer,
                    Fault::Hang,
                    Fault::HangAfter,
                ] {
                    if op == StoreOp::Read && matches!(fault, Fault::LoseAnswer | Fault::HangAfter)
                    {
                        continue; // a read changes nothing to lose
                    }
                    let mut case = Case::new(kind, breach);
                    case.staging_may_stay =
                        op == StoreOp::DeleteAll && fault == Fault::Unauthorized;
                    let prefix = if staging { "rekey/staging" } else { PATH };
                    let times = match fault {
                        Fault::Unauthorized => u32::MAX,
                        _ => 1,
                    };
                    case.store.inject(op, Some(prefix), fault, times);
                    let expected = match fault {
                        Fault::Unauthorized => fatal_store(kind, breach, op, staging),
                        _ => Expect::Rotated,
                    };
                    let label =
                        format!("{kind:?} breach={breach} {op:?} staging={staging} {fault:?}");
                    failures.extend(check(&case, &label, expected).await);
                }
            }
        }
    }
    report(failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_without_faults_rotates_every_kind() {
    let mut failures = Vec::new();
    for kind in [Kind::Dual, Kind::Single, Kind::Manual] {
        for breach in [false, true] {
            let case = Case::new(kind, breach);
            failures
                .extend(check(&case, &format!("{kind:?} breach={breach}"), Expect::Rotated).await);
        }
    }
    report(failures);
}

/// The first day rekey is used is usually a breach day: Vault's entry was written
/// by hand (no `key_id`), or the path is new, and the account holds the key the
/// attacker copied plus a stray. Breach mode must leave only the new key alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breach_mode_retires_every_key_that_existed_before_the_run() {
    let mut failures = Vec::new();
    // (label, Vault's value and key_id, the account's keys, extra YAML)
    type AdoptionCase<'a> = (
        &'a str,
        Option<(&'a str, Option<&'a str>)>,
        &'a [(&'a str, &'a str, bool)],
        &'a str,
    );
    let cases: [AdoptionCase; 6] = [
        (
            "named",
            Some((OLD, Some("k0"))),
            &[("k0", OLD, true), ("stray", "s", true)],
            "",
        ),
        (
            "by hand",
            Some((OLD, None)),
            &[("k0", OLD, true), ("stray", "s", true)],
            "",
        ),
        (
            "by hand, value matches nothing",
            Some(("stale", None)),
            &[("k0", OLD, true), ("stray", "s", false)],
            "",
        ),
        ("fresh path", None, &[("k0", OLD, true)], ""),
        (
            "verify off",
            Some((OLD, None)),
            &[("k0", OLD, true), ("stray", "s", true)],
            "    verify: false\n",
        ),
        (
            "two active keys, quota full, one deleted first",
            Some((OLD, Some("k0"))),
            &[("k0", OLD, true), ("attacker", "a", true)],
            "",
        ),
    ];
    for (label, vault, keys, extra) in cases {
        let case = Case::with_extra(Kind::Dual, true, extra);
        case.keys(keys);
        match vault {
            Some((value, key_id)) => case.vault_by_hand(value, key_id).await,
            None => case.forget_vault().await,
        }
        let (summary, _) = case.run().await;
        let o = outcome(&summary).clone();
        let left = case.key_ids();
        let Outcome::Rotated { key_id, .. } = &o else {
            failures.push(format!("{label}: not rotated: {o:?}"));
            continue;
        };
        if left.len() != 1 || Some(&left[0]) != key_id.as_ref() {
            failures.push(format!("{label}: keys left {left:?}, promoted {key_id:?}"));
        }
    }
    // `keep` exempts a key; everything else goes.
    let case = Case::with_extra(Kind::Dual, true, "    keep: [ci-key]\n");
    case.keys(&[("ci-key", "c", true)]);
    case.forget_vault().await;
    let (summary, _) = case.run().await;
    let left = case.key_ids();
    if !matches!(outcome(&summary), Outcome::Rotated { .. })
        || left.len() != 2
        || !left.contains(&"ci-key".to_owned())
    {
        failures.push(format!("keep: {:?}, keys left {left:?}", outcome(&summary)));
    }
    // A retirement that fails names the key and is never "rotated".
    let case = Case::new(Kind::Dual, true);
    case.fail(Op::Revoke, Effect::Fatal);
    let (summary, _) = case.run().await;
    match outcome(&summary) {
        Outcome::Quarantined { action, .. } if action.contains("k0") => {}
        other => failures.push(format!("failed retirement: {other:?}")),
    }
    report(failures);
}

/// Routine mode retires the key Vault names; one it cannot identify is a
/// quarantine naming the keys left, never a silent "rotated".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routine_mode_quarantines_an_old_key_it_cannot_identify() {
    let mut failures = Vec::new();
    // Identified by its value: retired.
    let case = Case::new(Kind::Dual, false);
    case.vault_by_hand(OLD, None).await;
    let (summary, _) = case.run().await;
    if !matches!(outcome(&summary), Outcome::Rotated { .. }) || case.key_ids().len() != 1 {
        failures.push(format!(
            "identified: {:?} {:?}",
            outcome(&summary),
            case.key_ids()
        ));
    }
    // Not identifiable: a stale value, a fresh path, verify off.
    for (label, vault, extra) in [
        ("stale value", Some("stale"), ""),
        ("fresh path", None, ""),
        ("verify off", Some(OLD), "    verify: false\n"),
    ] {
        let case = Case::with_extra(Kind::Dual, false, extra);
        match vault {
            Some(v) => case.vault_by_hand(v, None).await,
            None => case.forget_vault().await,
        }
        let (summary, _) = case.run().await;
        match outcome(&summary) {
            Outcome::Quarantined { reason, action, .. }
                if reason.contains("k0") && action.contains("k0") =>
            {
                if !case.works(&case.vault_value().await.0.unwrap_or_default()) {
                    failures.push(format!("{label}: Vault's new value does not work"));
                }
            }
            other => failures.push(format!("{label}: {other:?}")),
        }
    }
    report(failures);
}

/// A provider that cannot list keys: the rotation goes on (the key Vault names is
/// retired) but never says "rotated": keys rekey never saw may be active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_cannot_list_ends_quarantined_with_the_action() {
    for breach in [false, true] {
        let case = Case::new(Kind::Dual, breach);
        case.world.lock().unwrap().cannot_list = true;
        let (summary, _) = case.run().await;
        match outcome(&summary) {
            Outcome::Quarantined { action, .. } => {
                assert!(action.contains("delete every key other than"), "{action}");
                assert_eq!(case.key_ids().len(), 1, "the key Vault named is retired");
            }
            other => panic!("breach={breach}: {other:?}"),
        }
    }
}

/// A crash after promotion in breach mode: resume retires every old key the
/// checkpoint names, not only the one Vault named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_promotion_retires_every_old_key_of_a_breach() {
    let case = Case::new(Kind::Dual, true);
    case.keys(&[("k0", OLD, true), ("stray", "s", true)]);
    case.store
        .inject(StoreOp::SetMetadata, Some(PATH), Fault::HangAfter, 1);
    let (summary, crashed) = case.run().await;
    assert!(crashed);
    assert!(
        matches!(outcome(&summary), Outcome::Rotated { .. }),
        "{:?}",
        outcome(&summary)
    );
    assert_eq!(case.key_ids().len(), 1, "{:?}", case.key_ids());
}

/// Two rekey processes with different journals (two responders, a hygiene cron
/// beside an emergency run) on one credential: the second sees the Vault lock,
/// names who holds it, and never creates a key; the first finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_another_journal_skips_a_locked_credential() {
    let case = Case::new(Kind::Dual, true);
    // The first process stops inside its create: it holds the lock.
    case.fail(Op::Create, Effect::Crash);
    let first = case.engine();
    let waves = vec![vec![0]];
    let first_run = case.new_run();
    let stuck = async {
        tokio::select! {
            _ = first.run(&first_run, &waves) => panic!("the first run should be stuck"),
            _ = case.provider_hung.notified() => {}
        }
    };
    stuck.await;
    let keys_before = case.key_ids();
    // A second process, its own journal, the same Vault and provider.
    let other_dir = tempfile::tempdir().unwrap();
    let second = case.engine_with_journal(&other_dir.path().join("journal.db"));
    let summary = second.run(&case.new_run(), &waves).await.unwrap();
    match outcome(&summary) {
        Outcome::Skipped { reason } => {
            assert!(reason.contains("another rekey process holds"), "{reason}");
            assert!(reason.contains(&first.holder_name()), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        case.key_ids(),
        keys_before,
        "the second process created a key"
    );
    assert!(
        case.store.paths().iter().any(|p| p.contains("/locks/")),
        "the first process's lock is still there"
    );
}

/// A lock whose holder died (expired) is taken over; what that run left (a key it
/// created and never stored) is revoked first, as resume would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lock_is_taken_over_and_its_runs_leftovers_reconciled() {
    let case = Case::new(Kind::Dual, true);
    case.store.seed(
        &format!("rekey/staging/locks/{PATH}"),
        "12345-deadbeef@elsewhere",
        &[
            ("holder", "12345-deadbeef@elsewhere"),
            ("run", "r-20000101-0000-dead"),
            ("credential", "cred"),
            ("playbook", "other"),
            ("expires", "1"),
        ],
    );
    {
        let mut w = case.world.lock().unwrap();
        w.keys.push(Key {
            id: "orphan".into(),
            secret: "nobody-has-it".into(),
            active: true,
            tag: Some("rekey:r-20000101-0000-dead:cred".into()),
        });
    }
    let (summary, _) = case.run().await;
    assert!(
        matches!(outcome(&summary), Outcome::Rotated { .. }),
        "{:?}",
        outcome(&summary)
    );
    assert_eq!(case.key_ids().len(), 1, "{:?}", case.key_ids());
    assert!(!case.key_ids().contains(&"orphan".to_owned()));
    assert_eq!(case.store.paths(), [PATH], "the lock is released");
}

/// Vault stops answering mid-run: the credentials that had not started are not
/// started (the circuit breaker holds them until Vault answers or the patience
/// runs out), and `resume` finishes them once Vault is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_going_down_leaves_credentials_not_started_and_resume_finishes_them() {
    let case = Case::new(Kind::Single, true);
    // The first Vault write fails for good (Vault is down from then on).
    case.store
        .inject(StoreOp::Write, None, Fault::Unavailable, u32::MAX);
    let engine = case.engine_tuned(|t| {
        t.vault_patience = Duration::from_millis(300);
        t.vault_probe_every = Duration::from_millis(50);
    });
    let summary = engine.run(&case.new_run(), &[vec![0]]).await.unwrap();
    match outcome(&summary) {
        Outcome::NotStarted { reason } => assert!(reason.contains("Vault"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(summary.status(), rekey::journal::RunStatus::Interrupted);
    assert!(case.works("old-secret-value"), "nothing changed");
    drop(engine);
    case.store.clear_faults();
    let summary = case.resume_latest().await;
    assert!(
        matches!(outcome(&summary), Outcome::Rotated { .. }),
        "{:?}",
        outcome(&summary)
    );
    assert_eq!(
        case.check_world(outcome(&summary)).await,
        Vec::<String>::new()
    );
}

/// The password changed, then Vault stopped answering before it was promoted: the
/// credential waits for Vault (quarantined, resumable) and `resume` promotes the
/// staged value that works once Vault answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_while_vault_went_down_is_promoted_by_resume() {
    let case = Case::new(Kind::Single, true);
    case.store
        .inject(StoreOp::Write, Some(PATH), Fault::Unavailable, u32::MAX);
    let summary = case.run_to_end().await;
    match outcome(&summary) {
        Outcome::Quarantined {
            resumable: true,
            action,
            ..
        } => {
            assert!(action.contains("rekey resume"), "{action}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(summary.status(), rekey::journal::RunStatus::Interrupted);
    case.store.clear_faults();
    let summary = case.resume_latest().await;
    assert!(
        matches!(outcome(&summary), Outcome::Rotated { .. }),
        "{:?}",
        outcome(&summary)
    );
    assert_eq!(
        case.check_world(outcome(&summary)).await,
        Vec::<String>::new()
    );
}

/// Found by `scripts/chaos` (iteration 82 of a long run): a run killed after it
/// promoted a password and cleared its staging entry; the resume rotated the
/// password again and Vault stopped answering at its promote, a resumable
/// quarantine. That quarantine kept the checkpoint of the run before the resume
/// (the first check-and-set version), so the next resume refused its own write as
/// "changed outside this rotation" and left Vault holding a dead password. The
/// newest checkpoint must win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_interruption_during_resume_keeps_the_newest_checkpoint() {
    for breach in [false, true] {
        let case = Case::new(Kind::Single, breach);
        // Crash once the staging entry is cleared (the value is promoted).
        case.store.inject(
            StoreOp::DeleteAll,
            Some("rekey/staging/r-"),
            Fault::HangAfter,
            1,
        );
        let waves = vec![vec![0]];
        let engine = case.engine();
        let new_run = case.new_run();
        tokio::select! {
            s = engine.run(&new_run, &waves) => panic!("the run should have crashed: {:?}", s.map(|s| s.status())),
            _ = case.store.hung() => {}
        }
        drop(engine);
        case.store.clear_faults();
        // The resume: Vault stops answering writes to the consumers' path.
        case.store
            .inject(StoreOp::Write, Some(PATH), Fault::Unavailable, u32::MAX);
        let first = case.resume_latest().await;
        case.store.clear_faults();
        // Whatever the first resume did, the second one ends with a working value
        // in Vault.
        let summary = case.resume_latest().await;
        let last = match outcome(&first) {
            Outcome::Quarantined {
                resumable: true, ..
            } => outcome(&summary),
            other => other,
        };
        assert!(
            matches!(last, Outcome::Rotated { .. }),
            "breach {breach}: first resume {:?}, then {:?}",
            outcome(&first),
            outcome(&summary)
        );
        assert_eq!(
            case.check_world(last).await,
            Vec::<String>::new(),
            "breach {breach}"
        );
    }
}

/// Found by `scripts/chaos` (iteration 75): Redis added the new password, then
/// `ACL SAVE` failed and the undo could not reach the server; the credential was
/// "rolled back" while a password nobody holds stayed live. A create that fails
/// for good is followed by the sweep of this attempt's tagged keys; when the
/// sweep itself cannot run, the credential is quarantined with the tag, never
/// called rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_half_happened_leaves_no_key_nobody_holds() {
    for breach in [false, true] {
        let case = Case::new(Kind::Dual, breach);
        case.fail(Op::Create, Effect::AppliedThenFatal);
        let (summary, _) = case.run().await;
        assert!(
            matches!(outcome(&summary), Outcome::RolledBack { .. }),
            "{:?}",
            outcome(&summary)
        );
        assert_eq!(case.key_ids(), vec!["k0".to_owned()], "breach {breach}");
        // The sweep cannot list: a human is told which key to delete.
        let case = Case::new(Kind::Dual, breach);
        case.fail(Op::Create, Effect::AppliedThenFatal);
        // The list before the create answers; the sweep's list does not.
        case.fail_after(Op::List, 1, Effect::Fatal);
        let (summary, _) = case.run().await;
        match outcome(&summary) {
            Outcome::Quarantined { action, .. } => {
                assert!(action.contains("tagged `rekey:"), "the tag: {action}")
            }
            other => panic!("breach {breach}: {other:?}"),
        }
        assert_eq!(case.key_ids().len(), 2, "the half-made key is still there");
    }
}

/// Found by `scripts/chaos` (200-iteration run, iteration 169): a dual promote
/// whose write landed with its answer lost, then every retry unanswered (OpenBao
/// restarting). The engine took it for "not promoted" and revoked the new key
/// that Vault now named: Vault held a dead key, and the next attempt, finding no
/// key of Vault's alive, retired nothing, so the old key stayed alive under a
/// "rotated". An unanswered promote now leaves the new key staged for `resume`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_promote_vault_did_not_answer_is_finished_by_resume() {
    for lands in [false, true] {
        for breach in [false, true] {
            let case = Case::new(Kind::Dual, breach);
            if lands {
                case.store
                    .inject(StoreOp::Write, Some(PATH), Fault::LoseAnswer, 1);
            }
            case.store
                .inject(StoreOp::Write, Some(PATH), Fault::Unavailable, u32::MAX);
            let summary = case.run_to_end().await;
            match outcome(&summary) {
                Outcome::Quarantined {
                    resumable: true, ..
                } => {}
                other => panic!("lands {lands} breach {breach}: {other:?}"),
            }
            assert_eq!(case.key_ids().len(), 2, "the new key is kept for resume");
            case.store.clear_faults();
            case.resume_rotates(&format!("lands {lands} breach {breach}"))
                .await;
        }
    }
}

/// Found by `scripts/chaos` (finding 4): the provider did not answer the old
/// key's deletion, or the list that confirms it, after the new key was promoted.
/// The credential went to a human ("delete by hand") although nothing had
/// refused anything. It is now a resumable quarantine that names the keys, and
/// `resume` retires them once the provider answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retirement_the_provider_did_not_answer_is_finished_by_resume() {
    for breach in [false, true] {
        for (op, passes) in [(Op::Revoke, 0), (Op::List, 1)] {
            let label = format!("breach {breach} {op:?}");
            let case = Case::new(Kind::Dual, breach);
            if passes > 0 {
                case.fail_after(op, passes, Effect::Unreachable);
            } else {
                case.fail(op, Effect::Unreachable);
            }
            let (summary, _) = case.run().await;
            match outcome(&summary) {
                Outcome::Quarantined {
                    resumable: true,
                    action,
                    ..
                } => assert!(action.contains("rekey resume"), "{label}: {action}"),
                other => panic!("{label}: {other:?}"),
            }
            // The new key is in Vault and works meanwhile.
            let (value, _) = case.vault_value().await;
            assert!(case.works(&value.unwrap()), "{label}");
            case.heal();
            case.resume_rotates(&label).await;
        }
    }
}

/// Finding 3 of `scripts/chaos`, in process: Vault stops answering deletes
/// under the staging prefix after promotion. The credential is rotated; the
/// summary names the staging entry and the lock it left; `resume` of the
/// finished run removes both once Vault answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_vault_would_not_delete_is_named_and_removed_by_resume() {
    for kind in [Kind::Dual, Kind::Single] {
        let case = Case::new(kind, true);
        case.store.inject(
            StoreOp::DeleteAll,
            Some("rekey/staging"),
            Fault::Unavailable,
            u32::MAX,
        );
        let summary = case.run_to_end().await;
        assert!(
            matches!(outcome(&summary), Outcome::Rotated { .. }),
            "{kind:?}: {:?}",
            outcome(&summary)
        );
        let mut kinds: Vec<&str> = summary.leftovers.iter().map(|l| l.kind).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            ["lock", "staging"],
            "{kind:?}: {:?}",
            summary.leftovers
        );
        assert_eq!(case.store.paths().len(), 3, "{kind:?}");
        case.store.clear_faults();
        let resumed = case
            .engine()
            .resume(&summary.run_id, &[vec![0]])
            .await
            .unwrap();
        assert_eq!(resumed.leftovers, Vec::new(), "{kind:?}");
        assert_eq!(case.store.paths(), [PATH], "{kind:?}");
        assert!(
            matches!(outcome(&resumed), Outcome::Rotated { .. }),
            "{kind:?}"
        );
    }
}

/// Found by `scripts/chaos` (200-iteration run, iteration 55, PostgreSQL behind
/// a connection reset): a password change whose answer was lost, then a probe
/// of the new value that could not reach the provider either. The engine took
/// "no answer" for "it did not happen", deleted the staging entry and said
/// rolled back, while the new password was in force and nobody held it. It is
/// now a resumable quarantine with the staging entry kept, and `resume`
/// finishes it, whether the change landed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_nobody_can_confirm_keeps_its_staging_entry_for_resume() {
    // (the change answered, the change's answer lost, the change not made)
    for (answered, landed) in [(true, true), (false, true), (false, false)] {
        for breach in [false, true] {
            let label = format!("answered {answered} landed {landed} breach {breach}");
            let case = Case::new(Kind::Single, breach);
            if !answered {
                case.fail(
                    Op::Change,
                    if landed {
                        Effect::LoseAnswer
                    } else {
                        Effect::TransientOnce
                    },
                );
                // Every retry of the change: no answer.
                case.fail(Op::Change, Effect::Unreachable);
            }
            // The probe (or the verify after a change that answered): no answer.
            case.fail(Op::Verify, Effect::Unreachable);
            let (summary, _) = case.run().await;
            match outcome(&summary) {
                Outcome::Quarantined {
                    resumable: true, ..
                } => {}
                other => panic!("{label}: {other:?}"),
            }
            assert_eq!(case.store.paths().len(), 2, "{label}: staging kept");
            case.heal();
            case.resume_rotates(&label).await;
        }
    }
}

/// Found by `scripts/chaos` (200-iteration run, iteration 124, Redis in breach
/// mode): the process died inside the old key's `revoke`, after the provider
/// removed it in memory and before it persisted that (`ACL SAVE`). `resume`
/// listed the keys, saw the old one gone, and retired nothing; Redis restarted
/// from its aclfile with the old password alive under a "rotated". A revoke
/// in flight when the process died is now asked again, whatever the list says
/// (the Redis provider persists on a revoke of a password already gone:
/// `providers_sql::redis_a_revoke_that_stopped_before_acl_save_is_saved_when_asked_again`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_in_flight_when_the_process_died_is_asked_again_by_resume() {
    for breach in [false, true] {
        let case = Case::new(Kind::Dual, breach);
        case.fail(Op::Revoke, Effect::CrashAfter);
        // The run dies in the revoke; a new engine resumes it.
        let (summary, crashed) = case.run().await;
        assert!(
            crashed,
            "breach {breach}: the run died in revoke: {summary:?}"
        );
        let left = case.key_ids();
        assert!(
            matches!(outcome(&summary), Outcome::Rotated { .. }),
            "breach {breach}: {:?}",
            outcome(&summary)
        );
        let revokes = case.world.lock().unwrap().revokes.clone();
        assert_eq!(revokes.len(), 2, "breach {breach}: {revokes:?}");
        assert_eq!(
            revokes[0], revokes[1],
            "breach {breach}: resume asks the provider to finish the revoke it did not answer"
        );
        assert!(
            !left.contains(&revokes[0]),
            "the old key was the one revoked"
        );
    }
}
