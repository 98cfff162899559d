//! One function per command. Each returns an `ExitStatus`; stdout gets the data,
//! stderr the talk (diagnostics, logs).

use crate::cli::{Format, PlanArgs, ProvidersArgs};
use crate::exit::ExitStatus;
use crate::plan::{self, render, select::Selection};
use crate::playbook::{self, diagnostic::Report};
use crate::provider::catalog::Catalog;
use anyhow::{Context, Result};
use std::io::Write;

/// Where output goes, so tests can capture it and `main` can pick colours.
pub struct Io<'a> {
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
    pub color: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn report_problems(io: &mut Io, report: &Report, format: Format) -> Result<()> {
    if report.diagnostics.is_empty() {
        return Ok(());
    }
    write!(io.stderr, "{}", report.render(io.color))?;
    if format == Format::Json && report.has_errors() {
        let body = serde_json::json!({
            "format_version": plan::PLAN_FORMAT_VERSION,
            "valid": false,
            "diagnostics": report.to_json(),
        });
        writeln!(io.stdout, "{}", serde_json::to_string_pretty(&body)?)?;
    }
    Ok(())
}

pub fn plan(args: &PlanArgs, io: &mut Io) -> Result<ExitStatus> {
    let file = args.playbook.display().to_string();
    let loaded = match playbook::load_file(&args.playbook, &env) {
        Ok(loaded) => loaded,
        Err(report) => {
            report_problems(io, &report, args.format)?;
            return Ok(ExitStatus::Invalid);
        }
    };
    report_problems(io, &loaded.report, args.format)?;
    let selection = Selection {
        compromised: args.selection.compromised.clone(),
        tags: args.selection.tags.clone(),
        only: args.selection.only.clone(),
    };
    if let Err(errors) = plan::select::check(&loaded.playbook, &selection) {
        for e in &errors {
            writeln!(io.stderr, "error: {file}: {e}")?;
        }
        writeln!(io.stderr, "help: selection values must name something in the playbook; a typo must not silently select nothing")?;
        return Ok(ExitStatus::Invalid);
    }
    let plan = plan::build(&file, &loaded.playbook, &selection);
    let filtered = !(selection.compromised.is_empty() && selection.tags.is_empty() && selection.only.is_empty());
    if filtered && plan.totals.credentials == 0 {
        writeln!(io.stderr, "warning: {file}: each selection value matches something, but together they select no credential (values of different flags narrow each other)")?;
    }
    match args.format {
        Format::Text => render::text(&plan, io.stdout),
        Format::Json => render::json(&plan, io.stdout),
        Format::Markdown => render::markdown(&plan, io.stdout),
    }
    .context("cannot write the plan to stdout")?;
    let status = if args.detailed_exitcode && plan.totals.has_work { ExitStatus::PlanHasWork } else { ExitStatus::Success };
    // The process ends right after this command: freeing a 100,000-credential
    // playbook piece by piece would only delay the exit (about a tenth of a second).
    drop(plan);
    std::mem::forget(loaded);
    Ok(status)
}

pub fn schema(io: &mut Io) -> Result<ExitStatus> {
    let schema = playbook::schema::playbook_schema();
    writeln!(io.stdout, "{}", serde_json::to_string_pretty(schema)?)?;
    Ok(ExitStatus::Success)
}

pub fn providers(args: &ProvidersArgs, io: &mut Io) -> Result<ExitStatus> {
    let catalog = Catalog::builtin()?;
    if args.format == Format::Json {
        let types: Vec<_> = catalog.types.values().collect();
        writeln!(io.stdout, "{}", serde_json::to_string_pretty(&types)?)?;
        return Ok(ExitStatus::Success);
    }
    let width = catalog.types.keys().map(String::len).max().unwrap_or(0);
    let rate_width = catalog.types.values().map(|t| t.rate().describe().len()).max().unwrap_or(0);
    for t in catalog.types.values() {
        let status = if t.available { "" } else { " [not yet runnable]" };
        writeln!(io.stdout, "{:<width$}  {:<6}  {:<rate_width$}  {}{status}", t.name, t.kind.as_str(), t.rate().describe(), t.summary)?;
    }
    Ok(ExitStatus::Success)
}
