//! `rekey schema` (the playbook's JSON Schema) and `rekey providers` (the catalog).

use super::Io;
use crate::cli::{Format, ProvidersArgs};
use crate::exit::ExitStatus;
use crate::provider::catalog::Catalog;
use anyhow::Result;

pub fn schema(io: &mut Io) -> Result<ExitStatus> {
    let schema = crate::playbook::schema::playbook_schema();
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
