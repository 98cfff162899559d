//! `rekey watch [RUN]`: asks the providers of the keys a run retired whether
//! they were used afterwards (`hygiene::watch`); loud when one was: exit 11,
//! a line on stderr, and the playbook's webhooks (`retired_key_used`).

use super::setup::{build_provider, vault_config};
use super::{Io, Refusal};
use crate::catalog::Catalog;
use crate::cli::{Format, WatchArgs};
use crate::exit::ExitStatus;
use crate::hygiene::watch::{self, Verdict};
use crate::playbook;
use anyhow::Result;

pub fn watch(args: &WatchArgs, catalog: &Catalog, io: &mut Io) -> Result<ExitStatus> {
    if !args.journal.exists() {
        return Err(
            Refusal::new(format!("no journal at {}", args.journal.display()))
                .help("pass the --journal the run used")
                .into(),
        );
    }
    let journal = crate::journal::Journal::open(&args.journal)?;
    let (run, retired) = match &args.run {
        Some(id) => {
            let Some(run) = journal.run(id)? else {
                return Err(
                    Refusal::new(format!("no run `{id}` in {}", args.journal.display())).into(),
                );
            };
            let retired = watch::retired_keys(&journal, &run.id)?;
            (run, retired)
        }
        None => {
            let mut latest = None;
            for run in journal.runs()? {
                let retired = watch::retired_keys(&journal, &run.id)?;
                if !retired.is_empty() {
                    latest = Some((run, retired));
                    break;
                }
            }
            match latest {
                Some(found) => found,
                None => {
                    writeln!(
                        io.stderr,
                        "no run in {} retired a key: nothing to watch",
                        args.journal.display()
                    )?;
                    return Ok(ExitStatus::Success);
                }
            }
        }
    };
    let path = std::path::PathBuf::from(&run.playbook_path);
    let loaded = match playbook::load_file(&path, &crate::env_vars::get, catalog) {
        Ok(l) => l,
        Err(report) => {
            write!(io.stderr, "{}", report.render(io.color))?;
            return Err(Refusal::new(format!(
                "run {} used {}, which no longer loads",
                run.id,
                path.display()
            ))
            .into());
        }
    };
    crate::harden::take_playbook_env(&loaded.playbook);
    if super::setup::file_sha256(&path) != run.playbook_sha256 {
        writeln!(
            io.stderr,
            "warning: {} changed since run {}; its provider settings are used as they are now",
            path.display(),
            run.id
        )?;
    }
    let pb = &loaded.playbook;
    let config = vault_config(pb)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let findings = runtime.block_on(async {
        let store = crate::store::VaultStore::connect(&config).await?;
        let mut providers = indexmap::IndexMap::new();
        let mut unavailable = indexmap::IndexMap::new();
        for r in &retired {
            let Some(c) = pb.credentials.iter().find(|c| c.id == r.credential) else {
                continue;
            };
            let name = &c.provider;
            if providers.contains_key(name) || unavailable.contains_key(name) {
                continue;
            }
            if let Some(instance) = pb.providers.get(name) {
                match build_provider(instance, catalog, &store).await {
                    Ok(p) => {
                        providers.insert(name.clone(), p);
                    }
                    Err(e) => {
                        unavailable.insert(name.clone(), e);
                    }
                }
            }
        }
        anyhow::Ok(watch::check(pb, &providers, &unavailable, &retired).await)
    })?;
    let used: Vec<&watch::Finding> = findings
        .iter()
        .filter(|f| f.verdict == Verdict::UsedAfterRetirement)
        .collect();
    if args.format == Format::Json {
        let doc = serde_json::json!({ "run_id": run.id, "findings": findings });
        writeln!(io.stdout, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        writeln!(
            io.stdout,
            "Watch of run {} ({}): {} retired key(s), {} used after retirement",
            run.id,
            run.playbook_name,
            findings.len(),
            used.len()
        )?;
        for f in &findings {
            let last = f
                .last_used
                .as_deref()
                .map(|l| format!(", last used {l}"))
                .unwrap_or_default();
            writeln!(
                io.stdout,
                "  {:<24} key {} {} {}{last}: {}",
                f.retired.credential, f.retired.key_id, f.retired.how, f.retired.at, f.detail
            )?;
        }
    }
    for f in &used {
        writeln!(
            io.stderr,
            "ALERT: key {} of `{}` was used at {} after it was {} at {}: someone still holds it; find who (the provider's access logs), and treat what it reaches as compromised",
            f.retired.key_id,
            f.retired.credential,
            f.last_used.as_deref().unwrap_or("?"),
            f.retired.how,
            f.retired.at
        )?;
    }
    if !used.is_empty()
        && let Some(notifier) = crate::notify::Notifier::start(pb)
    {
        for f in &used {
            notifier.send(&crate::notify::Notice {
                event: crate::playbook::notify::Event::RetiredKeyUsed,
                run_id: Some(run.id.clone()),
                credential: Some(f.retired.credential.clone()),
                text: format!(
                    "ALERT: key {} of `{}` was used at {} after run {} {} it at {}",
                    f.retired.key_id,
                    f.retired.credential,
                    f.last_used.as_deref().unwrap_or("?"),
                    run.id,
                    f.retired.how,
                    f.retired.at
                ),
                detail: serde_json::json!({
                    "key_id": f.retired.key_id,
                    "retired": f.retired.how,
                    "retired_at": f.retired.at,
                    "last_used": f.last_used,
                }),
            });
        }
        for failed in notifier.finish().failed {
            writeln!(io.stderr, "warning: notification not delivered: {failed}")?;
        }
    }
    Ok(if !used.is_empty() {
        ExitStatus::RetiredKeyUsed
    } else if findings.iter().any(|f| f.verdict == Verdict::Error) {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}
