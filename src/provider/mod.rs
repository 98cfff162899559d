//! Providers: the systems that issue credentials. `catalog` describes every type
//! (from `providers/*.yaml`); `Provider` is the contract the engine drives; one
//! folder per implementation; `registry` maps a playbook's instances to them.
//! The engine never names a concrete provider.

pub mod admin;
pub mod aws_iam;
/// `crate::catalog`, where the engine still imports `Kind` from.
pub use crate::catalog;
pub mod exec;
pub mod http;
pub mod ldap;
pub mod manual;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod registry;
pub mod sandbox;
pub mod settings;
pub mod ssh;
pub mod vault_approle;
mod vault_http;
pub mod vault_userpass;

use crate::secret::Secret;
use async_trait::async_trait;
use indexmap::IndexMap;
use std::collections::BTreeMap;
use std::time::Duration;

/// What went wrong at a provider, classified so the engine can decide: retry with
/// backoff, slow the whole instance down, or give up. Messages never hold secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying: timeouts, 5xx, connection resets, eventual consistency.
    #[error("{0}")]
    Transient(String),
    /// The provider asked us to slow down (429, throttling), maybe saying for how long.
    #[error("rate limited{}: {message}", retry_after.map(|d| format!(" (retry after {:.1}s)", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// Retrying will not help: bad admin credential, missing account, full quota.
    #[error("{0}")]
    Fatal(String),
}

impl ProviderError {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Transient(_) => "transient",
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Fatal(_) => "fatal",
        }
    }
}

/// The credential a call is about.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The playbook's credential id.
    pub credential: &'a str,
    pub account: Option<&'a str>,
    /// Per-credential settings, with the catalog's defaults applied.
    pub settings: &'a IndexMap<String, serde_json::Value>,
}

/// A key as the provider lists it (dual kinds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub active: bool,
    /// Seconds since the Unix epoch, when the provider says.
    pub created_at: Option<u64>,
    /// The name or description rekey gave the key at creation, when the provider
    /// keeps one: how resume recognises an orphan it created.
    pub tag: Option<String>,
}

/// When a key was last used, as the provider reports it (`rekey watch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastUse {
    /// Last used at this time (seconds since the Unix epoch).
    At(u64),
    /// The provider says the key was never used.
    Never,
    /// The provider no longer knows the key (deleted): it cannot be used.
    Gone,
    /// This provider cannot tell, and why.
    Unknown(String),
}

/// What a provider's rate-limit headers said on its latest answer (GitHub's
/// `X-RateLimit-Remaining` and `X-RateLimit-Reset`, Okta's `X-Rate-Limit-*`,
/// Cloudflare's `Ratelimit`...): requests left in the current window and when it
/// resets. The engine slows the instance down before the provider has to refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHint {
    pub remaining: u64,
    pub reset_in: Duration,
}

/// A newly issued key: its id (not secret) and its value (secret).
#[derive(Debug)]
pub struct Issued {
    pub key_id: String,
    pub secret: Secret,
    /// Non-secret fields consumers need beside the value, written to Vault with
    /// it (staging and the consumers' path) over the engine's own (`account`):
    /// the user name of a credential whose login name changes with the key
    /// (`postgres_alternating`). Empty for most providers; never `key_id` (it
    /// would no longer match the key) nor a secret.
    pub fields: BTreeMap<String, String>,
}

impl Issued {
    /// A key with no extra fields.
    pub fn new(key_id: String, secret: Secret) -> Issued {
        Issued {
            key_id,
            secret,
            fields: BTreeMap::new(),
        }
    }
}

/// What `end_sessions` did (breach mode, once the old credential is dead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionsEnded {
    /// The sessions and connections opened with the credential were ended: how
    /// many (0 when none was open). rekey's own are never among them.
    Ended { count: u64 },
    /// This provider cannot end them, and why. Not an error: the rotation stands,
    /// and the run warns with what a human can do (`end_sessions_by_hand`).
    Unsupported { reason: String },
}

/// The contract every provider implements, for one kind of credential. Dual kinds
/// implement `create`/`deactivate`/`revoke`/`list`; single kinds `change`. Every
/// method is one logical operation; the engine owns retries, backoff and limits.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Whether `create` itself retires the old value (GitLab's rotate, Cloudflare's
    /// roll): then a failed rotation cannot be undone by deleting the new key, and
    /// the new value must be kept.
    fn replaces_old_on_create(&self) -> bool {
        false
    }

    /// Whether `create` reuses one of a fixed set of keys (two roles taking
    /// turns) instead of adding one: no room has to be made for it.
    fn reuses_keys(&self) -> bool {
        false
    }

    /// Whether `list` can tell which keys an account holds (dual kinds). Without
    /// it, a rotation cannot confirm that no old key is left: it ends quarantined.
    fn lists_keys(&self) -> bool {
        true
    }

    /// The provider's rate-limit headers on its latest answer, where it sends them.
    fn rate_hint(&self) -> Option<RateHint> {
        None
    }

    /// Read-only checks for `rekey plan`: admin credential works, account exists,
    /// quota has room.
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError>;

    /// The account's keys (dual kinds), to check the quota and find orphans.
    async fn list(&self, target: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        let _ = target;
        Err(ProviderError::Fatal(
            "this provider cannot list keys".into(),
        ))
    }

    /// Whether `list_accounts` can name the accounts of the instance (`rekey
    /// discover`).
    fn lists_accounts(&self) -> bool {
        false
    }

    /// The accounts (users) of the instance whose keys `list` can then list,
    /// for `rekey discover`. Read-only.
    async fn list_accounts(&self) -> Result<Vec<String>, ProviderError> {
        Err(ProviderError::Fatal(
            "this provider cannot list accounts".into(),
        ))
    }

    /// When `key_id` was last used, for `rekey watch`: a retired key used after
    /// its retirement means someone still holds it. Read-only; the default
    /// cannot tell.
    async fn last_used(&self, target: Target<'_>, key_id: &str) -> Result<LastUse, ProviderError> {
        let _ = (target, key_id);
        Ok(LastUse::Unknown(
            "this provider does not report when a key was last used".into(),
        ))
    }

    /// Issues a new key, named with `tag` where the provider keeps names (dual kinds).
    async fn create(&self, target: Target<'_>, tag: &str) -> Result<Issued, ProviderError> {
        let _ = (target, tag);
        Err(ProviderError::Fatal(
            "this provider cannot create keys".into(),
        ))
    }

    /// Issues a new key to replace `old_key` (the key Vault names, when rekey
    /// knows it), so that the provider can give the new key what the old one was
    /// allowed to do (its scopes). Defaults to `create`.
    async fn create_replacing(
        &self,
        target: Target<'_>,
        tag: &str,
        old_key: Option<&str>,
    ) -> Result<Issued, ProviderError> {
        let _ = old_key;
        self.create(target, tag).await
    }

    /// Sets a new value in place (single kinds).
    async fn change(&self, target: Target<'_>, new: &Secret) -> Result<(), ProviderError> {
        let _ = (target, new);
        Err(ProviderError::Fatal(
            "this provider cannot change values in place".into(),
        ))
    }

    /// Authenticates with `secret` (and `key_id` for dual kinds). `Ok(false)` means
    /// the provider answered and refused it.
    async fn verify(
        &self,
        target: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError>;

    /// Makes a key stop working without deleting it, where the provider can.
    async fn deactivate(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let _ = (target, key_id);
        Ok(())
    }

    /// Deletes a key for good (dual kinds).
    async fn revoke(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let _ = (target, key_id);
        Err(ProviderError::Fatal(
            "this provider cannot revoke keys".into(),
        ))
    }

    /// Whether a login with this provider's credentials opens a session that
    /// outlives the credential (a database or cache connection, an SSH login, an
    /// LDAP bind), so that breach mode must end it or say it cannot. `false`:
    /// every request carries the credential (API keys), nothing to end.
    fn has_sessions(&self) -> bool {
        false
    }

    /// Breach mode, after the old credential is dead (a single kind's change, a
    /// dual kind's `retired` keys revoked): ends the account's sessions and
    /// connections, never rekey's own. Safe to repeat.
    async fn end_sessions(
        &self,
        target: Target<'_>,
        retired: &[&str],
    ) -> Result<SessionsEnded, ProviderError> {
        let _ = (target, retired);
        Ok(SessionsEnded::Unsupported {
            reason: "this provider cannot end sessions".into(),
        })
    }

    /// What a human does to end those sessions when rekey cannot, or could not:
    /// the exact command where there is one. Holds no secret.
    fn end_sessions_by_hand(&self, target: Target<'_>, retired: &[&str]) -> String {
        let _ = retired;
        format!(
            "end the sessions of `{}` at the provider by hand",
            target.account.unwrap_or(target.credential)
        )
    }

    /// Read-only check for `plan --live` in breach mode: may the admin end
    /// sessions? `Ok(Some(what))` says what was checked; `Ok(None)`: nothing to check.
    async fn preflight_end_sessions(
        &self,
        target: Target<'_>,
    ) -> Result<Option<String>, ProviderError> {
        let _ = target;
        Ok(None)
    }
}
