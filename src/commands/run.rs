//! `rekey run`, `rekey resume` and `rekey rollback`: the commands that drive the
//! engine, and the summary they print.

use super::operator::{resume_operator, terminal_operator};
use super::setup::{
    AuditSetup, Hooks, Prepared, file_sha256, load_for_run, open_journal, prepare, with_engine,
};
use super::{Io, Refusal};
use crate::catalog::Catalog;
use crate::cli::Format;
use crate::exit::ExitStatus;
use crate::journal::CredentialState;
use crate::playbook;
use anyhow::Result;
use std::path::PathBuf;

pub fn run(args: &crate::cli::RunArgs, catalog: &Catalog, io: &mut Io) -> Result<ExitStatus> {
    let (loaded, selection, expanded_sha256) =
        load_for_run(&args.playbook, &args.selection, catalog, io)?;
    let prepared = prepare(&args.playbook, loaded, &selection, catalog)?;
    let (journal, key) = open_journal(&args.journal.path)?;
    let actor = crate::audit::Actor::from_os();
    let mut new_run = crate::journal::NewRun {
        playbook_name: prepared.playbook.name.clone(),
        playbook_path: std::fs::canonicalize(&args.playbook)
            .unwrap_or(args.playbook.clone())
            .display()
            .to_string(),
        playbook_sha256: file_sha256(&args.playbook),
        mode: match prepared.playbook.incident.mode {
            playbook::Mode::Breach => "breach".into(),
            playbook::Mode::Routine => "routine".into(),
        },
        selection: serde_json::json!({ "compromised": selection.compromised, "tags": selection.tags, "only": selection.only }),
        actor: actor.user.clone(),
        expanded_sha256: Some(expanded_sha256),
    };
    let audit = AuditSetup::from_args(&args.journal);
    let notifier = crate::notify::Notifier::start(&prepared.playbook);
    let hooks = Hooks {
        operator: terminal_operator(),
        notifier: notifier.clone(),
    };
    let max_age = args.max_age;
    let (summary, not_due) = with_engine(
        prepared,
        journal,
        key,
        &audit,
        actor,
        hooks,
        async |engine, waves| {
            // Hygiene: only what is due under max_age runs; the rest is
            // recorded with the run, so `resume` leaves it out too.
            let (waves, not_due) = due_only(engine, waves, max_age).await;
            if !not_due.is_empty() {
                new_run.selection["not_due"] =
                    serde_json::json!(not_due.iter().map(|n| &n.id).collect::<Vec<_>>());
            }
            Ok((engine.run(&new_run, &waves).await?, not_due))
        },
    )?;
    audit.report(io)?;
    if let Some(n) = &notifier {
        n.run_ended(&summary, not_due.len());
        report_delivery(&n.finish(), io)?;
    }
    print_summary(&summary, &not_due, args.format, io)
}

/// A credential a hygiene run left alone: younger than its `max_age`.
#[derive(Debug, serde::Serialize)]
pub(super) struct NotDue {
    id: String,
    /// `None` when recorded by an earlier process (`resume`).
    #[serde(skip_serializing_if = "Option::is_none")]
    age_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_age_seconds: Option<u64>,
    detail: String,
}

/// Splits `waves` into what is due under each credential's `max_age` (the
/// command line's overrides the playbook's) and what is not, from the ages
/// Vault's metadata and the providers give. Credentials without a `max_age`
/// are always due.
async fn due_only(
    engine: &crate::engine::Engine,
    waves: &[Vec<usize>],
    max_age: Option<std::time::Duration>,
) -> (Vec<Vec<usize>>, Vec<NotDue>) {
    use crate::plan::age;
    let pb = &engine.playbook;
    let policy = |i: usize| age::effective(pb.credentials[i].max_age, max_age);
    let aged: Vec<usize> = waves
        .iter()
        .flatten()
        .copied()
        .filter(|&i| policy(i).is_some())
        .collect();
    if aged.is_empty() {
        return (waves.to_vec(), Vec::new());
    }
    let ages = crate::hygiene::ages(engine.store.as_ref(), &engine.providers, pb, &aged).await;
    let now = age::now();
    let mut not_due = Vec::new();
    let mut due = Vec::new();
    for wave in waves {
        let mut kept = Vec::new();
        for &i in wave {
            let (Some(limit), Some(a)) = (policy(i), ages.get(&i)) else {
                kept.push(i);
                continue;
            };
            let id = &pb.credentials[i].id;
            if age::judge(a, limit, now) == age::Verdict::NotDue {
                not_due.push(NotDue {
                    id: id.clone(),
                    age_seconds: a.at(now).map(|d| d.as_secs()),
                    max_age_seconds: Some(limit.as_secs()),
                    detail: age::describe(Some(a), limit, now),
                });
            } else {
                tracing::info!(credential = %id, "Due: {}", age::describe(Some(a), limit, now));
                kept.push(i);
            }
        }
        if !kept.is_empty() {
            due.push(kept);
        }
    }
    (due, not_due)
}

/// What the run's webhooks did not get, on stderr.
fn report_delivery(delivery: &crate::notify::Delivery, io: &mut Io) -> Result<()> {
    for failed in &delivery.failed {
        writeln!(io.stderr, "warning: notification not delivered: {failed}")?;
    }
    Ok(())
}

/// Refuses to act on a journal that is not there (a mistyped `--journal` would
/// otherwise create an empty one).
fn journal_must_exist(args: &crate::cli::JournalArgs) -> Result<()> {
    super::setup::refuse_shared(&args.path)?;
    if args.path.exists() {
        return Ok(());
    }
    Err(
        Refusal::new(format!("no journal at {}", args.path.display()))
            .help("pass the --journal the run used")
            .into(),
    )
}

pub fn resume(args: &crate::cli::ResumeArgs, catalog: &Catalog, io: &mut Io) -> Result<ExitStatus> {
    journal_must_exist(&args.journal)?;
    let (journal, key) = open_journal(&args.journal.path)?;
    let run = match &args.run {
        Some(id) => journal.run(id)?,
        None => journal.latest_unfinished()?,
    };
    let Some(run) = run else {
        return Err(Refusal::new(format!(
            "no unfinished run in {} (give a run id to resume a finished one)",
            args.journal.path.display()
        ))
        .into());
    };
    let prepared = reload_run(&run, catalog, io)?;
    writeln!(
        io.stderr,
        "resuming run {} of {}",
        run.id, run.playbook_path
    )?;
    let operator = resume_operator(&args.operator, &journal, &run.id)?;
    let run_id = run.id.clone();
    let audit = AuditSetup::from_args(&args.journal);
    let notifier = crate::notify::Notifier::start(&prepared.playbook);
    let hooks = Hooks {
        operator,
        notifier: notifier.clone(),
    };
    let summary = with_engine(
        prepared,
        journal,
        key,
        &audit,
        crate::audit::Actor::from_os(),
        hooks,
        async |engine, waves| Ok(engine.resume(&run_id, waves).await?),
    )?;
    audit.report(io)?;
    let not_due: Vec<NotDue> = recorded_not_due(&run)
        .into_iter()
        .map(|id| NotDue {
            id,
            age_seconds: None,
            max_age_seconds: None,
            detail: "not due when the run started (younger than its max_age)".into(),
        })
        .collect();
    if let Some(n) = &notifier {
        n.run_ended(&summary, not_due.len());
        report_delivery(&n.finish(), io)?;
    }
    print_summary(&summary, &not_due, args.format, io)
}

/// The credentials run `run` left out as not due (recorded in its selection).
fn recorded_not_due(run: &crate::journal::RunRow) -> Vec<String> {
    run.selection
        .get("not_due")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub fn rollback(
    args: &crate::cli::RollbackArgs,
    catalog: &Catalog,
    io: &mut Io,
) -> Result<ExitStatus> {
    journal_must_exist(&args.journal)?;
    let (journal, key) = open_journal(&args.journal.path)?;
    let Some(run) = journal.run(&args.run)? else {
        return Err(Refusal::new(format!(
            "no run `{}` in {}",
            args.run,
            args.journal.path.display()
        ))
        .into());
    };
    if run.mode == "breach" {
        return Err(Refusal::new(format!(
            "run {} was a breach response; rolling it back would restore values the attacker may know",
            run.id
        ))
        .help("rekey never restores a compromised value; rotate again (`rekey run`) to move forward")
        .into());
    }
    if matches!(
        run.status,
        crate::journal::RunStatus::Running
            | crate::journal::RunStatus::Interrupted
            | crate::journal::RunStatus::AwaitingOperator
    ) {
        return Err(Refusal::new(format!(
            "run {} is {}; finish it with `rekey resume` before rolling it back",
            run.id, run.status
        ))
        .into());
    }
    let prepared = reload_run(&run, catalog, io)?;
    let run_id = run.id.clone();
    let audit = AuditSetup::from_args(&args.journal);
    let hooks = Hooks {
        operator: std::sync::Arc::new(crate::provider::manual::Nobody),
        notifier: None,
    };
    let summary = with_engine(
        prepared,
        journal,
        key,
        &audit,
        crate::audit::Actor::from_os(),
        hooks,
        async |engine, waves| Ok(engine.roll_back(&run_id, waves).await?),
    )?;
    audit.report(io)?;
    let status = print_summary(&summary, &[], args.format, io)?;
    // For a rollback, "rolled back" is success.
    Ok(
        if summary.count(CredentialState::Skipped) + summary.count(CredentialState::Quarantined)
            == 0
        {
            ExitStatus::Success
        } else {
            status
        },
    )
}

/// The playbook and selection a recorded run used, ready to run again (resume,
/// rollback). The playbook must be unchanged: rekey will not finish or undo a run
/// against different instructions.
fn reload_run<'c>(
    run: &crate::journal::RunRow,
    catalog: &'c Catalog,
    io: &mut Io,
) -> Result<Prepared<'c>> {
    let path = PathBuf::from(&run.playbook_path);
    if file_sha256(&path) != run.playbook_sha256 {
        return Err(Refusal::new(format!(
            "{} changed since run {} started",
            path.display(),
            run.id
        ))
        .help(format!(
            "restore the playbook as it was (its SHA-256 was {}); rekey acts on a run only with the instructions it started with",
            run.playbook_sha256
        ))
        .into());
    }
    let strings = |k: &str| {
        run.selection
            .get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let selection_args = crate::cli::SelectionArgs {
        compromised: strings("compromised"),
        tags: strings("tags"),
        only: strings("only"),
    };
    let (loaded, selection, expanded) = load_for_run(&path, &selection_args, catalog, io)?;
    if let Some(recorded) = &run.expanded_sha256
        && *recorded != expanded
    {
        return Err(Refusal::new(format!(
            "{} expands differently than when run {} started: a `${{VAR}}` it uses has another value now",
            path.display(),
            run.id
        ))
        .help("set the variables the playbook uses (VAULT_ADDR, ...) as they were when the run started; rekey acts on a run only with the instructions it started with")
        .into());
    }
    let mut prepared = prepare(&path, loaded, &selection, catalog)?;
    prepared.leave_out(&recorded_not_due(run));
    Ok(prepared)
}

/// One instance's totals: requests, rate-limited answers, retries, and what rekey
/// learned about its real limit.
fn instance_line(i: &crate::engine::limits::LimitStats) -> String {
    let rate = |r: f64| {
        if r >= 10.0 {
            format!("{r:.0}/s")
        } else {
            format!("{r:.2}/s")
        }
    };
    let mut line = format!(
        "instance {}: {} requests, {} rate-limited",
        i.instance, i.requests, i.rate_limited
    );
    if i.retries + i.retries_refused > 0 {
        line += &format!(", {} retried", i.retries);
        if i.retries_refused > 0 {
            line += &format!(" ({} refused by the retry budget)", i.retries_refused);
        }
    }
    match i.learned_per_second {
        Some(l) => {
            let burst = i
                .learned_burst
                .map(|b| format!(", burst {b}"))
                .unwrap_or_default();
            line += &format!(
                "; the provider admits about {}{burst} (configured {}): ended at {}, set `rate` in the playbook to match",
                rate(l),
                rate(i.configured_per_second),
                rate(i.final_per_second)
            )
        }
        None => line += &format!("; limit {}", rate(i.configured_per_second)),
    }
    line
}

/// The run's summary on stdout (text or JSON), what is left to do on stderr, and
/// the exit status it means.
fn print_summary(
    summary: &crate::engine::RunSummary,
    not_due: &[NotDue],
    format: Format,
    io: &mut Io,
) -> Result<ExitStatus> {
    if format == Format::Json {
        let mut doc = serde_json::to_value(summary)?;
        doc["not_due"] = serde_json::to_value(not_due)?;
        writeln!(io.stdout, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        writeln!(io.stdout, "Run {}: {}", summary.run_id, summary.status())?;
        for r in &summary.results {
            let detail = match &r.outcome {
                crate::engine::Outcome::Rotated { key_id, version } => format!(
                    "rotated (Vault version {version}{})",
                    key_id
                        .as_ref()
                        .map(|k| format!(", key {k}"))
                        .unwrap_or_default()
                ),
                crate::engine::Outcome::RolledBack { reason } => format!("rolled back: {reason}"),
                crate::engine::Outcome::Quarantined { reason, action, .. } => {
                    format!("QUARANTINED: {reason}\n      to do: {action}")
                }
                crate::engine::Outcome::Skipped { reason } => format!("skipped: {reason}"),
                crate::engine::Outcome::AwaitingOperator { .. } => {
                    "awaiting operator (manual step)".into()
                }
                crate::engine::Outcome::NotStarted { reason } => format!("not started: {reason}"),
            };
            writeln!(io.stdout, "  {:<24} {detail}", r.id)?;
        }
        let mut counts = format!(
            "{} rotated, {} rolled back, {} quarantined, {} skipped, {} awaiting an operator",
            summary.count(CredentialState::Rotated),
            summary.count(CredentialState::RolledBack),
            summary.count(CredentialState::Quarantined),
            summary.count(CredentialState::Skipped),
            summary.count(CredentialState::AwaitingOperator)
        );
        let not_started = summary.count(CredentialState::NotStarted);
        if not_started > 0 {
            counts += &format!(", {not_started} not started");
        }
        if !not_due.is_empty() {
            counts += &format!(", {} not due", not_due.len());
        }
        writeln!(io.stdout, "{counts}")?;
        for n in not_due {
            writeln!(io.stdout, "  {:<24} {}", n.id, n.detail)?;
        }
        for i in &summary.instances {
            writeln!(io.stdout, "  {}", instance_line(i))?;
        }
    }
    if summary.interrupted {
        writeln!(
            io.stderr,
            "run {} was interrupted; `rekey resume` finishes it",
            summary.run_id
        )?;
    } else if summary.status() == crate::journal::RunStatus::Interrupted {
        // Vault (the circuit breaker, a promote) or a provider (a probe, a
        // list) did not answer: each credential's reason says which.
        writeln!(
            io.stderr,
            "run {} is unfinished: Vault or a provider did not answer (`rekey status` gives each credential's reason); `rekey resume {}` finishes it once they answer",
            summary.run_id, summary.run_id
        )?;
    }
    if !summary.leftovers.is_empty() {
        writeln!(
            io.stderr,
            "{}",
            crate::engine::tidy::describe(&summary.run_id, &summary.leftovers, "")
        )?;
    }
    let waiting: Vec<&str> = summary
        .results
        .iter()
        .filter(|r| r.outcome.state() == CredentialState::AwaitingOperator)
        .map(|r| r.id.as_str())
        .collect();
    for id in &waiting {
        writeln!(
            io.stderr,
            "manual step `{id}` waits for an operator: do what `rekey status {run}` says, then `rekey resume {run} --credential {id} --value-stdin` (or --value-file FILE, or run resume on a terminal)",
            run = summary.run_id
        )?;
    }
    // A credential a human must act on says so first, whatever else is left.
    if summary.needs_a_human() > 0 {
        return Ok(ExitStatus::Quarantined);
    }
    Ok(match summary.status() {
        crate::journal::RunStatus::Succeeded => ExitStatus::Success,
        crate::journal::RunStatus::Quarantined => ExitStatus::Quarantined,
        crate::journal::RunStatus::Interrupted => ExitStatus::Interrupted,
        crate::journal::RunStatus::AwaitingOperator => ExitStatus::AwaitingOperator,
        crate::journal::RunStatus::Running | crate::journal::RunStatus::Failed => {
            ExitStatus::Failure
        }
    })
}
