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
        writeln!(
            io.stderr,
            "help: selection values must name something in the playbook; a typo must not silently select nothing"
        )?;
        return Ok(ExitStatus::Invalid);
    }
    let plan = plan::build(&file, &loaded.playbook, &selection);
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
        match live_checks(&loaded.playbook, &selected, io)? {
            Ok(report) => {
                let failed = report.iter().any(|(_, ok, _)| !ok);
                if args.format == Format::Json {
                    let rows: Vec<_> = report.iter().map(|(what, ok, detail)| serde_json::json!({ "check": what, "ok": ok, "detail": detail })).collect();
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
            Err(s) => status = s,
        }
    }
    // The process ends right after this command: freeing a 100,000-credential
    // playbook piece by piece would only delay the exit (about a tenth of a second).
    drop(plan);
    std::mem::forget(loaded);
    Ok(status)
}

/// One live check: what was checked, whether it passed, and what was found.
type CheckRow = (String, bool, String);

/// Read-only checks for `plan --live`. Changes nothing.
fn live_checks(
    pb: &playbook::Playbook,
    selected: &[usize],
    io: &mut Io,
) -> Result<std::result::Result<Vec<CheckRow>, ExitStatus>> {
    use crate::store::SecretStore;
    let config = match vault_config(pb, io)? {
        Ok(c) => c,
        Err(status) => return Ok(Err(status)),
    };
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
            Ok(runs) if runs.is_empty() => rows.push(("staging".to_owned(), true, "no leftover staging entries".to_owned())),
            Ok(runs) => rows.push(("staging".to_owned(), false, format!("leftover staging entries of run(s) {}: finish them with `rekey resume RUN` first", runs.iter().map(|r| r.trim_end_matches('/')).collect::<Vec<_>>().join(", ")))),
            Err(e) => rows.push(("staging".to_owned(), false, e.to_string())),
        }
        let mut providers: indexmap::IndexMap<String, Option<std::sync::Arc<dyn crate::provider::Provider>>> = indexmap::IndexMap::new();
        for &i in selected {
            let c = &pb.credentials[i];
            match store.read(&c.vault_path).await {
                Ok(entry) if entry.version == 0 => rows.push((format!("{} vault", c.id), true, format!("{} is new (no version yet)", c.vault_path))),
                Ok(entry) => rows.push((format!("{} vault", c.id), true, format!("{} at version {}", c.vault_path, entry.version))),
                Err(e) => rows.push((format!("{} vault", c.id), false, e.to_string())),
            }
            if c.kind == crate::provider::catalog::Kind::Manual {
                continue;
            }
            if !providers.contains_key(&c.provider) {
                let built = match pb.providers.get(&c.provider) {
                    Some(instance) => build_provider(instance, &store).await,
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
        }
        rows
    });
    Ok(Ok(rows))
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

/// Loads and checks a playbook and its selection for `run`: `Err(status)` when the
/// command must stop (diagnostics already printed).
fn load_for_run(
    path: &std::path::Path,
    args: &crate::cli::SelectionArgs,
    io: &mut Io,
) -> Result<std::result::Result<(playbook::Loaded, Selection), ExitStatus>> {
    let file = path.display().to_string();
    let loaded = match playbook::load_file(path, &env) {
        Ok(l) => l,
        Err(report) => {
            report_problems(io, &report, Format::Text)?;
            return Ok(Err(ExitStatus::Invalid));
        }
    };
    report_problems(io, &loaded.report, Format::Text)?;
    let selection = Selection {
        compromised: args.compromised.clone(),
        tags: args.tags.clone(),
        only: args.only.clone(),
    };
    if let Err(errors) = plan::select::check(&loaded.playbook, &selection) {
        for e in &errors {
            writeln!(io.stderr, "error: {file}: {e}")?;
        }
        return Ok(Err(ExitStatus::Invalid));
    }
    Ok(Ok((loaded, selection)))
}

/// The key for the journal's HMAC fingerprints, kept beside the journal (0600) so
/// a value can later be checked against the records.
fn fingerprint_key(journal: &std::path::Path) -> Result<Vec<u8>> {
    key_file(&journal.with_extension("key"))
}

/// A 32-byte HMAC key in file `path`, created (O_CREAT|O_EXCL, 0600, synced) when
/// missing. An existing key file others can read is refused: whoever holds the
/// key can test guesses against the fingerprints.
fn key_file(path: &std::path::Path) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Ok(mut f) = std::fs::File::open(path) {
        let mode = f.metadata()?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "the key file {} is accessible by group or others (mode {mode:04o}): run `chmod 600 {}` and check who changed it",
                path.display(),
                path.display()
            );
        }
        let mut key = Vec::new();
        f.read_to_end(&mut key)?;
        if key.len() == 32 {
            return Ok(key);
        }
        anyhow::bail!(
            "the key file {} is not a rekey key (32 bytes); restore it from a backup: without it, recorded fingerprints cannot be checked",
            path.display()
        );
    }
    let key: [u8; 32] = rand::random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&key)?;
    f.sync_all()?;
    Ok(key.to_vec())
}

/// Where the audit trail goes for `run`, `resume` and `rollback`.
struct AuditSetup {
    path: std::path::PathBuf,
    sinks: Vec<String>,
}

impl AuditSetup {
    fn from_args(args: &crate::cli::JournalArgs) -> AuditSetup {
        AuditSetup {
            path: args
                .audit
                .clone()
                .unwrap_or_else(|| crate::audit::default_path(&args.path)),
            sinks: args.audit_sinks.clone(),
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
        let authorization = std::env::var(crate::env_vars::REKEY_AUDIT_AUTHORIZATION)
            .ok()
            .map(|v| crate::secret::Secret::new(zeroize::Zeroizing::new(v).trim()));
        let mut sinks = Vec::new();
        for spec in &self.sinks {
            sinks.push(
                crate::audit::Sink::parse(spec, authorization.clone())
                    .map_err(anyhow::Error::msg)?,
            );
        }
        let credentials = pb
            .credentials
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
            .collect();
        let trail = crate::audit::Trail::open(&self.path, key, actor, credentials, sinks)?;
        journal.set_mirror(Box::new(trail));
        Ok(())
    }

    /// Tells the operator where the trail is and its last hash: written into the
    /// incident ticket, it anchors the trail against later rewriting.
    fn report(&self, io: &mut Io) -> Result<()> {
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
struct Prepared {
    playbook: std::sync::Arc<playbook::Playbook>,
    waves: Vec<Vec<usize>>,
    /// The provider instances the selected credentials use (built once Vault is
    /// reachable, since admin credentials may live there).
    providers: indexmap::IndexSet<String>,
    vault: crate::store::VaultConfig,
}

fn prepare(
    path: &std::path::Path,
    loaded: playbook::Loaded,
    selection: &Selection,
    io: &mut Io,
) -> Result<std::result::Result<Prepared, ExitStatus>> {
    let pb = std::sync::Arc::new(loaded.playbook);
    let selected = plan::select::apply(&pb, selection);
    let waves = plan::order::waves(&pb, &selected.indices);
    // Every provider a selected credential needs must be runnable before anything starts.
    let mut providers = indexmap::IndexSet::new();
    let mut refused = Vec::new();
    for &i in &selected.indices {
        let c = &pb.credentials[i];
        // A manual step needs a provider only to verify its value (`verify_with`).
        let needed = if c.kind == crate::provider::catalog::Kind::Manual {
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
            Some(p) if crate::provider::registry::supports(&p.type_name) => {
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
        for r in &refused {
            writeln!(io.stderr, "error: {}: {r}", path.display())?;
        }
        writeln!(
            io.stderr,
            "help: select only runnable credentials with --only/--tag; nothing was changed"
        )?;
        return Ok(Err(ExitStatus::Invalid));
    }
    let vault = match vault_config(&pb, io)? {
        Ok(v) => v,
        Err(status) => return Ok(Err(status)),
    };
    Ok(Ok(Prepared {
        playbook: pb,
        waves,
        providers,
        vault,
    }))
}

/// The Vault login from the playbook and the environment variables it names.
fn vault_config(
    pb: &playbook::Playbook,
    io: &mut Io,
) -> Result<std::result::Result<crate::store::VaultConfig, ExitStatus>> {
    use crate::store::{VaultConfig, VaultLogin};
    let login = match &pb.vault.auth {
        playbook::VaultAuth::Token { env: var } => {
            match std::env::var(var).map(zeroize::Zeroizing::new) {
                Ok(t) if !t.trim().is_empty() => {
                    VaultLogin::Token(crate::secret::Secret::new(t.trim().to_owned()))
                }
                _ => {
                    writeln!(
                        io.stderr,
                        "error: the Vault token variable `{var}` is not set\nhelp: export {var}=... (a token allowed to read and write the playbook's paths)"
                    )?;
                    return Ok(Err(ExitStatus::Invalid));
                }
            }
        }
        playbook::VaultAuth::AppRole {
            role_id,
            secret_id_env,
            mount,
        } => match std::env::var(secret_id_env).map(zeroize::Zeroizing::new) {
            Ok(s) if !s.trim().is_empty() => VaultLogin::AppRole {
                mount: mount.clone(),
                role_id: role_id.clone(),
                secret_id: crate::secret::Secret::new(s.trim().to_owned()),
            },
            _ => {
                writeln!(
                    io.stderr,
                    "error: the AppRole secret-id variable `{secret_id_env}` is not set"
                )?;
                return Ok(Err(ExitStatus::Invalid));
            }
        },
    };
    let vault = VaultConfig {
        address: pb.vault.address.clone(),
        mount: pb.vault.mount.clone(),
        namespace: pb.vault.namespace.clone(),
        ca_file: pb.vault.ca_file.clone().map(std::path::PathBuf::from),
        auth: login,
    };
    Ok(Ok(vault))
}

fn open_journal(path: &std::path::Path) -> Result<(crate::journal::Journal, Vec<u8>)> {
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

fn file_sha256(path: &std::path::Path) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(path).unwrap_or_default(),
    ))
}

/// Bars on a terminal, plain lines otherwise.
fn progress_for(
    pb: &playbook::Playbook,
    waves: &[Vec<usize>],
    limits: &indexmap::IndexMap<String, std::sync::Arc<crate::engine::limits::InstanceLimit>>,
) -> std::sync::Arc<dyn crate::engine::Progress> {
    use std::io::IsTerminal;
    let total: usize = waves.iter().map(Vec::len).sum();
    if std::io::stderr().is_terminal() {
        let mut counts: indexmap::IndexMap<String, u64> = indexmap::IndexMap::new();
        for &i in waves.iter().flatten() {
            *counts
                .entry(pb.credentials[i].provider.clone())
                .or_default() += 1;
        }
        std::sync::Arc::new(crate::progress::Bars::new(&counts, limits.clone()))
    } else {
        std::sync::Arc::new(crate::progress::Lines::new(total))
    }
}

/// Resolves `instance`'s admin credential (from Vault or the environment) and builds
/// its provider. The error names what is missing and never holds a value.
async fn build_provider(
    instance: &playbook::ProviderInstance,
    store: &crate::store::VaultStore,
) -> std::result::Result<std::sync::Arc<dyn crate::provider::Provider>, String> {
    let admin = match &instance.admin {
        Some(source) => Some(crate::provider::admin::resolve(source, store).await?),
        None => None,
    };
    crate::provider::registry::build(instance, admin).map_err(|e| e.to_string())
}

/// Runs `work` with an engine built from `prepared`.
fn with_engine<T>(
    prepared: Prepared,
    mut journal: crate::journal::Journal,
    key: Vec<u8>,
    audit: &AuditSetup,
    operator: std::sync::Arc<dyn crate::provider::manual::Operator>,
    work: impl AsyncFnOnce(&crate::engine::Engine, &[Vec<usize>]) -> Result<T>,
) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
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
        let mut actor = crate::audit::Actor::from_os();
        if let Some((entity, name)) = store.identity().await {
            actor.vault_entity_id = entity;
            actor.vault_display_name = name;
        }
        audit.attach(&mut journal, &prepared.playbook, actor)?;
        let mut providers = indexmap::IndexMap::new();
        let mut refused = Vec::new();
        for name in &prepared.providers {
            match build_provider(&prepared.playbook.providers[name], &store).await {
                Ok(p) => {
                    providers.insert(name.clone(), p);
                }
                Err(e) => refused.push(format!("provider instance `{name}`: {e}")),
            }
        }
        if !refused.is_empty() {
            anyhow::bail!("{}; nothing was changed", refused.join("; "));
        }
        let mut builder = crate::engine::Engine::builder(
            prepared.playbook.clone(),
            std::sync::Arc::new(store),
            journal,
            key,
        )
        .stop_flag(stop)
        .operator(operator);
        for (name, provider) in providers {
            builder = builder.provider(name, provider);
        }
        let progress = progress_for(&prepared.playbook, &prepared.waves, builder.limits());
        let engine = builder.progress(progress).build()?;
        work(&engine, &prepared.waves).await
    })
}

/// One instance's totals: requests, rate-limited answers, retries, and what rekey
/// learned about its real limit.
fn instance_line(i: &crate::engine::limits::LimitStats) -> String {
    let rate = |r: f64| {
        if r >= 10.0 {
            format!("{r:.0}/s")
        } else {
            format!("{r:.2}/s")
        }
    };
    let mut line = format!(
        "instance {}: {} requests, {} rate-limited",
        i.instance, i.requests, i.rate_limited
    );
    if i.retries + i.retries_refused > 0 {
        line += &format!(", {} retried", i.retries);
        if i.retries_refused > 0 {
            line += &format!(" ({} refused by the retry budget)", i.retries_refused);
        }
    }
    match i.learned_per_second {
        Some(l) => {
            line += &format!(
                "; the provider admits about {} (configured {}): ended at {}, set `rate` in the playbook to match",
                rate(l),
                rate(i.configured_per_second),
                rate(i.final_per_second)
            )
        }
        None => line += &format!("; limit {}", rate(i.configured_per_second)),
    }
    line
}

fn print_summary(
    summary: &crate::engine::RunSummary,
    format: Format,
    io: &mut Io,
) -> Result<ExitStatus> {
    if format == Format::Json {
        writeln!(io.stdout, "{}", serde_json::to_string_pretty(summary)?)?;
    } else {
        writeln!(io.stdout, "Run {}: {}", summary.run_id, summary.status())?;
        for r in &summary.results {
            let detail = match &r.outcome {
                crate::engine::Outcome::Rotated { key_id, version } => format!(
                    "rotated (Vault version {version}{})",
                    key_id
                        .as_ref()
                        .map(|k| format!(", key {k}"))
                        .unwrap_or_default()
                ),
                crate::engine::Outcome::RolledBack { reason } => format!("rolled back: {reason}"),
                crate::engine::Outcome::Quarantined { reason, action } => {
                    format!("QUARANTINED: {reason}\n      to do: {action}")
                }
                crate::engine::Outcome::Skipped { reason } => format!("skipped: {reason}"),
                crate::engine::Outcome::AwaitingOperator { .. } => {
                    "awaiting operator (manual step)".into()
                }
            };
            writeln!(io.stdout, "  {:<24} {detail}", r.id)?;
        }
        writeln!(
            io.stdout,
            "{} rotated, {} rolled back, {} quarantined, {} skipped, {} awaiting an operator",
            summary.count(crate::journal::CredentialState::Rotated),
            summary.count(crate::journal::CredentialState::RolledBack),
            summary.count(crate::journal::CredentialState::Quarantined),
            summary.count(crate::journal::CredentialState::Skipped),
            summary.count(crate::journal::CredentialState::AwaitingOperator)
        )?;
        for i in &summary.instances {
            writeln!(io.stdout, "  {}", instance_line(i))?;
        }
    }
    if summary.interrupted {
        writeln!(
            io.stderr,
            "run {} was interrupted; `rekey resume` finishes it",
            summary.run_id
        )?;
    }
    let waiting: Vec<&str> = summary
        .results
        .iter()
        .filter(|r| r.outcome.state() == crate::journal::CredentialState::AwaitingOperator)
        .map(|r| r.id.as_str())
        .collect();
    for id in &waiting {
        writeln!(
            io.stderr,
            "manual step `{id}` waits for an operator: do what `rekey status {run}` says, then `rekey resume {run} --credential {id} --value-stdin` (or --value-file FILE, or run resume on a terminal)",
            run = summary.run_id
        )?;
    }
    if !summary.interrupted
        && !waiting.is_empty()
        && summary.status() == crate::journal::RunStatus::Interrupted
    {
        return Ok(ExitStatus::AwaitingOperator);
    }
    Ok(match summary.status() {
        crate::journal::RunStatus::Succeeded => ExitStatus::Success,
        crate::journal::RunStatus::Quarantined => ExitStatus::Quarantined,
        crate::journal::RunStatus::Interrupted => ExitStatus::Interrupted,
        _ => ExitStatus::Failure,
    })
}

pub fn run(args: &crate::cli::RunArgs, io: &mut Io) -> Result<ExitStatus> {
    let (loaded, selection) = match load_for_run(&args.playbook, &args.selection, io)? {
        Ok(v) => v,
        Err(status) => return Ok(status),
    };
    let prepared = match prepare(&args.playbook, loaded, &selection, io)? {
        Ok(p) => p,
        Err(status) => return Ok(status),
    };
    let (journal, key) = open_journal(&args.journal.path)?;
    let new_run = crate::journal::NewRun {
        playbook_name: prepared.playbook.name.clone(),
        playbook_path: std::fs::canonicalize(&args.playbook)
            .unwrap_or(args.playbook.clone())
            .display()
            .to_string(),
        playbook_sha256: file_sha256(&args.playbook),
        mode: match prepared.playbook.incident.mode {
            playbook::Mode::Breach => "breach".into(),
            playbook::Mode::Routine => "routine".into(),
        },
        selection: serde_json::json!({ "compromised": selection.compromised, "tags": selection.tags, "only": selection.only }),
        actor: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
    };
    let audit = AuditSetup::from_args(&args.journal);
    let operator = terminal_operator();
    let summary = with_engine(
        prepared,
        journal,
        key,
        &audit,
        operator,
        async |engine, waves| Ok(engine.run(&new_run, waves).await?),
    )?;
    audit.report(io)?;
    print_summary(&summary, args.format, io)
}

/// The playbook and selection a recorded run used, ready to run again (resume,
/// rollback). The playbook must be unchanged: rekey will not finish or undo a run
/// against different instructions.
fn reload_run(
    run: &crate::journal::RunRow,
    io: &mut Io,
) -> Result<std::result::Result<Prepared, ExitStatus>> {
    let path = std::path::PathBuf::from(&run.playbook_path);
    if file_sha256(&path) != run.playbook_sha256 {
        writeln!(
            io.stderr,
            "error: {} changed since run {} started\nhelp: restore the playbook as it was (its SHA-256 was {}); rekey acts on a run only with the instructions it started with",
            path.display(),
            run.id,
            run.playbook_sha256
        )?;
        return Ok(Err(ExitStatus::Invalid));
    }
    let strings = |k: &str| {
        run.selection
            .get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let selection_args = crate::cli::SelectionArgs {
        compromised: strings("compromised"),
        tags: strings("tags"),
        only: strings("only"),
    };
    let (loaded, selection) = match load_for_run(&path, &selection_args, io)? {
        Ok(v) => v,
        Err(status) => return Ok(Err(status)),
    };
    prepare(&path, loaded, &selection, io)
}

pub fn resume(args: &crate::cli::ResumeArgs, io: &mut Io) -> Result<ExitStatus> {
    if !args.journal.path.exists() {
        writeln!(
            io.stderr,
            "error: no journal at {}\nhelp: pass the --journal the run used",
            args.journal.path.display()
        )?;
        return Ok(ExitStatus::Invalid);
    }
    let (journal, key) = open_journal(&args.journal.path)?;
    let run = match &args.run {
        Some(id) => journal.run(id)?,
        None => journal.latest_unfinished()?,
    };
    let Some(run) = run else {
        writeln!(
            io.stderr,
            "error: no unfinished run in {} (give a run id to resume a finished one)",
            args.journal.path.display()
        )?;
        return Ok(ExitStatus::Invalid);
    };
    let prepared = match reload_run(&run, io)? {
        Ok(p) => p,
        Err(status) => return Ok(status),
    };
    writeln!(
        io.stderr,
        "resuming run {} of {}",
        run.id, run.playbook_path
    )?;
    let operator = match resume_operator(&args.operator, &journal, &run.id, io)? {
        Ok(o) => o,
        Err(status) => return Ok(status),
    };
    let run_id = run.id.clone();
    let audit = AuditSetup::from_args(&args.journal);
    let summary = with_engine(
        prepared,
        journal,
        key,
        &audit,
        operator,
        async |engine, waves| Ok(engine.resume(&run_id, waves).await?),
    )?;
    audit.report(io)?;
    print_summary(&summary, args.format, io)
}

pub fn rollback(args: &crate::cli::RollbackArgs, io: &mut Io) -> Result<ExitStatus> {
    if !args.journal.path.exists() {
        writeln!(
            io.stderr,
            "error: no journal at {}\nhelp: pass the --journal the run used",
            args.journal.path.display()
        )?;
        return Ok(ExitStatus::Invalid);
    }
    let (journal, key) = open_journal(&args.journal.path)?;
    let Some(run) = journal.run(&args.run)? else {
        writeln!(
            io.stderr,
            "error: no run `{}` in {}",
            args.run,
            args.journal.path.display()
        )?;
        return Ok(ExitStatus::Invalid);
    };
    if run.mode == "breach" {
        writeln!(
            io.stderr,
            "error: run {} was a breach response; rolling it back would restore values the attacker may know\nhelp: rekey never restores a compromised value; rotate again (`rekey run`) to move forward",
            run.id
        )?;
        return Ok(ExitStatus::Invalid);
    }
    if matches!(
        run.status,
        crate::journal::RunStatus::Running | crate::journal::RunStatus::Interrupted
    ) {
        writeln!(
            io.stderr,
            "error: run {} is {}; finish it with `rekey resume` before rolling it back",
            run.id, run.status
        )?;
        return Ok(ExitStatus::Invalid);
    }
    let prepared = match reload_run(&run, io)? {
        Ok(p) => p,
        Err(status) => return Ok(status),
    };
    let run_id = run.id.clone();
    let audit = AuditSetup::from_args(&args.journal);
    let nobody = std::sync::Arc::new(crate::provider::manual::Nobody);
    let summary = with_engine(
        prepared,
        journal,
        key,
        &audit,
        nobody,
        async |engine, waves| Ok(engine.roll_back(&run_id, waves).await?),
    )?;
    audit.report(io)?;
    let status = print_summary(&summary, args.format, io)?;
    // For a rollback, "rolled back" is success.
    Ok(
        if summary.count(crate::journal::CredentialState::Skipped)
            + summary.count(crate::journal::CredentialState::Quarantined)
            == 0
        {
            ExitStatus::Success
        } else {
            status
        },
    )
}

pub fn status(args: &crate::cli::StatusArgs, io: &mut Io) -> Result<ExitStatus> {
    if !args.journal.path.exists() {
        writeln!(
            io.stderr,
            "error: no journal at {}\nhelp: runs are recorded where `rekey run --journal` pointed (default .rekey/journal.db)",
            args.journal.path.display()
        )?;
        return Ok(ExitStatus::Invalid);
    }
    let journal = crate::journal::Journal::open(&args.journal.path)?;
    let run = match &args.run {
        Some(id) => journal.run(id)?,
        None => journal.runs()?.into_iter().next(),
    };
    let Some(run) = run else {
        writeln!(
            io.stderr,
            "error: no such run in {}",
            args.journal.path.display()
        )?;
        return Ok(ExitStatus::Invalid);
    };
    let states = journal.states(&run.id)?;
    if args.format == Format::Json {
        writeln!(
            io.stdout,
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "run": run, "credentials": states })
            )?
        )?;
        return Ok(ExitStatus::Success);
    }
    writeln!(
        io.stdout,
        "Run {} ({}, {} mode): {}; started {}",
        run.id, run.playbook_name, run.mode, run.status, run.started_at
    )?;
    for s in &states {
        writeln!(io.stdout, "  {:<24} {}", s.credential, s.state)?;
        if s.state == crate::journal::CredentialState::Quarantined
            && let (Some(reason), Some(action)) = (
                s.detail.get("reason").and_then(|v| v.as_str()),
                s.detail.get("action").and_then(|v| v.as_str()),
            )
        {
            writeln!(io.stdout, "      why: {reason}\n      to do: {action}")?;
        }
        if s.state == crate::journal::CredentialState::AwaitingOperator
            && let Some(instructions) = s.detail.get("instructions").and_then(|v| v.as_str())
        {
            writeln!(
                io.stdout,
                "      to do: {}\n      then: rekey resume {} --credential {} --value-stdin",
                instructions.trim(),
                run.id,
                s.credential
            )?;
        }
    }
    Ok(ExitStatus::Success)
}

/// `rekey audit verify|show|export|hmac`.
pub fn audit(cmd: &crate::cli::AuditCommand, io: &mut Io) -> Result<ExitStatus> {
    use crate::audit::report::{self, Entry, Filter};
    use crate::cli::{AuditCommand, AuditFormat};
    let file = match cmd {
        AuditCommand::Verify(a) | AuditCommand::Hmac(a) => &a.file,
        AuditCommand::Show(a) | AuditCommand::Export(a) => &a.trail.file,
    };
    let mut entries = Vec::new();
    let mut lines = Vec::new();
    let keep_lines = matches!(cmd, AuditCommand::Hmac(_));
    let filter = match cmd {
        AuditCommand::Show(a) | AuditCommand::Export(a) => Filter {
            credentials: a.credential.clone(),
            runs: a.run.clone(),
        },
        _ => Filter::default(),
    };
    let verdict = match crate::audit::verify_file(file, |_, map| {
        let entry = Entry::from_line(&map);
        if filter.keeps(&entry) {
            entries.push(entry);
        }
        if keep_lines {
            lines.push(map);
        }
    }) {
        Ok(v) => v,
        Err(e) => {
            writeln!(
                io.stderr,
                "error: cannot read the audit trail {}: {e}",
                file.display()
            )?;
            return Ok(ExitStatus::Invalid);
        }
    };
    let shown = file.display();
    let complain = |io: &mut Io| -> Result<()> {
        for note in &verdict.notes {
            writeln!(io.stderr, "note: {shown}: {note}")?;
        }
        if let Some(p) = &verdict.problem {
            writeln!(
                io.stderr,
                "error: {shown}: line {}: {}\nhelp: the trail was changed after rekey wrote it (or a write was cut short): keep this copy as evidence and compare it with the collector's copy (--audit-sink); lines before {} are intact",
                p.line,
                p.reason.escape_debug(),
                p.line
            )?;
        }
        Ok(())
    };
    let status = if verdict.ok() {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    };
    match cmd {
        AuditCommand::Verify(_) => {
            complain(io)?;
            if verdict.ok() {
                writeln!(
                    io.stdout,
                    "{shown}: {} lines verified; last line sha256 {}",
                    verdict.lines, verdict.last
                )?;
            }
        }
        AuditCommand::Show(a) | AuditCommand::Export(a) => {
            let default = if matches!(cmd, AuditCommand::Show(_)) {
                AuditFormat::Text
            } else {
                AuditFormat::Json
            };
            complain(io)?;
            match a.format.unwrap_or(default) {
                AuditFormat::Text => report::write_text(&entries, io.stdout)?,
                AuditFormat::Json => report::write_json(&entries, &verdict, io.stdout)?,
                AuditFormat::Csv => report::write_csv(&entries, io.stdout)?,
            }
        }
        AuditCommand::Hmac(_) => {
            use std::io::Read;
            let key_path = crate::audit::key_path(file);
            let key = match std::fs::read(&key_path) {
                Ok(k) if k.len() == 32 => k,
                _ => {
                    writeln!(
                        io.stderr,
                        "error: no trail key at {} (the trail's HMAC key, created with it)",
                        key_path.display()
                    )?;
                    return Ok(ExitStatus::Invalid);
                }
            };
            let mut value = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .take(1 << 20)
                .read_to_string(&mut value)
                .context("cannot read the value from stdin")?;
            // One trailing newline is the shell's (`echo`), not the value's.
            let trimmed = value
                .strip_suffix('\n')
                .map(|v| v.strip_suffix('\r').unwrap_or(v))
                .unwrap_or(&value);
            let hmac = format!(
                "{}{}",
                crate::audit::HMAC_PREFIX,
                crate::secret::Secret::new(trimmed).fingerprint(&key)
            );
            writeln!(io.stdout, "{hmac}")?;
            let mut found = 0;
            for map in &lines {
                if map.get("secret_hmac").and_then(|v| v.as_str()) == Some(hmac.as_str()) {
                    let e = Entry::from_line(map);
                    found += 1;
                    writeln!(
                        io.stdout,
                        "  line {}: {} {} {} {} {}",
                        e.seq,
                        e.ts,
                        e.run,
                        e.credential.as_deref().unwrap_or("-"),
                        e.event,
                        e.action
                    )?;
                }
            }
            if found == 0 {
                writeln!(io.stderr, "no line of {shown} refers to this value")?;
            }
            complain(io)?;
        }
    }
    Ok(status)
}

/// The operator for `run`: the terminal when stdin is one, else nobody (manual
/// steps then wait for `rekey resume`).
fn terminal_operator() -> std::sync::Arc<dyn crate::provider::manual::Operator> {
    match crate::provider::manual::Terminal::detect() {
        Some(t) => std::sync::Arc::new(t),
        None => std::sync::Arc::new(crate::provider::manual::Nobody),
    }
}

/// The operator for `resume`: the value (or confirmation) given with
/// `--value-stdin`, `--value-file` or `--confirm`, for the one waiting manual
/// step it names; without those, the terminal or nobody.
fn resume_operator(
    args: &crate::cli::OperatorArgs,
    journal: &crate::journal::Journal,
    run: &str,
    io: &mut Io,
) -> Result<std::result::Result<std::sync::Arc<dyn crate::provider::manual::Operator>, ExitStatus>>
{
    use crate::provider::manual::{Provided, value_from_bytes};
    use std::io::Read;
    if !args.value_stdin && args.value_file.is_none() && !args.confirm {
        if args.credential.is_some() {
            writeln!(
                io.stderr,
                "error: --credential names the manual step that --value-stdin, --value-file or --confirm answers; give one of them"
            )?;
            return Ok(Err(ExitStatus::Invalid));
        }
        return Ok(Ok(terminal_operator()));
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
            writeln!(
                io.stderr,
                "error: credential `{c}` of run {run} does not wait for an operator (waiting: {})\nhelp: `rekey status {run}` lists the manual steps that wait",
                if waiting.is_empty() {
                    "none".to_owned()
                } else {
                    waiting.join(", ")
                }
            )?;
            return Ok(Err(ExitStatus::Invalid));
        }
        None if waiting.len() == 1 => waiting[0].clone(),
        None if waiting.is_empty() => {
            writeln!(
                io.stderr,
                "error: no manual step of run {run} waits for an operator; nothing to give a value to"
            )?;
            return Ok(Err(ExitStatus::Invalid));
        }
        None => {
            writeln!(
                io.stderr,
                "error: several manual steps of run {run} wait ({}); name the one this value is for with --credential ID",
                waiting.join(", ")
            )?;
            return Ok(Err(ExitStatus::Invalid));
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
                writeln!(io.stderr, "error: cannot read {}: {e}", path.display())?;
                return Ok(Err(ExitStatus::Invalid));
            }
        }
    } else {
        None
    };
    let value = match value.transpose() {
        Ok(v) => v,
        Err(message) => {
            writeln!(
                io.stderr,
                "error: {message}\nhelp: give the new value the manual step produced"
            )?;
            return Ok(Err(ExitStatus::Invalid));
        }
    };
    Ok(Ok(std::sync::Arc::new(Provided::new(target, value))))
}
