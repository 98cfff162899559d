//! `rekey discover`: a draft playbook from a Vault/OpenBao mount, provider
//! instances given on the command line, and secret-scanner reports (see
//! `crate::discover`). Reads only; the draft goes to stdout or `--output`.

use super::{Io, Refusal};
use crate::catalog::{Catalog, Need};
use crate::cli::DiscoverArgs;
use crate::discover::{self, InstanceSpec, Listed};
use crate::exit::ExitStatus;
use crate::playbook::AdminSource;
use crate::provider::{Provider, Target};
use anyhow::{Context, Result};
use indexmap::IndexMap;
use std::sync::Arc;

/// `NAME=TYPE`, `NAME.KEY=VALUE` and `NAME=env:VAR|vault:PATH` into instances.
fn instances(args: &DiscoverArgs, catalog: &Catalog) -> Result<Vec<InstanceSpec>> {
    let mut specs: Vec<InstanceSpec> = Vec::new();
    let mut problems = Vec::new();
    for spec in &args.instances {
        match spec.split_once('=') {
            Some((name, type_name)) if !name.is_empty() && catalog.get(type_name).is_some() => {
                specs.push(InstanceSpec {
                    name: name.to_owned(),
                    type_name: type_name.to_owned(),
                    settings: IndexMap::new(),
                    admin: None,
                })
            }
            Some((_, type_name)) => problems.push(format!(
                "--instance {spec}: `{type_name}` is not a provider type (`rekey providers` lists them)"
            )),
            None => problems.push(format!("--instance {spec}: write NAME=TYPE")),
        }
    }
    for setting in &args.settings {
        let parsed = setting
            .split_once('=')
            .and_then(|(k, v)| Some((k.split_once('.')?, v)));
        let Some(((name, key), value)) = parsed else {
            problems.push(format!("--setting {setting}: write NAME.KEY=VALUE"));
            continue;
        };
        match specs.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                s.settings.insert(key.to_owned(), setting_value(value));
            }
            None => problems.push(format!("--setting {setting}: no --instance `{name}`")),
        }
    }
    for admin in &args.admins {
        let parsed = admin.split_once('=').and_then(|(n, src)| {
            let source = match src.split_once(':')? {
                ("env", var) => AdminSource::Env(var.to_owned()),
                ("vault", path) => AdminSource::Vault(path.to_owned()),
                _ => return None,
            };
            Some((n, source))
        });
        let Some((name, source)) = parsed else {
            problems.push(format!(
                "--admin {admin}: write NAME=env:VAR or NAME=vault:PATH"
            ));
            continue;
        };
        match specs.iter_mut().find(|s| s.name == name) {
            Some(s) => s.admin = Some(source),
            None => problems.push(format!("--admin {admin}: no --instance `{name}`")),
        }
    }
    if !problems.is_empty() {
        return Err(Refusal::many(problems).into());
    }
    Ok(specs)
}

/// A setting's value as YAML would read it: a number, a boolean, or text.
fn setting_value(text: &str) -> serde_json::Value {
    if let Ok(n) = text.parse::<i64>() {
        return n.into();
    }
    match text {
        "true" => true.into(),
        "false" => false.into(),
        _ => text.into(),
    }
}

/// The instances as a playbook would declare them, so they are validated the
/// same way (settings against the catalog) before they are built.
fn probe_playbook(specs: &[InstanceSpec], mount: &str) -> String {
    let instances: Vec<&InstanceSpec> = specs.iter().collect();
    format!(
        "version: 1\nname: discover\nvault:\n  address: ${{VAULT_ADDR}}\n  mount: {}\n{}credentials: []\n",
        serde_json::to_string(mount).unwrap_or_default(),
        discover::providers_block(&instances)
    )
}

pub fn discover(args: &DiscoverArgs, catalog: &Catalog, io: &mut Io) -> Result<ExitStatus> {
    let specs = instances(args, catalog)?;
    if args.from_vault.is_none()
        && specs.is_empty()
        && args.gitleaks.is_empty()
        && args.trufflehog.is_empty()
    {
        return Err(Refusal::new("nothing to discover from")
            .help("give --from-vault [PREFIX], --instance NAME=TYPE (with --setting and --admin), --gitleaks FILE or --trufflehog FILE")
            .into());
    }
    let vault_addr = args.vault_addr.clone().filter(|a| !a.trim().is_empty());
    if args.from_vault.is_some() && vault_addr.is_none() {
        return Err(Refusal::new("--from-vault needs the Vault address")
            .help("export VAULT_ADDR=https://... (and VAULT_TOKEN), or pass --vault-addr")
            .into());
    }
    // The instances, checked like a playbook's.
    let probe_text = probe_playbook(&specs, &args.mount);
    let env = |name: &str| {
        if name == crate::env_vars::VAULT_ADDR {
            Some(
                vault_addr
                    .clone()
                    .unwrap_or_else(|| "http://127.0.0.1:8200".into()),
            )
        } else {
            crate::env_vars::get(name)
        }
    };
    let probe = match crate::playbook::load_str("--instance", &probe_text, &env, catalog) {
        Ok(p) => p.playbook,
        Err(report) => {
            write!(io.stderr, "{}", report.render(io.color))?;
            return Err(Refusal::new(
                "the --instance, --setting and --admin flags do not make valid provider instances",
            )
            .help("`rekey providers` and providers/<type>.yaml list each type's settings")
            .into());
        }
    };
    crate::harden::take_playbook_env(&probe);
    let mut scanner_findings = Vec::new();
    for path in &args.gitleaks {
        scanner_findings.extend(discover::scanners::gitleaks(path).map_err(Refusal::new)?);
    }
    for path in &args.trufflehog {
        scanner_findings.extend(discover::scanners::trufflehog(path).map_err(Refusal::new)?);
    }
    let name = args.name.clone().unwrap_or_else(|| {
        let today = crate::plan::age::timestamp(crate::plan::age::now());
        format!("discovered-{}", &today[..10])
    });
    let mut draft = discover::Draft {
        name,
        mount: args.mount.trim_matches('/').to_owned(),
        compromised: args.compromised.clone(),
        instances: specs.clone(),
        ..discover::Draft::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (found, listed, notes) = runtime.block_on(async {
        let mut notes = Vec::new();
        // Vault: for the walk, and for admin credentials kept there.
        let store: Box<dyn crate::store::SecretStore> = match &vault_addr {
            Some(addr) if crate::harden::secret_env(crate::env_vars::VAULT_TOKEN).is_some() => {
                let config = crate::store::VaultConfig {
                    address: addr.clone(),
                    mount: draft.mount.clone(),
                    namespace: None,
                    ca_file: None,
                    auth: crate::store::VaultLogin::Token(crate::secret::Secret::new(
                        crate::harden::secret_env(crate::env_vars::VAULT_TOKEN)
                            .map(|t| t.trim().to_owned())
                            .unwrap_or_default(),
                    )),
                };
                let store = crate::store::VaultStore::connect(&config).await?;
                if args.from_vault.is_some() {
                    use crate::store::SecretStore;
                    store.preflight().await?;
                }
                Box::new(store)
            }
            _ if args.from_vault.is_some() => {
                return Err(anyhow::Error::from(
                    Refusal::new("--from-vault needs a Vault token")
                        .help("export VAULT_TOKEN=... (a token that may list and read the mount)"),
                ));
            }
            _ => Box::new(crate::store::MemoryStore::new()),
        };
        let mut found = Vec::new();
        if let Some(prefix) = &args.from_vault {
            let walk = discover::vault::walk(
                store.as_ref(),
                prefix,
                "rekey/staging",
                discover::vault::Bounds {
                    max_entries: args.max_entries,
                    max_depth: args.max_depth,
                    rate: args.vault_rate,
                },
            )
            .await;
            notes.push(format!(
                "Vault {}/{}: {} entries in {} requests{}{}",
                draft.mount,
                prefix.trim_matches('/'),
                walk.found.len(),
                walk.requests,
                if walk.truncated {
                    format!(" (stopped at --max-entries {})", args.max_entries)
                } else {
                    String::new()
                },
                if walk.too_deep.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; not entered (deeper than --max-depth {}): {}",
                        args.max_depth,
                        walk.too_deep.join(", ")
                    )
                }
            ));
            for f in walk.found.iter().filter(|f| f.problem.is_some()) {
                notes.push(format!(
                    "not mapped: {}/{}: {}",
                    draft.mount,
                    f.path,
                    f.problem.as_deref().unwrap_or_default()
                ));
            }
            found = walk.found;
        }
        let mut listed = Vec::new();
        for spec in &specs {
            let Some(instance) = probe.providers.get(&spec.name) else {
                continue;
            };
            let provider =
                match super::setup::build_provider(instance, catalog, store.as_ref()).await {
                    Ok(p) => p,
                    Err(e) => {
                        notes.push(format!("instance `{}` not listed: {e}", spec.name));
                        continue;
                    }
                };
            match list_instance(&spec.name, provider, catalog.get(&spec.type_name)).await {
                Ok((mut l, note)) => {
                    notes.push(note);
                    listed.append(&mut l);
                }
                Err(e) => notes.push(format!("instance `{}` not listed: {e}", spec.name)),
            }
        }
        anyhow::Ok((found, listed, notes))
    })?;
    for f in [&args.gitleaks, &args.trufflehog].into_iter().flatten() {
        draft.notes.push(format!("scanner report {}", f.display()));
    }
    draft.notes.extend(notes.iter().cloned());
    let draft = discover::assemble(draft, catalog, &found, &listed, &scanner_findings);
    for n in &notes {
        writeln!(io.stderr, "discover: {n}")?;
    }
    let automated = draft
        .entries
        .iter()
        .filter(|e| e.instance.is_some())
        .count();
    writeln!(
        io.stderr,
        "discover: {} credential(s): {automated} rotated by rekey, {} manual step(s); review the draft, then `rekey plan` it",
        draft.entries.len(),
        draft.entries.len() - automated
    )?;
    let text = discover::write_yaml(&draft);
    match &args.output {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write the draft to {}", path.display()))?,
        None => io.stdout.write_all(text.as_bytes())?,
    }
    Ok(ExitStatus::Success)
}

/// What one instance lists: its accounts and their keys, or (a definition whose
/// list needs no account) its own keys. The note says what was done.
async fn list_instance(
    name: &str,
    provider: Arc<dyn Provider>,
    ptype: Option<&crate::catalog::ProviderType>,
) -> Result<(Vec<Listed>, String), String> {
    let no_settings = IndexMap::new();
    if provider.lists_accounts() {
        let accounts = provider.list_accounts().await.map_err(|e| e.to_string())?;
        let mut listed = Vec::new();
        for account in &accounts {
            let target = Target {
                credential: name,
                account: Some(account),
                settings: &no_settings,
            };
            let keys = provider.list(target).await.map_err(|e| e.to_string())?;
            listed.push(Listed {
                instance: name.to_owned(),
                account: Some(account.clone()),
                keys,
            });
        }
        let keys: usize = listed.iter().map(|l| l.keys.len()).sum();
        return Ok((
            listed,
            format!(
                "instance `{name}`: {} account(s), {keys} key(s)",
                accounts.len()
            ),
        ));
    }
    let Some(ptype) = ptype else {
        return Err("unknown type".into());
    };
    let needs_settings = ptype
        .credential_settings
        .declared()
        .into_iter()
        .flat_map(|d| d.values())
        .any(|s| s.required && s.default.is_none());
    if ptype.requests.list == 0 || ptype.account == Need::Required || needs_settings {
        return Ok((
            Vec::new(),
            format!(
                "instance `{name}`: type `{}` cannot list accounts or keys without a credential's settings; only Vault entries and scanner findings map to it",
                ptype.name
            ),
        ));
    }
    let target = Target {
        credential: name,
        account: None,
        settings: &no_settings,
    };
    let keys = provider.list(target).await.map_err(|e| e.to_string())?;
    let note = format!("instance `{name}`: {} key(s)", keys.len());
    Ok((
        vec![Listed {
            instance: name.to_owned(),
            account: None,
            keys,
        }],
        note,
    ))
}
