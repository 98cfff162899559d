//! The credentials: each one through small, named checks, in the order their
//! problems are reported (identity, provider instance, what its type asks for,
//! settings, Vault path, timing, password, references, tags, sinks); then the
//! references between credentials (`graph`).

use super::graph::unknown_dependencies;
use super::providers::validate_settings;
use super::sinks::validate_sinks;
use super::vault::normalize_vault_path;
use super::{Ctx, MANUAL, MAX_ID_LEN, Resolved, too_long, valid_id, validate_password};
use crate::catalog::{Catalog, Kind, Need, ProviderType};
use crate::doc::diagnostic::{Diagnostic, did_you_mean};
use crate::playbook::model::{Mode, RawCredential, RawPlaybook};
use crate::playbook::{Defaults, PasswordPolicy, ProviderInstance, Vault};
use indexmap::IndexMap;
use rustc_hash::FxHashMap as HashMap;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// What the credential checks read: the playbook and what validation already
/// resolved before them.
pub(super) struct Credentials<'a> {
    pub(super) raw: &'a RawPlaybook,
    pub(super) catalog: &'a Catalog,
    /// The instances, the implicit `manual` one included.
    pub(super) providers: &'a IndexMap<String, ProviderInstance>,
    pub(super) vault: &'a Vault,
    pub(super) defaults: &'a Defaults,
    pub(super) mode: Mode,
    /// The line of each credential in the file (empty when unknown).
    pub(super) lines: &'a [u32],
}

/// One credential under check: its index, its entry, and its JSON pointer.
struct Entry<'a> {
    index: usize,
    c: &'a RawCredential,
    base: String,
}

/// What the checks have seen so far, to report the second use of an id or a
/// Vault path.
struct Seen<'a> {
    ids: HashMap<&'a str, usize>,
    paths: HashMap<Cow<'a, str>, usize>,
}

/// Where a credential's Vault path must not go, worked out once for all.
struct PathRules {
    /// `<mount>/`: a path starting with it repeats the mount.
    mount: String,
    /// `<mount>/data/`: the same, with the KV v2 API segment.
    mount_data: String,
    /// `<staging_prefix>/`: rekey's own entries.
    staging: String,
}

/// The type and kind a credential's instance resolved to (borrowed from the
/// catalog: cloning the instance per credential would cost a 100,000-credential
/// playbook dearly).
#[derive(Clone, Copy)]
struct Resolution<'a> {
    t: &'a ProviderType,
    kind: Kind,
}

impl<'a> Credentials<'a> {
    /// Checks every credential and resolves what the playbook is built from.
    pub(super) fn check(&self, cx: &mut Ctx) -> Vec<Resolved> {
        let count = self.raw.credentials.len();
        let mut seen = Seen {
            ids: HashMap::with_capacity_and_hasher(count, Default::default()),
            paths: HashMap::with_capacity_and_hasher(count, Default::default()),
        };
        let rules = PathRules {
            mount: format!("{}/", self.vault.mount),
            mount_data: format!("{}/data/", self.vault.mount),
            staging: format!("{}/", self.vault.staging_prefix),
        };
        if count == 0 {
            cx.push(
                Diagnostic::warning(
                    "the playbook lists no credentials",
                    cx.key_at("/credentials"),
                )
                .help("add entries under `credentials:`"),
            );
        }
        let mut out = Vec::with_capacity(count);
        for (index, c) in self.raw.credentials.iter().enumerate() {
            let e = Entry {
                index,
                c,
                base: format!("/credentials/{index}"),
            };
            self.identity(cx, &mut seen, &e);
            let resolution = self.instance(cx, &e);
            if let Some(r) = resolution {
                self.what_the_type_asks(cx, &e, r);
            }
            let settings = self.settings(cx, &e, resolution);
            let vault_path = self.vault_path(cx, &mut seen, &rules, &e);
            let grace = self.grace(cx, &e);
            let max_age = match &c.max_age {
                Some(_) => cx.duration(&c.max_age, format!("{}/max_age", e.base)),
                None => self.defaults.max_age,
            };
            let password = self.password(cx, &e);
            self.dependencies(cx, &e);
            self.keep(cx, &e, resolution);
            self.tags(cx, &e);
            out.push(Resolved {
                type_name: resolution.map(|r| r.t.name.clone()).unwrap_or_default(),
                kind: resolution.map_or(Kind::Manual, |r| r.kind),
                vault_path,
                verify: c.verify.unwrap_or(self.defaults.verify),
                grace,
                max_age,
                password,
                settings,
                line: self.lines.get(index).copied().unwrap_or(0) as usize,
                sinks: if c.sinks.is_empty() {
                    Vec::new()
                } else {
                    validate_sinks(cx, c, &e.base, self.vault)
                },
            });
        }
        unknown_dependencies(cx, &self.raw.credentials, &seen.ids);
        out
    }

    /// A well-formed id, used once.
    fn identity(&self, cx: &mut Ctx, seen: &mut Seen<'a>, e: &Entry<'a>) {
        let (c, base) = (e.c, &e.base);
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
        if let Some(first) = seen.ids.insert(&c.id, e.index) {
            cx.push(
                Diagnostic::error(
                    format!("duplicate credential id `{}`", c.id),
                    cx.at(&format!("{base}/id")),
                )
                .label("defined again here")
                .related(
                    cx.at(&format!("/credentials/{first}/id")),
                    "first defined here",
                )
                .help(
                    "give each credential its own id; ids name credentials in journals and `--only`",
                ),
            );
        }
    }

    /// The provider instance the credential names (`manual`: with instructions),
    /// resolved to its catalog type.
    fn instance(&self, cx: &mut Ctx, e: &Entry<'a>) -> Option<Resolution<'a>> {
        let (c, base) = (e.c, &e.base);
        if c.provider == MANUAL {
            if c.instructions
                .as_deref()
                .is_none_or(|s| s.trim().is_empty())
            {
                cx.push(
                    Diagnostic::error(
                        format!("manual credential `{}` has no instructions", c.id),
                        cx.at(&format!("{base}/provider")),
                    )
                    .help("add `instructions:` telling the operator exactly what to do, e.g. where to regenerate the key"),
                );
            }
            return self.catalog.get(MANUAL).map(|t| Resolution {
                t,
                kind: Kind::Manual,
            });
        }
        if let Some(p) = self.providers.get(&c.provider) {
            return self
                .catalog
                .get(&p.type_name)
                .map(|t| Resolution { t, kind: p.kind });
        }
        // Declared but refused (its own diagnostic says why), or not declared.
        if !self.raw.providers.contains_key(&c.provider) {
            let mut d = Diagnostic::error(
                format!(
                    "credential `{}` uses unknown provider instance `{}`",
                    c.id, c.provider
                ),
                cx.at(&format!("{base}/provider")),
            )
            .label("not declared under `providers:`");
            let names = self
                .raw
                .providers
                .keys()
                .map(String::as_str)
                .chain([MANUAL]);
            d = match did_you_mean(&c.provider, names) {
                Some(best) => d.help(format!("did you mean `{best}`?")),
                None => d.help(format!(
                    "declare `{}` under `providers:` (with its `type`), or use `provider: manual`",
                    c.provider
                )),
            };
            cx.push(d);
        }
        None
    }

    /// What the type asks of a credential: an account where it needs one;
    /// `verify_with` and `instructions` only for manual steps.
    fn what_the_type_asks(&self, cx: &mut Ctx, e: &Entry<'a>, r: Resolution<'a>) {
        let (c, base, t) = (e.c, &e.base, r.t);
        if t.account == Need::Required && c.account.as_deref().is_none_or(|a| a.trim().is_empty()) {
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
        if r.kind == Kind::Manual
            && let Some(v) = c.settings.get("verify_with")
        {
            let known = v
                .as_str()
                .is_some_and(|name| name != MANUAL && self.raw.providers.contains_key(name));
            if !known {
                cx.push(
                    Diagnostic::error(
                        format!(
                            "`verify_with` of `{}` must name a provider instance declared under `providers:`",
                            c.id
                        ),
                        cx.at(&format!("{base}/settings/verify_with")),
                    )
                    .help("name the instance whose `verify` can check this value, or remove `verify_with`"),
                );
            }
        }
        if r.kind != Kind::Manual && c.instructions.is_some() {
            cx.push(
                Diagnostic::warning(
                    format!(
                        "`instructions` only apply to manual credentials; `{}` is rotated by `{}`",
                        c.id, t.name
                    ),
                    cx.key_at(&format!("{base}/instructions")),
                )
                .help("remove `instructions`, or use `provider: manual`"),
            );
        }
    }

    /// The credential's settings against those its type declares, defaults
    /// applied; `None` when they are as written (open settings, as an exec
    /// plugin's, are always handed on as written).
    fn settings(
        &self,
        cx: &mut Ctx,
        e: &Entry<'a>,
        resolution: Option<Resolution<'a>>,
    ) -> Option<IndexMap<String, serde_json::Value>> {
        let c = e.c;
        let (t, known) =
            resolution.and_then(|r| Some((r.t, r.t.credential_settings.declared()?)))?;
        if c.settings.is_empty() && !known.values().any(|s| s.required || s.default.is_some()) {
            return None;
        }
        let settings = validate_settings(
            cx,
            &c.settings,
            known,
            &format!("{}/settings", e.base),
            &t.name,
        );
        (!settings.is_empty() && settings != c.settings).then_some(settings)
    }

    /// The Vault path: well-formed, relative to the mount, outside the staging
    /// prefix, written by no other credential. The normalised path when it
    /// differs from what the playbook wrote.
    fn vault_path(
        &self,
        cx: &mut Ctx,
        seen: &mut Seen<'a>,
        rules: &PathRules,
        e: &Entry<'a>,
    ) -> Option<String> {
        let (c, base, vault) = (e.c, &e.base, self.vault);
        let p = match normalize_vault_path(&c.vault_path) {
            Ok(p) => p,
            Err(message) => {
                cx.push(
                    Diagnostic::error(message, cx.at(&format!("{base}/vault_path")))
                        .help("a KV path inside the mount, e.g. `apps/billing/db`"),
                );
                return None;
            }
        };
        if p.starts_with(&rules.mount) {
            let drop = if p.starts_with(&rules.mount_data) {
                &rules.mount_data
            } else {
                &rules.mount
            };
            cx.push(
                Diagnostic::warning(
                    format!(
                        "`{}` starts with the mount `{}`; vault_path is relative to the mount",
                        c.vault_path, vault.mount
                    ),
                    cx.at(&format!("{base}/vault_path")),
                )
                .help(format!("drop the leading `{drop}`")),
            );
        }
        if !vault.staging_prefix.is_empty()
            && (p == vault.staging_prefix || p.starts_with(&rules.staging))
        {
            cx.push(
                Diagnostic::error(
                    format!(
                        "`{p}` lies under the staging prefix `{}`",
                        vault.staging_prefix
                    ),
                    cx.at(&format!("{base}/vault_path")),
                )
                .help(
                    "consumers' paths must stay outside `vault.staging_prefix`; move one of them",
                ),
            );
        }
        if let Some(&first) = seen.paths.get(&p) {
            cx.push(
                Diagnostic::error(
                    format!(
                        "credentials `{}` and `{}` both write the Vault path `{p}`",
                        self.raw.credentials[first].id, c.id
                    ),
                    cx.at(&format!("{base}/vault_path")),
                )
                .label("written again here")
                .related(
                    cx.at(&format!("/credentials/{first}/vault_path")),
                    "first written here",
                )
                .help("give each credential its own vault_path; one would silently overwrite the other"),
            );
            return None;
        }
        let changed = matches!(p, Cow::Owned(_)).then(|| p.to_string());
        seen.paths.insert(p, e.index);
        changed
    }

    /// The grace period before the old credential is retired: zero in breach
    /// mode, whatever the playbook says (which earns a warning, once for the
    /// defaults' value).
    fn grace(&self, cx: &mut Ctx, e: &Entry<'a>) -> Duration {
        let (c, base, defaults) = (e.c, &e.base, self.defaults);
        let grace = match &c.grace {
            Some(_) => cx
                .duration(&c.grace, format!("{base}/grace"))
                .unwrap_or(defaults.grace),
            None => defaults.grace,
        };
        if self.mode != Mode::Breach {
            return grace;
        }
        if !grace.is_zero() && (c.grace.is_some() || e.index == 0) {
            let pointer = if c.grace.is_some() {
                format!("{base}/grace")
            } else {
                "/defaults/grace".into()
            };
            cx.push(
                Diagnostic::warning(
                    "breach mode retires old credentials at once; this grace period is ignored",
                    cx.at(&pointer),
                )
                .help("remove it, or set `incident.mode: routine` if the old values are not compromised"),
            );
        }
        Duration::ZERO
    }

    /// The password policy: the defaults', or the credential's own over them.
    fn password(&self, cx: &mut Ctx, e: &Entry<'a>) -> Arc<PasswordPolicy> {
        if e.c.password.is_none() {
            return self.defaults.password.clone();
        }
        Arc::new(validate_password(
            cx,
            &e.c.password,
            &self.defaults.password,
            &format!("{}/password", e.base),
        ))
    }

    /// `depends_on`: no repeat, not itself. (Unknown ids and cycles are
    /// checked once every id is known.)
    fn dependencies(&self, cx: &mut Ctx, e: &Entry<'a>) {
        let (c, base) = (e.c, &e.base);
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
    }

    /// `keep`: key ids of a dual kind, each once.
    fn keep(&self, cx: &mut Ctx, e: &Entry<'a>, resolution: Option<Resolution<'a>>) {
        let (c, base) = (e.c, &e.base);
        let kind = resolution.map_or(Kind::Manual, |r| r.kind);
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
    }

    /// Tags are single words.
    fn tags(&self, cx: &mut Ctx, e: &Entry<'a>) {
        for (j, tag) in e.c.tags.iter().enumerate() {
            if tag.trim().is_empty() || tag.contains(char::is_whitespace) {
                cx.push(
                    Diagnostic::error(
                        format!("`{tag}` is not a valid tag"),
                        cx.at(&format!("{}/tags/{j}", e.base)),
                    )
                    .help("tags are single words such as `tier0`"),
                );
            }
        }
    }
}
