//! One file per command. Each returns an `ExitStatus`; stdout gets the data,
//! stderr the talk (diagnostics, logs). A command that refuses its input returns a
//! [`Refusal`], which `main` prints and turns into exit code 2; any other error is a
//! runtime failure (exit 1).

mod audit;
mod catalog;
mod discover;
mod operator;
mod plan;
mod report;
mod run;
mod runner;
mod setup;
mod status;
mod watch;

pub use audit::audit;
pub use catalog::{completions, load_catalog, man, providers, schema};
pub use discover::discover;
pub use plan::plan;
pub use report::report;
pub use run::{resume, rollback, run};
pub use runner::runner;
pub use status::status;
pub use watch::watch;

use crate::cli::Format;
use crate::doc::diagnostic::Report;
use anyhow::Result;
use std::io::Write;

/// Where output goes, so tests can capture it and `main` can pick colours.
pub struct Io<'a> {
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    pub color: bool,
}

/// A command refusing to act on what it was given (a playbook, a selection, a
/// flag, a run id): nothing was changed. Commands return it through `anyhow`;
/// `main` prints it (each problem after `error:`, then the `help:` line) and exits
/// with `ExitStatus::Invalid`.
#[derive(Debug)]
pub struct Refusal {
    problems: Vec<String>,
    help: Option<String>,
}

impl Refusal {
    /// One problem.
    pub fn new(problem: impl Into<String>) -> Refusal {
        Refusal {
            problems: vec![problem.into()],
            help: None,
        }
    }

    /// Several problems found at once, one `error:` line each.
    pub fn many(problems: impl IntoIterator<Item = String>) -> Refusal {
        Refusal {
            problems: problems.into_iter().collect(),
            help: None,
        }
    }

    /// Problems already shown as positioned diagnostics (a playbook's, with their
    /// snippets): nothing is left to print.
    pub fn reported() -> Refusal {
        Refusal {
            problems: Vec::new(),
            help: None,
        }
    }

    /// What to do about it.
    pub fn help(mut self, help: impl Into<String>) -> Refusal {
        self.help = Some(help.into());
        self
    }

    /// Prints the refusal as `main` shows it.
    pub fn print(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for problem in &self.problems {
            print_problem(out, problem, None)?;
        }
        match &self.help {
            Some(help) => writeln!(out, "help: {help}"),
            None => Ok(()),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.problems.is_empty() {
            return f.write_str("the playbook has problems (reported above)");
        }
        f.write_str(&self.problems.join("; "))
    }
}

impl std::error::Error for Refusal {}

/// One `error:` line, and its `help:` line when there is one.
pub fn print_problem(
    out: &mut dyn Write,
    problem: &str,
    help: Option<&str>,
) -> std::io::Result<()> {
    writeln!(out, "error: {problem}")?;
    match help {
        Some(help) => writeln!(out, "help: {help}"),
        None => Ok(()),
    }
}

/// Prints a playbook's diagnostics (and, for `--format json`, the invalid-playbook
/// document on stdout).
fn report_problems(io: &mut Io, report: &Report, format: Format) -> Result<()> {
    if report.diagnostics.is_empty() {
        return Ok(());
    }
    write!(io.stderr, "{}", report.render(io.color))?;
    if format == Format::Json && report.has_errors() {
        let body = serde_json::json!({
            "format_version": crate::plan::PLAN_FORMAT_VERSION,
            "valid": false,
            "diagnostics": report.to_json(),
        });
        writeln!(io.stdout, "{}", serde_json::to_string_pretty(&body)?)?;
    }
    Ok(())
}
