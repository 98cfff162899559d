//! The playbook as written: plain serde types, one per YAML block.
//!
//! These types are the source of the JSON Schema (`rekey schema`), so their doc
//! comments are what an editor shows while completing a playbook. Values that need
//! parsing (durations, rates) stay strings here; `validate` turns them into
//! `Playbook` and reports every mistake with its position.

use crate::doc::rate::{DurationText, RawRate};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A rekey playbook: the credentials to rotate after a provider is compromised.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rekey playbook")]
pub struct RawPlaybook {
    /// Editor hint: the URL or path of the JSON Schema (`rekey schema`). Ignored by rekey.
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Playbook language version. This rekey reads version 1.
    pub version: i64,
    /// Short name, used in run records and reports (e.g. `idp-breach-2023-07`).
    pub name: String,
    /// What this playbook is for.
    #[serde(default)]
    pub description: Option<String>,
    /// The incident this playbook responds to.
    #[serde(default)]
    pub incident: Option<RawIncident>,
    /// Where new values are stored and consumers read them.
    pub vault: RawVault,
    /// Defaults for every credential; each credential may override them.
    #[serde(default)]
    pub defaults: Option<RawDefaults>,
    /// Named provider instances: a system that issues credentials, with its own
    /// settings, admin credential and rate limit.
    #[serde(default)]
    pub providers: IndexMap<String, RawProvider>,
    /// The credentials to rotate.
    pub credentials: Vec<RawCredential>,
    /// Webhooks told about the run: its start and end, each quarantine, each
    /// credential awaiting an operator, and (from `rekey watch`) a retired key
    /// used again. A failed notification never fails or slows the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<RawNotify>,
}

/// A webhook (generic JSON or Slack-compatible). Its URL is given by `url`, or,
/// when the URL is itself a credential (Slack's are), by `url_env`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// What messages call this webhook (they never show its URL). Default `webhook N`.
    #[serde(default)]
    pub name: Option<String>,
    /// `json` (default): rekey's event document. `slack`: `{"text": ...}` for
    /// Slack-compatible incoming webhooks.
    #[serde(default)]
    pub format: Option<String>,
    /// The URL: https, or plain http to a loopback address.
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding the URL, when the URL is a credential.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The environment variable holding the `Authorization` header's value
    /// (e.g. `Bearer <token>`).
    #[serde(default)]
    pub authorization_env: Option<String>,
    /// `run_start`, `run_end`, `quarantined`, `awaiting_operator`,
    /// `retired_key_used`. Default: all of them.
    #[serde(default)]
    pub events: Vec<String>,
}

/// The incident: which providers are compromised and how urgent the rotation is.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIncident {
    /// Ticket or incident id (e.g. `INC-0627`), copied into run records.
    #[serde(default)]
    pub id: Option<String>,
    /// Names of the compromised systems (matched against credentials' `tied_to`).
    #[serde(default)]
    pub compromised: Vec<String>,
    /// `breach`: old values are treated as known to the attacker (no grace period,
    /// never restored on rollback). `routine`: hygiene rotation, grace periods apply.
    #[serde(default)]
    pub mode: Option<Mode>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Breach,
    Routine,
}

/// Vault or OpenBao settings. Secrets (the token, the AppRole secret-id) are read
/// from the environment variables named here, never written in the playbook.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVault {
    /// Address, e.g. `https://vault.example.com:8200` or `${VAULT_ADDR}`.
    pub address: String,
    /// Mount path of the KV version 2 engine holding consumers' secrets.
    #[serde(default)]
    pub mount: Option<String>,
    /// Path prefix (inside the mount) where new values are staged before promotion.
    /// Must not overlap any credential's `vault_path`. Default `rekey/staging`.
    #[serde(default)]
    pub staging_prefix: Option<String>,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// PEM file with the CA that signed Vault's certificate (TLS is always verified).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// How rekey logs in to Vault. Default: a token from `VAULT_TOKEN`.
    #[serde(default)]
    pub auth: Option<RawVaultAuth>,
}

/// Vault login. `method: token` reads the token from `token_env`; `method: approle`
/// logs in with `role_id` and the secret-id read from `secret_id_env`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVaultAuth {
    /// `token` or `approle`.
    pub method: String,
    /// Environment variable holding the token (method `token`). Default `VAULT_TOKEN`.
    #[serde(default)]
    pub token_env: Option<String>,
    /// AppRole role-id (method `approle`); not a secret.
    #[serde(default)]
    pub role_id: Option<String>,
    /// Environment variable holding the AppRole secret-id. Default `VAULT_SECRET_ID`.
    #[serde(default)]
    pub secret_id_env: Option<String>,
    /// Mount path of the AppRole auth method. Default `approle`.
    #[serde(default)]
    pub mount: Option<String>,
}

/// Defaults applied to every credential unless it overrides them.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Log in with the new credential before retiring the old one. Default `true`.
    #[serde(default)]
    pub verify: Option<bool>,
    /// How long the old credential stays valid after the new one is promoted
    /// (e.g. `0s`, `15m`, `24h`). Ignored in breach mode, where it is always zero.
    #[serde(default)]
    pub grace: Option<DurationText>,
    /// How many credentials rotate at once across all providers. Default 8.
    #[serde(default)]
    pub concurrency: Option<i64>,
    /// Rotate only credentials older than this (e.g. `90d`); for hygiene runs.
    #[serde(default)]
    pub max_age: Option<DurationText>,
    /// How new passwords are generated.
    #[serde(default)]
    pub password: Option<RawPasswordPolicy>,
}

/// Generated password policy (for single-kind credentials such as database passwords).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPasswordPolicy {
    /// Length in characters. Default 32, at least 16.
    #[serde(default)]
    pub length: Option<i64>,
    /// Characters to draw from. Default: ASCII letters and digits.
    #[serde(default)]
    pub alphabet: Option<String>,
}

/// A provider instance: one system that issues credentials of one type.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Provider type, e.g. `postgres`, `aws_iam`, `redis` (`rekey providers` lists them).
    #[serde(rename = "type")]
    pub kind: String,
    /// What this instance is.
    #[serde(default)]
    pub description: Option<String>,
    /// Type-specific settings (host, port, base URL...); see `providers/<type>.yaml`.
    #[serde(default)]
    pub settings: IndexMap<String, serde_json::Value>,
    /// Where rekey finds the admin credential it rotates with.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// Request rate limit for this instance, shared by all its credentials.
    /// Default: the provider type's documented limit.
    #[serde(default)]
    pub rate: Option<RawRate>,
    /// How many of this instance's credentials rotate at once.
    #[serde(default)]
    pub concurrency: Option<i64>,
    /// The network zone this instance is reachable from (letters, digits, `-`,
    /// `_`, `.`; default `default`). On a shared journal, `rekey runner --zone Z`
    /// rotates only the credentials of zone Z's instances.
    #[serde(default)]
    pub zone: Option<String>,
}

/// Where the provider's admin credential comes from: a Vault KV path or an
/// environment variable. Never the value itself.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// KV path (inside the mount) holding the admin credential.
    #[serde(default)]
    pub vault_path: Option<String>,
    /// Environment variable holding the admin credential.
    #[serde(default)]
    pub env: Option<String>,
}

/// One credential to rotate.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    /// Unique id (letters, digits, `-`, `_`, `.`), used in journals and `--only`.
    pub id: String,
    /// Name of a provider instance from `providers`, or `manual` for a step an
    /// operator performs by hand.
    pub provider: String,
    /// The account, user, role or key selector at the provider.
    #[serde(default)]
    pub account: Option<String>,
    /// KV path (inside the mount) where consumers read this credential.
    pub vault_path: String,
    /// What this credential is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Labels for `--tag` selection (e.g. `tier0`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Systems this credential is reachable from (matched by `--compromised`).
    #[serde(default)]
    pub tied_to: Vec<String>,
    /// Credentials that must be rotated before this one.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Overrides `defaults.verify`.
    #[serde(default)]
    pub verify: Option<bool>,
    /// Overrides `defaults.grace`.
    #[serde(default)]
    pub grace: Option<DurationText>,
    /// Overrides `defaults.max_age`.
    #[serde(default)]
    pub max_age: Option<DurationText>,
    /// Overrides `defaults.password`.
    #[serde(default)]
    pub password: Option<RawPasswordPolicy>,
    /// Type-specific settings for this credential; see `providers/<type>.yaml`.
    #[serde(default)]
    pub settings: IndexMap<String, serde_json::Value>,
    /// For `provider: manual`: what the operator must do.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Dual kinds, breach mode: key ids at the provider that the rotation must not
    /// retire (a key of the same account used by something else, known safe).
    /// Every other key that exists before the run is retired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
    /// More places the new value is pushed to once promoted (other Vault paths,
    /// files, GitHub Actions secrets), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<RawSink>,
}

/// A propagation sink: where a promoted value is copied. `type` says which; each
/// type reads only its own fields.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// `vault` (another KV path, check-and-set), `file` (written atomically, mode
    /// 0600) or `github` (a GitHub Actions repository or environment secret).
    #[serde(rename = "type")]
    pub kind: String,
    /// `vault`: KV path inside the mount. `file`: the file to write.
    #[serde(default)]
    pub path: Option<String>,
    /// `file`: command run after each write, as a list (`[systemctl, reload, app]`);
    /// no shell, and the value is never in its arguments or environment.
    #[serde(default)]
    pub reload: Option<Vec<String>>,
    /// `github`: the repository, `owner/name`.
    #[serde(default)]
    pub repository: Option<String>,
    /// `github`: an environment of the repository (environment secret); without
    /// it, a repository secret.
    #[serde(default)]
    pub environment: Option<String>,
    /// `github`: the secret's name (letters, digits, `_`; not starting with `GITHUB_`).
    #[serde(default)]
    pub secret_name: Option<String>,
    /// `github`: where the API token is (a Vault KV path or an environment
    /// variable, like a provider's admin credential); needs write access to secrets.
    #[serde(default)]
    pub token: Option<RawAdmin>,
    /// `github`: API base URL. Default `https://api.github.com` (GitHub Enterprise
    /// Server: `https://HOST/api/v3`).
    #[serde(default)]
    pub base_url: Option<String>,
}
