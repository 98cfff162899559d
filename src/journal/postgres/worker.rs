//! The connection to the shared journal, on a thread of its own.
//!
//! The engine calls the journal synchronously, under its lock, from its async
//! tasks (as it calls SQLite); a blocking PostgreSQL client cannot run on a tokio
//! thread, so one thread per journal owns the connection (tokio-postgres on a
//! current-thread runtime) and runs the calls it is sent, in order.
//!
//! Every call is one transaction. When the connection is lost (PostgreSQL
//! restarted, a network cut, a statement unanswered for `STATEMENT_PATIENCE`), the
//! worker reconnects with backoff for up to `RECONNECT_PATIENCE` and runs the
//! transaction again. A write carries a request id stored in `rekey.applied` with
//! its result, in the same transaction: when the connection broke while the commit
//! was in flight, the retry finds the id and returns the stored result instead of
//! writing (an intent, an audit line) twice.

use super::super::{JournalError, Mirror};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio_postgres::Transaction;

/// How long the worker keeps trying to reach PostgreSQL before a call fails.
pub(super) const RECONNECT_PATIENCE: Duration = Duration::from_secs(300);
/// How long one transaction may take before the connection counts as lost.
const STATEMENT_PATIENCE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A call for the worker.
pub(super) type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// Why a transaction's body stopped.
pub(super) enum Fail {
    Db(tokio_postgres::Error),
    Journal(JournalError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Db(e)
    }
}

impl From<JournalError> for Fail {
    fn from(e: JournalError) -> Fail {
        Fail::Journal(e)
    }
}

/// How the connection is made.
pub(super) enum Connector {
    Plain,
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

pub(super) struct Worker {
    rt: tokio::runtime::Runtime,
    config: tokio_postgres::Config,
    connector: Connector,
    client: Option<tokio_postgres::Client>,
    /// The audit trail's line builder (`crate::audit`), once set.
    pub(super) mirror: Option<Box<dyn Mirror>>,
    /// The URL, for messages.
    pub(super) path: PathBuf,
    /// Commits do not wait for PostgreSQL's disk (group commit: see `flush`).
    async_commit: bool,
    /// Whether the connection was lost and a warning said so.
    warned: bool,
}

/// The audit lines one transaction appends, through the mirror.
pub(super) struct Lines<'m> {
    mirror: Option<&'m mut (dyn Mirror + 'static)>,
    written: Vec<String>,
    path: &'m PathBuf,
}

impl Lines<'_> {
    /// [`Lines::append`] of the line for `credential`'s new `state` in `run`.
    pub(super) async fn append_state(
        &mut self,
        tx: &Transaction<'_>,
        run: &str,
        credential: &str,
        state: crate::journal::CredentialState,
        detail: &serde_json::Value,
    ) -> Result<(), Fail> {
        self.append(
            tx,
            run,
            super::super::Event::State {
                run,
                credential,
                state: state.as_str(),
                detail,
            },
            "a credential state",
        )
        .await
    }

    /// Appends the line for `event` to `run`'s chain inside `tx`: the run's row is
    /// locked by the update of its head, so runners appending to one run take turns,
    /// each line chained to the one committed before it.
    pub(super) async fn append(
        &mut self,
        tx: &Transaction<'_>,
        run: &str,
        event: super::super::Event<'_>,
        what: &'static str,
    ) -> Result<(), Fail> {
        let Some(mirror) = self.mirror.as_deref_mut() else {
            return Ok(());
        };
        let head = tx
            .query_opt(
                "UPDATE rekey.runs SET audit_lines = audit_lines + 1 WHERE id = $1
                 RETURNING audit_lines, audit_last",
                &[&run],
            )
            .await?;
        let Some(head) = head else {
            return Err(Fail::Journal(JournalError::UnknownRun {
                path: self.path.clone(),
                id: run.to_owned(),
            }));
        };
        let (seq, prev): (i64, String) = (head.get(0), head.get(1));
        let audit = |reason: String| {
            Fail::Journal(JournalError::Audit {
                path: self.path.clone(),
                what,
                reason,
            })
        };
        let line = match mirror.chain_line(event, seq.max(0) as u64, &prev) {
            Some(Ok(line)) => line,
            Some(Err(reason)) => return Err(audit(reason)),
            None => {
                return Err(audit(
                    "a shared journal keeps its audit trail in the database, but the trail given is a file (a bug)".into(),
                ));
            }
        };
        let last = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(line.as_bytes()));
        tx.execute(
            "WITH line AS (INSERT INTO rekey.audit (run_id, seq, line) VALUES ($1, $2, $3))
             UPDATE rekey.runs SET audit_last = $4 WHERE id = $1",
            &[&run, &seq, &line, &last],
        )
        .await?;
        self.written.push(line);
        Ok(())
    }
}

/// What a transaction answered: its body's value, or the result stored by an
/// earlier attempt whose commit went through unseen.
enum Answer<R> {
    Fresh(R),
    Stored(String),
}

/// Where a transaction was when it failed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Working,
    Committing,
}

impl Worker {
    pub(super) fn new(
        config: tokio_postgres::Config,
        connector: Connector,
        path: PathBuf,
    ) -> std::io::Result<Worker> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Worker {
            rt,
            config,
            connector,
            client: None,
            mirror: None,
            path,
            async_commit: false,
            warned: false,
        })
    }

    /// Starts the thread that runs `worker`'s jobs; it ends when every sender is
    /// dropped.
    pub(super) fn spawn(mut worker: Worker) -> (mpsc::Sender<Job>, std::thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("rekey-journal".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut worker);
                }
            })
            .expect("spawn the journal's connection thread");
        (tx, handle)
    }

    fn pg_error(&self, doing: &'static str, e: &tokio_postgres::Error) -> JournalError {
        JournalError::Postgres {
            path: self.path.clone(),
            doing,
            message: describe(e),
        }
    }

    /// Connects when there is no connection, retrying what may pass (refused,
    /// starting up, reset) until `deadline`.
    fn ensure_connected(&mut self, deadline: Instant) -> Result<(), JournalError> {
        let mut delay = Duration::from_millis(100);
        loop {
            if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
                return Ok(());
            }
            self.client = None;
            match self.connect() {
                Ok(client) => {
                    if self.warned {
                        tracing::info!(journal = %self.path.display(), "Reconnected to the journal.");
                        self.warned = false;
                    }
                    self.client = Some(client);
                    return Ok(());
                }
                Err(e) if passing(&e) && Instant::now() < deadline => {
                    self.warn_lost(&describe(&e));
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) if passing(&e) => {
                    return Err(JournalError::Unreachable {
                        path: self.path.clone(),
                        waited: RECONNECT_PATIENCE.as_secs(),
                        message: describe(&e),
                    });
                }
                Err(e) => return Err(self.pg_error("connecting", &e)),
            }
        }
    }

    fn warn_lost(&mut self, why: &str) {
        if !self.warned {
            tracing::warn!(journal = %self.path.display(), "The journal does not answer ({why}); retrying for up to {} s.", RECONNECT_PATIENCE.as_secs());
            self.warned = true;
        }
    }

    fn connect(&mut self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let config = self.config.clone();
        let async_commit = self.async_commit;
        let rt = &self.rt;
        let client = match &self.connector {
            Connector::Plain => rt.block_on(async {
                let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                rt.spawn(async move {
                    let _ = conn.await;
                });
                Ok::<_, tokio_postgres::Error>(client)
            })?,
            Connector::Tls(tls) => rt.block_on(async {
                let (client, conn) = config.connect(tls.clone()).await?;
                rt.spawn(async move {
                    let _ = conn.await;
                });
                Ok::<_, tokio_postgres::Error>(client)
            })?,
        };
        if async_commit {
            rt.block_on(client.batch_execute("SET synchronous_commit = off"))?;
        }
        Ok(client)
    }

    /// Runs `body` in one transaction, again after a lost connection (see the
    /// module documentation). `write`: the transaction changes something, so it is
    /// made idempotent with a request id.
    pub(super) fn transact<R, F>(
        &mut self,
        doing: &'static str,
        write: bool,
        mut body: F,
    ) -> Result<R, JournalError>
    where
        R: Serialize + DeserializeOwned,
        F: for<'t, 'c, 'm> AsyncFnMut(&'t Transaction<'c>, &'t mut Lines<'m>) -> Result<R, Fail>,
    {
        let request = write.then(|| format!("{:032x}", rand::random::<u128>()));
        let mut deadline = Instant::now() + RECONNECT_PATIENCE;
        let mut commit_unknown = false;
        loop {
            self.ensure_connected(deadline)?;
            let Worker {
                rt,
                client,
                mirror,
                path,
                ..
            } = self;
            let client = client.as_mut().expect("connected above");
            let mut lines = Lines {
                mirror: mirror.as_deref_mut(),
                written: Vec::new(),
                path,
            };
            let mut phase = Phase::Working;
            let work = async {
                if commit_unknown
                    && let Some(request) = &request
                    && let Some(row) = client
                        .query_opt(
                            "SELECT result FROM rekey.applied WHERE request = $1",
                            &[request],
                        )
                        .await?
                {
                    return Ok(Answer::Stored(row.get(0)));
                }
                let tx = client.transaction().await?;
                let value = body(&tx, &mut lines).await?;
                if let Some(request) = &request {
                    let result = serde_json::to_string(&value).unwrap_or_default();
                    tx.execute(
                        "INSERT INTO rekey.applied (request, result, at_ms) VALUES ($1, $2, rekey.now_ms())",
                        &[request, &result],
                    )
                    .await?;
                }
                phase = Phase::Committing;
                tx.commit().await?;
                Ok::<_, Fail>(Answer::Fresh(value))
            };
            // The timer is made inside the runtime (it needs its clock).
            let outcome =
                rt.block_on(async { tokio::time::timeout(STATEMENT_PATIENCE, work).await });
            let lost = match outcome {
                Ok(Ok(Answer::Fresh(value))) => {
                    let written = std::mem::take(&mut lines.written);
                    drop(lines);
                    if let Some(m) = self.mirror.as_deref_mut() {
                        for line in &written {
                            m.committed(line);
                        }
                    }
                    return Ok(value);
                }
                // The commit went through before the connection broke.
                Ok(Ok(Answer::Stored(result))) => {
                    drop(lines);
                    return serde_json::from_str(&result).map_err(|e| JournalError::Corrupt {
                        path: self.path.clone(),
                        detail: format!("a stored result of {doing} does not read back ({e})"),
                    });
                }
                Ok(Err(Fail::Journal(e))) => return Err(e),
                Ok(Err(Fail::Db(e))) if retry_now(&e) => {
                    drop(lines);
                    continue;
                }
                Ok(Err(Fail::Db(e))) if lost_connection(&e) => describe(&e),
                Ok(Err(Fail::Db(e))) => {
                    drop(lines);
                    return Err(self.pg_error(doing, &e));
                }
                Err(_) => format!(
                    "no answer within {} s while {doing}",
                    STATEMENT_PATIENCE.as_secs()
                ),
            };
            drop(lines);
            commit_unknown |= phase == Phase::Committing;
            if !self.warned {
                // The patience starts with the first failure, not with the call.
                deadline = Instant::now() + RECONNECT_PATIENCE;
            }
            self.warn_lost(&lost);
            self.client = None;
            if Instant::now() >= deadline {
                return Err(JournalError::Unreachable {
                    path: self.path.clone(),
                    waited: RECONNECT_PATIENCE.as_secs(),
                    message: lost,
                });
            }
        }
    }

    /// From now on commits return before PostgreSQL's disk has them; `flush` waits.
    pub(super) fn defer_sync(&mut self) -> Result<(), JournalError> {
        self.async_commit = true;
        if let Some(client) = &self.client
            && let Err(e) = self
                .rt
                .block_on(client.batch_execute("SET synchronous_commit = off"))
        {
            if lost_connection(&e) {
                self.client = None; // The next connection starts with the setting.
            } else {
                return Err(self.pg_error("configuring group commit", &e));
            }
        }
        Ok(())
    }

    /// Returns once every commit made so far is on PostgreSQL's disk: a write
    /// committed with `synchronous_commit = on` waits for the WAL up to its own
    /// commit record, which comes after every earlier commit's.
    pub(super) fn flush(&mut self) -> Result<(), JournalError> {
        self.transact("syncing the journal", false, async |tx, _| {
            tx.batch_execute("SET LOCAL synchronous_commit = on")
                .await?;
            tx.execute(
                "INSERT INTO rekey.flushes (backend, n) VALUES (pg_backend_pid(), 1)
                 ON CONFLICT (backend) DO UPDATE SET n = rekey.flushes.n + 1",
                &[],
            )
            .await?;
            Ok(())
        })
    }
}

/// A message for an error from tokio-postgres: the server's code and message
/// (never its detail, which can quote a row), or the client's own.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// The connection is gone (closed, reset, the server shutting down or starting):
/// reconnect and try again.
fn lost_connection(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }
        // No server code: the socket failed (or a message could not be read).
        None => std::error::Error::source(e)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()),
    }
}

/// A connection attempt that may pass on its own: refused or reset (the server is
/// down or restarting), or the server is starting up or shutting down. A refused
/// password does not pass, nor does one the server asks for and the client lacks.
fn passing(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => matches!(code.code(), "57P01" | "57P02" | "57P03" | "53300"),
        // No server code: only a failed socket (refused, reset, timed out) passes.
        None => std::error::Error::source(e)
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some()),
    }
}

/// A transaction PostgreSQL aborted to resolve a conflict: run it again at once.
fn retry_now(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(c.code(), "40001" | "40P01"))
}

pub(super) const fn connect_timeout() -> Duration {
    CONNECT_TIMEOUT
}
