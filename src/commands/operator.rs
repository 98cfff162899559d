//! Who answers manual steps: the terminal, the value given to `rekey resume`, or
//! nobody (the step then waits for a later `resume`).

use super::Refusal;
use crate::provider::manual::Operator;
use anyhow::{Context, Result};
use std::sync::Arc;

/// The operator for `run`: the terminal when stdin is one, else nobody (manual
/// steps then wait for `rekey resume`).
pub(super) fn terminal_operator() -> Arc<dyn Operator> {
    match crate::provider::manual::Terminal::detect() {
        Some(t) => Arc::new(t),
        None => Arc::new(crate::provider::manual::Nobody),
    }
}

/// The operator for `resume`: the value (or confirmation) given with
/// `--value-stdin`, `--value-file` or `--confirm`, for the one waiting manual
/// step it names; without those, the terminal or nobody.
pub(super) fn resume_operator(
    args: &crate::cli::OperatorArgs,
    journal: &crate::journal::Journal,
    run: &str,
) -> Result<Arc<dyn Operator>> {
    use crate::provider::manual::{Provided, value_from_bytes};
    use std::io::Read;
    if !args.value_stdin && args.value_file.is_none() && !args.confirm {
        if args.credential.is_some() {
            return Err(Refusal::new(
                "--credential names the manual step that --value-stdin, --value-file or --confirm answers; give one of them",
            )
            .into());
        }
        return Ok(terminal_operator());
    }
    let waiting: Vec<String> = journal
        .states(run)?
        .into_iter()
        .filter(|s| s.state == crate::journal::CredentialState::AwaitingOperator)
        .map(|s| s.credential)
        .collect();
    let target = match &args.credential {
        Some(c) if waiting.contains(c) => c.clone(),
        Some(c) => {
            return Err(Refusal::new(format!(
                "credential `{c}` of run {run} does not wait for an operator (waiting: {})",
                if waiting.is_empty() {
                    "none".to_owned()
                } else {
                    waiting.join(", ")
                }
            ))
            .help(format!(
                "`rekey status {run}` lists the manual steps that wait"
            ))
            .into());
        }
        None if waiting.len() == 1 => waiting[0].clone(),
        None if waiting.is_empty() => {
            return Err(Refusal::new(format!(
                "no manual step of run {run} waits for an operator; nothing to give a value to"
            ))
            .into());
        }
        None => {
            return Err(Refusal::new(format!(
                "several manual steps of run {run} wait ({}); name the one this value is for with --credential ID",
                waiting.join(", ")
            ))
            .into());
        }
    };
    let value = if args.value_stdin {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read the value from stdin")?;
        Some(value_from_bytes(bytes, "stdin"))
    } else if let Some(path) = &args.value_file {
        match std::fs::read(path) {
            Ok(bytes) => Some(value_from_bytes(bytes, &path.display().to_string())),
            Err(e) => {
                return Err(Refusal::new(format!("cannot read {}: {e}", path.display())).into());
            }
        }
    } else {
        None
    };
    let value = value.transpose().map_err(|message| {
        Refusal::new(message).help("give the new value the manual step produced")
    })?;
    Ok(Arc::new(Provided::new(target, value)))
}
