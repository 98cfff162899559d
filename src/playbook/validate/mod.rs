//! Semantic validation: pure (no I/O), reports every problem at once, and builds the
//! resolved `Playbook` only when there is none. Nothing downstream validates again.
//!
//! As Vector's config compiler, `validate` runs small checks, each in the file of
//! its concern, all writing to one list of diagnostics, and builds nothing until
//! every one has run:
//!
//! - this file: the version, the name, `incident`, `defaults` and password
//!   policies, then the order of the checks below;
//! - `vault`: the `vault:` block, and the normal form of a Vault path;
//! - `providers`: each instance against its catalog type (settings, admin
//!   credential, rate, concurrency), and the implicit `manual` instance;
//! - `credentials`: each credential through small, named checks;
//! - `graph`: references to unknown credentials, and dependency cycles;
//! - `sinks`: a credential's propagation sinks.

mod credentials;
mod graph;
mod providers;
mod sinks;
mod vault;

pub use vault::normalize_vault_path;

use super::model::{Mode, RawPasswordPolicy, RawPlaybook};
use super::{
    Credential, Defaults, Incident, PasswordPolicy, Playbook, ProviderInstance, Sink, Vault,
};
use crate::catalog::{Catalog, Kind};
use crate::doc::diagnostic::Diagnostic;
use crate::doc::rate::{DURATION_HELP, DurationText};
use crate::doc::yaml::{Node, Pos};
use indexmap::IndexMap;
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const SUPPORTED_VERSION: i64 = 1;

/// What validation resolved for one credential; the rest is moved from the raw
/// credential when the playbook is built, so no string is copied twice.
struct Resolved {
    type_name: String,
    kind: Kind,
    /// The normalised path, when it differs from what the playbook wrote.
    vault_path: Option<String>,
    verify: bool,
    grace: Duration,
    max_age: Option<Duration>,
    password: Arc<PasswordPolicy>,
    /// Settings with defaults applied, when there are any to apply.
    settings: Option<IndexMap<String, serde_json::Value>>,
    line: usize,
    sinks: Vec<Sink>,
}

/// A playbook that passed validation; `build` turns it into a `Playbook`.
pub struct Validated {
    notify: Vec<super::notify::Webhook>,
    incident: Incident,
    vault: Vault,
    defaults: Defaults,
    providers: IndexMap<String, ProviderInstance>,
    resolved: Vec<Resolved>,
    pub warnings: Vec<Diagnostic>,
}

impl Validated {
    /// Builds the resolved playbook, moving values out of `raw` (the playbook that
    /// was validated). Does not validate again.
    pub fn build(self, raw: RawPlaybook) -> Playbook {
        let credentials = raw
            .credentials
            .into_iter()
            .zip(self.resolved)
            .enumerate()
            .map(|(index, (c, r))| Credential {
                id: c.id,
                index,
                line: r.line,
                provider: c.provider,
                type_name: r.type_name,
                kind: r.kind,
                account: c.account,
                vault_path: r.vault_path.unwrap_or(c.vault_path),
                description: c.description,
                tags: c.tags,
                tied_to: c.tied_to,
                depends_on: c.depends_on,
                verify: r.verify,
                grace: r.grace,
                max_age: r.max_age,
                password: r.password,
                settings: r.settings.unwrap_or(c.settings),
                instructions: c.instructions,
                keep: c.keep,
                sinks: r.sinks,
            })
            .collect();
        Playbook {
            version: raw.version as u32,
            name: raw.name,
            description: raw.description,
            incident: self.incident,
            vault: self.vault,
            defaults: self.defaults,
            providers: self.providers,
            credentials,
            warnings: self.warnings,
            notify: self.notify,
        }
    }
}
pub const MANUAL: &str = "manual";
const DEFAULT_ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Validation context. `root` is the positioned tree when positions are wanted;
/// the loader validates without it first (so the tree can be freed early) and
/// again with it only when there is something to report.
struct Ctx<'a> {
    root: Option<&'a Node<'a>>,
    out: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn at(&self, pointer: &str) -> Option<Pos> {
        self.root?.pos_of(pointer)
    }
    fn key_at(&self, pointer: &str) -> Option<Pos> {
        let root = self.root?;
        root.key_pos_of(pointer).or_else(|| root.pos_of(pointer))
    }
    fn push(&mut self, d: Diagnostic) {
        self.out.push(d);
    }
    fn duration(
        &mut self,
        text: &Option<DurationText>,
        pointer: impl AsRef<str>,
    ) -> Option<Duration> {
        let text = text.as_ref()?;
        match text.parse() {
            Ok(d) => Some(d),
            Err(message) => {
                self.push(
                    Diagnostic::error(message, self.at(pointer.as_ref()))
                        .label("bad duration")
                        .help(DURATION_HELP),
                );
                None
            }
        }
    }
    fn count(&mut self, value: Option<i64>, pointer: &str, what: &str, max: i64) -> Option<u32> {
        let v = value?;
        if v < 1 || v > max {
            self.push(
                Diagnostic::error(
                    format!("{what} must be between 1 and {max}, not {v}"),
                    self.at(pointer),
                )
                .help(format!("set {what} to a whole number from 1 to {max}")),
            );
            return None;
        }
        Some(v as u32)
    }
}

/// Longest credential id or provider instance name: ids name credentials in the
/// journal, Vault metadata, tags at providers and `--only`.
pub const MAX_ID_LEN: usize = 128;

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// An id or name over [`MAX_ID_LEN`]: its length and the limit, not the value.
fn too_long(what: &str, value: &str, pos: Option<Pos>) -> Diagnostic {
    Diagnostic::error(
        format!(
            "{what} is {} characters long; the limit is {MAX_ID_LEN}",
            value.chars().count()
        ),
        pos,
    )
    .help(format!(
        "shorten it to {MAX_ID_LEN} characters or fewer (letters, digits, `-`, `_` and `.`): it names the credential in the journal, the audit trail and `--only`"
    ))
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

pub fn validate(
    raw: &RawPlaybook,
    root: Option<&Node<'_>>,
    lines: &[u32],
    catalog: &Catalog,
) -> Result<Validated, Vec<Diagnostic>> {
    let mut cx = Ctx {
        root,
        out: Vec::new(),
    };

    if raw.version != SUPPORTED_VERSION {
        cx.push(
            Diagnostic::error(
                format!("unsupported playbook version {}", raw.version),
                cx.at("/version"),
            )
            .label("this rekey reads version 1")
            .help("write `version: 1`, or use the rekey release that introduced this version"),
        );
        return Err(cx.out);
    }
    if raw.name.trim().is_empty() {
        cx.push(
            Diagnostic::error("the playbook name is empty", cx.at("/name"))
                .help("name it after the incident, e.g. `idp-breach-2026-11`"),
        );
    }

    let incident = validate_incident(&mut cx, raw);
    let vault = vault::validate_vault(&mut cx, raw);
    let defaults = validate_defaults(&mut cx, raw);
    let providers = providers::validate_providers(&mut cx, raw, catalog);
    let resolved = credentials::Credentials {
        raw,
        catalog,
        providers: &providers,
        vault: &vault,
        defaults: &defaults,
        mode: incident.mode,
        lines,
    }
    .check(&mut cx);

    if let Some(cycle_diags) = graph::find_cycles(&cx, &raw.credentials) {
        cx.out.extend(cycle_diags);
    }

    for (i, name) in incident.compromised.iter().enumerate() {
        if !raw.credentials.iter().any(|c| c.tied_to.contains(name)) {
            let d = Diagnostic::warning(format!("no credential is tied to the compromised system `{name}`"), cx.at(&format!("/incident/compromised/{i}")))
                .help(format!("add `tied_to: [{name}]` to the credentials reachable from it, or `rekey plan --compromised {name}` selects nothing"));
            cx.push(d);
        }
    }

    let notify = super::notify::check(&raw.notify).unwrap_or_else(|problems| {
        for p in problems {
            cx.push(Diagnostic::error(p.message, cx.at(&p.pointer)).help(p.help));
        }
        Vec::new()
    });

    if cx.out.iter().any(Diagnostic::is_error) {
        return Err(cx.out);
    }
    Ok(Validated {
        notify,
        incident,
        vault,
        defaults,
        providers,
        resolved,
        warnings: cx.out,
    })
}

fn validate_incident(cx: &mut Ctx, raw: &RawPlaybook) -> Incident {
    let Some(inc) = &raw.incident else {
        return Incident {
            id: None,
            compromised: Vec::new(),
            mode: Mode::Routine,
        };
    };
    let mut seen: HashMap<&str, usize> = HashMap::default();
    for (i, name) in inc.compromised.iter().enumerate() {
        if let Some(first) = seen.insert(name, i) {
            cx.push(
                Diagnostic::warning(
                    format!("`{name}` is listed twice in incident.compromised"),
                    cx.at(&format!("/incident/compromised/{i}")),
                )
                .related(
                    cx.at(&format!("/incident/compromised/{first}")),
                    "first listed here",
                )
                .help("remove the repeat"),
            );
        }
    }
    // A playbook that names compromised systems is a breach response unless it says
    // otherwise: the safe default never keeps a possibly-stolen value alive.
    let mode = inc.mode.unwrap_or(if inc.compromised.is_empty() {
        Mode::Routine
    } else {
        Mode::Breach
    });
    Incident {
        id: inc.id.clone(),
        compromised: inc.compromised.clone(),
        mode,
    }
}

fn validate_password(
    cx: &mut Ctx,
    p: &Option<RawPasswordPolicy>,
    base: &PasswordPolicy,
    pointer: &str,
) -> PasswordPolicy {
    let Some(p) = p else { return base.clone() };
    let mut policy = base.clone();
    if let Some(len) = p.length {
        if !(16..=1024).contains(&len) {
            cx.push(
                Diagnostic::error(
                    format!("password length {len} is out of range"),
                    cx.at(&format!("{pointer}/length")),
                )
                .help("use a length from 16 to 1024; 32 is the default"),
            );
        } else {
            policy.length = len as u32;
        }
    }
    if let Some(alphabet) = &p.alphabet {
        let mut distinct: Vec<char> = alphabet.chars().collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 10 || distinct.iter().any(|c| c.is_control() || c.is_whitespace()) {
            cx.push(
                Diagnostic::error(
                    "the password alphabet must hold at least 10 distinct printable characters",
                    cx.at(&format!("{pointer}/alphabet")),
                )
                .help("e.g. `ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789`"),
            );
        } else {
            policy.alphabet = distinct.into_iter().collect();
        }
    }
    policy
}

fn validate_defaults(cx: &mut Ctx, raw: &RawPlaybook) -> Defaults {
    let d = raw.defaults.clone().unwrap_or_default();
    let base = PasswordPolicy {
        length: 32,
        alphabet: DEFAULT_ALPHABET.into(),
    };
    Defaults {
        verify: d.verify.unwrap_or(true),
        grace: cx
            .duration(&d.grace, "/defaults/grace")
            .unwrap_or(Duration::ZERO),
        concurrency: cx
            .count(d.concurrency, "/defaults/concurrency", "concurrency", 1024)
            .unwrap_or(8),
        max_age: cx.duration(&d.max_age, "/defaults/max_age"),
        password: Arc::new(validate_password(
            cx,
            &d.password,
            &base,
            "/defaults/password",
        )),
    }
}
