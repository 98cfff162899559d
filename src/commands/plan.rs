//! `rekey plan`: validate a playbook and show what a run would do; `--live` adds
//! read-only checks against Vault and the providers.

use super::setup::{build_provider, vault_config};
use super::{Io, Refusal, report_problems};
use crate::catalog::{Catalog, Kind};
use crate::cli::{Format, PlanArgs};
use crate::exit::ExitStatus;
use crate::plan::{self, render, select::Selection};
use crate::playbook;
use anyhow::{Context, Result};

pub fn plan(args: &PlanArgs, catalog: &Catalog, io: &mut Io) -> Result<ExitStatus> {
    let file = args.playbook.display().to_string();
    let loaded = match playbook::load_file(&args.playbook, &crate::env_vars::get, catalog) {
        Ok(loaded) => loaded,
        Err(report) => {
            report_problems(io, &report, args.format)?;
            return Err(Refusal::reported().into());
        }
    };
    crate::harden::take_playbook_env(&loaded.playbook);
    report_problems(io, &loaded.report, args.format)?;
    let selection = Selection {
        compromised: args.selection.compromised.clone(),
        tags: args.selection.tags.clone(),
        only: args.selection.only.clone(),
    };
    if let Err(errors) = plan::select::check(&loaded.playbook, &selection) {
        return Err(Refusal::many(errors.iter().map(|e| format!("{file}: {e}")))
            .help("selection values must name something in the playbook; a typo must not silently select nothing")
            .into());
    }
    // Ages are looked up only with --live (plan is offline otherwise), and only
    // for credentials with a max_age.
    let aged: Vec<usize> = plan::select::apply(&loaded.playbook, &selection)
        .indices
        .into_iter()
        .filter(|&i| {
            plan::age::effective(loaded.playbook.credentials[i].max_age, args.max_age).is_some()
        })
        .collect();
    let ages = if args.live && !aged.is_empty() {
        Some(live_ages(&loaded.playbook, &aged, catalog)?)
    } else {
        None
    };
    let hygiene = plan::Hygiene {
        max_age: args.max_age,
        ages: ages.as_ref(),
        now: plan::age::now(),
    };
    let plan = plan::build_with(&file, &loaded.playbook, &selection, hygiene);
    let filtered = !(selection.compromised.is_empty()
        && selection.tags.is_empty()
        && selection.only.is_empty());
    if filtered && plan.totals.credentials == 0 {
        writeln!(
            io.stderr,
            "warning: {file}: each selection value matches something, but together they select no credential (values of different flags narrow each other)"
        )?;
    }
    match args.format {
        Format::Text => render::text(&plan, io.stdout),
        Format::Json => render::json(&plan, io.stdout),
        Format::Markdown => render::markdown(&plan, io.stdout),
    }
    .context("cannot write the plan to stdout")?;
    let mut status = if args.detailed_exitcode && plan.totals.has_work {
        ExitStatus::PlanHasWork
    } else {
        ExitStatus::Success
    };
    if args.live {
        let selected = plan::select::apply(&loaded.playbook, &selection).indices;
        let report = live_checks(&loaded.playbook, &selected, catalog)?;
        let failed = report.iter().any(|(_, ok, _)| !ok);
        if args.format == Format::Json {
            let rows: Vec<_> = report
                .iter()
                .map(|(what, ok, detail)| {
                    serde_json::json!({ "check": what, "ok": ok, "detail": detail })
                })
                .collect();
            writeln!(
                io.stdout,
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "live_checks": rows }))?
            )?;
        } else {
            writeln!(io.stdout, "\nLive checks")?;
            for (what, ok, detail) in &report {
                writeln!(
                    io.stdout,
                    "  {} {what}: {detail}",
                    if *ok { "ok  " } else { "FAIL" }
                )?;
            }
        }
        if failed {
            status = ExitStatus::Failure;
        }
    }
    // The process ends right after this command: freeing a 100,000-credential
    // playbook piece by piece would only delay the exit (about a tenth of a second).
    drop(plan);
    std::mem::forget(loaded);
    Ok(status)
}

/// The ages of credentials `aged` (`--live`): Vault's metadata, then the
/// providers that can be built. Read-only; an unreachable Vault leaves every
/// age unknown (and the live checks say why).
fn live_ages(
    pb: &playbook::Playbook,
    aged: &[usize],
    catalog: &Catalog,
) -> Result<rustc_hash::FxHashMap<usize, plan::age::Age>> {
    let config = vault_config(pb)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(async {
        let store = match crate::store::VaultStore::connect(&config).await {
            Ok(s) => s,
            Err(e) => {
                return aged
                    .iter()
                    .map(|&i| (i, plan::age::Age::unknown(format!("Vault: {e}"), 0)))
                    .collect();
            }
        };
        let mut providers = indexmap::IndexMap::new();
        for &i in aged {
            let name = &pb.credentials[i].provider;
            if providers.contains_key(name) {
                continue;
            }
            if let Some(instance) = pb.providers.get(name)
                && instance.kind != Kind::Manual
                && catalog
                    .get(&instance.type_name)
                    .is_some_and(|t| t.available)
                && let Ok(p) = build_provider(instance, catalog, &store).await
            {
                providers.insert(name.clone(), p);
            }
        }
        crate::hygiene::ages(&store, &providers, pb, aged).await
    }))
}

/// One live check: what was checked, whether it passed, and what was found.
type CheckRow = (String, bool, String);

/// Read-only checks for `plan --live`. Changes nothing.
fn live_checks(
    pb: &playbook::Playbook,
    selected: &[usize],
    catalog: &Catalog,
) -> Result<Vec<CheckRow>> {
    use crate::store::SecretStore;
    let config = vault_config(pb)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(async {
        let mut rows = Vec::new();
        let store = match crate::store::VaultStore::connect(&config).await {
            Ok(s) => s,
            Err(e) => {
                rows.push(("vault".to_owned(), false, e.to_string()));
                return rows;
            }
        };
        match store.preflight().await {
            Ok(()) => rows.push(("vault".to_owned(), true, format!("{} answers; mount `{}` is KV version 2", pb.vault.address, pb.vault.mount))),
            Err(e) => {
                rows.push(("vault".to_owned(), false, e.to_string()));
                return rows;
            }
        }
        match store.list(&pb.vault.staging_prefix).await {
            Ok(mut runs) => {
                // `locks/` holds the credentials' cross-process locks, not a run.
                let locked = runs.iter().any(|r| r == "locks/");
                runs.retain(|r| r != "locks/");
                if runs.is_empty() {
                    rows.push(("staging".to_owned(), true, "no leftover staging entries".to_owned()));
                } else {
                    rows.push(("staging".to_owned(), false, format!("leftover staging entries of run(s) {}: finish them with `rekey resume RUN` first", runs.iter().map(|r| r.trim_end_matches('/')).collect::<Vec<_>>().join(", "))));
                }
                if locked {
                    rows.push(("locks".to_owned(), false, format!("credential locks are held under {}/locks: another rekey process is rotating (or died; its locks expire)", pb.vault.staging_prefix)));
                }
            }
            Err(e) => rows.push(("staging".to_owned(), false, e.to_string())),
        }
        let mut providers: indexmap::IndexMap<String, Option<std::sync::Arc<dyn crate::provider::Provider>>> = indexmap::IndexMap::new();
        // Every selected entry first: the key each credential's Vault entry names is
        // what the breach retirement leaves to that credential.
        let mut entries = Vec::with_capacity(selected.len());
        for &i in selected {
            entries.push(store.read(&pb.credentials[i].vault_path).await);
        }
        let named: std::collections::HashMap<&str, usize> = selected
            .iter()
            .zip(&entries)
            .filter_map(|(&i, e)| Some((e.as_ref().ok()?.fields.get("key_id")?.as_str(), i)))
            .collect();
        for (&i, entry) in selected.iter().zip(&entries) {
            let c = &pb.credentials[i];
            match entry {
                Ok(entry) if entry.version == 0 => rows.push((format!("{} vault", c.id), true, format!("{} is new (no version yet)", c.vault_path))),
                Ok(entry) => rows.push((format!("{} vault", c.id), true, format!("{} at version {}", c.vault_path, entry.version))),
                Err(e) => rows.push((format!("{} vault", c.id), false, e.to_string())),
            }
            if c.kind == Kind::Manual {
                continue;
            }
            if !providers.contains_key(&c.provider) {
                let built = match pb.providers.get(&c.provider) {
                    Some(instance) => build_provider(instance, catalog, &store).await,
                    None => Err(format!("unknown provider instance `{}`", c.provider)),
                };
                if let Err(e) = &built {
                    rows.push((format!("{} provider", c.provider), false, e.clone()));
                }
                providers.insert(c.provider.clone(), built.ok());
            }
            let Some(provider) = providers[&c.provider].clone() else {
                rows.push((format!("{} provider", c.id), false, format!("instance `{}` could not be set up (see above); not checked", c.provider)));
                continue;
            };
            let target = crate::provider::Target { credential: &c.id, account: c.account.as_deref(), settings: &c.settings };
            match provider.preflight(target).await {
                Ok(()) => rows.push((format!("{} provider", c.id), true, format!("{} ready", c.provider))),
                Err(e) => rows.push((format!("{} provider", c.id), false, e.to_string())),
            }
            // Which existing keys a run would retire, by id and age.
            if c.kind == Kind::Dual && provider.lists_keys() && !provider.replaces_old_on_create() {
                let vault_key = entry.as_ref().ok().and_then(|e| e.fields.get("key_id").cloned());
                match provider.list(target).await {
                    Ok(keys) => {
                        let elsewhere = |k: &crate::provider::KeyInfo| {
                            named.get(k.id.as_str()).is_some_and(|&j| j != i)
                                || k.tag.as_deref().and_then(|t| t.strip_prefix("rekey:")).and_then(|t| t.split_once(':')).is_some_and(|(_, cred)| {
                                    cred != c.id && pb.credentials.iter().any(|o| o.id == cred && o.provider == c.provider)
                                })
                        };
                        let (retire, unidentified) = crate::engine::keys_to_retire(
                            pb.incident.mode == playbook::Mode::Breach,
                            &keys,
                            vault_key.as_deref(),
                            &c.keep,
                            &elsewhere,
                        );
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0);
                        let described: Vec<String> = retire
                            .iter()
                            .map(|id| {
                                let age = keys
                                    .iter()
                                    .find(|k| &k.id == id)
                                    .and_then(|k| k.created_at)
                                    .map(|t| format!(" ({} old)", crate::doc::rate::format_duration(std::time::Duration::from_secs(now.saturating_sub(t)))))
                                    .unwrap_or_default();
                                format!("{id}{age}")
                            })
                            .collect();
                        if !unidentified.is_empty() {
                            rows.push((format!("{} retires", c.id), false, format!("Vault names no key and the run cannot tell which of {} is in use: they would stay active and the credential end quarantined; put `key_id` in {} (or use `keep:`)", unidentified.join(", "), c.vault_path)));
                        } else if described.is_empty() {
                            rows.push((format!("{} retires", c.id), true, "no existing key to retire".into()));
                        } else {
                            rows.push((format!("{} retires", c.id), true, format!("would retire {}", described.join(", "))));
                        }
                    }
                    Err(e) => rows.push((format!("{} retires", c.id), false, format!("cannot list the keys to retire: {e}"))),
                }
            }
            // Breach mode ends the sessions opened with the old credential: may the admin?
            if pb.incident.mode == playbook::Mode::Breach
                && provider.has_sessions()
                && pb.providers.get(&c.provider).is_some_and(playbook::ProviderInstance::ends_sessions)
            {
                match provider.preflight_end_sessions(target).await {
                    Ok(Some(what)) => rows.push((format!("{} sessions", c.id), true, what)),
                    Ok(None) => {}
                    Err(e) => rows.push((format!("{} sessions", c.id), false, e.to_string())),
                }
            }
        }
        rows
    });
    Ok(rows)
}
