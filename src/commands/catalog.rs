//! `rekey schema` (the playbook's JSON Schema), `rekey providers` (the
//! catalog), and what packagers install: `rekey completions SHELL` and `rekey
//! man`, both generated from the clap definition.

use super::{Io, Refusal};
use crate::catalog::Catalog;
use crate::cli::{Format, ProvidersArgs};
use crate::exit::ExitStatus;
use anyhow::Result;
use std::path::Path;

/// The provider catalog: the shipped files, and those of `--providers DIR`. A
/// broken provider file is refused input.
pub fn load_catalog(extra_dir: Option<&Path>) -> Result<Catalog> {
    Catalog::load(extra_dir).map_err(|e| Refusal::new(e.to_string()).into())
}

/// Shell completions for `shell`, from the command-line definition.
pub fn completions(args: &crate::cli::CompletionsArgs, io: &mut Io) -> Result<ExitStatus> {
    let mut command = <crate::cli::Cli as clap::CommandFactory>::command();
    clap_complete::generate(args.shell, &mut command, "rekey", io.stdout);
    Ok(ExitStatus::Success)
}

/// The man page rekey(1) (roff), from the command-line definition; it lists
/// every subcommand with its description.
pub fn man(io: &mut Io) -> Result<ExitStatus> {
    let command = <crate::cli::Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(command).render(io.stdout)?;
    Ok(ExitStatus::Success)
}

pub fn schema(io: &mut Io) -> Result<ExitStatus> {
    let schema = crate::playbook::schema::playbook_schema();
    writeln!(io.stdout, "{}", serde_json::to_string_pretty(schema)?)?;
    Ok(ExitStatus::Success)
}

pub fn providers(args: &ProvidersArgs, catalog: &Catalog, io: &mut Io) -> Result<ExitStatus> {
    if args.format == Format::Json {
        let types: Vec<_> = catalog.types.values().collect();
        writeln!(io.stdout, "{}", serde_json::to_string_pretty(&types)?)?;
        return Ok(ExitStatus::Success);
    }
    let width = catalog.types.keys().map(String::len).max().unwrap_or(0);
    let rate_width = catalog
        .types
        .values()
        .map(|t| t.rate().describe().len())
        .max()
        .unwrap_or(0);
    for t in catalog.types.values() {
        let status = if t.available {
            ""
        } else {
            " [not yet runnable]"
        };
        writeln!(
            io.stdout,
            "{:<width$}  {:<6}  {:<rate_width$}  {}{status}",
            t.name,
            t.kind.as_str(),
            t.rate().describe(),
            t.summary
        )?;
    }
    Ok(ExitStatus::Success)
}
