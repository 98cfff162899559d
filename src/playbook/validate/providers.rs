//! Provider instances: each against its catalog type (settings, admin credential,
//! rate, concurrency), plus the implicit `manual` instance credentials may use.

use super::vault::normalize_vault_path;
use super::{Ctx, MANUAL, MAX_ID_LEN, too_long, valid_env_name, valid_id};
use crate::catalog::{Catalog, Kind, Native, Need, Setting};
use crate::doc::diagnostic::{Diagnostic, did_you_mean};
use crate::doc::rate::{Rate, RawRate};
use crate::doc::yaml::escape;
use crate::playbook::model::{RawAdmin, RawPlaybook};
use crate::playbook::{AdminSource, ProviderInstance, RateOrigin};
use indexmap::IndexMap;

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
    names.extend(crate::playbook::notify::secret_env(&raw.notify));
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
        } else if crate::playbook::interpolate::looks_secret(name) {
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

/// The declared provider instances (each checked against its catalog type), then
/// the implicit `manual` one when a credential uses it.
pub(super) fn validate_providers(
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
        if t.name.parse() == Ok(Native::Exec) {
            refuse_secret_env(cx, name, &p.settings, &base, &secret_sources);
        }
        // A type with a `kind` setting (an exec plugin) lets each instance say
        // which protocol it follows.
        let kind = match settings
            .get("kind")
            .filter(|_| t.settings.contains_key("kind"))
        {
            Some(k) if k == "single" => Kind::Single,
            Some(k) if k != "dual" => {
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
        let zone = validate_zone(cx, p.zone.as_deref(), &format!("{base}/zone"));
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
                admin_key_listed: t.admin_key_listed,
                zone,
            },
        );
    }
    // Credentials written `provider: manual` share an implicit instance: the
    // operator, paced as the catalog's `manual` type says.
    if raw.credentials.iter().any(|c| c.provider == MANUAL)
        && let Some(t) = catalog.get(MANUAL)
    {
        out.insert(
            MANUAL.into(),
            ProviderInstance {
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
                admin_key_listed: false,
                zone: crate::playbook::DEFAULT_ZONE.into(),
            },
        );
    }
    out
}

/// A zone name: what `rekey runner --zone` matches, so the same short,
/// shell-safe alphabet as credential ids. Unset: `default`.
fn validate_zone(cx: &mut Ctx, zone: Option<&str>, pointer: &str) -> String {
    let Some(zone) = zone else {
        return crate::playbook::DEFAULT_ZONE.into();
    };
    if !crate::playbook::is_zone_name(zone) {
        cx.push(
            Diagnostic::error(
                format!("`{}` is not a zone name", zone.escape_debug()),
                cx.at(pointer),
            )
            .label("not a zone name")
            .help("a zone is 1 to 64 letters, digits, `-`, `_` or `.`, e.g. `prod-vpc` (what `rekey runner --zone` names)"),
        );
    }
    zone.to_owned()
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

pub(super) fn validate_settings(
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

pub(super) fn validate_admin(
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
