//! Semantic validation: pure (no I/O), reports every problem at once, and builds the
//! resolved `Playbook` only when there is none. Nothing downstream validates again.

use super::model::{Mode, RawAdmin, RawCredential, RawPasswordPolicy, RawPlaybook};
use super::{
    AdminSource, Credential, Defaults, Incident, PasswordPolicy, Playbook, ProviderInstance,
    RateOrigin, Sink, Vault, VaultAuth,
};
use crate::catalog::{Catalog, Kind, Need, Setting};
use crate::doc::diagnostic::{Diagnostic, did_you_mean};
use crate::doc::rate::{DURATION_HELP, DurationText, Rate, RawRate};
use crate::doc::yaml::{Node, Pos, escape};
use indexmap::IndexMap;
use rustc_hash::FxHashMap as HashMap;
use std::borrow::Cow;
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

/// The environment variables this playbook reads a secret from: the Vault
/// token's or secret-id's, every admin credential's and sink token's `env`.
fn secret_sources(raw: &RawPlaybook) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    if let Some(a) = &raw.vault.auth {
        names.extend(a.token_env.as_deref());
        names.extend(a.secret_id_env.as_deref());
    }
    names.extend(
        raw.providers
            .values()
            .filter_map(|p| p.admin.as_ref()?.env.as_deref()),
    );
    names.extend(
        raw.credentials
            .iter()
            .flat_map(|c| &c.sinks)
            .filter_map(|s| s.token.as_ref()?.env.as_deref()),
    );
    names.extend(super::notify::secret_env(&raw.notify));
    names
}

/// An exec plugin gets the variables its `env` lists; none may hold a secret
/// (secrets reach a plugin only inside the protocol), refused as `${VAR}` is.
fn refuse_secret_env(
    cx: &mut Ctx,
    instance: &str,
    settings: &IndexMap<String, serde_json::Value>,
    base: &str,
    sources: &[&str],
) {
    let Some(serde_json::Value::Array(names)) = settings.get("env") else {
        return;
    };
    for (i, name) in names.iter().enumerate() {
        let Some(name) = name.as_str() else { continue };
        let why = if sources.contains(&name) {
            "this playbook reads a secret from it"
        } else if super::interpolate::looks_secret(name) {
            "its name says it holds a secret"
        } else {
            continue;
        };
        cx.push(
            Diagnostic::error(
                format!("exec instance `{instance}` may not pass `{name}` to its plugin: {why}"),
                cx.at(&format!("{base}/settings/env/{i}")),
            )
            .help("remove it from `env`: the plugin gets its admin credential in the hello (`admin: { env: ... }` or `admin: { vault_path: ... }`), never in its environment"),
        );
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
fn too_long(what: &str, value: &str, pos: Option<super::yaml::Pos>) -> Diagnostic {
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

/// Normalises a KV path (`/apps//billing/` → `apps/billing`), or says what is wrong.
/// Borrows when the path is already normal (the common case).
pub fn normalize_vault_path(path: &str) -> Result<Cow<'_, str>, String> {
    let mut parts = 0;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        parts += 1;
        if part == "." || part == ".." {
            return Err(format!("the Vault path `{path}` contains `{part}`"));
        }
        if part.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '*' | '+' | '#' | '?' | '%')
        }) {
            return Err(format!(
                "the Vault path `{path}` contains a character Vault paths cannot hold"
            ));
        }
    }
    if parts == 0 {
        return Err("the Vault path is empty".into());
    }
    if !path.starts_with('/') && !path.ends_with('/') && !path.contains("//") {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(
        path.split('/')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("/"),
    ))
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
    let vault = validate_vault(&mut cx, raw);
    let defaults = validate_defaults(&mut cx, raw);
    let mut providers = validate_providers(&mut cx, raw, catalog);
    let resolved = validate_credentials(
        &mut cx,
        raw,
        catalog,
        &mut providers,
        &vault,
        &defaults,
        incident.mode,
        lines,
    );

    if let Some(cycle_diags) = find_cycles(&cx, &raw.credentials) {
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

fn validate_vault(cx: &mut Ctx, raw: &RawPlaybook) -> Vault {
    let v = &raw.vault;
    let address = v.address.trim().trim_end_matches('/').to_owned();
    if let Err(why) = crate::net::parse_endpoint(&address) {
        cx.push(
            Diagnostic::error(format!("`{}` is not a Vault address rekey may send a token to: {why}", v.address), cx.at("/vault/address"))
                .help("write the URL with its scheme, e.g. `https://vault.example.com:8200` or `${VAULT_ADDR}` (plain http only to a loopback address)"),
        );
    }
    let mount = v
        .mount
        .clone()
        .unwrap_or_else(|| "secret".into())
        .trim_matches('/')
        .to_owned();
    if mount.is_empty() || mount.contains(char::is_whitespace) {
        cx.push(
            Diagnostic::error(
                format!("`{mount}` is not a mount path"),
                cx.at("/vault/mount"),
            )
            .help("the KV v2 mount, e.g. `secret`"),
        );
    }
    let staging_prefix =
        match normalize_vault_path(v.staging_prefix.as_deref().unwrap_or("rekey/staging")) {
            Ok(p) => p.into_owned(),
            Err(message) => {
                cx.push(
                    Diagnostic::error(message, cx.at("/vault/staging_prefix"))
                        .help("a KV path such as `rekey/staging`"),
                );
                String::new()
            }
        };
    let auth = match &v.auth {
        None => VaultAuth::Token {
            env: crate::env_vars::VAULT_TOKEN.into(),
        },
        Some(a) => {
            let check_env = |cx: &mut Ctx, name: &str, field: &str| {
                if !valid_env_name(name) {
                    cx.push(
                        Diagnostic::error(
                            format!("`{name}` is not an environment variable name"),
                            cx.at(&format!("/vault/auth/{field}")),
                        )
                        .help("write the variable's name, not its value, e.g. `VAULT_TOKEN`"),
                    );
                }
            };
            match a.method.as_str() {
                "token" => {
                    let env = a
                        .token_env
                        .clone()
                        .unwrap_or_else(|| crate::env_vars::VAULT_TOKEN.into());
                    check_env(cx, &env, "token_env");
                    for field in ["role_id", "secret_id_env"] {
                        let set = if field == "role_id" {
                            a.role_id.is_some()
                        } else {
                            a.secret_id_env.is_some()
                        };
                        if set {
                            cx.push(
                                Diagnostic::error(
                                    format!("`{field}` only applies to `method: approle`"),
                                    cx.key_at(&format!("/vault/auth/{field}")),
                                )
                                .help("remove it, or set `method: approle`"),
                            );
                        }
                    }
                    VaultAuth::Token { env }
                }
                "approle" => {
                    let secret_id_env = a
                        .secret_id_env
                        .clone()
                        .unwrap_or_else(|| crate::env_vars::VAULT_SECRET_ID.into());
                    check_env(cx, &secret_id_env, "secret_id_env");
                    let role_id = a.role_id.clone().unwrap_or_default();
                    if role_id.trim().is_empty() {
                        cx.push(Diagnostic::error("AppRole login needs a `role_id`", cx.key_at("/vault/auth/method")).help("add `role_id: <the role's role-id>` (not a secret; the secret-id comes from `secret_id_env`)"));
                    }
                    VaultAuth::AppRole {
                        role_id,
                        secret_id_env,
                        mount: a.mount.clone().unwrap_or_else(|| "approle".into()),
                    }
                }
                other => {
                    let mut d = Diagnostic::error(
                        format!("unknown Vault auth method `{other}`"),
                        cx.at("/vault/auth/method"),
                    );
                    d = match did_you_mean(other, ["token", "approle"]) {
                        Some(m) => d.help(format!("did you mean `{m}`?")),
                        None => d.help("use `token` or `approle`"),
                    };
                    cx.push(d);
                    VaultAuth::Token {
                        env: crate::env_vars::VAULT_TOKEN.into(),
                    }
                }
            }
        }
    };
    Vault {
        address,
        mount,
        staging_prefix,
        namespace: v.namespace.clone(),
        ca_file: v.ca_file.clone(),
        auth,
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

fn validate_rate(cx: &mut Ctx, rate: &RawRate, pointer: &str) -> Option<Rate> {
    let given: Vec<(&str, f64)> = [
        ("per_second", rate.per_second, 1.0),
        ("per_minute", rate.per_minute, 60.0),
        ("per_hour", rate.per_hour, 3600.0),
        ("requests", rate.requests, 0.0),
    ]
    .into_iter()
    .filter_map(|(k, v, div)| v.map(|v| (k, if div > 0.0 { v / div } else { v })))
    .collect();
    let help = "write exactly one of `per_second: 20`, `per_minute: 600`, `per_hour: 5000`, or `requests: 1200` with `period: 5m`";
    if given.len() != 1 {
        let message = if given.is_empty() {
            "the rate limit sets no rate".to_owned()
        } else {
            format!(
                "the rate limit sets {} rates ({})",
                given.len(),
                given.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            )
        };
        cx.push(Diagnostic::error(message, cx.at(pointer)).help(help));
        return None;
    }
    let (key, mut per_second) = given[0];
    let raw_value = [
        rate.per_second,
        rate.per_minute,
        rate.per_hour,
        rate.requests,
    ]
    .into_iter()
    .flatten()
    .next()
    .unwrap_or(0.0);
    if !(raw_value.is_finite() && raw_value > 0.0) {
        cx.push(
            Diagnostic::error(
                format!("`{key}` must be a positive number, not {raw_value}"),
                cx.at(&format!("{pointer}/{key}")),
            )
            .help(help),
        );
        return None;
    }
    if key == "requests" {
        let Some(period) = &rate.period else {
            cx.push(
                Diagnostic::error(
                    "`requests` needs a `period`",
                    cx.key_at(&format!("{pointer}/requests")),
                )
                .help("add `period: 5m` (the window the provider counts requests in)"),
            );
            return None;
        };
        let d = cx.duration(&Some(period.clone()), format!("{pointer}/period"))?;
        if d.is_zero() {
            cx.push(
                Diagnostic::error(
                    "the rate period must be longer than zero",
                    cx.at(&format!("{pointer}/period")),
                )
                .help("e.g. `period: 5m`"),
            );
            return None;
        }
        per_second = raw_value / d.as_secs_f64();
    } else if rate.period.is_some() {
        cx.push(
            Diagnostic::error(
                format!("`period` only goes with `requests`, not with `{key}`"),
                cx.key_at(&format!("{pointer}/period")),
            )
            .help("remove `period`"),
        );
        return None;
    }
    // Below one request in 11 days or above a billion a second is a unit mistake.
    if !(1e-6..=1e9).contains(&per_second) {
        cx.push(
            Diagnostic::error(
                format!("a rate of {per_second:e} requests per second is out of range"),
                cx.at(pointer),
            )
            .help(
                "rates go from one request in 11 days to 1,000,000,000 per second; check the unit",
            ),
        );
        return None;
    }
    let burst = match rate.burst {
        None => 1,
        Some(b) if (1..=100_000).contains(&b) => b as u32,
        Some(b) => {
            cx.push(
                Diagnostic::error(
                    format!("burst must be from 1 to 100000, not {b}"),
                    cx.at(&format!("{pointer}/burst")),
                )
                .help("burst is how many requests may go back to back; 1 means evenly spaced"),
            );
            return None;
        }
    };
    Some(Rate { per_second, burst })
}

fn validate_settings(
    cx: &mut Ctx,
    given: &IndexMap<String, serde_json::Value>,
    known: &IndexMap<String, Setting>,
    pointer: &str,
    type_name: &str,
) -> IndexMap<String, serde_json::Value> {
    let mut out = IndexMap::new();
    for (key, value) in given {
        if let Some(setting) = known.get(key) {
            if !setting.one_of.is_empty() && !setting.one_of.contains(value) {
                let allowed: Vec<String> = setting.one_of.iter().map(|v| v.to_string()).collect();
                cx.push(
                    Diagnostic::error(
                        format!("`{type_name}` setting `{key}` cannot be {value}"),
                        cx.at(&format!("{pointer}/{}", escape(key))),
                    )
                    .label("not an accepted value")
                    .help(format!(
                        "use one of {} ({})",
                        allowed.join(", "),
                        setting.description.trim_end_matches('.')
                    )),
                );
            }
            out.insert(key.clone(), value.clone());
            continue;
        }
        let mut d = Diagnostic::error(
            format!("`{type_name}` has no setting `{key}`"),
            cx.key_at(&format!("{pointer}/{}", escape(key))),
        )
        .label("unknown setting");
        d = match did_you_mean(key, known.keys().map(String::as_str)) {
            Some(best) => d.help(format!("did you mean `{best}`?")),
            None if known.is_empty() => {
                d.help(format!("`{type_name}` takes no settings here; remove it"))
            }
            None => d.help(format!(
                "settings of `{type_name}` here: {}",
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        };
        cx.push(d);
    }
    for (key, setting) in known {
        if setting.required && !given.contains_key(key) {
            let at = cx
                .key_at(pointer)
                .or_else(|| cx.key_at(pointer.rsplit_once('/').map(|p| p.0).unwrap_or("")));
            cx.push(
                Diagnostic::error(format!("`{type_name}` needs the setting `{key}`"), at).help(
                    format!(
                        "add `{key}: ...` under `settings:` ({})",
                        setting.description.trim_end_matches('.')
                    ),
                ),
            );
        } else if let Some(default) = &setting.default {
            out.entry(key.clone()).or_insert_with(|| default.clone());
        }
    }
    out
}

/// The `end_sessions` setting (types that end sessions in breach mode declare it),
/// which the engine and the plan read: `true` or `false`, also as the text a
/// `${VAR}` gives; stored as a boolean.
fn end_sessions_flag(
    cx: &mut Ctx,
    settings: &mut IndexMap<String, serde_json::Value>,
    pointer: &str,
) {
    let Some(value) = settings.get_mut("end_sessions") else {
        return;
    };
    let flag = match &*value {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => s.trim().parse::<bool>().ok(),
        _ => None,
    };
    match flag {
        Some(b) => *value = serde_json::Value::Bool(b),
        None => cx.push(
            Diagnostic::error("`end_sessions` must be true or false", cx.at(pointer))
                .help("`false` leaves the sessions opened with an old credential open in breach mode (the run warns); the default `true` ends them"),
        ),
    }
}

fn validate_admin(
    cx: &mut Ctx,
    admin: &Option<RawAdmin>,
    need: Need,
    pointer: &str,
    type_name: &str,
) -> Option<AdminSource> {
    match (admin, need) {
        (None, Need::Required) => {
            cx.push(Diagnostic::error(format!("`{type_name}` needs an admin credential to rotate with"), cx.key_at(pointer.rsplit_once('/').map(|p| p.0).unwrap_or(pointer)))
                .help("add `admin: { vault_path: infra/<name>-admin }` (read from Vault) or `admin: { env: VAR_NAME }`"));
            None
        }
        (None, _) => None,
        (Some(_), Need::None) => {
            cx.push(
                Diagnostic::warning(
                    format!("`{type_name}` does not use an admin credential; `admin` is ignored"),
                    cx.key_at(pointer),
                )
                .help("remove `admin`"),
            );
            None
        }
        (Some(a), _) => match (&a.vault_path, &a.env) {
            (Some(path), None) => match normalize_vault_path(path) {
                Ok(p) => Some(AdminSource::Vault(p.into_owned())),
                Err(message) => {
                    cx.push(
                        Diagnostic::error(message, cx.at(&format!("{pointer}/vault_path")))
                            .help("a KV path inside the mount, e.g. `infra/pg-admin`"),
                    );
                    None
                }
            },
            (None, Some(env)) if valid_env_name(env) => Some(AdminSource::Env(env.clone())),
            (None, Some(env)) => {
                cx.push(Diagnostic::error(format!("`{env}` is not an environment variable name"), cx.at(&format!("{pointer}/env")))
                    .help("write the variable's name (e.g. `PG_ADMIN_PASSWORD`), never the secret itself"));
                None
            }
            _ => {
                cx.push(
                    Diagnostic::error(
                        "`admin` must set exactly one of `vault_path` and `env`",
                        cx.at(pointer),
                    )
                    .help("e.g. `admin: { vault_path: infra/pg-admin }`"),
                );
                None
            }
        },
    }
}

fn validate_providers(
    cx: &mut Ctx,
    raw: &RawPlaybook,
    catalog: &Catalog,
) -> IndexMap<String, ProviderInstance> {
    let mut out = IndexMap::new();
    let secret_sources = secret_sources(raw);
    for (name, p) in &raw.providers {
        let base = format!("/providers/{}", escape(name));
        if name.chars().count() > MAX_ID_LEN {
            cx.push(too_long("provider instance name", name, cx.key_at(&base)));
        } else if !valid_id(name) {
            cx.push(
                Diagnostic::error(
                    format!("`{name}` is not a valid provider instance name"),
                    cx.key_at(&base),
                )
                .help("use letters, digits, `-`, `_` and `.`, starting with a letter or digit"),
            );
        }
        if name == MANUAL {
            cx.push(
                Diagnostic::error(
                    "`manual` is reserved for hand-performed steps",
                    cx.key_at(&base),
                )
                .help(
                    "rename this instance; credentials use `provider: manual` without declaring it",
                ),
            );
            continue;
        }
        let Some(t) = catalog.get(&p.kind) else {
            let mut d = Diagnostic::error(
                format!("unknown provider type `{}`", p.kind),
                cx.at(&format!("{base}/type")),
            )
            .label("not a provider type");
            d = match did_you_mean(&p.kind, catalog.types.keys().map(String::as_str)) {
                Some(best) => d.help(format!(
                    "did you mean `{best}`? (`rekey providers` lists every type)"
                )),
                None => d.help(format!(
                    "known types: {}",
                    catalog.types.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            };
            cx.push(d);
            continue;
        };
        if t.kind == Kind::Manual {
            cx.push(
                Diagnostic::error(
                    "manual steps need no provider instance",
                    cx.at(&format!("{base}/type")),
                )
                .help("remove this instance and write `provider: manual` on the credential"),
            );
            continue;
        }
        let mut settings = validate_settings(
            cx,
            &p.settings,
            &t.settings,
            &format!("{base}/settings"),
            &t.name,
        );
        end_sessions_flag(cx, &mut settings, &format!("{base}/settings/end_sessions"));
        let admin = validate_admin(cx, &p.admin, t.admin, &format!("{base}/admin"), &t.name);
        if t.name == "exec" {
            refuse_secret_env(cx, name, &p.settings, &base, &secret_sources);
        }
        // An exec plugin says in its settings which protocol it follows.
        let kind = match (t.name.as_str(), settings.get("kind")) {
            ("exec", Some(k)) if k == "single" => Kind::Single,
            ("exec", Some(k)) if k != "dual" => {
                cx.push(
                    Diagnostic::error(
                        "an exec plugin's `kind` is `dual` or `single`",
                        cx.at(&format!("{base}/settings/kind")),
                    )
                    .help("`dual`: it creates a new key beside the old; `single`: it changes a value in place"),
                );
                t.kind
            }
            _ => t.kind,
        };
        let (rate, rate_origin) = match &p.rate {
            Some(r) => (
                validate_rate(cx, r, &format!("{base}/rate")).unwrap_or(t.rate()),
                RateOrigin::Playbook,
            ),
            None => (t.rate(), RateOrigin::ProviderDefault),
        };
        let concurrency = cx
            .count(
                p.concurrency,
                &format!("{base}/concurrency"),
                "concurrency",
                1024,
            )
            .unwrap_or(t.default_concurrency);
        out.insert(
            name.clone(),
            ProviderInstance {
                name: name.clone(),
                type_name: t.name.clone(),
                kind,
                settings,
                admin,
                rate,
                rate_origin,
                concurrency,
                latency: t.latency(),
                requests: t.requests.clone(),
                quota: t.quota,
            },
        );
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn validate_credentials<'c>(
    cx: &mut Ctx,
    raw: &RawPlaybook,
    catalog: &'c Catalog,
    providers: &mut IndexMap<String, ProviderInstance>,
    vault: &Vault,
    defaults: &Defaults,
    mode: Mode,
    lines: &[u32],
) -> Vec<Resolved> {
    let mut out = Vec::with_capacity(raw.credentials.len());
    let mut ids: HashMap<&str, usize> =
        HashMap::with_capacity_and_hasher(raw.credentials.len(), Default::default());
    let mut paths: HashMap<Cow<'_, str>, usize> =
        HashMap::with_capacity_and_hasher(raw.credentials.len(), Default::default());
    let mount_prefix = format!("{}/", vault.mount);
    let mount_data_prefix = format!("{}/data/", vault.mount);
    let staging_dir = format!("{}/", vault.staging_prefix);
    if raw.credentials.is_empty() {
        cx.push(
            Diagnostic::warning(
                "the playbook lists no credentials",
                cx.key_at("/credentials"),
            )
            .help("add entries under `credentials:`"),
        );
    }
    for (i, c) in raw.credentials.iter().enumerate() {
        let base = format!("/credentials/{i}");
        if c.id.chars().count() > MAX_ID_LEN {
            cx.push(too_long(
                "credential id",
                &c.id,
                cx.at(&format!("{base}/id")),
            ));
        } else if !valid_id(&c.id) {
            cx.push(
                Diagnostic::error(
                    format!("`{}` is not a valid credential id", c.id),
                    cx.at(&format!("{base}/id")),
                )
                .help("use letters, digits, `-`, `_` and `.`, starting with a letter or digit"),
            );
        }
        if let Some(first) = ids.insert(&c.id, i) {
            cx.push(Diagnostic::error(format!("duplicate credential id `{}`", c.id), cx.at(&format!("{base}/id")))
                .label("defined again here")
                .related(cx.at(&format!("/credentials/{first}/id")), "first defined here")
                .help("give each credential its own id; ids name credentials in journals and `--only`"));
        }

        // The provider instance, or the implicit manual one.
        // Only the type and kind are needed here; cloning the instance per
        // credential would cost a 100,000-credential playbook dearly.
        let instance: Option<(&'c str, Kind)> = if c.provider == MANUAL {
            let t = catalog.get(MANUAL);
            if c.instructions
                .as_deref()
                .is_none_or(|s| s.trim().is_empty())
            {
                cx.push(Diagnostic::error(format!("manual credential `{}` has no instructions", c.id), cx.at(&format!("{base}/provider")))
                    .help("add `instructions:` telling the operator exactly what to do, e.g. where to regenerate the key"));
            }
            t.map(|t| {
                providers
                    .entry(MANUAL.into())
                    .or_insert_with(|| ProviderInstance {
                        name: MANUAL.into(),
                        type_name: MANUAL.into(),
                        kind: Kind::Manual,
                        settings: IndexMap::new(),
                        admin: None,
                        rate: t.rate(),
                        rate_origin: RateOrigin::ProviderDefault,
                        concurrency: t.default_concurrency,
                        latency: t.latency(),
                        requests: t.requests.clone(),
                        quota: None,
                    });
                (MANUAL, Kind::Manual)
            })
        } else if let Some(p) = providers.get(&c.provider) {
            catalog
                .types
                .get_key_value(&p.type_name)
                .map(|(name, _)| (name.as_str(), p.kind))
        } else {
            let declared = raw.providers.contains_key(&c.provider);
            if !declared {
                let mut d = Diagnostic::error(
                    format!(
                        "credential `{}` uses unknown provider instance `{}`",
                        c.id, c.provider
                    ),
                    cx.at(&format!("{base}/provider")),
                )
                .label("not declared under `providers:`");
                let names = raw.providers.keys().map(String::as_str).chain([MANUAL]);
                d = match did_you_mean(&c.provider, names) {
                    Some(best) => d.help(format!("did you mean `{best}`?")),
                    None => d.help(format!("declare `{}` under `providers:` (with its `type`), or use `provider: manual`", c.provider)),
                };
                cx.push(d);
            }
            None
        };

        if let Some((type_name, kind)) = instance
            && let Some(t) = catalog.get(type_name)
        {
            if t.account == Need::Required
                && c.account.as_deref().is_none_or(|a| a.trim().is_empty())
            {
                cx.push(
                    Diagnostic::error(
                        format!(
                            "credential `{}` needs an `account` (the {} account to rotate)",
                            c.id, t.name
                        ),
                        cx.at(&format!("{base}/id")),
                    )
                    .help("add `account: <user, role or key name at the provider>`"),
                );
            }
            if kind == Kind::Manual
                && let Some(v) = c.settings.get("verify_with")
            {
                let known = v
                    .as_str()
                    .is_some_and(|name| name != MANUAL && raw.providers.contains_key(name));
                if !known {
                    cx.push(Diagnostic::error(format!("`verify_with` of `{}` must name a provider instance declared under `providers:`", c.id), cx.at(&format!("{base}/settings/verify_with")))
                        .help("name the instance whose `verify` can check this value, or remove `verify_with`"));
                }
            }
            if kind != Kind::Manual && c.instructions.is_some() {
                cx.push(Diagnostic::warning(format!("`instructions` only apply to manual credentials; `{}` is rotated by `{}`", c.id, type_name), cx.key_at(&format!("{base}/instructions"))).help("remove `instructions`, or use `provider: manual`"));
            }
        }
        let settings = match instance.and_then(|(type_name, _)| catalog.get(type_name)) {
            // An exec plugin defines its own credential settings; rekey hands
            // them on as written.
            Some(t) if t.name == "exec" => IndexMap::new(),
            Some(t)
                if !c.settings.is_empty()
                    || t.credential_settings
                        .values()
                        .any(|s| s.required || s.default.is_some()) =>
            {
                validate_settings(
                    cx,
                    &c.settings,
                    &t.credential_settings,
                    &format!("{base}/settings"),
                    &t.name,
                )
            }
            Some(_) => IndexMap::new(),
            None => IndexMap::new(),
        };
        let settings = (!settings.is_empty() && settings != c.settings).then_some(settings);

        let vault_path = match normalize_vault_path(&c.vault_path) {
            Ok(p) => {
                if p.starts_with(&mount_prefix) {
                    let drop = if p.starts_with(&mount_data_prefix) {
                        &mount_data_prefix
                    } else {
                        &mount_prefix
                    };
                    cx.push(Diagnostic::warning(format!("`{}` starts with the mount `{}`; vault_path is relative to the mount", c.vault_path, vault.mount), cx.at(&format!("{base}/vault_path")))
                        .help(format!("drop the leading `{drop}`")));
                }
                if !vault.staging_prefix.is_empty()
                    && (p == vault.staging_prefix || p.starts_with(&staging_dir))
                {
                    cx.push(Diagnostic::error(format!("`{p}` lies under the staging prefix `{}`", vault.staging_prefix), cx.at(&format!("{base}/vault_path")))
                        .help("consumers' paths must stay outside `vault.staging_prefix`; move one of them"));
                }
                if let Some(&first) = paths.get(&p) {
                    cx.push(Diagnostic::error(format!("credentials `{}` and `{}` both write the Vault path `{p}`", raw.credentials[first].id, c.id), cx.at(&format!("{base}/vault_path")))
                        .label("written again here")
                        .related(cx.at(&format!("/credentials/{first}/vault_path")), "first written here")
                        .help("give each credential its own vault_path; one would silently overwrite the other"));
                    None
                } else {
                    let changed = matches!(p, Cow::Owned(_)).then(|| p.to_string());
                    paths.insert(p, i);
                    changed
                }
            }
            Err(message) => {
                cx.push(
                    Diagnostic::error(message, cx.at(&format!("{base}/vault_path")))
                        .help("a KV path inside the mount, e.g. `apps/billing/db`"),
                );
                None
            }
        };

        let grace = if c.grace.is_some() {
            cx.duration(&c.grace, format!("{base}/grace"))
                .unwrap_or(defaults.grace)
        } else {
            defaults.grace
        };
        if mode == Mode::Breach && !grace.is_zero() {
            let pointer = if c.grace.is_some() {
                format!("{base}/grace")
            } else {
                "/defaults/grace".into()
            };
            if c.grace.is_some() || i == 0 {
                cx.push(Diagnostic::warning("breach mode retires old credentials at once; this grace period is ignored", cx.at(&pointer))
                    .help("remove it, or set `incident.mode: routine` if the old values are not compromised"));
            }
        }
        let max_age = if c.max_age.is_some() {
            cx.duration(&c.max_age, format!("{base}/max_age"))
        } else {
            defaults.max_age
        };
        let password = if c.password.is_some() {
            Arc::new(validate_password(
                cx,
                &c.password,
                &defaults.password,
                &format!("{base}/password"),
            ))
        } else {
            defaults.password.clone()
        };

        for (j, dep) in c.depends_on.iter().enumerate() {
            if c.depends_on[..j].contains(dep) {
                cx.push(
                    Diagnostic::warning(
                        format!("`{dep}` is listed twice in depends_on"),
                        cx.at(&format!("{base}/depends_on/{j}")),
                    )
                    .help("remove the repeat"),
                );
            }
            if dep == &c.id {
                cx.push(
                    Diagnostic::error(
                        format!("credential `{}` depends on itself", c.id),
                        cx.at(&format!("{base}/depends_on/{j}")),
                    )
                    .help("remove it from its own depends_on"),
                );
            }
        }
        let kind = instance.map(|(_, k)| k).unwrap_or(Kind::Manual);
        if !c.keep.is_empty() && kind != Kind::Dual {
            cx.push(
                Diagnostic::error(
                    "`keep` names keys to leave alone, and only dual kinds (API keys, tokens) have several",
                    cx.key_at(&format!("{base}/keep")),
                )
                .help("remove `keep`: a password changed in place has no other key to keep"),
            );
        }
        for (j, key) in c.keep.iter().enumerate() {
            if key.trim().is_empty() || c.keep[..j].contains(key) {
                cx.push(
                    Diagnostic::error(
                        format!("`{key}` is empty or listed twice in keep"),
                        cx.at(&format!("{base}/keep/{j}")),
                    )
                    .help("list each key id to keep once"),
                );
            }
        }
        for (j, tag) in c.tags.iter().enumerate() {
            if tag.trim().is_empty() || tag.contains(char::is_whitespace) {
                cx.push(
                    Diagnostic::error(
                        format!("`{tag}` is not a valid tag"),
                        cx.at(&format!("{base}/tags/{j}")),
                    )
                    .help("tags are single words such as `tier0`"),
                );
            }
        }

        out.push(Resolved {
            type_name: instance.map(|(t, _)| t.to_owned()).unwrap_or_default(),
            kind: instance.map(|(_, k)| k).unwrap_or(Kind::Manual),
            vault_path,
            verify: c.verify.unwrap_or(defaults.verify),
            grace: if mode == Mode::Breach {
                Duration::ZERO
            } else {
                grace
            },
            max_age,
            password,
            settings,
            line: lines.get(i).copied().unwrap_or(0) as usize,
            sinks: if c.sinks.is_empty() {
                Vec::new()
            } else {
                validate_sinks(cx, c, &base, vault)
            },
        });
    }

    // Unknown dependencies, reported once each credential table is known. Finding
    // a suggestion compares against every id: done for the first few only, so a
    // playbook with thousands of bad references still loads in time.
    let known: Vec<&str> = raw.credentials.iter().map(|c| c.id.as_str()).collect();
    let mut suggestions_left = 20;
    for (i, c) in raw.credentials.iter().enumerate() {
        for (j, dep) in c.depends_on.iter().enumerate() {
            if !ids.contains_key(dep.as_str()) {
                let mut d = Diagnostic::error(
                    format!(
                        "credential `{}` depends on unknown credential `{dep}`",
                        c.id
                    ),
                    cx.at(&format!("/credentials/{i}/depends_on/{j}")),
                )
                .label("no credential has this id");
                let suggestion = if suggestions_left > 0 {
                    suggestions_left -= 1;
                    did_you_mean(dep, known.iter().copied())
                } else {
                    None
                };
                d = match suggestion {
                    Some(best) => d.help(format!("did you mean `{best}`?")),
                    None => d.help("depends_on lists ids of other credentials in this playbook"),
                };
                cx.push(d);
            }
        }
    }
    out
}

/// Cycles reported in one run: enough to act on, bounded for pathological input.
const MAX_CYCLES_REPORTED: usize = 20;

/// Finds dependency cycles (iteratively: a 100,000-long chain must not overflow the
/// stack) and reports each once, printing the cycle.
fn find_cycles(cx: &Ctx, credentials: &[RawCredential]) -> Option<Vec<Diagnostic>> {
    let index: HashMap<&str, usize> = credentials
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i))
        .collect();
    let edges: Vec<Vec<(usize, usize)>> = credentials
        .iter()
        .map(|c| {
            c.depends_on
                .iter()
                .enumerate()
                .filter_map(|(j, d)| index.get(d.as_str()).map(|&t| (t, j)))
                .filter(|(t, _)| credentials[*t].id != c.id)
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        White,
        Grey,
        Black,
    }
    let mut color = vec![Color::White; credentials.len()];
    let mut out = Vec::new();
    for start in 0..credentials.len() {
        if color[start] != Color::White {
            continue;
        }
        // Stack of (node, next edge to explore).
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        color[start] = Color::Grey;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&(target, dep_index)) = edges[node].get(*next) {
                *next += 1;
                match color[target] {
                    Color::White => {
                        color[target] = Color::Grey;
                        stack.push((target, 0));
                    }
                    Color::Grey if out.len() >= MAX_CYCLES_REPORTED => {}
                    Color::Grey => {
                        let from = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                        let cycle = &stack[from..];
                        let mut names: Vec<&str> = if cycle.len() > 12 {
                            // Long cycles: the ends, and how many in between.
                            let mut v: Vec<&str> = cycle[..5]
                                .iter()
                                .map(|(n, _)| credentials[*n].id.as_str())
                                .collect();
                            v.push("…");
                            v.extend(
                                cycle[cycle.len() - 5..]
                                    .iter()
                                    .map(|(n, _)| credentials[*n].id.as_str()),
                            );
                            v
                        } else {
                            cycle
                                .iter()
                                .map(|(n, _)| credentials[*n].id.as_str())
                                .collect()
                        };
                        names.push(&credentials[target].id);
                        let length = if cycle.len() > 12 {
                            format!(" ({} credentials)", cycle.len())
                        } else {
                            String::new()
                        };
                        out.push(
                            Diagnostic::error(format!("dependency cycle{length}: {}", names.join(" → ")), cx.at(&format!("/credentials/{node}/depends_on/{dep_index}")))
                                .label("closes the cycle")
                                .help("remove one `depends_on` entry of the cycle; rekey rotates dependencies first, so a cycle can never start"),
                        );
                    }
                    Color::Black => {}
                }
            } else {
                color[node] = Color::Black;
                stack.pop();
            }
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

/// Checks a credential's propagation sinks: each type's required fields, no field
/// of another type, paths that do not collide with what rekey writes itself.
fn validate_sinks(cx: &mut Ctx, c: &RawCredential, base: &str, vault: &Vault) -> Vec<Sink> {
    let mut out = Vec::new();
    for (i, raw) in c.sinks.iter().enumerate() {
        let at = format!("{base}/sinks/{i}");
        let allowed: &[&str] = match raw.kind.as_str() {
            "vault" => &["path"],
            "file" => &["path", "reload"],
            "github" => &[
                "repository",
                "environment",
                "secret_name",
                "token",
                "base_url",
            ],
            other => {
                cx.push(
                    Diagnostic::error(
                        format!("unknown sink type `{other}`"),
                        cx.at(&format!("{at}/type")),
                    )
                    .help("sink types: `vault`, `file`, `github`"),
                );
                continue;
            }
        };
        let given = [
            ("path", raw.path.is_some()),
            ("reload", raw.reload.is_some()),
            ("repository", raw.repository.is_some()),
            ("environment", raw.environment.is_some()),
            ("secret_name", raw.secret_name.is_some()),
            ("token", raw.token.is_some()),
            ("base_url", raw.base_url.is_some()),
        ];
        let mut ok = true;
        for (field, _) in given.iter().filter(|(f, g)| *g && !allowed.contains(f)) {
            ok = false;
            cx.push(
                Diagnostic::error(
                    format!("a `{}` sink has no `{field}`", raw.kind),
                    cx.key_at(&format!("{at}/{field}")),
                )
                .help(format!(
                    "fields of a `{}` sink: type, {}",
                    raw.kind,
                    allowed.join(", ")
                )),
            );
        }
        let need = |cx: &mut Ctx, field: &str, value: Option<&String>, hint: &str| match value
            .filter(|v| !v.trim().is_empty())
        {
            Some(v) => Some(v.clone()),
            None => {
                cx.push(
                    Diagnostic::error(format!("a `{}` sink needs `{field}`", raw.kind), cx.at(&at))
                        .help(hint.to_owned()),
                );
                None
            }
        };
        let sink = match raw.kind.as_str() {
            "vault" => need(
                cx,
                "path",
                raw.path.as_ref(),
                "e.g. `path: mirror/billing/db` (inside the mount)",
            )
            .and_then(|p| match normalize_vault_path(&p) {
                Ok(p)
                    if p == c.vault_path.as_str()
                        || normalize_vault_path(&c.vault_path).is_ok_and(|v| v == p) =>
                {
                    cx.push(
                        Diagnostic::error(
                            "this sink writes the credential's own vault_path",
                            cx.at(&format!("{at}/path")),
                        )
                        .help(
                            "a sink copies the value to another path; remove it or change the path",
                        ),
                    );
                    None
                }
                Ok(p)
                    if !vault.staging_prefix.is_empty()
                        && (p == vault.staging_prefix
                            || p.starts_with(&format!("{}/", vault.staging_prefix))) =>
                {
                    cx.push(
                        Diagnostic::error(
                            format!(
                                "`{p}` lies under the staging prefix `{}`",
                                vault.staging_prefix
                            ),
                            cx.at(&format!("{at}/path")),
                        )
                        .help("sinks write outside `vault.staging_prefix`"),
                    );
                    None
                }
                Ok(p) => Some(Sink::Vault {
                    path: p.into_owned(),
                }),
                Err(message) => {
                    cx.push(
                        Diagnostic::error(message, cx.at(&format!("{at}/path")))
                            .help("a KV path inside the mount, e.g. `mirror/billing/db`"),
                    );
                    None
                }
            }),
            "file" => {
                let path = need(
                    cx,
                    "path",
                    raw.path.as_ref(),
                    "e.g. `path: /etc/billing/api-key`",
                );
                let reload = raw.reload.clone().unwrap_or_default();
                if raw.reload.is_some() && reload.first().is_none_or(|p| p.trim().is_empty()) {
                    ok = false;
                    cx.push(
                        Diagnostic::error(
                            "`reload` is a command as a list, starting with the program",
                            cx.at(&format!("{at}/reload")),
                        )
                        .help("e.g. `reload: [systemctl, reload, billing]` (no shell)"),
                    );
                }
                path.map(|p| Sink::File {
                    path: p.into(),
                    reload,
                })
            }
            _ => {
                let repository = need(
                    cx,
                    "repository",
                    raw.repository.as_ref(),
                    "e.g. `repository: acme/deploy`",
                );
                if let Some(r) = &repository {
                    let parts: Vec<&str> = r.split('/').collect();
                    if parts.len() != 2
                        || parts.iter().any(|p| {
                            p.is_empty()
                                || !p
                                    .chars()
                                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
                        })
                    {
                        ok = false;
                        cx.push(
                            Diagnostic::error(
                                format!("`{r}` is not a GitHub repository (`owner/name`)"),
                                cx.at(&format!("{at}/repository")),
                            )
                            .help("e.g. `acme/deploy`"),
                        );
                    }
                }
                let name = need(
                    cx,
                    "secret_name",
                    raw.secret_name.as_ref(),
                    "e.g. `secret_name: DEPLOY_API_KEY`",
                );
                if let Some(n) = &name
                    && (!n.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                        || n.starts_with(|ch: char| ch.is_ascii_digit())
                        || n.to_ascii_uppercase().starts_with("GITHUB_"))
                {
                    ok = false;
                    cx.push(
                        Diagnostic::error(
                            format!("`{n}` is not a valid GitHub Actions secret name"),
                            cx.at(&format!("{at}/secret_name")),
                        )
                        .help("letters, digits and `_`, not starting with a digit or `GITHUB_`"),
                    );
                }
                // GitHub environment names may hold `/` (the sink encodes the name
                // as one path segment); an empty one or a control character cannot be.
                if let Some(e) = &raw.environment
                    && (e.trim().is_empty() || e.chars().any(char::is_control))
                {
                    ok = false;
                    cx.push(
                        Diagnostic::error(
                            format!("`{e}` is not an environment name"),
                            cx.at(&format!("{at}/environment")),
                        )
                        .help("the name of an environment of the repository, e.g. `production`"),
                    );
                }
                let base_url = raw
                    .base_url
                    .clone()
                    .unwrap_or_else(|| "https://api.github.com".into());
                if let Err(why) = crate::net::parse_endpoint(&base_url) {
                    ok = false;
                    cx.push(Diagnostic::error(format!("`{base_url}`: {why}"), cx.at(&format!("{at}/base_url"))).help("the token travels with every request: use https (plain http only to loopback, for tests)"));
                }
                let token = if raw.token.is_some() {
                    validate_admin(
                        cx,
                        &raw.token,
                        Need::Required,
                        &format!("{at}/token"),
                        "github sink",
                    )
                } else {
                    cx.push(Diagnostic::error("a `github` sink needs `token`", cx.at(&at)).help("`token: { env: GITHUB_TOKEN }` or `token: { vault_path: infra/github-token }`"));
                    None
                };
                match (repository, name, token) {
                    (Some(repository), Some(secret_name), Some(token)) => Some(Sink::Github {
                        base_url: base_url.trim_end_matches('/').to_owned(),
                        repository,
                        environment: raw.environment.clone(),
                        secret_name,
                        token,
                    }),
                    _ => None,
                }
            }
        };
        if let (Some(sink), true) = (sink, ok) {
            out.push(sink);
        }
    }
    out
}
