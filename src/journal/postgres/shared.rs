//! What only a shared run has: the playbook stored with it, its work queue, and
//! the runners that take the work.
//!
//! `rekey run --journal postgres://...` records the run with one task per
//! selected credential: its zone (the provider instance's) and the selected
//! credentials it depends on. A runner of zone Z claims tasks of Z whose
//! dependencies are done with `FOR UPDATE SKIP LOCKED` (two runners never get the
//! same task, and neither waits for the other), holds each under a claim that its
//! heartbeat renews, and marks it done when the credential's final state is
//! recorded. A claim that expires (its runner died, or lost the database for
//! longer than the TTL) is taken by another runner of the zone, which reconciles
//! the credential from the state the first one left, as `rekey resume` does.
//! Expiry is on the database's clock.

use super::worker::Fail;
use super::{PgJournal, now};
use crate::journal::{CredentialRow, JournalError, RunId, RunStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What `rekey run` records beside a shared run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharedRun {
    /// The playbook file's text, as the run read it.
    pub playbook: String,
    /// The value of each `${VAR}` the playbook expanded (`None`: unset), so that
    /// runners elsewhere expand it the same way. Never a secret: interpolation
    /// refuses secret-looking names.
    pub variables: BTreeMap<String, Option<String>>,
    /// One per selected credential, in playbook order.
    pub tasks: Vec<TaskSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub credential: String,
    pub zone: String,
    /// Selected credentials it depends on.
    pub depends_on: Vec<String>,
}

/// A credential a runner claimed.
#[derive(Clone, Debug)]
pub struct Claim {
    pub credential: String,
    /// The first dependency that ended without rotating: the credential is
    /// skipped, as in a run on one machine.
    pub failed_dependency: Option<String>,
    /// Where it stood when claimed: left by a runner whose claim expired, or by an
    /// earlier attempt `rekey resume` put back. `resume`'s reconciliation starts here.
    pub last: Option<CredentialRow>,
    /// The runner whose expired claim this one took over.
    pub taken_from: Option<String>,
}

/// A claim as the database returns it (its state not yet parsed).
#[derive(Serialize, Deserialize)]
struct RawClaim {
    credential: String,
    position: i32,
    failed_dependency: Option<String>,
    taken_from: Option<String>,
    state: Option<(String, String, String)>,
}

/// A task of a shared run, for `rekey status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    pub credential: String,
    pub zone: String,
    /// `pending`, `claimed` or `done`.
    pub status: String,
    pub holder: Option<String>,
    pub claimed_at: Option<String>,
    /// Whether the claim lapsed (its runner stopped renewing it).
    pub expired: bool,
    pub reclaims: i32,
}

/// A runner as it registered and last reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunnerRow {
    pub holder: String,
    pub zones: Vec<String>,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub started_at: String,
    /// Milliseconds since its last heartbeat, on the database's clock.
    pub silent_ms: i64,
    pub stopped_at: Option<String>,
}

/// Inserts `run`'s tasks (inside the transaction that records the run).
pub(super) async fn insert_tasks(
    tx: &tokio_postgres::Transaction<'_>,
    run: &str,
    tasks: &[TaskSpec],
) -> Result<(), Fail> {
    let statement = tx
        .prepare(
            "INSERT INTO rekey.tasks (run_id, credential, position, zone, depends_on, status)
             VALUES ($1, $2, $3, $4, $5, 'pending')",
        )
        .await?;
    for (position, task) in tasks.iter().enumerate() {
        let position = i32::try_from(position).unwrap_or(i32::MAX);
        tx.execute(
            &statement,
            &[
                &run,
                &task.credential,
                &position,
                &task.zone,
                &task.depends_on,
            ],
        )
        .await?;
    }
    Ok(())
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

impl PgJournal {
    /// Records a shared run: the run, its playbook and variables, and one pending
    /// task per selected credential, in one transaction (a runner never sees a run
    /// with part of its tasks).
    pub fn create_shared_run(
        &self,
        run: &crate::journal::NewRun,
        shared: &SharedRun,
    ) -> Result<RunId, JournalError> {
        let (run, shared) = (run.clone(), shared.clone());
        self.call(move |w| w.create_run(&run, Some(&shared)))
    }

    /// The playbook text and variables of shared run `id` (`None`: not a shared run).
    #[allow(clippy::type_complexity)]
    pub fn shared_run(
        &self,
        id: &str,
    ) -> Result<Option<(String, BTreeMap<String, Option<String>>)>, JournalError> {
        let id = id.to_owned();
        let found = self.call(move |w| {
            w.transact("reading a shared run", false, async |tx, _| {
                Ok(tx
                    .query_opt(
                        "SELECT playbook_text, variables FROM rekey.runs WHERE id = $1",
                        &[&id],
                    )
                    .await?
                    .and_then(|r| {
                        Some((
                            r.get::<_, Option<String>>(0)?,
                            r.get::<_, Option<String>>(1)?,
                        ))
                    }))
            })
        })?;
        let Some((text, variables)) = found else {
            return Ok(None);
        };
        let variables = serde_json::from_str(&variables).map_err(|e| JournalError::Corrupt {
            path: self.path.clone(),
            detail: format!("a shared run's variables are not valid JSON ({e})"),
        })?;
        Ok(Some((text, variables)))
    }

    /// Records runner `holder` (this process) serving `zones`.
    pub fn register_runner(&self, holder: &str, zones: &[String]) -> Result<(), JournalError> {
        let (holder, zones) = (holder.to_owned(), zones.to_vec());
        let host = crate::journal::this_host();
        let pid = i32::try_from(std::process::id()).unwrap_or(-1);
        self.call(move |w| {
            w.transact("registering a runner", true, async |tx, _| {
                tx.execute(
                    "INSERT INTO rekey.runners (holder, zones, host, pid, version, started_at, last_seen_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, rekey.now_ms())
                     ON CONFLICT (holder) DO UPDATE SET zones = excluded.zones,
                         last_seen_ms = excluded.last_seen_ms, stopped_at = NULL",
                    &[&holder, &zones, &host, &pid, &env!("CARGO_PKG_VERSION"), &now()],
                )
                .await?;
                Ok(())
            })
        })
    }

    /// The runner is alive: its claims and leases last `ttl` more (leases never
    /// less than they already do: a grace period may have lengthened one).
    /// Returns how many claims it still holds.
    pub fn heartbeat(&self, holder: &str, ttl: Duration) -> Result<u64, JournalError> {
        let holder = holder.to_owned();
        let ttl = ms(ttl);
        self.call(move |w| {
            w.transact("renewing claims", true, async |tx, _| {
                tx.execute(
                    "UPDATE rekey.runners SET last_seen_ms = rekey.now_ms() WHERE holder = $1",
                    &[&holder],
                )
                .await?;
                let claims = tx
                    .execute(
                        "UPDATE rekey.tasks SET expires_at_ms = rekey.now_ms() + $2
                         WHERE holder = $1 AND status = 'claimed'",
                        &[&holder, &ttl],
                    )
                    .await?;
                tx.execute(
                    "UPDATE rekey.leases SET expires_at_ms = greatest(expires_at_ms, rekey.now_ms() + $2)
                     WHERE holder = $1",
                    &[&holder, &ttl],
                )
                .await?;
                Ok(claims)
            })
        })
    }

    /// The runner stops (its claims were finished or given back).
    pub fn runner_stopped(&self, holder: &str) -> Result<(), JournalError> {
        let holder = holder.to_owned();
        self.call(move |w| {
            w.transact("recording a runner's stop", true, async |tx, _| {
                tx.execute(
                    "UPDATE rekey.runners SET stopped_at = $2 WHERE holder = $1",
                    &[&holder, &now()],
                )
                .await?;
                Ok(())
            })
        })
    }

    /// Running shared runs with unfinished tasks in one of `zones`, oldest first.
    pub fn runs_with_work(&self, zones: &[String]) -> Result<Vec<RunId>, JournalError> {
        let zones = zones.to_vec();
        self.call(move |w| {
            w.transact("looking for work", false, async |tx, _| {
                let rows = tx
                    .query(
                        "SELECT r.id FROM rekey.runs r
                         WHERE r.status = 'running' AND EXISTS (
                             SELECT 1 FROM rekey.tasks t
                             WHERE t.run_id = r.id AND t.zone = ANY($1) AND t.status <> 'done')
                         ORDER BY r.seq",
                        &[&zones],
                    )
                    .await?;
                Ok(rows.iter().map(|r| r.get(0)).collect::<Vec<String>>())
            })
        })
    }

    /// Claims up to `limit` tasks of `run` in `zones` that are ready (every
    /// dependency done), pending or with a claim that expired, for `ttl`. Skips
    /// rows another runner is claiming at this instant rather than waiting.
    pub fn claim(
        &self,
        run: &str,
        zones: &[String],
        holder: &str,
        ttl: Duration,
        limit: usize,
    ) -> Result<Vec<Claim>, JournalError> {
        let (run, zones, holder) = (run.to_owned(), zones.to_vec(), holder.to_owned());
        let (ttl, limit) = (ms(ttl), i64::try_from(limit).unwrap_or(i64::MAX));
        let raw: Vec<RawClaim> = self.call(move |w| {
            w.transact("claiming credentials", true, async |tx, _| {
                let rows = tx
                    .query(
                        "WITH ready AS (
                             SELECT t.run_id, t.credential, t.holder AS previous, t.status AS was
                             FROM rekey.tasks t
                             WHERE t.run_id = $1 AND t.zone = ANY($2)
                               AND (t.status = 'pending'
                                    OR (t.status = 'claimed' AND t.expires_at_ms <= rekey.now_ms()))
                               AND NOT EXISTS (
                                   SELECT 1 FROM rekey.tasks d
                                   WHERE d.run_id = t.run_id AND d.credential = ANY (t.depends_on)
                                     AND d.status <> 'done')
                             ORDER BY t.position
                             LIMIT $3
                             FOR UPDATE OF t SKIP LOCKED)
                         UPDATE rekey.tasks t
                         SET status = 'claimed', holder = $4, claimed_at = $5,
                             expires_at_ms = rekey.now_ms() + $6,
                             reclaims = t.reclaims + CASE WHEN ready.was = 'claimed' THEN 1 ELSE 0 END
                         FROM ready
                         WHERE t.run_id = ready.run_id AND t.credential = ready.credential
                         RETURNING t.credential, t.position,
                             (SELECT d FROM unnest(t.depends_on) AS d
                              JOIN rekey.credential_states s ON s.run_id = t.run_id AND s.credential = d
                              WHERE s.state <> 'rotated' LIMIT 1),
                             CASE WHEN ready.was = 'claimed' THEN ready.previous END,
                             (SELECT s.state FROM rekey.credential_states s
                              WHERE s.run_id = t.run_id AND s.credential = t.credential),
                             (SELECT s.detail FROM rekey.credential_states s
                              WHERE s.run_id = t.run_id AND s.credential = t.credential),
                             (SELECT s.updated_at FROM rekey.credential_states s
                              WHERE s.run_id = t.run_id AND s.credential = t.credential)",
                        &[&run, &zones, &limit, &holder, &now(), &ttl],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        let state = match (
                            r.get::<_, Option<String>>(4),
                            r.get::<_, Option<String>>(5),
                            r.get::<_, Option<String>>(6),
                        ) {
                            (Some(s), Some(d), Some(u)) => Some((s, d, u)),
                            _ => None,
                        };
                        RawClaim {
                            credential: r.get(0),
                            position: r.get(1),
                            failed_dependency: r.get(2),
                            taken_from: r.get(3),
                            state,
                        }
                    })
                    .collect::<Vec<_>>())
            })
        })?;
        let mut raw = raw;
        raw.sort_by_key(|c| c.position);
        raw.into_iter()
            .map(|c| {
                let last = match c.state {
                    None => None,
                    Some((state, detail, updated_at)) => Some(CredentialRow {
                        state: state.parse().map_err(|e: String| self.corrupt(e))?,
                        detail: serde_json::from_str(&detail).map_err(|e| {
                            self.corrupt(format!("a credential state's detail is not JSON ({e})"))
                        })?,
                        credential: c.credential.clone(),
                        updated_at,
                    }),
                };
                Ok(Claim {
                    credential: c.credential,
                    failed_dependency: c.failed_dependency,
                    last,
                    taken_from: c.taken_from,
                })
            })
            .collect()
    }

    /// Marks `holder`'s claim on `credential` done (its final state is recorded).
    /// `false`: the claim was lost meanwhile (it expired and another runner took it).
    pub fn complete(
        &self,
        run: &str,
        credential: &str,
        holder: &str,
    ) -> Result<bool, JournalError> {
        self.end_claim(run, credential, holder, "done")
    }

    /// Gives `holder`'s claim back, untouched, for another runner (or later).
    pub fn give_back(
        &self,
        run: &str,
        credential: &str,
        holder: &str,
    ) -> Result<bool, JournalError> {
        self.end_claim(run, credential, holder, "pending")
    }

    fn end_claim(
        &self,
        run: &str,
        credential: &str,
        holder: &str,
        status: &'static str,
    ) -> Result<bool, JournalError> {
        let (run, credential, holder) = (run.to_owned(), credential.to_owned(), holder.to_owned());
        self.call(move |w| {
            w.transact("ending a claim", true, async |tx, _| {
                let holder_after: Option<&str> = (status == "done").then_some(holder.as_str());
                Ok(tx
                    .execute(
                        "UPDATE rekey.tasks SET status = $4, holder = $5, expires_at_ms = NULL
                         WHERE run_id = $1 AND credential = $2 AND holder = $3 AND status = 'claimed'",
                        &[&run, &credential, &holder, &status, &holder_after],
                    )
                    .await?
                    == 1)
            })
        })
    }

    /// Ends shared run `run` when no task is left, with the status `status_of`
    /// gives its credential states; only one runner ends it. Returns the status
    /// when this call ended it.
    pub fn finish_if_done(
        &self,
        run: &str,
        status_of: fn(&[CredentialRow]) -> RunStatus,
    ) -> Result<Option<RunStatus>, JournalError> {
        let run = run.to_owned();
        self.call(move |w| {
            let open: i64 = w.transact("counting open tasks", false, async |tx, _| {
                Ok(tx
                    .query_one(
                        "SELECT count(*) FROM rekey.tasks WHERE run_id = $1 AND status <> 'done'",
                        &[&run],
                    )
                    .await?
                    .get(0))
            })?;
            if open > 0 {
                return Ok(None);
            }
            let status = status_of(&w.states(&run)?);
            Ok(w.finish_run(&run, status, true)?.then_some(status))
        })
    }

    /// Puts `credentials` of shared run `run` back in the queue (for `rekey
    /// resume`), except those a runner holds now. Returns how many.
    pub fn requeue(&self, run: &str, credentials: &[String]) -> Result<u64, JournalError> {
        let (run, credentials) = (run.to_owned(), credentials.to_vec());
        self.call(move |w| {
            w.transact("putting credentials back in the queue", true, async |tx, _| {
                Ok(tx
                    .execute(
                        "UPDATE rekey.tasks SET status = 'pending', holder = NULL, expires_at_ms = NULL
                         WHERE run_id = $1 AND credential = ANY ($2)
                           AND NOT (status = 'claimed' AND expires_at_ms > rekey.now_ms())",
                        &[&run, &credentials],
                    )
                    .await?)
            })
        })
    }

    /// The tasks of shared run `run`, in playbook order (empty for a run that is
    /// not shared).
    pub fn tasks(&self, run: &str) -> Result<Vec<TaskRow>, JournalError> {
        let run = run.to_owned();
        self.call(move |w| {
            w.transact("reading tasks", false, async |tx, _| {
                let rows = tx
                    .query(
                        "SELECT credential, zone, status, holder, claimed_at,
                                status = 'claimed' AND expires_at_ms <= rekey.now_ms(), reclaims
                         FROM rekey.tasks WHERE run_id = $1 ORDER BY position",
                        &[&run],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| TaskRow {
                        credential: r.get(0),
                        zone: r.get(1),
                        status: r.get(2),
                        holder: r.get(3),
                        claimed_at: r.get(4),
                        expired: r.get(5),
                        reclaims: r.get(6),
                    })
                    .collect::<Vec<_>>())
            })
        })
    }

    /// Every runner that registered, most recently seen first.
    pub fn runners(&self) -> Result<Vec<RunnerRow>, JournalError> {
        self.call(|w| {
            w.transact("reading runners", false, async |tx, _| {
                let rows = tx
                    .query(
                        "SELECT holder, zones, host, pid, version, started_at,
                                rekey.now_ms() - last_seen_ms, stopped_at
                         FROM rekey.runners ORDER BY last_seen_ms DESC",
                        &[],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| RunnerRow {
                        holder: r.get(0),
                        zones: r.get(1),
                        host: r.get(2),
                        pid: r.get(3),
                        version: r.get(4),
                        started_at: r.get(5),
                        silent_ms: r.get(6),
                        stopped_at: r.get(7),
                    })
                    .collect::<Vec<_>>())
            })
        })
    }

    fn corrupt(&self, detail: String) -> JournalError {
        JournalError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }
}
