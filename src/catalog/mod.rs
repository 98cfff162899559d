//! The catalog of provider types: what each type is (dual or single kind), its
//! settings, its documented default rate limit and how many requests a rotation
//! costs. It is read from the YAML files in `providers/`, embedded in the binary, so
//! the documentation and what `rekey plan` computes cannot drift apart, plus the
//! files of `--providers DIR`. `main` loads it once (`Catalog::load`) and passes it
//! to what needs it; playbook validation checks instances and settings against it.
//!
//! - `http`: the `http:` section of a declarative provider file, typed and checked
//!   with positions and hints.
//! - `template`: request templates (minijinja), secrets as opaque values, the fence
//!   around the base URL.

pub mod http;
pub mod template;

use crate::doc::rate::{Rate, RawRate};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// How a credential of this type is replaced.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A second credential can be issued while the first still works (API keys).
    Dual,
    /// The value is changed in place; the old one dies at once (passwords).
    Single,
    /// An operator performs the change by hand and hands rekey the new value.
    Manual,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dual => "dual",
            Kind::Single => "single",
            Kind::Manual => "manual",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Need {
    Required,
    Optional,
    None,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    /// The values the setting may take, when the provider accepts only some
    /// (checked when the playbook is validated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub one_of: Vec<serde_json::Value>,
    pub description: String,
}

/// Provider requests one rotation makes, per operation.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    #[serde(default)]
    pub list: u32,
    #[serde(default)]
    pub create: u32,
    #[serde(default)]
    pub change: u32,
    #[serde(default)]
    pub verify: u32,
    #[serde(default)]
    pub deactivate: u32,
    #[serde(default)]
    pub revoke: u32,
    /// Breach mode only: ending the sessions opened with the old credential. A
    /// type that lists it ends them (`rekey plan` shows the `end_sessions` step).
    #[serde(default)]
    pub end_sessions: u32,
}

impl Requests {
    pub fn total(&self, verify: bool) -> u32 {
        self.list
            + self.create
            + self.change
            + if verify { self.verify } else { 0 }
            + self.deactivate
            + self.revoke
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderType {
    pub name: String,
    pub summary: String,
    pub kind: Kind,
    /// `native` (Rust), `http` (declarative definition), `builtin`.
    pub implementation: String,
    /// Whether `rekey run` can rotate this type in this build: computed when the
    /// catalog loads (a [`Native`] type, an HTTP definition, or manual steps).
    /// Older provider files wrote it; what they say is replaced.
    #[serde(default)]
    pub available: bool,
    /// Live credentials an account may hold at once (dual kinds), if limited.
    #[serde(default)]
    pub quota: Option<u32>,
    /// Dual kinds: the admin credential's own key can be among the keys `list`
    /// returns (the admin is a key of the same account), so breach mode retires it
    /// unless the credential keeps it. The plan says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin_key_listed: bool,
    pub default_rate: RawRate,
    pub default_concurrency: u32,
    /// Typical duration of one request, used for the plan's ETA.
    pub typical_latency: String,
    #[serde(default)]
    pub requests: Requests,
    pub admin: Need,
    pub account: Need,
    #[serde(default)]
    pub settings: IndexMap<String, Setting>,
    #[serde(default)]
    pub credential_settings: CredentialSettings,
    /// Published documentation the definition was checked against.
    #[serde(default)]
    pub docs: Vec<String>,
    /// What the provider's API cannot do, and what rekey does instead.
    #[serde(default)]
    pub limitations: Vec<String>,
    /// What the vendor requires and allows, as its documentation says (HTTP
    /// definitions): checked against its published API description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<VendorFacts>,
    /// Declarative HTTP definition (`implementation: http`), checked by `http::load`
    /// and kept in `definition`.
    #[serde(default, skip_serializing)]
    pub http: Option<serde_json::Value>,
    #[serde(skip)]
    definition: HttpSlot,
}

/// The provider types implemented in Rust in this build (`provider/registry.rs`
/// builds each): the one list of their names. A type of any other name runs only
/// through an HTTP definition (or, `manual`, through the engine itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Native {
    Sandbox,
    SandboxPassword,
    Exec,
    AwsIam,
    VaultApprole,
    VaultUserpass,
    Ldap,
    Ssh,
    Postgres,
    PostgresAlternating,
    Mysql,
    Redis,
}

impl Native {
    pub const ALL: [Native; 12] = [
        Native::Sandbox,
        Native::SandboxPassword,
        Native::Exec,
        Native::AwsIam,
        Native::VaultApprole,
        Native::VaultUserpass,
        Native::Ldap,
        Native::Ssh,
        Native::Postgres,
        Native::PostgresAlternating,
        Native::Mysql,
        Native::Redis,
    ];

    /// The type name, as in `providers/<name>.yaml` and a playbook's `type:`.
    pub fn name(self) -> &'static str {
        match self {
            Native::Sandbox => "sandbox",
            Native::SandboxPassword => "sandbox_password",
            Native::Exec => "exec",
            Native::AwsIam => "aws_iam",
            Native::VaultApprole => "vault_approle",
            Native::VaultUserpass => "vault_userpass",
            Native::Ldap => "ldap",
            Native::Ssh => "ssh",
            Native::Postgres => "postgres",
            Native::PostgresAlternating => "postgres_alternating",
            Native::Mysql => "mysql",
            Native::Redis => "redis",
        }
    }
}

impl std::str::FromStr for Native {
    type Err = UnknownNative;

    fn from_str(name: &str) -> Result<Native, UnknownNative> {
        Native::ALL
            .into_iter()
            .find(|n| n.name() == name)
            .ok_or(UnknownNative)
    }
}

/// A type name that is not one of this build's [`Native`] types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownNative;

/// The settings a credential of a type takes (by default, none).
#[derive(Clone, Debug)]
pub enum CredentialSettings {
    /// These, checked against what a credential writes, with defaults applied.
    Declared(IndexMap<String, Setting>),
    /// Whatever a credential writes, handed on unchecked: the implementation
    /// defines its own (exec plugins). Written `credential_settings: open`.
    Open,
}

impl Default for CredentialSettings {
    fn default() -> CredentialSettings {
        CredentialSettings::Declared(IndexMap::new())
    }
}

impl CredentialSettings {
    /// The declared settings' names (none when open).
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.declared().into_iter().flat_map(IndexMap::keys)
    }

    /// A declared setting.
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.declared()?.get(name)
    }

    /// The declared settings, unless they are open.
    pub fn declared(&self) -> Option<&IndexMap<String, Setting>> {
        match self {
            CredentialSettings::Declared(settings) => Some(settings),
            CredentialSettings::Open => None,
        }
    }
}

impl Serialize for CredentialSettings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CredentialSettings::Declared(settings) => settings.serialize(s),
            CredentialSettings::Open => s.serialize_str("open"),
        }
    }
}

impl<'de> Deserialize<'de> for CredentialSettings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = CredentialSettings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of settings, or `open`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "open" => Ok(CredentialSettings::Open),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                IndexMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(CredentialSettings::Declared)
            }
        }
        d.deserialize_any(Either)
    }
}

/// What a vendor requires of rekey and what its credentials allow, from its
/// documentation; every HTTP definition states them (providers/README.md).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VendorFacts {
    /// The admin credential: which kind, which permission or scope it needs.
    pub admin: String,
    /// Which kinds of credential the definition rotates.
    pub covers: Vec<String>,
    /// Which kinds it cannot, and what to do about them.
    pub cannot: Vec<String>,
    /// How many credentials an account may hold.
    pub quota: String,
    /// Expiry rules (lifetimes, maximums).
    pub expiry: String,
    /// How long a new credential may take to work, and how verify covers it.
    pub propagation: String,
    /// The contract file (tests/contracts/<name>.json) extracted from the
    /// vendor's published API description.
    pub contract: String,
}

type Loaded = Result<Option<std::sync::Arc<http::Definition>>, String>;

/// A type's HTTP definition: checked when the catalog loads (files from
/// `--providers DIR`), or, for the shipped files, parsed on first use: start-up
/// stays quick for playbooks that use none. A unit test parses every shipped one.
#[derive(Clone, Debug, Default)]
struct HttpSlot {
    /// `(shown file name, text)` of a shipped file not yet parsed.
    source: Option<(String, std::sync::Arc<str>)>,
    loaded: OnceLock<Loaded>,
}

impl ProviderType {
    /// The validated HTTP definition, if this type has one; `Err` holds the rendered
    /// diagnostics of a broken one.
    pub fn http_definition(&self) -> Loaded {
        self.definition
            .loaded
            .get_or_init(|| match &self.definition.source {
                None => Ok(None),
                Some((file, text)) => http::load(file, text, self, false)
                    .map(|d| d.map(std::sync::Arc::new))
                    .map_err(|r| r.render(false)),
            })
            .clone()
    }
}

impl ProviderType {
    /// Whether `rekey run` can rotate this type in this build (see `available`).
    fn runnable(&self) -> bool {
        self.kind == Kind::Manual || self.http.is_some() || self.name.parse::<Native>().is_ok()
    }

    pub fn rate(&self) -> Rate {
        let r = &self.default_rate;
        // `Catalog::parse` refuses files whose rate does not resolve.
        Rate {
            per_second: r.per_second().unwrap_or(1.0),
            burst: r.burst.unwrap_or(1).clamp(1, 100_000) as u32,
        }
    }

    pub fn latency(&self) -> Duration {
        humantime::parse_duration(&self.typical_latency).unwrap_or(Duration::from_millis(100))
    }
}

/// The shipped provider catalog files, embedded at build time.
const SHIPPED: &[(&str, &str)] = &[
    ("sandbox.yaml", include_str!("../../providers/sandbox.yaml")),
    (
        "sandbox_password.yaml",
        include_str!("../../providers/sandbox_password.yaml"),
    ),
    ("manual.yaml", include_str!("../../providers/manual.yaml")),
    ("exec.yaml", include_str!("../../providers/exec.yaml")),
    (
        "postgres.yaml",
        include_str!("../../providers/postgres.yaml"),
    ),
    (
        "postgres_alternating.yaml",
        include_str!("../../providers/postgres_alternating.yaml"),
    ),
    ("mysql.yaml", include_str!("../../providers/mysql.yaml")),
    ("redis.yaml", include_str!("../../providers/redis.yaml")),
    ("aws_iam.yaml", include_str!("../../providers/aws_iam.yaml")),
    (
        "vault_approle.yaml",
        include_str!("../../providers/vault_approle.yaml"),
    ),
    (
        "vault_userpass.yaml",
        include_str!("../../providers/vault_userpass.yaml"),
    ),
    ("ldap.yaml", include_str!("../../providers/ldap.yaml")),
    ("ssh.yaml", include_str!("../../providers/ssh.yaml")),
    (
        "github_deploy_key.yaml",
        include_str!("../../providers/github_deploy_key.yaml"),
    ),
    (
        "gitlab_token.yaml",
        include_str!("../../providers/gitlab_token.yaml"),
    ),
    (
        "cloudflare_token.yaml",
        include_str!("../../providers/cloudflare_token.yaml"),
    ),
    (
        "okta_client_secret.yaml",
        include_str!("../../providers/okta_client_secret.yaml"),
    ),
    (
        "jumpcloud_user_password.yaml",
        include_str!("../../providers/jumpcloud_user_password.yaml"),
    ),
    (
        "datadog_api_key.yaml",
        include_str!("../../providers/datadog_api_key.yaml"),
    ),
    (
        "datadog_app_key.yaml",
        include_str!("../../providers/datadog_app_key.yaml"),
    ),
    (
        "sendgrid_api_key.yaml",
        include_str!("../../providers/sendgrid_api_key.yaml"),
    ),
    (
        "twilio_api_key.yaml",
        include_str!("../../providers/twilio_api_key.yaml"),
    ),
    (
        "jumpcloud_ssh_key.yaml",
        include_str!("../../providers/jumpcloud_ssh_key.yaml"),
    ),
];

/// `(path, file name, text)` of each `*.yaml` file of `dir`, sorted by name.
fn read_dir(dir: &std::path::Path) -> Result<Vec<(String, String, String)>, CatalogError> {
    let fail = |e: std::io::Error| CatalogError {
        file: dir.display().to_string(),
        message: format!("cannot read the providers directory: {e}"),
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if !name.ends_with(".yaml") || !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| CatalogError {
            file: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        out.push((path.display().to_string(), name, text));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

#[derive(Debug)]
pub struct Catalog {
    pub types: IndexMap<String, ProviderType>,
}

#[derive(Debug, thiserror::Error)]
#[error("the provider file {file} is invalid: {message}")]
pub struct CatalogError {
    pub file: String,
    pub message: String,
}

impl Catalog {
    /// The shipped catalog, plus the `*.yaml` files of `extra_dir` (`--providers
    /// DIR`): a file named like a shipped one replaces it.
    pub fn load(extra_dir: Option<&Path>) -> Result<Catalog, CatalogError> {
        let Some(dir) = extra_dir else {
            return Catalog::parse(SHIPPED);
        };
        let extra = read_dir(dir)?;
        let mut files: Vec<(&str, &str)> = SHIPPED
            .iter()
            .filter(|(name, _)| !extra.iter().any(|(_, n, _)| n == name))
            .copied()
            .collect();
        files.extend(
            extra
                .iter()
                .map(|(path, _, text)| (path.as_str(), text.as_str())),
        );
        Catalog::parse(&files)
    }

    /// Parses provider files: `(path, text)`, where a bare file name is a
    /// shipped file (shown as `providers/NAME`; its HTTP definition is parsed on
    /// first use), any other path a file of `--providers DIR` (checked now).
    pub fn parse(files: &[(&str, &str)]) -> Result<Catalog, CatalogError> {
        let mut types = IndexMap::new();
        for (path, text) in files {
            let file_name = std::path::Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(path);
            let shown = if file_name == *path {
                format!("providers/{path}")
            } else {
                path.to_string()
            };
            let file = &shown;
            let mut t: ProviderType = serde_saphyr::from_str(text).map_err(|e| CatalogError {
                file: file.to_string(),
                message: e.to_string(),
            })?;
            if t.http.is_some() {
                if file_name == *path {
                    // Shipped: checked in full by the unit tests; parsed on first use.
                    t.definition.source = Some((file.to_string(), std::sync::Arc::from(*text)));
                } else {
                    match http::load(file, text, &t, true) {
                        Ok(d) => {
                            let _ = t.definition.loaded.set(Ok(d.map(std::sync::Arc::new)));
                        }
                        Err(report) => {
                            return Err(CatalogError {
                                file: file.to_string(),
                                message: format!(
                                    "{} problem(s) in its http definition\n{}",
                                    report.errors(),
                                    report.render(false)
                                ),
                            });
                        }
                    }
                }
            }
            if format!("{}.yaml", t.name) != file_name {
                return Err(CatalogError {
                    file: file.to_string(),
                    message: format!("name `{}` does not match the file name", t.name),
                });
            }
            if t.default_rate.per_second().is_none() {
                return Err(CatalogError {
                    file: file.to_string(),
                    message: "default_rate must set exactly one positive rate".into(),
                });
            }
            if humantime::parse_duration(&t.typical_latency).is_err() {
                return Err(CatalogError {
                    file: file.to_string(),
                    message: format!("bad typical_latency `{}`", t.typical_latency),
                });
            }
            t.available = t.runnable();
            types.insert(t.name.clone(), t);
        }
        Ok(Catalog { types })
    }

    pub fn get(&self, name: &str) -> Option<&ProviderType> {
        self.types.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_catalog_parses_and_every_file_is_listed() {
        let catalog = Catalog::load(None).unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("providers");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = catalog.types.keys().map(|n| format!("{n}.yaml")).collect();
        listed.sort();
        assert_eq!(
            on_disk, listed,
            "every providers/*.yaml must be embedded in SHIPPED"
        );
        for t in catalog.types.values() {
            let rate = t.rate();
            assert!(
                rate.per_second > 0.0 && rate.per_second.is_finite(),
                "{}",
                t.name
            );
            assert!(t.default_concurrency > 0, "{}", t.name);
            match t.kind {
                Kind::Dual => assert!(t.requests.create > 0, "{}: dual kinds create", t.name),
                Kind::Single => assert!(t.requests.change > 0, "{}: single kinds change", t.name),
                Kind::Manual => {}
            }
        }
    }

    #[test]
    fn native_types_and_the_shipped_files_agree() {
        let catalog = Catalog::load(None).unwrap();
        for native in Native::ALL {
            let t = catalog
                .get(native.name())
                .unwrap_or_else(|| panic!("providers/{}.yaml is missing", native.name()));
            assert!(
                matches!(t.implementation.as_str(), "native" | "builtin") && t.http.is_none(),
                "{}: a native type's file says `implementation: native` (or builtin) and has no http section",
                t.name
            );
            assert_eq!(native.name().parse::<Native>(), Ok(native));
        }
        for t in catalog.types.values() {
            assert!(
                t.available,
                "{}: every shipped type runs in this build",
                t.name
            );
            if t.http.is_none() && t.kind != Kind::Manual {
                assert!(
                    t.name.parse::<Native>().is_ok(),
                    "{}: neither native nor http",
                    t.name
                );
            }
        }
        assert_eq!("mainframe".parse::<Native>(), Err(UnknownNative));
    }

    #[test]
    fn runnable_is_computed_whatever_a_file_says() {
        let sandbox = SHIPPED
            .iter()
            .find(|(n, _)| *n == "sandbox.yaml")
            .unwrap()
            .1;
        let renamed = sandbox.replace("name: sandbox\n", "name: mainframe\n");
        let stale = format!("{sandbox}available: false\n");
        let catalog = Catalog::parse(&[
            ("extra/mainframe.yaml", renamed.as_str()),
            ("extra/sandbox.yaml", stale.as_str()),
        ])
        .unwrap();
        assert!(!catalog.get("mainframe").unwrap().available);
        assert!(catalog.get("sandbox").unwrap().available);
    }

    #[test]
    fn credential_settings_are_a_map_or_open() {
        let exec = Catalog::load(None).unwrap().get("exec").unwrap().clone();
        assert!(exec.credential_settings.declared().is_none());
        assert_eq!(exec.credential_settings.keys().count(), 0);
        let json = serde_json::to_value(&exec).unwrap();
        assert_eq!(json["credential_settings"], "open");
        let ldap = Catalog::load(None).unwrap().get("ldap").unwrap().clone();
        assert!(ldap.credential_settings.get("dn").is_some());
        let sandbox = SHIPPED
            .iter()
            .find(|(n, _)| *n == "sandbox.yaml")
            .unwrap()
            .1;
        let wrong = sandbox.replace(
            "credential_settings:",
            "credential_settings: opn\nx_unused:",
        );
        let err = Catalog::parse(&[("extra/sandbox.yaml", wrong.as_str())]).unwrap_err();
        assert!(err.message.contains("opn"), "{}", err.message);
    }

    #[test]
    fn every_shipped_http_definition_passes_its_checks() {
        let catalog = Catalog::load(None).unwrap();
        let mut checked = 0;
        for t in catalog.types.values().filter(|t| t.http.is_some()) {
            // Shipped definitions are parsed on first use at run time: check them
            // here, in full, as a file of `--providers DIR` is checked on load.
            let text = SHIPPED
                .iter()
                .find(|(name, _)| *name == format!("{}.yaml", t.name))
                .map(|(_, text)| *text)
                .unwrap();
            if let Err(report) = http::load(&format!("providers/{}.yaml", t.name), text, t, true) {
                panic!("{}", report.render(false));
            }
            assert!(matches!(t.http_definition(), Ok(Some(_))), "{}", t.name);
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} HTTP definitions");
    }

    #[test]
    fn every_http_definition_states_what_its_vendor_requires() {
        let catalog = Catalog::load(None).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut http = 0;
        for t in catalog
            .types
            .values()
            .filter(|t| t.implementation == "http")
        {
            http += 1;
            let v = t
                .vendor
                .as_ref()
                .unwrap_or_else(|| panic!("{} has no `vendor:` facts", t.name));
            for (what, text) in [
                ("admin", &v.admin),
                ("quota", &v.quota),
                ("expiry", &v.expiry),
                ("propagation", &v.propagation),
            ] {
                assert!(
                    !text.trim().is_empty(),
                    "{}: vendor.{what} is empty",
                    t.name
                );
            }
            assert!(!v.covers.is_empty(), "{}: vendor.covers", t.name);
            assert!(!v.cannot.is_empty(), "{}: vendor.cannot", t.name);
            let contract = root
                .join("tests/contracts")
                .join(format!("{}.json", v.contract));
            assert!(contract.is_file(), "{}: no {}", t.name, contract.display());
        }
        assert_eq!(http, 10, "the ten shipped HTTP definitions");
    }
}
