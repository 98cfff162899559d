//! Playbooks: the model as written (`model`), loading with positions (the YAML
//! tree of `crate::doc::yaml`, `interpolate`, `schema`) and pure validation against
//! the provider catalog into a resolved `Playbook` (`validate`). The only I/O here
//! is reading the playbook file; the catalog comes in as a value.

pub mod interpolate;
pub mod model;
pub mod notify;
pub mod schema;
pub mod validate;

/// `crate::doc::rate`, where the engine's limiter still imports it from.
pub use crate::doc::rate;

use crate::catalog::{Catalog, Kind, Requests};
use crate::doc::diagnostic::{Diagnostic, Report};
use crate::doc::rate::Rate;
use crate::doc::{de, yaml};
use indexmap::IndexMap;
pub use model::Mode;
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
    /// Webhooks told about runs (`notify:`).
    pub notify: Vec<notify::Webhook>,
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
    /// The admin credential's own key can be among the listed keys (catalog).
    pub admin_key_listed: bool,
    /// The network zone it is reachable from (`DEFAULT_ZONE` unless the playbook
    /// names one): which `rekey runner --zone` takes its credentials.
    pub zone: String,
}

/// The zone of a provider instance that names none.
pub const DEFAULT_ZONE: &str = "default";

/// Whether `zone` is a zone name: 1 to 64 letters, digits, `-`, `_` or `.` (what
/// the playbook's `zone:` and `rekey runner --zone` take).
pub fn is_zone_name(zone: &str) -> bool {
    !zone.is_empty()
        && zone.len() <= 64
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ProviderInstance {
    /// Whether breach mode ends the sessions opened with its old credentials: the
    /// `end_sessions` setting (a boolean once validated), on unless `false`.
    pub fn ends_sessions(&self) -> bool {
        self.settings
            .get("end_sessions")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true)
    }
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

/// Reads, parses and validates a playbook file (`-`: stdin) against `catalog`.
pub fn load_file(
    path: &Path,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    catalog: &Catalog,
) -> Result<Loaded, Report> {
    let file = if path == Path::new(STDIN) {
        "<stdin>".to_owned()
    } else {
        path.display().to_string()
    };
    let cannot_read = |message: String, help: &str| Report {
        file: file.clone(),
        source: Arc::new(String::new()),
        diagnostics: vec![Diagnostic::error(message, None).help(help)],
    };
    let bytes = match read_playbook(path) {
        Ok(Ok(b)) => b,
        Ok(Err(Refused::NotAFile)) => {
            return Err(cannot_read(
                "the playbook is not a regular file".into(),
                "give the path of a YAML file, or `-` to read it from stdin",
            ));
        }
        Ok(Err(Refused::TooLarge(size))) => {
            return Err(cannot_read(
                format!(
                    "the playbook is {:.1} MiB; the limit is {} MiB",
                    size as f64 / f64::from(1 << 20),
                    yaml::MAX_INPUT_BYTES >> 20
                ),
                "split it into several playbooks (each is planned and run on its own)",
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
    load_bytes(&file, &bytes, env, catalog)
}

/// Why a playbook path was refused before its bytes were read.
enum Refused {
    /// A FIFO, a device, a directory: it could block or never end.
    NotAFile,
    /// Larger than the parser's budget, in bytes.
    TooLarge(u64),
}

/// The bytes of the playbook at `path`, or of stdin for `-`, at most
/// `MAX_INPUT_BYTES` (+1, so the parser sees a stream that was too long). A path
/// is opened without blocking (a FIFO with no writer would wait forever) and
/// checked for its type and size before anything is read.
fn read_playbook(path: &Path) -> std::io::Result<Result<Vec<u8>, Refused>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let limit = yaml::MAX_INPUT_BYTES as u64;
    let mut bytes = Vec::new();
    if path == Path::new(STDIN) {
        std::io::stdin().take(limit + 1).read_to_end(&mut bytes)?;
        return Ok(Ok(bytes));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Ok(Err(Refused::NotAFile));
    }
    if meta.len() > limit {
        return Ok(Err(Refused::TooLarge(meta.len())));
    }
    f.take(limit + 1).read_to_end(&mut bytes)?;
    Ok(Ok(bytes))
}

/// The playbook path that means stdin.
pub const STDIN: &str = "-";

/// Parses and validates playbook bytes (`file` names them in messages).
/// Never panics, whatever the bytes.
pub fn load_bytes(
    file: &str,
    bytes: &[u8],
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    catalog: &Catalog,
) -> Result<Loaded, Report> {
    match std::str::from_utf8(bytes) {
        Ok(text) => load_str(file, text, env, catalog),
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
    catalog: &Catalog,
) -> Result<Loaded, Report> {
    let spawned = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("playbook-loader".into())
            .stack_size(LOADER_STACK)
            .spawn_scoped(scope, || load_str_here(file, text, env, catalog))
            .map(|handle| handle.join())
    });
    match spawned {
        Ok(Ok(result)) => result,
        // No thread could be started (or it died): load here, on the caller's stack.
        Ok(Err(_)) | Err(_) => load_str_here(file, text, env, catalog),
    }
}

fn load_str_here(
    file: &str,
    text: &str,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    catalog: &Catalog,
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
