//! Playbooks: the model as written (`model`), loading with positions (`yaml`,
//! `interpolate`, `schema`) and pure validation into a resolved `Playbook`
//! (`validate`). Nothing here does network I/O.

pub mod de;
pub mod diagnostic;
pub mod interpolate;
pub mod model;
pub mod rate;
pub mod schema;
pub mod validate;
pub mod yaml;

use crate::provider::catalog::{Catalog, Kind, Requests};
use diagnostic::{Diagnostic, Report};
use indexmap::IndexMap;
pub use model::Mode;
use rate::Rate;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A validated playbook with every default applied and every value parsed.
#[derive(Clone, Debug)]
pub struct Playbook {
    pub version: u32,
    pub name: String,
    pub description: Option<String>,
    pub incident: Incident,
    pub vault: Vault,
    pub defaults: Defaults,
    /// Declared instances, plus an implicit `manual` one when a credential uses it.
    pub providers: IndexMap<String, ProviderInstance>,
    pub credentials: Vec<Credential>,
    /// Problems that do not stop a run.
    pub warnings: Vec<Diagnostic>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Incident {
    pub id: Option<String>,
    pub compromised: Vec<String>,
    pub mode: Mode,
}

#[derive(Clone, Debug)]
pub struct Vault {
    pub address: String,
    pub mount: String,
    pub staging_prefix: String,
    pub namespace: Option<String>,
    pub ca_file: Option<String>,
    pub auth: VaultAuth,
}

#[derive(Clone, Debug)]
pub enum VaultAuth {
    /// Token read from this environment variable.
    Token { env: String },
    /// AppRole login; the secret-id is read from `secret_id_env`.
    AppRole {
        role_id: String,
        secret_id_env: String,
        mount: String,
    },
}

#[derive(Clone, Debug)]
pub struct Defaults {
    pub verify: bool,
    pub grace: Duration,
    pub concurrency: u32,
    pub max_age: Option<Duration>,
    pub password: Arc<PasswordPolicy>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PasswordPolicy {
    pub length: u32,
    pub alphabet: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AdminSource {
    Vault(String),
    Env(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateOrigin {
    Playbook,
    ProviderDefault,
}

#[derive(Clone, Debug)]
pub struct ProviderInstance {
    pub name: String,
    pub type_name: String,
    pub kind: Kind,
    pub settings: IndexMap<String, serde_json::Value>,
    pub admin: Option<AdminSource>,
    pub rate: Rate,
    pub rate_origin: RateOrigin,
    pub concurrency: u32,
    /// Typical duration of one request (from the catalog), for estimates.
    pub latency: Duration,
    pub requests: Requests,
    /// Live keys an account may hold at once (dual kinds), from the catalog.
    pub quota: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct Credential {
    pub id: String,
    /// Position in the playbook's `credentials` list.
    pub index: usize,
    /// Line of the entry in the playbook file.
    pub line: usize,
    pub provider: String,
    pub type_name: String,
    pub kind: Kind,
    pub account: Option<String>,
    /// Normalised KV path inside the mount.
    pub vault_path: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub tied_to: Vec<String>,
    pub depends_on: Vec<String>,
    pub verify: bool,
    /// Zero in breach mode, whatever the playbook says.
    pub grace: Duration,
    pub max_age: Option<Duration>,
    /// Shared with the defaults unless the credential overrides it.
    pub password: Arc<PasswordPolicy>,
    pub settings: IndexMap<String, serde_json::Value>,
    pub instructions: Option<String>,
    /// Key ids the breach retirement leaves alone (dual kinds).
    pub keep: Vec<String>,
    /// Where the promoted value is copied too, in order.
    pub sinks: Vec<Sink>,
}

/// A propagation sink, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum Sink {
    /// Another KV v2 path in the playbook's mount.
    Vault { path: String },
    /// A file written atomically (mode 0600), then `reload` run (argv, no shell).
    File {
        path: std::path::PathBuf,
        reload: Vec<String>,
    },
    /// A GitHub Actions secret of a repository (or one of its environments).
    Github {
        base_url: String,
        repository: String,
        environment: Option<String>,
        secret_name: String,
        token: AdminSource,
    },
}

impl Sink {
    /// Where the sink writes, for records and messages (never a value).
    pub fn describe(&self) -> String {
        match self {
            Sink::Vault { path } => format!("vault:{path}"),
            Sink::File { path, .. } => format!("file:{}", path.display()),
            Sink::Github {
                repository,
                environment,
                secret_name,
                ..
            } => match environment {
                Some(env) => format!("github:{repository}/environments/{env}/{secret_name}"),
                None => format!("github:{repository}/{secret_name}"),
            },
        }
    }
}

/// A loaded playbook and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub playbook: Playbook,
    pub report: Report,
}

/// Reads, parses and validates a playbook file.
pub fn load_file(
    path: &Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Loaded, Report> {
    let file = path.display().to_string();
    let cannot_read = |message: String, help: &str| Report {
        file: file.clone(),
        source: Arc::new(String::new()),
        diagnostics: vec![Diagnostic::error(message, None).help(help)],
    };
    let read = || -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let f = std::fs::File::open(path)?;
        // Only regular files: a FIFO would block, /dev/zero would never end.
        if !f.metadata()?.is_file() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        f.take(yaml::MAX_INPUT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    };
    let bytes = match read() {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(cannot_read(
                "the playbook is not a regular file".into(),
                "give the path of a YAML file",
            ));
        }
        Err(e) => {
            let help = match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "check the path; `ls playbooks/` lists the shipped examples"
                }
                std::io::ErrorKind::PermissionDenied => {
                    "run rekey as a user that can read the file"
                }
                _ => "check that the path names a readable file",
            };
            return Err(cannot_read(format!("cannot read the playbook: {e}"), help));
        }
    };
    load_bytes(&file, &bytes, env)
}

/// Parses and validates playbook bytes (`file` names them in messages).
/// Never panics, whatever the bytes.
pub fn load_bytes(
    file: &str,
    bytes: &[u8],
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Loaded, Report> {
    match std::str::from_utf8(bytes) {
        Ok(text) => load_str(file, text, env),
        Err(e) => {
            let lossy = String::from_utf8_lossy(bytes).into_owned();
            let offset = e.valid_up_to();
            let line_start = bytes[..offset]
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|p| p + 1)
                .unwrap_or(0);
            let line = bytes[..offset].iter().filter(|b| **b == b'\n').count() + 1;
            // Columns count characters, like every other position rekey reports.
            let column = String::from_utf8_lossy(&bytes[line_start..offset])
                .chars()
                .count()
                + 1;
            let pos = yaml::Pos {
                offset: 0,
                len: 1,
                line: line as u32,
                column: column as u32,
            };
            Err(Report {
                file: file.to_owned(),
                source: Arc::new(lossy),
                diagnostics: vec![Diagnostic::error(format!("the file is not UTF-8 text (invalid byte at line {line}, column {column})"), Some(pos))
                    .help("save the playbook as UTF-8")],
            })
        }
    }
}

/// Stack for the loader thread: parsing and the checks after it recurse once per
/// nesting level, and the depth budget must hold whatever thread calls us (test
/// threads have 2 MiB). Only touched pages are ever committed.
const LOADER_STACK: usize = 64 * 1024 * 1024;

pub fn load_str(
    file: &str,
    text: &str,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Loaded, Report> {
    let spawned = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("playbook-loader".into())
            .stack_size(LOADER_STACK)
            .spawn_scoped(scope, || load_str_here(file, text, env))
            .map(|handle| handle.join())
    });
    match spawned {
        Ok(Ok(result)) => result,
        // No thread could be started (or it died): load here, on the caller's stack.
        Ok(Err(_)) | Err(_) => load_str_here(file, text, env),
    }
}

fn load_str_here(
    file: &str,
    text: &str,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Loaded, Report> {
    // A byte-order mark is an encoding artefact, not content: positions and
    // snippets are about what follows it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let source = Arc::new(text.to_owned());
    // Diagnostics in reading order: what the admin fixes top to bottom.
    let fail = |mut diagnostics: Vec<Diagnostic>| {
        diagnostics.sort_by_key(|d| d.pos.map(|p| (p.line, p.column)));
        Report {
            file: file.to_owned(),
            source: source.clone(),
            diagnostics,
        }
    };
    let catalog =
        Catalog::builtin().map_err(|e| fail(vec![Diagnostic::error(e.to_string(), None)]))?;

    let mut root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            return Err(fail(vec![
                Diagnostic::error(format!("invalid YAML: {}", first_line(&e.message)), e.pos)
                    .help(e.help),
            ]));
        }
    };
    if !matches!(root.value, yaml::Value::Map(_)) {
        return Err(fail(vec![Diagnostic::error("a playbook is a mapping of keys (`version:`, `name:`, `vault:`, `credentials:` ...)", Some(root.pos))
            .help("start from a shipped example in `playbooks/`, or `rekey schema` for the full structure")]));
    }

    // Most playbooks interpolate a handful of values; skip the walk when none do.
    let mut problems = if text.contains('$') {
        interpolate::interpolate(&mut root, env)
    } else {
        Vec::new()
    };
    if problems.iter().any(Diagnostic::is_error) {
        return Err(fail(problems));
    }
    // Fast path: typed straight from the tree. Only when that fails is the tree
    // copied to JSON and checked against the schema, to explain every problem.
    let raw = match <model::RawPlaybook as serde::Deserialize>::deserialize(de::NodeDe(&root)) {
        Ok(raw) => raw,
        Err(_) => {
            let json = root.to_json();
            let checked = schema::check_with_repairs(&json, &root);
            problems.extend(checked.diagnostics);
            if problems.iter().any(Diagnostic::is_error) {
                // When every problem is an unknown key, read past them (a typo as
                // the key it was meant to be) and report what validation finds
                // behind them too: all problems at once, not one round per fix.
                if checked.only_unknown_keys {
                    for r in &checked.repairs {
                        root.repair_key(&r.object, &r.key, r.rename_to.as_deref());
                    }
                    if let Ok(raw) =
                        <model::RawPlaybook as serde::Deserialize>::deserialize(de::NodeDe(&root))
                    {
                        let lines = credential_lines(&root);
                        if let Err(more) = validate::validate(&raw, Some(&root), &lines, catalog) {
                            problems.extend(more.into_iter().filter(|d| d.is_error()));
                        }
                    }
                }
                return Err(fail(problems));
            }
            match serde_path_to_error::deserialize::<_, model::RawPlaybook>(&json) {
                Ok(raw) => raw,
                Err(e) => {
                    let pointer: String = e
                        .path()
                        .iter()
                        .map(|seg| format!("/{}", yaml::escape(&seg.to_string())))
                        .collect();
                    let pointer = pointer.replace("/[", "/").replace(']', "");
                    let d = schema::serde_error(&pointer, &e.inner().to_string(), &json, &root);
                    return Err(fail(vec![d]));
                }
            }
        }
    };

    // Validate without positions first, so the tree can be freed before the
    // resolved playbook is built; only when there is something to report is the
    // text parsed again to point at it.
    let lines = credential_lines(&root);
    drop(root);
    let first = validate::validate(&raw, None, &lines, catalog);
    let clean = matches!(&first, Ok(validated) if validated.warnings.is_empty());
    let result = if clean {
        first
    } else {
        drop(first);
        let mut root =
            yaml::parse(text).map_err(|e| fail(vec![Diagnostic::error(e.message, e.pos)]))?;
        if text.contains('$') {
            interpolate::interpolate(&mut root, env);
        }
        validate::validate(&raw, Some(&root), &lines, catalog)
    };
    match result.map(|validated| validated.build(raw)) {
        Ok(mut playbook) => {
            problems.append(&mut playbook.warnings.clone());
            playbook.warnings = problems.clone();
            Ok(Loaded {
                playbook,
                report: fail(problems),
            })
        }
        Err(mut diagnostics) => {
            problems.append(&mut diagnostics);
            Err(fail(problems))
        }
    }
}

/// The line of each entry of `credentials`, for plans and run records.
fn credential_lines(root: &yaml::Node<'_>) -> Vec<u32> {
    match root.pointer("/credentials").map(|n| &n.value) {
        Some(yaml::Value::Seq(items)) => items.iter().map(|n| n.pos.line).collect(),
        _ => Vec::new(),
    }
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}
