//! `rekey report`: the inventory of a playbook (ages, max_age, last rotations,
//! live keys), read from Vault, the providers and the journal; changes nothing.

use super::Io;
use super::setup::{build_provider, load_for_run, vault_config};
use crate::catalog::{Catalog, Kind};
use crate::cli::{ReportArgs, ReportFormat};
use crate::exit::ExitStatus;
use crate::hygiene::inventory;
use crate::plan;
use anyhow::{Context, Result};

pub fn report(args: &ReportArgs, catalog: &Catalog, io: &mut Io) -> Result<ExitStatus> {
    let (loaded, selection, _) = load_for_run(&args.playbook, &args.selection, catalog, io)?;
    let pb = &loaded.playbook;
    let indices = plan::select::apply(pb, &selection).indices;
    let (rotations, journal_note) = if args.journal.exists() {
        let journal = crate::journal::Journal::open(&args.journal)?;
        (inventory::last_rotations(&journal, &pb.name)?, None)
    } else {
        (
            indexmap::IndexMap::new(),
            Some(format!(
                "no journal at {}: last rotations are not known here (pass the --journal runs used)",
                args.journal.display()
            )),
        )
    };
    let config = vault_config(pb)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = runtime.block_on(async {
        use crate::store::SecretStore;
        let store = crate::store::VaultStore::connect(&config).await?;
        store.preflight().await?;
        let mut providers = indexmap::IndexMap::new();
        let mut unavailable = indexmap::IndexMap::new();
        for &i in &indices {
            let name = &pb.credentials[i].provider;
            if providers.contains_key(name) || unavailable.contains_key(name) {
                continue;
            }
            let Some(instance) = pb.providers.get(name).filter(|p| p.kind != Kind::Manual) else {
                continue;
            };
            if !catalog
                .get(&instance.type_name)
                .is_some_and(|t| t.available)
            {
                unavailable.insert(
                    name.clone(),
                    format!("type `{}` cannot run in this build", instance.type_name),
                );
                continue;
            }
            match build_provider(instance, catalog, &store).await {
                Ok(p) => {
                    providers.insert(name.clone(), p);
                }
                Err(e) => {
                    unavailable.insert(name.clone(), e);
                }
            }
        }
        anyhow::Ok(
            inventory::gather(
                &store,
                &providers,
                &unavailable,
                pb,
                &indices,
                args.max_age,
                &rotations,
            )
            .await,
        )
    })?;
    report.journal_note = journal_note;
    match args.format {
        ReportFormat::Text => inventory::text(&report, io.stdout),
        ReportFormat::Json => inventory::json(&report, io.stdout),
        ReportFormat::Markdown => inventory::markdown(&report, io.stdout),
        ReportFormat::Csv => inventory::csv(&report, io.stdout),
    }
    .context("cannot write the report to stdout")?;
    Ok(if args.detailed_exitcode && report.has_due() {
        ExitStatus::PlanHasWork
    } else {
        ExitStatus::Success
    })
}
