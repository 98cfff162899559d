//! `rekey runner`: works on shared runs (a `postgres://` journal). It registers,
//! heartbeats, claims the credentials of its zones whose dependencies are done
//! (`journal/postgres/shared.rs`: `FOR UPDATE SKIP LOCKED`), rotates each with
//! the engine under the claim (the engine takes the journal lease and the Vault
//! lock as well, as in a run on one machine), and marks it done. A claim whose
//! runner died expires; the next runner of the zone reconciles the credential
//! from where it was left, as `rekey resume` does (`Engine::work_claimed`).
//! `rekey run --journal postgres://...` records a run and, unless `--no-work`,
//! serves it here with every zone it has.
//!
//! Invariant: a runner touches a credential only under its claim (renewed by the
//! heartbeat with the lease), the journal lease and the Vault lock.

use super::setup::{audit_sinks, build_provider, credential_infos, vault_config};
use super::{Io, Refusal};
use crate::catalog::Catalog;
use crate::engine::{Engine, Outcome, RunSummary, Tuning};
use crate::exit::ExitStatus;
use crate::journal::postgres::PgJournal;
use crate::journal::{Journal, Location};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long an idle runner waits before it looks for work again (at most).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often a runner with credentials in flight looks for more it may claim
/// (dependencies other runners finished meanwhile).
const BUSY_POLL: Duration = Duration::from_millis(200);

pub fn runner(args: &crate::cli::RunnerArgs, catalog: &Catalog, io: &mut Io) -> Result<ExitStatus> {
    let location = shared_location(&args.journal)?;
    for zone in &args.zones {
        check_zone(zone)?;
    }
    let options = Options {
        zones: args.zones.clone(),
        once: args.once,
        only_run: args.run.clone(),
        lease: args.lease,
        sinks: args.audit_sinks.clone(),
    };
    let served = serve(&location, &options, catalog, io)?;
    Ok(if served.journal_failed {
        ExitStatus::Failure
    } else if served.interrupted {
        ExitStatus::Interrupted
    } else {
        ExitStatus::Success
    })
}

/// A `postgres://` journal, or a refusal saying why it must be one.
pub(super) fn shared_location(given: &std::ffi::OsStr) -> Result<Location> {
    let location = Location::parse(given).map_err(Refusal::new)?;
    if !location.is_shared() {
        return Err(Refusal::new(format!(
            "{} is not a shared journal: runners work on a `postgres://` journal",
            location.display()
        ))
        .help("pass --journal 'postgres://USER@HOST/DATABASE' (docs/shared-journal.md)")
        .into());
    }
    Ok(location)
}

/// The journal's password from `REKEY_JOURNAL_PASSWORD`.
pub(super) fn journal_password() -> Option<crate::secret::Secret> {
    crate::harden::secret_env(crate::env_vars::REKEY_JOURNAL_PASSWORD)
        .map(|p| crate::secret::Secret::new(p.as_str()))
}

/// The playbook's rule for `zone:` (`playbook::is_zone_name`).
fn check_zone(zone: &str) -> Result<()> {
    if crate::playbook::is_zone_name(zone) {
        Ok(())
    } else {
        Err(
            Refusal::new(format!("`{}` is not a zone name", zone.escape_debug()))
                .help("a zone is 1 to 64 letters, digits, `-`, `_` or `.`, as the playbook's `zone:` names it")
                .into(),
        )
    }
}

/// What a runner serves.
pub(super) struct Options {
    pub(super) zones: Vec<String>,
    pub(super) once: bool,
    pub(super) only_run: Option<String>,
    pub(super) lease: Duration,
    pub(super) sinks: Vec<String>,
}

/// How serving ended.
pub(super) struct Served {
    /// Stopped by Ctrl-C.
    pub(super) interrupted: bool,
    /// A journal call failed (claims held are left to expire).
    pub(super) journal_failed: bool,
}

/// Registers a runner for `options.zones` and works until there is no more work
/// (`once`) or Ctrl-C.
pub(super) fn serve(
    location: &Location,
    options: &Options,
    catalog: &Catalog,
    io: &mut Io,
) -> Result<Served> {
    let password = journal_password();
    let queue = Journal::open_at(location, password.as_ref())?;
    let holder = Journal::new_lease_holder();
    let pg = queue.shared().context("a shared journal")?;
    pg.register_runner(&holder, &options.zones)?;
    writeln!(
        io.stderr,
        "runner {holder}: zones {}, journal {}",
        options.zones.join(","),
        location.display()
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = Heartbeat::start(location, password.as_ref(), &holder, options.lease)?;
    let result = runtime.block_on(async {
        let flag = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
                eprintln!("rekey runner: interrupted; finishing the credentials it holds, claiming no more (Ctrl-C again to stop now: its claims expire and another runner takes them over)");
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(i32::from(ExitStatus::Interrupted.code()));
                }
            }
        });
        let mut worker = Worker {
            location,
            password: password.as_ref(),
            queue: pg,
            holder: &holder,
            options,
            catalog,
            stop: &stop,
            engines: HashMap::new(),
        };
        worker.work().await
    });
    heartbeat.stop();
    let stopped = pg.runner_stopped(&holder);
    let journal_failed = match result {
        Ok(()) => false,
        Err(e) => {
            if e.downcast_ref::<Refusal>().is_some() {
                return Err(e);
            }
            writeln!(io.stderr, "error: runner {holder}: {e:#}")?;
            true
        }
    };
    stopped?;
    Ok(Served {
        interrupted: stop.load(Ordering::SeqCst),
        journal_failed,
    })
}

/// Renews the runner's claims and leases on a connection of its own, every
/// third of the lease, until stopped.
struct Heartbeat {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Heartbeat {
    fn start(
        location: &Location,
        password: Option<&crate::secret::Secret>,
        holder: &str,
        lease: Duration,
    ) -> Result<Heartbeat> {
        let journal = Journal::open_at(location, password)?;
        let done = Arc::new(AtomicBool::new(false));
        let (flag, holder) = (done.clone(), holder.to_owned());
        let every = (lease / 3).max(Duration::from_millis(100));
        let thread = std::thread::Builder::new()
            .name("rekey-heartbeat".into())
            .spawn(move || {
                let Some(pg) = journal.shared() else { return };
                let tick = Duration::from_millis(50).min(every);
                let mut waited = Duration::ZERO;
                while !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(tick);
                    waited += tick;
                    if waited < every {
                        continue;
                    }
                    waited = Duration::ZERO;
                    if let Err(e) = pg.heartbeat(&holder, lease) {
                        tracing::warn!("Heartbeat failed: {e}");
                    }
                }
            })?;
        Ok(Heartbeat { done, thread })
    }

    fn stop(self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

struct Worker<'a> {
    location: &'a Location,
    password: Option<&'a crate::secret::Secret>,
    queue: &'a PgJournal,
    holder: &'a str,
    options: &'a Options,
    catalog: &'a Catalog,
    stop: &'a Arc<AtomicBool>,
    /// One engine per run worked on (its playbook, Vault login, providers).
    engines: HashMap<String, Engine>,
}

impl Worker<'_> {
    async fn work(&mut self) -> Result<()> {
        let mut idle = BUSY_POLL;
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut runs = self.queue.runs_with_work(&self.options.zones)?;
            if let Some(only) = &self.options.only_run {
                runs.retain(|r| r == only);
            }
            self.engines.retain(|id, _| runs.contains(id));
            if runs.is_empty() && self.options.once {
                return Ok(());
            }
            let mut worked = false;
            for run in &runs {
                if self.stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                worked |= self.work_on(run).await?;
            }
            if worked {
                idle = BUSY_POLL;
            } else {
                // Waiting for another zone's dependencies, or for claims held
                // elsewhere to end or expire.
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(IDLE_POLL);
            }
        }
    }

    /// Claims and rotates credentials of `run` until none is left to claim and
    /// none is in flight. Returns whether it worked on any.
    async fn work_on(&mut self, run: &str) -> Result<bool> {
        let engine = match self.engines.get(run) {
            Some(e) => e.clone(),
            None => {
                let e = self.engine_for(run).await?;
                self.engines.insert(run.to_owned(), e.clone());
                e
            }
        };
        let slots = engine.playbook.defaults.concurrency.max(1) as usize;
        // The claimed credentials in flight, one poller task per provider instance
        // (as `rekey run` drives them: instances side by side on the runtime's
        // threads, one instance's requests in its rate limiter's order).
        let instances = engine.playbook.providers.len() + 1;
        let mut in_flight = crate::engine::Pollers::new(instances);
        let mut running = 0usize;
        let mut worked = false;
        loop {
            if !self.stop.load(Ordering::SeqCst) && running < slots {
                let claims = self.queue.claim(
                    run,
                    &self.options.zones,
                    self.holder,
                    self.options.lease,
                    slots - running,
                )?;
                for claim in claims {
                    let Some(index) = engine
                        .playbook
                        .credentials
                        .iter()
                        .position(|c| c.id == claim.credential)
                    else {
                        // Not in the playbook stored with the run: cannot be.
                        self.queue.give_back(run, &claim.credential, self.holder)?;
                        continue;
                    };
                    if let Some(from) = &claim.taken_from {
                        tracing::warn!(run, credential = %claim.credential, from = %from, "Claim expired: taking the credential over and reconciling it.");
                    }
                    let instance = engine.instance_of(index);
                    let engine = engine.clone();
                    let run = run.to_owned();
                    running += 1;
                    in_flight.push(instance, async move {
                        let outcome = engine
                            .work_claimed(
                                &run,
                                index,
                                claim.last.as_ref(),
                                claim.taken_from.is_some(),
                                claim.failed_dependency.as_deref(),
                            )
                            .await;
                        (claim.credential, outcome)
                    });
                }
            }
            if running == 0 {
                break;
            }
            tokio::select! {
                (credential, outcome) = in_flight.next() => {
                    running -= 1;
                    worked = true;
                    let outcome = outcome?;
                    if !matches!(outcome, Outcome::Rotated { .. }) {
                        tracing::warn!(run, credential = %credential, state = %outcome.state(), "Credential ended without rotating.");
                    }
                    if !self.queue.complete(run, &credential, self.holder)? {
                        tracing::warn!(run, credential = %credential, "The claim expired before the credential ended; its outcome is recorded.");
                    }
                }
                () = tokio::time::sleep(BUSY_POLL) => {}
            }
        }
        if let Some(status) = self.queue.finish_if_done(run, RunSummary::status_of_rows)? {
            eprintln!("run {run} finished: {status}");
            // What Vault did not let the run remove (staging copies, locks).
            let left = engine.tidy(run).await?;
            if !left.is_empty() {
                eprintln!(
                    "run {run}: Vault still holds {} entries it could not remove: {}",
                    left.len(),
                    left.iter()
                        .map(|l| l.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        Ok(worked)
    }

    /// The engine for shared run `run`: its playbook as stored (expanded with the
    /// stored variables), the Vault login from this runner's environment, the
    /// providers of this runner's zones, and a journal connection whose records
    /// get their audit lines in the run's chain.
    async fn engine_for(&self, run: &str) -> Result<Engine> {
        let row = self
            .queue
            .run(run)?
            .with_context(|| format!("run {run} vanished from the journal"))?;
        let (text, variables) = self.queue.shared_run(run)?.with_context(|| {
            format!("run {run} is not a shared run (it has no stored playbook)")
        })?;
        let env = |name: &str| variables.get(name).cloned().flatten();
        let loaded = crate::playbook::load_str(&row.playbook_path, &text, &env, self.catalog)
            .map_err(|report| {
                anyhow::anyhow!(
                    "the playbook stored with run {run} does not load in this runner ({} problems; is `--providers` the same as where the run was recorded?)",
                    report.diagnostics.len()
                )
            })?;
        crate::harden::take_playbook_env(&loaded.playbook);
        let pb = Arc::new(loaded.playbook);
        let vault = vault_config(&pb)?;
        let store = crate::store::VaultStore::connect(&vault).await?;
        let mut actor = crate::audit::Actor::from_os();
        if let Some((entity, name)) = store.identity().await {
            actor.vault_entity_id = entity;
            actor.vault_display_name = name;
        }
        let mut journal = Journal::open_at(self.location, self.password)?;
        let pg = journal.shared().context("a shared journal")?;
        let (audit_key, fingerprint_key) = (pg.audit_key(), pg.fingerprint_key());
        journal.set_mirror(Box::new(crate::audit::ChainMirror::new(
            audit_key,
            actor,
            credential_infos(&pb),
            audit_sinks(&self.options.sinks)?,
        )));
        let mut providers = indexmap::IndexMap::new();
        let mut refused = Vec::new();
        for (name, instance) in &pb.providers {
            if !self.options.zones.contains(&instance.zone)
                || !pb.credentials.iter().any(|c| &c.provider == name)
                || !self
                    .catalog
                    .get(&instance.type_name)
                    .is_some_and(|t| t.available)
            {
                continue;
            }
            match build_provider(instance, self.catalog, &store).await {
                Ok(p) => {
                    providers.insert(name.clone(), p);
                }
                Err(e) => refused.push(format!("provider instance `{name}`: {e}")),
            }
        }
        if !refused.is_empty() {
            anyhow::bail!("run {run}: {}", refused.join("; "));
        }
        let tuning = Tuning {
            lease: self.options.lease,
            ..Tuning::default()
        };
        let mut builder = Engine::builder(pb, Arc::new(store), journal, fingerprint_key)
            .holder(self.holder.to_owned())
            .tuning(tuning)
            .stop_flag(self.stop.clone());
        for (name, provider) in providers {
            builder = builder.provider(name, provider);
        }
        let engine = builder.build()?;
        tracing::info!(run, holder = %self.holder, "Working on run.");
        Ok(engine)
    }
}
