//! Notifications: the playbook's webhooks (`notify:`, checked in
//! `playbook::notify`) told about a run's start and end, each quarantine, each
//! credential awaiting an operator, and a retired key used again (`rekey watch`).
//!
//! Delivery happens on a background thread: `send` only queues, so a webhook
//! that is slow, down or refusing never slows or fails the run. Each delivery is
//! retried with backoff; at the end the command waits a bounded time for what is
//! still in flight and reports what did not arrive ([`Delivery`]).
//!
//! Invariant: a payload holds ids, states and rekey's own messages (which never
//! hold a secret), never a value; a webhook URL (often a credential itself) is
//! never printed or logged: messages use the webhook's name.

use crate::engine::{Outcome, Progress, RunSummary};
use crate::playbook::Playbook;
use crate::playbook::notify::{Event, Format, Url, Webhook};
use crate::secret::Secret;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Attempts per delivery, and the first wait between them (doubling).
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// One request's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the end of a command waits for deliveries still in flight.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// One thing that happened, as webhooks are told.
#[derive(Clone, Debug)]
pub struct Notice {
    pub event: Event,
    pub run_id: Option<String>,
    pub credential: Option<String>,
    /// A one-line summary for people (the Slack text).
    pub text: String,
    /// Event-specific fields of the JSON document.
    pub detail: Value,
}

/// What could not be delivered, by webhook name and event.
#[derive(Debug, Default)]
pub struct Delivery {
    pub delivered: usize,
    pub failed: Vec<String>,
}

struct Hook {
    name: String,
    format: Format,
    url: Secret,
    authorization: Option<Secret>,
    events: Vec<Event>,
}

struct Job {
    hook: Arc<Hook>,
    event: Event,
    body: Vec<u8>,
}

/// The playbook's webhooks and the thread delivering to them.
pub struct Notifier {
    hooks: Vec<Arc<Hook>>,
    /// Webhooks that cannot be reached at all (their URL variable is unset).
    unusable: Vec<String>,
    /// Playbook fields every document carries.
    context: Value,
    tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Job>>>,
    done: Mutex<Option<std::sync::mpsc::Receiver<Delivery>>>,
    /// Credentials whose quarantine was notified as it happened.
    quarantines: Mutex<Vec<String>>,
}

impl Notifier {
    /// The notifier of `playbook`, or `None` when it has no webhooks. URLs and
    /// authorizations named by environment variables are read (as secrets) here.
    pub fn start(playbook: &Playbook) -> Option<Arc<Notifier>> {
        if playbook.notify.is_empty() {
            return None;
        }
        let mut hooks = Vec::new();
        let mut unusable = Vec::new();
        for w in &playbook.notify {
            match resolve(w) {
                Ok(h) => hooks.push(Arc::new(h)),
                Err(why) => unusable.push(format!("`{}`: {why}", w.name)),
            }
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("notify".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                let _ = done_tx.send(runtime.block_on(deliver_all(rx)));
            });
        let (tx, done) = match spawned {
            Ok(_) => (Some(tx), Some(done)),
            Err(e) => {
                unusable.push(format!("every webhook: no thread to deliver from ({e})"));
                (None, None)
            }
        };
        Some(Arc::new(Notifier {
            hooks,
            unusable,
            context: json!({
                "playbook": playbook.name,
                "incident": playbook.incident.id,
                "mode": playbook.incident.mode,
            }),
            tx: Mutex::new(tx),
            done: Mutex::new(done),
            quarantines: Mutex::new(Vec::new()),
        }))
    }

    /// Queues `notice` for every webhook that wants its event. Never blocks.
    pub fn send(&self, notice: &Notice) {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else { return };
        for hook in self
            .hooks
            .iter()
            .filter(|h| h.events.contains(&notice.event))
        {
            let body = match hook.format {
                Format::Json => {
                    let mut doc = json!({
                        "source": "rekey",
                        "event": notice.event.as_str(),
                        "time": crate::plan::age::timestamp(crate::plan::age::now()),
                        "run_id": notice.run_id,
                        "credential": notice.credential,
                        "text": notice.text,
                    });
                    merge(&mut doc, &self.context);
                    merge(&mut doc, &notice.detail);
                    doc
                }
                Format::Slack => json!({ "text": format!("rekey: {}", notice.text) }),
            };
            let _ = tx.send(Job {
                hook: hook.clone(),
                event: notice.event,
                body: body.to_string().into_bytes(),
            });
        }
    }

    /// Notifies how run `summary` ended: each quarantine not notified while it
    /// ran (a retirement after a grace period), then the end.
    pub fn run_ended(&self, summary: &RunSummary, not_due: usize) {
        let already = self
            .quarantines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for notice in run_end_notices(summary, &already, not_due) {
            self.send(&notice);
        }
    }

    /// Stops taking notices, waits (at most a few seconds) for the deliveries
    /// in flight, and says what did not arrive.
    pub fn finish(&self) -> Delivery {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut delivery = match done {
            Some(rx) => rx
                .recv_timeout(DRAIN_DEADLINE + Duration::from_secs(1))
                .unwrap_or_else(|_| Delivery {
                    delivered: 0,
                    failed: vec!["some notifications: no answer in time".into()],
                }),
            None => Delivery::default(),
        };
        delivery
            .failed
            .extend(self.unusable.iter().map(|u| format!("{u} (nothing sent)")));
        delivery
    }
}

/// Reads a webhook's URL and authorization (secrets) and checks the URL.
fn resolve(w: &Webhook) -> Result<Hook, String> {
    let url = match &w.url {
        Url::Plain(u) => Secret::new(u.as_str()),
        Url::Env(var) => match crate::harden::secret_env(var) {
            Some(v) if !v.trim().is_empty() => {
                crate::net::parse_endpoint(v.trim())
                    .map_err(|why| format!("the URL in `{var}` is refused: {why}"))?;
                Secret::new(v.trim())
            }
            _ => return Err(format!("`{var}` (its URL) is not set")),
        },
    };
    let authorization = match &w.authorization_env {
        Some(var) => match crate::harden::secret_env(var) {
            Some(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
            _ => return Err(format!("`{var}` (its authorization) is not set")),
        },
        None => None,
    };
    Ok(Hook {
        name: w.name.clone(),
        format: w.format,
        url,
        authorization,
        events: w.events.clone(),
    })
}

fn merge(doc: &mut Value, more: &Value) {
    if let (Some(d), Some(m)) = (doc.as_object_mut(), more.as_object()) {
        for (k, v) in m {
            d.insert(k.clone(), v.clone());
        }
    }
}

/// The delivery loop: each job in its own task (a slow webhook does not hold
/// the others up), until the sender is dropped; then the tasks left get until
/// the deadline.
async fn deliver_all(mut rx: tokio::sync::mpsc::UnboundedReceiver<Job>) -> Delivery {
    let client = reqwest::Client::builder()
        .redirect(crate::net::redirect_policy())
        .timeout(REQUEST_TIMEOUT)
        .build();
    let mut delivery = Delivery::default();
    let Ok(client) = client else {
        delivery
            .failed
            .push("every webhook: no HTTP client could be built".into());
        return delivery;
    };
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(job) = rx.recv().await {
        let client = client.clone();
        tasks.spawn(async move { deliver(&client, &job).await });
    }
    let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(Ok(())))) => delivery.delivered += 1,
            Ok(Some(Ok(Err(why)))) => delivery.failed.push(why),
            Ok(Some(Err(_))) => delivery.failed.push("a delivery task failed".into()),
            Ok(None) => break,
            Err(_) => {
                let left = tasks.len();
                delivery.failed.push(format!(
                    "{left} notification(s): still retrying after {} s, given up",
                    DRAIN_DEADLINE.as_secs()
                ));
                tasks.abort_all();
                break;
            }
        }
    }
    delivery
}

/// Posts one job with retries; the error names the webhook and why (from the
/// status or the kind of failure, never a body or the URL).
async fn deliver(client: &reqwest::Client, job: &Job) -> Result<(), String> {
    let mut wait = FIRST_BACKOFF;
    let mut why = String::new();
    for attempt in 1..=ATTEMPTS {
        let mut request = client
            .post(job.hook.url.expose())
            .header("Content-Type", "application/json")
            .header("User-Agent", concat!("rekey/", env!("CARGO_PKG_VERSION")))
            .body(job.body.clone());
        if let Some(a) = &job.hook.authorization {
            request = request.header("Authorization", a.expose());
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let status = r.status().as_u16();
                why = format!("HTTP {status}");
                // A refusal that will not change (bad URL, bad auth) is not retried.
                if matches!(status, 400..=499) && !matches!(status, 408 | 429) {
                    break;
                }
            }
            Err(e) if e.is_timeout() => why = "timed out".into(),
            Err(e) if e.is_connect() => why = "cannot connect".into(),
            Err(_) => why = "request failed".into(),
        }
        if attempt < ATTEMPTS {
            tracing::debug!(webhook = %job.hook.name, event = job.event.as_str(), attempt, "Notification not delivered ({why}); retrying.");
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    Err(format!(
        "`{}` ({}): {why}",
        job.hook.name,
        job.event.as_str()
    ))
}

/// The notices of a run's outcome: one per quarantined credential not
/// reported yet (`already`), then the run's end.
fn run_end_notices(summary: &RunSummary, already: &[String], not_due: usize) -> Vec<Notice> {
    use crate::journal::CredentialState as S;
    let mut notices = Vec::new();
    for r in &summary.results {
        if matches!(r.outcome, Outcome::Quarantined { .. }) && !already.contains(&r.id) {
            notices.push(credential_notice(&summary.run_id, &r.id, &r.outcome));
        }
    }
    let counts = json!({
        "rotated": summary.count(S::Rotated),
        "rolled_back": summary.count(S::RolledBack),
        "quarantined": summary.count(S::Quarantined),
        "skipped": summary.count(S::Skipped),
        "awaiting_operator": summary.count(S::AwaitingOperator),
        "not_started": summary.count(S::NotStarted),
        "not_due": not_due,
    });
    notices.push(Notice {
        event: Event::RunEnd,
        run_id: Some(summary.run_id.clone()),
        credential: None,
        text: format!(
            "run {} ended {}: {} rotated, {} quarantined, {} awaiting an operator, {} rolled back, {} skipped, {not_due} not due",
            summary.run_id,
            summary.status(),
            summary.count(S::Rotated),
            summary.count(S::Quarantined),
            summary.count(S::AwaitingOperator),
            summary.count(S::RolledBack),
            summary.count(S::Skipped),
        ),
        detail: json!({ "status": summary.status(), "counts": counts }),
    });
    notices
}

/// The notice of one credential's outcome (quarantined, awaiting an operator).
fn credential_notice(run_id: &str, id: &str, outcome: &Outcome) -> Notice {
    match outcome {
        Outcome::Quarantined { reason, action, .. } => Notice {
            event: Event::Quarantined,
            run_id: Some(run_id.to_owned()),
            credential: Some(id.to_owned()),
            text: format!("`{id}` is QUARANTINED in run {run_id}: {reason}. To do: {action}"),
            detail: json!({ "reason": reason, "action": action }),
        },
        _ => Notice {
            event: Event::AwaitingOperator,
            run_id: Some(run_id.to_owned()),
            credential: Some(id.to_owned()),
            text: format!(
                "`{id}` waits for an operator in run {run_id}: `rekey status {run_id}` says what to do, then `rekey resume {run_id} --credential {id} --value-stdin`"
            ),
            detail: json!({}),
        },
    }
}

/// A progress display that also notifies: run start, and each credential that
/// ends quarantined or waits for an operator, as it happens.
pub struct Notifying {
    inner: Arc<dyn Progress>,
    notifier: Arc<Notifier>,
    run_id: Mutex<Option<String>>,
    credentials: usize,
}

impl Notifying {
    pub fn new(inner: Arc<dyn Progress>, notifier: Arc<Notifier>, credentials: usize) -> Notifying {
        Notifying {
            inner,
            notifier,
            run_id: Mutex::new(None),
            credentials,
        }
    }
}

impl Progress for Notifying {
    fn run_started(&self, run_id: &str) {
        *self.run_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(run_id.to_owned());
        self.notifier.send(&Notice {
            event: Event::RunStart,
            run_id: Some(run_id.to_owned()),
            credential: None,
            text: format!("run {run_id} started: {} credential(s)", self.credentials),
            detail: json!({ "credentials": self.credentials }),
        });
        self.inner.run_started(run_id);
    }

    fn started(&self, instance: &str, credential: &str) {
        self.inner.started(instance, credential);
    }

    fn finished(&self, instance: &str, credential: &str, outcome: &Outcome) {
        self.inner.finished(instance, credential, outcome);
        if !matches!(
            outcome,
            Outcome::Quarantined { .. } | Outcome::AwaitingOperator { .. }
        ) {
            return;
        }
        let run_id = self
            .run_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        if matches!(outcome, Outcome::Quarantined { .. }) {
            self.notifier
                .quarantines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(credential.to_owned());
        }
        self.notifier
            .send(&credential_notice(&run_id, credential, outcome));
    }

    fn operator_prompt(&self, active: bool) {
        self.inner.operator_prompt(active);
    }
}
