//! `rekey status`: a run's credentials, and what a human must do for the ones
//! that are quarantined or wait for an operator.

use super::{Io, Refusal};
use crate::cli::Format;
use crate::exit::ExitStatus;
use crate::journal::CredentialState;
use anyhow::Result;

pub fn status(args: &crate::cli::StatusArgs, io: &mut Io) -> Result<ExitStatus> {
    if !args.journal.path.exists() {
        return Err(
            Refusal::new(format!("no journal at {}", args.journal.path.display()))
                .help("runs are recorded where `rekey run --journal` pointed (default .rekey/journal.db)")
                .into(),
        );
    }
    let journal = crate::journal::Journal::open(&args.journal.path)?;
    let run = match &args.run {
        Some(id) => journal.run(id)?,
        None => journal.runs()?.into_iter().next(),
    };
    let Some(run) = run else {
        return Err(Refusal::new(format!("no such run in {}", args.journal.path.display())).into());
    };
    let states = journal.states(&run.id)?;
    if args.format == Format::Json {
        writeln!(
            io.stdout,
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "run": run, "credentials": states })
            )?
        )?;
        return Ok(ExitStatus::Success);
    }
    writeln!(
        io.stdout,
        "Run {} ({}, {} mode): {}; started {}",
        run.id, run.playbook_name, run.mode, run.status, run.started_at
    )?;
    for s in &states {
        writeln!(io.stdout, "  {:<24} {}", s.credential, s.state)?;
        if s.state == CredentialState::Quarantined
            && let (Some(reason), Some(action)) = (
                s.detail.get("reason").and_then(|v| v.as_str()),
                s.detail.get("action").and_then(|v| v.as_str()),
            )
        {
            writeln!(io.stdout, "      why: {reason}\n      to do: {action}")?;
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
    Ok(ExitStatus::Success)
}
