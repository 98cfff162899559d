//! What `run`, `resume` and `rollback` share before the engine starts: the
//! playbook and selection, the runnable providers, the Vault login, the journal
//! and its key, the audit trail, and the engine itself.

use super::{Io, Refusal, report_problems};
use crate::catalog::{Catalog, Kind};
use crate::cli::Format;
use crate::plan::{self, select::Selection};
use crate::playbook;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Loads and checks a playbook and its selection for `run` (diagnostics are
/// printed; a playbook or selection with errors is refused).
pub(super) fn load_for_run(
    path: &Path,
    args: &crate::cli::SelectionArgs,
    catalog: &Catalog,
    io: &mut Io,
) -> Result<(playbook::Loaded, Selection, String)> {
    let (loaded, selection, expanded) = load_expanding(path, args, catalog, io)?;
    Ok((loaded, selection, expanded_sha256(path, &expanded)))
}

/// The value of each `${VAR}` a playbook expanded (`None`: unset).
pub(super) type Expanded = std::collections::BTreeMap<String, Option<String>>;

/// [`load_for_run`], with the values the playbook's `${VAR}`s expanded to (a
/// shared run stores them, so that runners elsewhere load the same playbook).
pub(super) fn load_expanding(
    path: &Path,
    args: &crate::cli::SelectionArgs,
    catalog: &Catalog,
    io: &mut Io,
) -> Result<(playbook::Loaded, Selection, Expanded)> {
    let file = path.display().to_string();
    if path == Path::new(playbook::STDIN) {
        return Err(Refusal::new(
            "`rekey run` needs a playbook file, not stdin: `resume` and `rollback` read it again",
        )
        .help("save the playbook to a file and run that")
        .into());
    }
    // Every `${VAR}` the playbook expands, with its value: a run is resumed only
    // with the same expansion (another VAULT_ADDR would be another run).
    let expanded = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let env = |name: &str| {
        let value = crate::env_vars::get(name);
        if let Ok(mut e) = expanded.lock() {
            e.insert(name.to_owned(), value.clone());
        }
        value
    };
    let loaded = match playbook::load_file(path, &env, catalog) {
        Ok(l) => l,
        Err(report) => {
            report_problems(io, &report, Format::Text)?;
            return Err(Refusal::reported().into());
        }
    };
    crate::harden::take_playbook_env(&loaded.playbook);
    report_problems(io, &loaded.report, Format::Text)?;
    let selection = Selection {
        compromised: args.compromised.clone(),
        tags: args.tags.clone(),
        only: args.only.clone(),
    };
    if let Err(errors) = plan::select::check(&loaded.playbook, &selection) {
        return Err(Refusal::many(errors.iter().map(|e| format!("{file}: {e}"))).into());
    }
    Ok((loaded, selection, expanded.into_inner().unwrap_or_default()))
}

/// SHA-256 of the playbook file and of each variable it expanded (name and value,
/// or unset), hex. Values are hashed, never kept: `${VAR}` refuses secret-looking
/// names, but a hash is all `resume` needs.
fn expanded_sha256(
    path: &Path,
    vars: &std::collections::BTreeMap<String, Option<String>>,
) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(std::fs::read(path).unwrap_or_default());
    for (name, value) in vars {
        hash.update([0u8]);
        hash.update(name.as_bytes());
        match value {
            Some(v) => {
                hash.update([1u8]);
                hash.update(v.as_bytes());
            }
            None => hash.update([2u8]),
        }
    }
    hex::encode(hash.finalize())
}

/// The key for the journal's HMAC fingerprints, kept beside the journal (0600) so
/// a value can later be checked against the records.
fn fingerprint_key(journal: &Path) -> Result<Vec<u8>> {
    key_file(&journal.with_extension("key"))
}

/// A 32-byte HMAC key in file `path`, created when missing (see `files::key_file`).
pub(super) fn key_file(path: &Path) -> Result<Vec<u8>> {
    crate::files::key_file(path).map_err(anyhow::Error::msg)
}

/// Each credential's provider instance and Vault path, for its audit lines.
pub(super) fn credential_infos(
    pb: &playbook::Playbook,
) -> std::collections::HashMap<String, crate::audit::CredentialInfo> {
    pb.credentials
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                crate::audit::CredentialInfo {
                    provider: c.provider.clone(),
                    vault_path: c.vault_path.clone(),
                },
            )
        })
        .collect()
}

/// The audit sinks `--audit-sink` names (the HTTP ones with
/// `REKEY_AUDIT_AUTHORIZATION`).
pub(super) fn audit_sinks(specs: &[String]) -> Result<Vec<crate::audit::Sink>> {
    let authorization = crate::harden::secret_env(crate::env_vars::REKEY_AUDIT_AUTHORIZATION)
        .map(|v| crate::secret::Secret::new(v.trim()));
    let mut sinks = Vec::new();
    for spec in specs {
        sinks.push(
            crate::audit::Sink::parse(spec, authorization.clone()).map_err(anyhow::Error::msg)?,
        );
    }
    Ok(sinks)
}

/// Where the audit trail goes for `run`, `resume` and `rollback`.
pub(super) struct AuditSetup {
    path: PathBuf,
    sinks: Vec<String>,
    new_trail: bool,
}

impl AuditSetup {
    pub(super) fn from_args(args: &crate::cli::JournalArgs) -> AuditSetup {
        AuditSetup {
            path: args
                .audit
                .clone()
                .unwrap_or_else(|| crate::audit::default_path(&args.path)),
            sinks: args.audit_sinks.clone(),
            new_trail: args.new_trail,
        }
    }

    /// Opens the trail (verifying what it already holds), naming `actor` on every
    /// line, and hands it to `journal` as its mirror.
    fn attach(
        &self,
        journal: &mut crate::journal::Journal,
        pb: &playbook::Playbook,
        actor: crate::audit::Actor,
    ) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let key = key_file(&crate::audit::key_path(&self.path))?;
        let sinks = audit_sinks(&self.sinks)?;
        let trail = crate::audit::Trail::open(&self.path, key, actor, credential_infos(pb), sinks)?;
        journal.set_mirror(Box::new(trail));
        Ok(())
    }

    /// Tells the operator where the trail is and its last hash: written into the
    /// incident ticket, it anchors the trail against later rewriting.
    pub(super) fn report(&self, io: &mut Io) -> Result<()> {
        if let Ok(v) = crate::audit::verify_file(&self.path, |_, _| {}) {
            writeln!(
                io.stderr,
                "audit trail {}: {} lines, last line sha256 {}",
                self.path.display(),
                v.lines,
                v.last
            )?;
        }
        Ok(())
    }
}

/// What `run` and `resume` need before the engine starts: the playbook, the
/// waves, a provider for every selected credential, and a Vault login.
pub(super) struct Prepared<'c> {
    pub(super) playbook: Arc<playbook::Playbook>,
    /// Where the providers' types are described (HTTP definitions among them).
    catalog: &'c Catalog,
    waves: Vec<Vec<usize>>,
    /// The provider instances the selected credentials use (built once Vault is
    /// reachable, since admin credentials may live there).
    providers: indexmap::IndexSet<String>,
    vault: crate::store::VaultConfig,
}

impl Prepared<'_> {
    /// Leaves out credentials `ids` (those a hygiene run found not due), so
    /// `resume` never takes them up.
    pub(super) fn leave_out(&mut self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let pb = &self.playbook;
        for wave in &mut self.waves {
            wave.retain(|&i| !ids.contains(&pb.credentials[i].id));
        }
        self.waves.retain(|w| !w.is_empty());
    }
}

/// Checks that every selected credential can run in this build and that the
/// Vault login is at hand; refuses (changing nothing) otherwise.
pub(super) fn prepare<'c>(
    path: &Path,
    loaded: playbook::Loaded,
    selection: &Selection,
    catalog: &'c Catalog,
) -> Result<Prepared<'c>> {
    let pb = Arc::new(loaded.playbook);
    let selected = plan::select::apply(&pb, selection);
    let waves = plan::order::waves(&pb, &selected.indices);
    // Every provider a selected credential needs must be runnable before anything starts.
    let mut providers = indexmap::IndexSet::new();
    let mut refused = Vec::new();
    for &i in &selected.indices {
        let c = &pb.credentials[i];
        // A manual step needs a provider only to verify its value (`verify_with`).
        let needed = if c.kind == Kind::Manual {
            match c.settings.get("verify_with").and_then(|v| v.as_str()) {
                Some(name) => name,
                None => continue,
            }
        } else {
            c.provider.as_str()
        };
        if providers.contains(needed) {
            continue;
        }
        match pb.providers.get(needed) {
            Some(p) if catalog.get(&p.type_name).is_some_and(|t| t.available) => {
                providers.insert(needed.to_owned());
            }
            Some(p) => refused.push(format!(
                "provider type `{}` (instance `{}`) cannot rotate credentials in this build yet; `rekey providers` lists what can",
                p.type_name, p.name
            )),
            None => refused.push(format!("unknown provider instance `{needed}`")),
        }
    }
    if !refused.is_empty() {
        refused.dedup();
        let shown = path.display();
        return Err(
            Refusal::many(refused.iter().map(|r| format!("{shown}: {r}")))
                .help("select only runnable credentials with --only/--tag; nothing was changed")
                .into(),
        );
    }
    let vault = vault_config(&pb)?;
    Ok(Prepared {
        playbook: pb,
        catalog,
        waves,
        providers,
        vault,
    })
}

/// The Vault login from the playbook and the environment variables it names.
pub(super) fn vault_config(pb: &playbook::Playbook) -> Result<crate::store::VaultConfig> {
    use crate::store::{VaultConfig, VaultLogin};
    let login = match &pb.vault.auth {
        playbook::VaultAuth::Token { env: var } => match crate::harden::secret_env(var) {
            Some(t) if !t.trim().is_empty() => {
                VaultLogin::Token(crate::secret::Secret::new(t.trim().to_owned()))
            }
            _ => {
                return Err(Refusal::new(format!(
                        "the Vault token variable `{var}` is not set"
                    ))
                    .help(format!(
                        "export {var}=... (a token allowed to read and write the playbook's paths)"
                    ))
                    .into());
            }
        },
        playbook::VaultAuth::AppRole {
            role_id,
            secret_id_env,
            mount,
        } => match crate::harden::secret_env(secret_id_env) {
            Some(s) if !s.trim().is_empty() => VaultLogin::AppRole {
                mount: mount.clone(),
                role_id: role_id.clone(),
                secret_id: crate::secret::Secret::new(s.trim().to_owned()),
            },
            _ => {
                return Err(Refusal::new(format!(
                    "the AppRole secret-id variable `{secret_id_env}` is not set"
                ))
                .into());
            }
        },
    };
    Ok(VaultConfig {
        address: pb.vault.address.clone(),
        mount: pb.vault.mount.clone(),
        namespace: pb.vault.namespace.clone(),
        ca_file: pb.vault.ca_file.clone().map(PathBuf::from),
        auth: login,
    })
}

/// Opens (creating when missing, in a 0700 directory) the journal at `path`, and
/// its fingerprint key.
pub(super) fn open_journal(path: &Path) -> Result<(crate::journal::Journal, Vec<u8>)> {
    refuse_shared(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // 0700: the journal, its key and the audit trail live here.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let journal = crate::journal::Journal::open(path)?;
    let key = fingerprint_key(path)?;
    Ok((journal, key))
}

/// `resume` and `rollback` refuse a shared journal (`postgres://`): its runs are
/// taken by `rekey runner` (`run` records one: `run.rs`, `run_shared`). Without
/// this the URL would be taken for a file path and a journal created under it.
pub(super) fn refuse_shared(path: &Path) -> Result<()> {
    match crate::journal::Location::parse(path.as_os_str()) {
        Ok(location) if !location.is_shared() => Ok(()),
        Ok(location) => Err(Refusal::new(format!(
            "the journal {} is a shared journal (PostgreSQL): its runs are finished by `rekey runner`, not `resume` or `rollback`",
            location.display()
        ))
        .help("start `rekey runner --journal URL --zone Z` in each zone: a credential whose runner died is taken over once its claim expires (docs/shared-journal.md)")
        .into()),
        Err(problem) => Err(Refusal::new(problem).into()),
    }
}

pub(super) fn file_sha256(path: &Path) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(path).unwrap_or_default(),
    ))
}

/// Bars on a terminal, plain lines otherwise.
fn progress_for(
    pb: &playbook::Playbook,
    waves: &[Vec<usize>],
    limits: &indexmap::IndexMap<String, Arc<crate::engine::limits::InstanceLimit>>,
) -> Arc<dyn crate::engine::Progress> {
    use std::io::IsTerminal;
    let total: usize = waves.iter().map(Vec::len).sum();
    if std::io::stderr().is_terminal() {
        let mut counts: indexmap::IndexMap<String, u64> = indexmap::IndexMap::new();
        for &i in waves.iter().flatten() {
            *counts
                .entry(pb.credentials[i].provider.clone())
                .or_default() += 1;
        }
        Arc::new(crate::progress::Bars::new(&counts, limits.clone()))
    } else {
        Arc::new(crate::progress::Lines::new(total))
    }
}

/// Resolves `instance`'s admin credential (from Vault or the environment) and builds
/// its provider. The error names what is missing and never holds a value.
pub(super) async fn build_provider(
    instance: &playbook::ProviderInstance,
    catalog: &Catalog,
    store: &dyn crate::store::SecretStore,
) -> std::result::Result<Arc<dyn crate::provider::Provider>, String> {
    let admin = match &instance.admin {
        Some(source) => Some(crate::provider::admin::resolve(source, store).await?),
        None => None,
    };
    crate::provider::registry::build(instance, catalog, admin).map_err(|e| e.to_string())
}

/// Runs `work` with an engine built from `prepared`; `actor` (with the Vault
/// token's identity added once Vault answers) is named on every audit line.
/// How long the checks of Vault before a run may take: a server that does not
/// answer in this time ends the command before anything changes.
const VAULT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Vault before anything is touched: it answers (within `VAULT_CHECK_TIMEOUT`),
/// the token is good, the mount is KV version 2, and the token may read and write
/// the selected credentials' paths and the staging prefix. One clear error, not one
/// failure per credential.
async fn check_vault(store: &crate::store::VaultStore, prepared: &Prepared<'_>) -> Result<()> {
    use crate::store::SecretStore;
    let paths: Vec<String> = prepared
        .waves
        .iter()
        .flatten()
        .map(|&i| prepared.playbook.credentials[i].vault_path.clone())
        .collect();
    let checks = async {
        store.preflight().await?;
        store
            .check_access(&paths, &prepared.playbook.vault.staging_prefix)
            .await
    };
    match tokio::time::timeout(VAULT_CHECK_TIMEOUT, checks).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("{e}; nothing was changed")),
        Err(_) => Err(anyhow::anyhow!(
            "Vault at {} did not answer within {} s; nothing was changed: check `vault.address` and that the server is up and unsealed, then run again",
            prepared.playbook.vault.address,
            VAULT_CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// The engine's surroundings beyond the run itself: who answers manual steps,
/// and which webhooks are told what happens.
pub(super) struct Hooks {
    pub(super) operator: Arc<dyn crate::provider::manual::Operator>,
    pub(super) notifier: Option<Arc<crate::notify::Notifier>>,
}

pub(super) fn with_engine<T>(
    prepared: Prepared<'_>,
    mut journal: crate::journal::Journal,
    key: Vec<u8>,
    audit: &AuditSetup,
    mut actor: crate::audit::Actor,
    hooks: Hooks,
    work: impl AsyncFnOnce(&crate::engine::Engine, &[Vec<usize>]) -> Result<T>,
) -> Result<T> {
    crate::audit::anchor::check(&journal, &audit.path, audit.new_trail)
        .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // First Ctrl-C: finish what is in flight (each credential reaches a safe
        // state), start nothing new. Second: stop at once; the journal lets
        // `rekey resume` reconcile whatever was half done.
        let flag = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                eprintln!("rekey: interrupted; finishing the credentials in flight (Ctrl-C again to stop now, then `rekey resume`)");
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("rekey: stopped; run `rekey resume` to finish");
                    std::process::exit(i32::from(crate::exit::ExitStatus::Interrupted.code()));
                }
            }
        });
        let store = crate::store::VaultStore::connect(&prepared.vault).await?;
        check_vault(&store, &prepared).await?;
        if let Some((entity, name)) = store.identity().await {
            actor.vault_entity_id = entity;
            actor.vault_display_name = name;
        }
        audit.attach(&mut journal, &prepared.playbook, actor)?;
        let mut providers = indexmap::IndexMap::new();
        let mut refused = Vec::new();
        for name in &prepared.providers {
            match build_provider(&prepared.playbook.providers[name], prepared.catalog, &store).await
            {
                Ok(p) => {
                    providers.insert(name.clone(), p);
                }
                Err(e) => refused.push(format!("provider instance `{name}`: {e}")),
            }
        }
        if !refused.is_empty() {
            anyhow::bail!("{}; nothing was changed", refused.join("; "));
        }
        let mut builder =
            crate::engine::Engine::builder(prepared.playbook.clone(), Arc::new(store), journal, key)
                .stop_flag(stop)
                .operator(hooks.operator);
        for (name, provider) in providers {
            builder = builder.provider(name, provider);
        }
        let mut progress = progress_for(&prepared.playbook, &prepared.waves, builder.limits());
        if let Some(notifier) = hooks.notifier {
            let total = prepared.waves.iter().map(Vec::len).sum();
            progress = Arc::new(crate::notify::Notifying::new(progress, notifier, total));
        }
        let engine = builder.progress(progress).build()?;
        work(&engine, &prepared.waves).await
    })
}
