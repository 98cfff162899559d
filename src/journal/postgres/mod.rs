//! The shared journal: the same records as the SQLite journal (runs, credential
//! states, intents and outcomes, leases) in a PostgreSQL database that rekey
//! processes on many machines use at once, plus what only a shared run has: the
//! playbook stored with the run, the per-credential work queue that runners of
//! each zone claim (`shared.rs`), the runners, and the audit trail (`trail.rs`).
//!
//! Semantics kept from SQLite: each call is one transaction; an outcome is
//! recorded once; a lease is exclusive until released or expired (on the
//! database's clock here, so machines whose clocks disagree still agree); under
//! group commit ([`PgJournal::defer_sync`]) commits do not wait for the disk and
//! the engine's durable records wait for a flush (`worker.rs`); every record has
//! its audit line before the call returns: here in the same transaction, chained
//! to the run's previous line under a lock on the run's row (one chain per run,
//! whichever runner appends). The connection lives on its own thread
//! (`worker.rs`), which reconnects when PostgreSQL restarts.
//!
//! Invariant: like the SQLite journal, it never holds a secret value; the
//! password comes from `REKEY_JOURNAL_PASSWORD`, never from the URL.

mod location;
mod schema;
mod shared;
mod trail;
mod worker;

pub use location::{PgLocation, Tls};
pub use shared::{Claim, RunnerRow, SharedRun, TaskSpec};
pub use trail::RunChain;

use super::{
    CredentialRow, CredentialState, Event, Holding, IntentId, IntentRow, JournalError, Mirror,
    NewRun, Outcome, RunId, RunRow, RunStatus, SyncTarget,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime};
use tokio_postgres::Row;
use worker::{Fail, Job, Worker};

/// A connection to a shared journal (see the module documentation). `Send`, not
/// meant to be shared: the engine holds it under its lock, like the SQLite one.
pub struct PgJournal {
    jobs: mpsc::Sender<Job>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
    /// Key of the journal's fingerprints and key of the audit trail's HMACs,
    /// shared by every runner (`rekey.keys`).
    keys: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for PgJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgJournal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for PgJournal {
    fn drop(&mut self) {
        // The worker ends when its last sender goes; a flush closure may still
        // hold one, so the thread is left to end by itself then.
        let (dead, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.jobs, dead));
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

/// `Mutex` around the sender for the flush closure (`SyncTarget` needs `Sync`).
type SharedSender = Arc<Mutex<mpsc::Sender<Job>>>;

impl PgJournal {
    /// Connects to the database at `location` with `password` (the commands read
    /// it from `REKEY_JOURNAL_PASSWORD`), creates or migrates the `rekey` schema,
    /// and reads the shared keys (creating them on first use).
    pub fn connect(
        location: &PgLocation,
        password: Option<&crate::secret::Secret>,
    ) -> Result<PgJournal, JournalError> {
        let path = PathBuf::from(location.to_string());
        let mut config = tokio_postgres::Config::new();
        config
            .host(&location.host)
            .port(location.port)
            .user(&location.user)
            .dbname(&location.database)
            .application_name("rekey")
            .connect_timeout(worker::connect_timeout())
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if let Some(password) = password {
            config.password(password.expose().as_bytes());
        }
        let connector = match &location.tls {
            Tls::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                worker::Connector::Plain
            }
            Tls::VerifyFull { ca_file } => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = crate::net::postgres_tls(ca_file.as_deref()).map_err(|message| {
                    JournalError::Postgres {
                        path: path.clone(),
                        doing: "setting up TLS",
                        message,
                    }
                })?;
                worker::Connector::Tls(tls)
            }
        };
        let worker =
            Worker::new(config, connector, path.clone()).map_err(|source| JournalError::Io {
                path: path.clone(),
                action: "start the connection thread of",
                source,
            })?;
        let (jobs, thread) = Worker::spawn(worker);
        let mut journal = PgJournal {
            jobs,
            thread: Some(thread),
            path,
            keys: (Vec::new(), Vec::new()),
        };
        journal.call(|w| w.migrate())?;
        journal.keys = journal.call(|w| w.keys())?;
        Ok(journal)
    }

    /// Runs `job` on the connection's thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Worker) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        send(&self.jobs, &self.path, job)
    }

    /// The key the journal's fingerprints are computed with (the same for every
    /// runner of this database).
    pub fn fingerprint_key(&self) -> Vec<u8> {
        self.keys.0.clone()
    }

    /// The key of the audit trail's HMACs (`secret_hmac`).
    pub fn audit_key(&self) -> Vec<u8> {
        self.keys.1.clone()
    }

    pub fn defer_sync(&mut self) -> Result<Vec<SyncTarget>, JournalError> {
        self.call(|w| w.defer_sync())?;
        let jobs: SharedSender = Arc::new(Mutex::new(self.jobs.clone()));
        let path = self.path.clone();
        let flush = move || {
            let sender = jobs.lock().map_err(|_| "poisoned".to_owned())?.clone();
            send(&sender, &path, |w| w.flush()).map_err(|e| e.to_string())
        };
        Ok(vec![SyncTarget::Flush(Arc::new(flush))])
    }

    pub fn set_mirror(&mut self, mirror: Box<dyn Mirror>) {
        // Fire and forget: the jobs run in order, so the mirror is in place before
        // the next record.
        let _ = self.jobs.send(Box::new(move |w: &mut Worker| {
            w.mirror = Some(mirror);
        }));
    }

    pub fn note_secret(&self, fingerprint: &str, secret: &crate::secret::Secret) {
        let fingerprint = fingerprint.to_owned();
        let secret = secret.clone();
        let _ = self.jobs.send(Box::new(move |w: &mut Worker| {
            if let Some(m) = w.mirror.as_deref_mut() {
                m.note_secret(&fingerprint, &secret);
            }
        }));
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn create_run(&self, run: &NewRun) -> Result<RunId, JournalError> {
        let run = run.clone();
        self.call(move |w| w.create_run(&run, None))
    }

    pub fn run(&self, id: &str) -> Result<Option<RunRow>, JournalError> {
        let id = id.to_owned();
        self.call(move |w| Ok(w.query_runs("WHERE id = $1", vec![id])?.pop()))
    }

    pub fn runs(&self) -> Result<Vec<RunRow>, JournalError> {
        self.call(|w| w.query_runs("ORDER BY seq DESC", Vec::new()))
    }

    pub fn latest_unfinished(&self) -> Result<Option<RunRow>, JournalError> {
        self.call(|w| {
            Ok(w.query_runs(
                "WHERE status IN ('running', 'interrupted', 'awaiting_operator') ORDER BY seq DESC LIMIT 1",
                Vec::new(),
            )?
            .pop())
        })
    }

    pub fn finish_run(&self, id: &str, status: RunStatus) -> Result<(), JournalError> {
        if status == RunStatus::Running {
            return Err(JournalError::RunningIsNotFinal {
                path: self.path.clone(),
                id: id.to_owned(),
            });
        }
        let id = id.to_owned();
        self.call(move |w| w.finish_run(&id, status, false).map(|_| ()))
    }

    pub fn reopen_run(&self, id: &str) -> Result<(), JournalError> {
        let shown = id.to_owned();
        let id = id.to_owned();
        self.call(move |w| {
            let path = w.path.clone();
            w.transact("reopening a run", true, async |tx, lines| {
                let changed = tx
                    .execute(
                        "UPDATE rekey.runs SET status = 'running', finished_at = NULL WHERE id = $1",
                        &[&id],
                    )
                    .await?;
                if changed == 0 {
                    return Err(unknown_run(&path, &id));
                }
                lines
                    .append(tx, &id, Event::RunReopened { run: &id }, "a resumed run")
                    .await
            })
        })?;
        tracing::info!(run = %shown, "Run reopened.");
        Ok(())
    }

    pub fn claim_run(&self, id: &str, holder: &str) -> Result<(), JournalError> {
        let (id, holder) = (id.to_owned(), super::holder_on_host(holder));
        self.call(move |w| {
            w.transact("recording who works on a run", true, async |tx, _| {
                tx.execute(
                    "UPDATE rekey.runs SET holder = $2 WHERE id = $1",
                    &[&id, &holder],
                )
                .await?;
                Ok(())
            })
        })
    }

    pub fn set_state(
        &self,
        run: &str,
        credential: &str,
        state: CredentialState,
        detail: &Value,
    ) -> Result<(), JournalError> {
        let (run, credential, detail) = (run.to_owned(), credential.to_owned(), detail.clone());
        self.call(move |w| {
            let path = w.path.clone();
            w.transact("recording a credential state", true, async |tx, lines| {
                upsert_state(tx, &path, &run, &credential, state, &detail).await?;
                lines
                    .append_state(tx, &run, &credential, state, &detail)
                    .await
            })
        })
    }

    pub fn states(&self, run: &str) -> Result<Vec<CredentialRow>, JournalError> {
        let run = run.to_owned();
        self.call(move |w| w.states(&run))
    }

    pub fn intent(
        &self,
        run: &str,
        credential: &str,
        step: &str,
        detail: &Value,
    ) -> Result<IntentId, JournalError> {
        let (run, credential, step, detail) = (
            run.to_owned(),
            credential.to_owned(),
            step.to_owned(),
            detail.clone(),
        );
        self.call(move |w| {
            let path = w.path.clone();
            w.transact("recording an intent", true, async |tx, lines| {
                let row = tx
                    .query_opt(
                        "INSERT INTO rekey.intents (run_id, credential, step, detail, started_at)
                         SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM rekey.runs WHERE id = $1)
                         RETURNING id",
                        &[&run, &credential, &step, &detail.to_string(), &now()],
                    )
                    .await?
                    .ok_or_else(|| unknown_run(&path, &run))?;
                let id = IntentId(row.get(0));
                lines
                    .append(
                        tx,
                        &run,
                        Event::Intent {
                            run: &run,
                            credential: &credential,
                            step: &step,
                            intent: id,
                            detail: &detail,
                        },
                        "an intent",
                    )
                    .await?;
                Ok(id)
            })
        })
    }

    pub fn outcome(
        &self,
        intent: IntentId,
        outcome: Outcome,
        detail: &Value,
    ) -> Result<(), JournalError> {
        let detail = detail.clone();
        self.call(move |w| w.outcome(intent, &outcome, &detail, None))
    }

    pub fn outcome_and_state(
        &self,
        intent: IntentId,
        outcome: Outcome,
        detail: &Value,
        state: CredentialState,
        state_detail: &Value,
    ) -> Result<(), JournalError> {
        let (detail, state_detail) = (detail.clone(), state_detail.clone());
        self.call(move |w| w.outcome(intent, &outcome, &detail, Some((state, &state_detail))))
    }

    pub fn open_intents(&self, run: &str) -> Result<Vec<IntentRow>, JournalError> {
        let run = run.to_owned();
        self.call(move |w| {
            w.require_run(&run)?;
            w.query_intents("WHERE i.run_id = $1 AND o.intent_id IS NULL", vec![run])
        })
    }

    pub fn intents(&self, run: &str, credential: &str) -> Result<Vec<IntentRow>, JournalError> {
        let (run, credential) = (run.to_owned(), credential.to_owned());
        self.call(move |w| {
            w.require_run(&run)?;
            w.query_intents(
                "WHERE i.run_id = $1 AND i.credential = $2",
                vec![run, credential],
            )
        })
    }

    /// See `SqliteJournal::unfinished_cleanups`.
    pub fn unfinished_cleanups(&self, run: &str) -> Result<Vec<IntentRow>, JournalError> {
        let run = run.to_owned();
        self.call(move |w| {
            w.require_run(&run)?;
            w.query_intents(
                "WHERE i.run_id = $1 AND i.step IN ('clear_staging', 'unlock') \
             AND (o.result IS NULL OR o.result <> 'ok')",
                vec![run],
            )
        })
    }

    /// See `SqliteJournal::lease`; expiry is on the database's clock.
    pub fn lease(
        &self,
        run: &str,
        credential: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, JournalError> {
        let (run, credential, holder) = (run.to_owned(), credential.to_owned(), holder.to_owned());
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let taken = self.call(move |w| {
            let path = w.path.clone();
            w.transact("taking a lease", true, async |tx, _| {
                let changed = tx
                    .execute(
                        "INSERT INTO rekey.leases (credential, run_id, holder, expires_at_ms, taken_at)
                         SELECT $1, $2, $3, rekey.now_ms() + $4, $5
                         WHERE EXISTS (SELECT 1 FROM rekey.runs WHERE id = $2)
                         ON CONFLICT (credential) DO UPDATE SET
                             run_id = excluded.run_id,
                             holder = excluded.holder,
                             expires_at_ms = excluded.expires_at_ms,
                             taken_at = CASE WHEN rekey.leases.holder = excluded.holder
                                             THEN rekey.leases.taken_at ELSE excluded.taken_at END
                         WHERE rekey.leases.holder = excluded.holder
                            OR rekey.leases.expires_at_ms <= rekey.now_ms()",
                        &[&credential, &run, &holder, &ttl_ms, &now()],
                    )
                    .await?;
                if changed == 0 {
                    let run_known = tx
                        .query_opt("SELECT 1 FROM rekey.runs WHERE id = $1", &[&run])
                        .await?
                        .is_some();
                    if !run_known {
                        return Err(unknown_run(&path, &run));
                    }
                }
                Ok(changed == 1)
            })
        })?;
        Ok(taken)
    }

    pub fn release(&self, run: &str, credential: &str, holder: &str) -> Result<(), JournalError> {
        let (run, credential, holder) = (run.to_owned(), credential.to_owned(), holder.to_owned());
        let released = self.call(move |w| {
            w.transact("releasing a lease", true, async |tx, _| {
                Ok(tx
                    .execute(
                        "DELETE FROM rekey.leases WHERE credential = $1 AND holder = $2 AND run_id = $3",
                        &[&credential, &holder, &run],
                    )
                    .await?
                    == 1)
            })
        })?;
        if !released {
            tracing::warn!("Released a lease this holder no longer had (it expired).");
        }
        Ok(())
    }

    pub fn lease_holder(&self, credential: &str) -> Result<Option<(RunId, String)>, JournalError> {
        let credential = credential.to_owned();
        self.call(move |w| {
            w.transact("reading a lease", false, async |tx, _| {
                Ok(tx
                    .query_opt(
                        "SELECT run_id, holder FROM rekey.leases WHERE credential = $1",
                        &[&credential],
                    )
                    .await?
                    .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))))
            })
        })
    }

    pub fn break_lease(&self, credential: &str, holder: &str) -> Result<bool, JournalError> {
        let (credential, holder) = (credential.to_owned(), holder.to_owned());
        let broken = self.call(move |w| {
            w.transact("breaking a lease", true, async |tx, _| {
                Ok(tx
                    .execute(
                        "DELETE FROM rekey.leases WHERE credential = $1 AND holder = $2",
                        &[&credential, &holder],
                    )
                    .await?
                    == 1)
            })
        })?;
        if broken {
            tracing::warn!("Broke the lease of a holder that is gone.");
        }
        Ok(broken)
    }

    /// Leases that have not expired and runners' live claims on `run`'s credentials.
    pub fn holders(&self, run: &str) -> Result<Vec<Holding>, JournalError> {
        let run = run.to_owned();
        self.call(move |w| {
            w.transact("reading who holds what", false, async |tx, _| {
                let rows = tx
                    .query(
                        "SELECT t.credential, t.holder, t.claimed_at, t.expires_at_ms, t.zone
                         FROM rekey.tasks t
                         WHERE t.run_id = $1 AND t.status = 'claimed' AND t.expires_at_ms > rekey.now_ms()
                         UNION ALL
                         SELECT l.credential, l.holder, l.taken_at, l.expires_at_ms, NULL
                         FROM rekey.leases l
                         WHERE l.run_id = $1 AND l.expires_at_ms > rekey.now_ms()
                           AND NOT EXISTS (SELECT 1 FROM rekey.tasks t WHERE t.run_id = $1
                                           AND t.credential = l.credential AND t.status = 'claimed'
                                           AND t.expires_at_ms > rekey.now_ms())
                         ORDER BY 1",
                        &[&run],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| Holding {
                        credential: r.get(0),
                        holder: r.get(1),
                        since: r.get(2),
                        expires_at_ms: r.get(3),
                        zone: r.get(4),
                    })
                    .collect::<Vec<_>>())
            })
        })
    }

    pub fn run_count(&self) -> Result<u64, JournalError> {
        self.call(|w| {
            w.transact("counting runs", false, async |tx, _| {
                let n: i64 = tx
                    .query_one("SELECT count(*) FROM rekey.runs", &[])
                    .await?
                    .get(0);
                Ok(n.max(0) as u64)
            })
        })
    }
}

/// Sends `job` to the worker behind `jobs` and waits for its answer.
fn send<T: Send + 'static>(
    jobs: &mpsc::Sender<Job>,
    path: &Path,
    job: impl FnOnce(&mut Worker) -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    let (tx, rx) = mpsc::sync_channel(1);
    let gone = || JournalError::Postgres {
        path: path.to_path_buf(),
        doing: "talking to its connection thread",
        message: "the thread ended (a bug, or a panic reported above)".into(),
    };
    jobs.send(Box::new(move |w: &mut Worker| {
        let _ = tx.send(job(w));
    }))
    .map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

fn now() -> String {
    super::rfc3339(SystemTime::now())
}

fn unknown_run(path: &Path, id: &str) -> Fail {
    Fail::Journal(JournalError::UnknownRun {
        path: path.to_path_buf(),
        id: id.to_owned(),
    })
}

async fn upsert_state(
    tx: &tokio_postgres::Transaction<'_>,
    path: &Path,
    run: &str,
    credential: &str,
    state: CredentialState,
    detail: &Value,
) -> Result<(), Fail> {
    let changed = tx
        .execute(
            "INSERT INTO rekey.credential_states (run_id, credential, state, detail, updated_at)
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM rekey.runs WHERE id = $1)
             ON CONFLICT (run_id, credential)
             DO UPDATE SET state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at",
            &[&run, &credential, &state.as_str(), &detail.to_string(), &now()],
        )
        .await?;
    if changed == 0 {
        return Err(unknown_run(path, run));
    }
    Ok(())
}

impl Worker {
    /// Creates or migrates the schema (see `schema.rs`).
    fn migrate(&mut self) -> Result<(), JournalError> {
        let path = self.path.clone();
        let from = self.transact("migrating the schema", false, async |tx, _| {
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&schema::MIGRATION_LOCK],
            )
            .await?;
            let foreign = |reason: String| {
                Fail::Journal(JournalError::Foreign {
                    path: path.clone(),
                    reason,
                })
            };
            let has_schema = tx
                .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'rekey'", &[])
                .await?
                .is_some();
            let version: i32 = if has_schema {
                let meta = tx
                    .query_opt(
                        "SELECT 1 FROM pg_tables WHERE schemaname = 'rekey' AND tablename = 'meta'",
                        &[],
                    )
                    .await?;
                if meta.is_none() {
                    return Err(foreign(
                        "the database has a schema `rekey` that rekey did not create".into(),
                    ));
                }
                let row = tx
                    .query_one("SELECT application, version FROM rekey.meta", &[])
                    .await?;
                let application: String = row.get(0);
                if application != schema::APPLICATION {
                    return Err(foreign(format!(
                        "its schema `rekey` belongs to `{application}`"
                    )));
                }
                row.get(1)
            } else {
                tx.batch_execute(
                    "CREATE SCHEMA rekey;
                     CREATE TABLE rekey.meta (
                         id          integer PRIMARY KEY CHECK (id = 1),
                         application text NOT NULL,
                         version     integer NOT NULL
                     );",
                )
                .await?;
                tx.execute(
                    "INSERT INTO rekey.meta (id, application, version) VALUES (1, $1, 0)",
                    &[&schema::APPLICATION],
                )
                .await?;
                0
            };
            if version > schema::CURRENT_VERSION {
                return Err(Fail::Journal(JournalError::NewerSchema {
                    path: path.clone(),
                    found: i64::from(version),
                    supported: i64::from(schema::CURRENT_VERSION),
                }));
            }
            for migration in &schema::MIGRATIONS[version.max(0) as usize..] {
                tx.batch_execute(migration).await?;
            }
            tx.execute(
                "UPDATE rekey.meta SET version = $1",
                &[&schema::CURRENT_VERSION],
            )
            .await?;
            Ok(version)
        })?;
        if from < schema::CURRENT_VERSION {
            tracing::info!(journal = %self.path.display(), from, to = schema::CURRENT_VERSION, "Journal schema migrated.");
        }
        Ok(())
    }

    /// The fingerprint and audit keys, made on first use (whoever inserts first wins).
    fn keys(&mut self) -> Result<(Vec<u8>, Vec<u8>), JournalError> {
        self.transact("reading the journal's keys", false, async |tx, _| {
            for name in ["fingerprint", "audit"] {
                let key = rand::random::<[u8; 32]>().to_vec();
                tx.execute(
                    "INSERT INTO rekey.keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    &[&name, &key],
                )
                .await?;
            }
            let read = async |name: &str| -> Result<Vec<u8>, Fail> {
                Ok(tx
                    .query_one("SELECT key FROM rekey.keys WHERE name = $1", &[&name])
                    .await?
                    .get(0))
            };
            Ok((read("fingerprint").await?, read("audit").await?))
        })
    }

    /// Inserts run `run` (with its shared part: playbook and tasks) and its first
    /// audit line.
    fn create_run(
        &mut self,
        run: &NewRun,
        shared: Option<&SharedRun>,
    ) -> Result<RunId, JournalError> {
        let started_at = now();
        let path = self.path.clone();
        let id = self.transact("recording a new run", true, async |tx, lines| {
            // Ids are time plus 16 random bits; draw again on a collision.
            for _ in 0..8 {
                let id = super::new_run_id(&started_at);
                let (text, variables) = match shared {
                    Some(s) => (
                        Some(s.playbook.clone()),
                        Some(serde_json::to_string(&s.variables).unwrap_or_default()),
                    ),
                    None => (None, None),
                };
                let inserted = tx
                    .execute(
                        "INSERT INTO rekey.runs (id, playbook_name, playbook_path, playbook_sha256, mode, selection,
                                                 actor, status, started_at, expanded_sha256, playbook_text, variables)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', $8, $9, $10, $11)
                         ON CONFLICT (id) DO NOTHING",
                        &[
                            &id,
                            &run.playbook_name,
                            &run.playbook_path,
                            &run.playbook_sha256,
                            &run.mode,
                            &run.selection.to_string(),
                            &run.actor,
                            &started_at,
                            &run.expanded_sha256,
                            &text,
                            &variables,
                        ],
                    )
                    .await?;
                if inserted == 0 {
                    continue;
                }
                if let Some(s) = shared {
                    shared::insert_tasks(tx, &id, &s.tasks).await?;
                }
                lines
                    .append(
                        tx,
                        &id,
                        Event::RunStarted {
                            run: &id,
                            new_run: run,
                        },
                        "a new run",
                    )
                    .await?;
                return Ok(id);
            }
            Err(Fail::Journal(JournalError::Postgres {
                path: path.clone(),
                doing: "recording a new run",
                message: "no free run id after 8 draws".into(),
            }))
        })?;
        tracing::info!(run = %id, playbook = %run.playbook_name, mode = %run.mode, "Run recorded.");
        Ok(id)
    }

    /// Records `status` as run `id`'s end; `once`: only while it is `running`
    /// (several runners may see a shared run's last credential end), returning
    /// whether this call ended it.
    fn finish_run(
        &mut self,
        id: &str,
        status: RunStatus,
        once: bool,
    ) -> Result<bool, JournalError> {
        let path = self.path.clone();
        let ended = self.transact("finishing a run", true, async |tx, lines| {
            let sql = if once {
                "UPDATE rekey.runs SET status = $2, finished_at = $3 WHERE id = $1 AND status = 'running'"
            } else {
                "UPDATE rekey.runs SET status = $2, finished_at = $3 WHERE id = $1"
            };
            let changed = tx.execute(sql, &[&id, &status.as_str(), &now()]).await?;
            if changed == 0 {
                if once {
                    return Ok(false);
                }
                return Err(unknown_run(&path, id));
            }
            lines
                .append(
                    tx,
                    id,
                    Event::RunFinished { run: id, status },
                    "the end of a run",
                )
                .await?;
            Ok(true)
        })?;
        if ended {
            tracing::info!(run = %id, %status, "Run finished.");
        }
        Ok(ended)
    }

    fn require_run(&mut self, id: &str) -> Result<(), JournalError> {
        let id = id.to_owned();
        let path = self.path.clone();
        self.transact("looking up a run", false, async |tx, _| {
            match tx
                .query_opt("SELECT 1 FROM rekey.runs WHERE id = $1", &[&id])
                .await?
            {
                Some(_) => Ok(()),
                None => Err(unknown_run(&path, &id)),
            }
        })
    }

    fn states(&mut self, run: &str) -> Result<Vec<CredentialRow>, JournalError> {
        self.require_run(run)?;
        let run = run.to_owned();
        let rows = self.transact("reading credential states", false, async |tx, _| {
            let rows = tx
                .query(
                    "SELECT credential, state, detail, updated_at FROM rekey.credential_states
                     WHERE run_id = $1 ORDER BY seq",
                    &[&run],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        r.get::<_, String>(3),
                    )
                })
                .collect::<Vec<_>>())
        })?;
        rows.into_iter()
            .map(|(credential, state, detail, updated_at)| {
                Ok(CredentialRow {
                    state: state.parse().map_err(|e: String| {
                        self.corrupt(format!("credential `{credential}`: {e}"))
                    })?,
                    detail: self.json(&detail, "a credential state's detail")?,
                    credential,
                    updated_at,
                })
            })
            .collect()
    }

    fn outcome(
        &mut self,
        intent: IntentId,
        outcome: &Outcome,
        detail: &Value,
        state: Option<(CredentialState, &Value)>,
    ) -> Result<(), JournalError> {
        let path = self.path.clone();
        self.transact("recording an outcome", true, async |tx, lines| {
            let found = tx
                .query_opt(
                    "SELECT i.run_id, i.credential, i.step,
                            EXISTS (SELECT 1 FROM rekey.outcomes o WHERE o.intent_id = i.id)
                     FROM rekey.intents i WHERE i.id = $1 FOR UPDATE",
                    &[&intent.0],
                )
                .await?;
            let (run, credential, step) = match found {
                None => {
                    return Err(Fail::Journal(JournalError::UnknownIntent {
                        path: path.clone(),
                        id: intent.0,
                    }));
                }
                Some(r) if r.get::<_, bool>(3) => {
                    return Err(Fail::Journal(JournalError::OutcomeAlreadyRecorded {
                        path: path.clone(),
                        id: intent.0,
                    }));
                }
                Some(r) => (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                ),
            };
            let (result, kind, message) = match outcome {
                Outcome::Ok => ("ok", None, None),
                Outcome::Failed { kind, message } => {
                    ("failed", Some(kind.as_str()), Some(message.as_str()))
                }
            };
            tx.execute(
                "INSERT INTO rekey.outcomes (intent_id, result, error_kind, error_message, detail, finished_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[&intent.0, &result, &kind, &message, &detail.to_string(), &now()],
            )
            .await?;
            if let Some((state, state_detail)) = state {
                upsert_state(tx, &path, &run, &credential, state, state_detail).await?;
            }
            lines
                .append(
                    tx,
                    &run,
                    Event::Outcome {
                        run: &run,
                        credential: &credential,
                        step: &step,
                        intent,
                        outcome,
                        detail,
                    },
                    "an outcome",
                )
                .await?;
            if let Some((state, state_detail)) = state {
                lines
                    .append_state(tx, &run, &credential, state, state_detail)
                    .await?;
            }
            Ok(())
        })
    }

    fn query_runs(&mut self, tail: &str, params: Vec<String>) -> Result<Vec<RunRow>, JournalError> {
        let sql = format!(
            "SELECT id, playbook_name, playbook_path, playbook_sha256, mode, selection, actor, status,
                    started_at, finished_at, expanded_sha256, holder
             FROM rekey.runs {tail}"
        );
        let rows = self.transact("reading runs", false, async |tx, _| {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let rows = tx.query(&sql, &refs).await?;
            Ok(rows.iter().map(RawRun::from).collect::<Vec<_>>())
        })?;
        rows.into_iter()
            .map(|raw| {
                Ok(RunRow {
                    selection: self.json(&raw.selection, "a run's selection")?,
                    status: raw.status.parse().map_err(|e| self.corrupt(e))?,
                    id: raw.id,
                    playbook_name: raw.playbook_name,
                    playbook_path: raw.playbook_path,
                    playbook_sha256: raw.playbook_sha256,
                    mode: raw.mode,
                    actor: raw.actor,
                    started_at: raw.started_at,
                    finished_at: raw.finished_at,
                    expanded_sha256: raw.expanded_sha256,
                    holder: raw.holder,
                })
            })
            .collect()
    }

    fn query_intents(
        &mut self,
        filter: &str,
        params: Vec<String>,
    ) -> Result<Vec<IntentRow>, JournalError> {
        let sql = format!(
            "SELECT i.id, i.credential, i.step, i.detail, i.started_at,
                    o.result, o.error_kind, o.error_message, o.detail, o.finished_at
             FROM rekey.intents i LEFT JOIN rekey.outcomes o ON o.intent_id = i.id
             {filter}
             ORDER BY i.id"
        );
        let rows: Vec<super::RawIntent> =
            self.transact("reading intents", false, async |tx, _| {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                let rows = tx.query(&sql, &refs).await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        let outcome = r
                            .get::<_, Option<String>>(5)
                            .map(|result| (result, r.get(6), r.get(7), r.get(8), r.get(9)));
                        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), outcome)
                    })
                    .collect::<Vec<_>>())
            })?;
        rows.into_iter()
            .map(|raw| super::intent_row(raw, |detail| self.corrupt(detail)))
            .collect()
    }

    fn json(&self, text: &str, what: &str) -> Result<Value, JournalError> {
        serde_json::from_str(text)
            .map_err(|e| self.corrupt(format!("{what} is not valid JSON ({e})")))
    }

    fn corrupt(&self, detail: String) -> JournalError {
        JournalError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }
}

/// A run row as stored, before its JSON and status are read.
#[derive(serde::Serialize, serde::Deserialize)]
struct RawRun {
    id: String,
    playbook_name: String,
    playbook_path: String,
    playbook_sha256: String,
    mode: String,
    selection: String,
    actor: String,
    status: String,
    started_at: String,
    finished_at: Option<String>,
    expanded_sha256: Option<String>,
    holder: Option<String>,
}

impl From<&Row> for RawRun {
    fn from(r: &Row) -> RawRun {
        RawRun {
            id: r.get(0),
            playbook_name: r.get(1),
            playbook_path: r.get(2),
            playbook_sha256: r.get(3),
            mode: r.get(4),
            selection: r.get(5),
            actor: r.get(6),
            status: r.get(7),
            started_at: r.get(8),
            finished_at: r.get(9),
            expanded_sha256: r.get(10),
            holder: r.get(11),
        }
    }
}
