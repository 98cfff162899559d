//! `rekey status`: a run's credentials, and what a human must do for the ones
//! that are quarantined or wait for an operator.

use super::{Io, Refusal};
use crate::cli::Format;
use crate::exit::ExitStatus;
use crate::journal::{CredentialState, RunStatus};
use anyhow::Result;

pub fn status(args: &crate::cli::StatusArgs, io: &mut Io) -> Result<ExitStatus> {
    // A file, or a shared journal (`postgres://`) read from any machine.
    let location =
        crate::journal::Location::parse(args.journal.path.as_os_str()).map_err(Refusal::new)?;
    if let crate::journal::Location::File(path) = &location
        && !path.exists()
    {
        return Err(Refusal::new(format!("no journal at {}", path.display()))
            .help(
                "runs are recorded where `rekey run --journal` pointed (default .rekey/journal.db)",
            )
            .into());
    }
    let password = crate::harden::secret_env(crate::env_vars::REKEY_JOURNAL_PASSWORD)
        .map(|p| crate::secret::Secret::new(p.as_str()));
    let journal = crate::journal::Journal::open_at(&location, password.as_ref())?;
    let run = match &args.run {
        Some(id) => journal.run(id)?,
        None => journal.runs()?.into_iter().next(),
    };
    let Some(run) = run else {
        return Err(Refusal::new(format!("no such run in {}", location.display())).into());
    };
    let states = journal.states(&run.id)?;
    // Who holds each credential now (a lease not expired), and since when; for a
    // shared journal, the runners too.
    let holders = journal.holders(&run.id)?;
    let runners = match journal.shared() {
        Some(pg) => pg.runners()?,
        None => Vec::new(),
    };
    // What the run could not remove from Vault (see `engine::tidy`).
    let leftovers = crate::engine::tidy::leftovers(&journal, &run.id)?;
    // A run recorded as running whose process is gone was killed or crashed: it
    // is not running, and `resume` finishes it.
    let gone = run.status == RunStatus::Running && run.process_gone();
    let journal_arg = format!(" --journal {}", location.display());
    if args.format == Format::Json {
        let mut run_json = serde_json::to_value(&run)?;
        if gone {
            run_json["status"] = "stopped".into();
            run_json["process_gone"] = true.into();
        }
        writeln!(
            io.stdout,
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "run": run_json, "credentials": states, "holders": holders, "runners": runners, "leftovers": leftovers })
            )?
        )?;
        return Ok(ExitStatus::Success);
    }
    let status = if gone {
        format!(
            "stopped: the process that ran it ({}) is gone; `rekey resume {}{journal_arg}` finishes it",
            run.holder.as_deref().unwrap_or("?"),
            run.id
        )
    } else {
        match run.status {
            RunStatus::AwaitingOperator => {
                "awaiting operator (manual steps wait for their value)".into()
            }
            RunStatus::Interrupted => format!(
                "interrupted (unfinished): `rekey resume {}{journal_arg}` finishes it",
                run.id
            ),
            other => other.to_string(),
        }
    };
    writeln!(
        io.stdout,
        "Run {} ({}, {} mode): {status}; started {}",
        run.id, run.playbook_name, run.mode, run.started_at
    )?;
    let text = |key: &str, s: &crate::journal::CredentialRow| {
        s.detail
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    for s in &states {
        writeln!(io.stdout, "  {:<24} {}", s.credential, s.state)?;
        if let Some(h) = holders.iter().find(|h| h.credential == s.credential) {
            let zone = h
                .zone
                .as_deref()
                .map(|z| format!(" (zone {z})"))
                .unwrap_or_default();
            writeln!(
                io.stdout,
                "      held by {}{zone} since {}",
                h.holder, h.since
            )?;
        }
        if s.state == CredentialState::Quarantined
            && let (Some(reason), Some(action)) = (text("reason", s), text("action", s))
        {
            writeln!(io.stdout, "      why: {reason}\n      to do: {action}")?;
        }
        if s.state == CredentialState::RolledBack
            && let Some(reason) = text("reason", s)
        {
            writeln!(
                io.stdout,
                "      why: {reason}\n      to do: nothing changed and the old value still works; fix the cause, then `rekey run PLAYBOOK --only {}` again",
                s.credential
            )?;
        }
        if matches!(
            s.state,
            CredentialState::NotStarted | CredentialState::Skipped
        ) && let Some(reason) = text("reason", s)
        {
            writeln!(
                io.stdout,
                "      why: {reason}\n      to do: `rekey resume {}{journal_arg}` takes it up",
                run.id
            )?;
        }
        if !s.state.is_final() && (gone || run.status != RunStatus::Running) {
            writeln!(
                io.stdout,
                "      stopped at `{}`: `rekey resume {}{journal_arg}` reconciles it with the provider and Vault",
                s.state, run.id
            )?;
        }
        if s.state == CredentialState::AwaitingOperator
            && let Some(instructions) = s.detail.get("instructions").and_then(|v| v.as_str())
        {
            writeln!(
                io.stdout,
                "      to do: {}\n      then: rekey resume {} --credential {} --value-stdin",
                instructions.trim(),
                run.id,
                s.credential
            )?;
        }
    }
    if !leftovers.is_empty() {
        writeln!(
            io.stdout,
            "{}",
            crate::engine::tidy::describe(&run.id, &leftovers, &journal_arg)
        )?;
    }
    for (i, r) in runners.iter().enumerate() {
        if i == 0 {
            writeln!(io.stdout, "Runners of this journal:")?;
        }
        let state = match &r.stopped_at {
            Some(at) => format!("stopped {at}"),
            None => format!("last heard {} s ago", r.silent_ms / 1000),
        };
        writeln!(
            io.stdout,
            "  {} zones {} (rekey {}, started {}): {state}",
            r.holder,
            r.zones.join(","),
            r.version,
            r.started_at
        )?;
    }
    Ok(ExitStatus::Success)
}
