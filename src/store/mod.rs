//! Where new values live: a KV version 2 secret store (Vault or OpenBao).
//!
//! The rotation engine stages every new value here before anything else happens
//! (the store is its write-ahead log), then promotes it to the consumers' path with
//! check-and-set so that a value changed out of band is never overwritten.
//! [`SecretStore`] is what the engine sees; [`VaultStore`] is the real thing.
//!
//! Invariant: no [`StoreError`] message ever holds a secret value or a token. Messages
//! are built here from status codes and the paths involved, never from the text of a
//! client-library error (those can echo request and response bodies).

pub mod answer;
pub mod memory;
mod vault;

pub use memory::MemoryStore;
pub use vault::{VaultConfig, VaultLogin, VaultStore};

/// What the store knows about a path without reading its value: the current
/// version, when it was written, and the path's custom metadata. Ages of
/// credentials come from here (`hygiene::age`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// 0 when nothing was ever written.
    pub current_version: u64,
    /// When the current version was written, in seconds since the Unix epoch,
    /// when the store says (Vault's `created_time`).
    pub current_created: Option<u64>,
    /// The current version is soft-deleted or destroyed.
    pub current_deleted: bool,
    pub custom_metadata: BTreeMap<String, String>,
}

use crate::secret::Secret;
use std::collections::BTreeMap;

/// One KV entry as rekey sees it: the secret under `value`, plus the non-secret
/// fields stored beside it (e.g. `key_id`, `account`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The entry's current version: the one a check-and-set write must name.
    /// 0 when nothing was ever written (or everything was deleted with its metadata).
    pub version: u64,
    /// `data["value"]`; `None` when the path is absent, when the current version is
    /// soft-deleted or destroyed, or when the entry has no `value` field.
    pub value: Option<Secret>,
    /// Every other field of the entry's data. Each is a string: rekey refuses to read
    /// entries with other kinds of values, because writing the entry back (which
    /// rotation does) would otherwise lose or retype them.
    pub fields: BTreeMap<String, String>,
    /// The path's custom metadata (rekey records the credential, playbook and
    /// provider instance that own the path there).
    pub custom_metadata: BTreeMap<String, String>,
}

/// A KV version 2 store. Paths are relative to the store's mount (`app/db`, not
/// `secret/data/app/db`).
#[async_trait::async_trait]
pub trait SecretStore: Send + Sync {
    /// The current version at `path`. Version 0 and no value when the path is absent;
    /// when the latest version is soft-deleted or destroyed, its version number and no
    /// value (a write must still name that version).
    async fn read(&self, path: &str) -> Result<Entry, StoreError>;

    /// The path's metadata, without its value. The default reads the entry and
    /// knows no creation time (the in-memory store); Vault reads only the
    /// metadata endpoint.
    async fn metadata(&self, path: &str) -> Result<Metadata, StoreError> {
        let entry = self.read(path).await?;
        Ok(Metadata {
            current_version: entry.version,
            current_created: None,
            current_deleted: entry.version > 0 && entry.value.is_none() && entry.fields.is_empty(),
            custom_metadata: entry.custom_metadata,
        })
    }

    /// At most `limit` keys directly under `prefix` that sort after `after`
    /// (folders end with `/`), for walks that must stay bounded. The default
    /// lists everything and cuts; OpenBao pages on the server (`after`, `limit`).
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut keys = self.list(prefix).await?;
        keys.retain(|k| after.is_none_or(|a| k.as_str() > a));
        keys.truncate(limit);
        Ok(keys)
    }

    /// The value of one older version (for rollback). `None` when that version was
    /// deleted or destroyed, never existed, or is version 0.
    async fn read_version(&self, path: &str, version: u64) -> Result<Option<Secret>, StoreError>;

    /// Writes `{"value": value, ...fields}` only if the current version is `cas`
    /// (0: only if the path does not exist yet). Returns the new version. A version
    /// mismatch is [`StoreError::CasConflict`] and writes nothing, unless version
    /// `cas + 1` already holds exactly this entry (an earlier attempt whose answer
    /// was lost): then that version is returned, so retrying a write is safe.
    async fn write_cas(
        &self,
        path: &str,
        value: &Secret,
        fields: &BTreeMap<String, String>,
        cas: u64,
    ) -> Result<u64, StoreError>;

    /// Sets these custom metadata keys on `path`, keeping the keys it does not name
    /// (other teams annotate their secrets too).
    async fn set_metadata(
        &self,
        path: &str,
        custom: &BTreeMap<String, String>,
    ) -> Result<(), StoreError>;

    /// Deletes every version of `path` and its metadata (used for staging entries).
    /// An absent path is not an error.
    async fn delete_all(&self, path: &str) -> Result<(), StoreError>;

    /// The keys directly under `prefix`, sorted; folders end with `/`. Empty when
    /// nothing is there. `""` lists the top of the mount.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Read-only checks for `rekey plan`: the server answers and is unsealed, the
    /// token is accepted, and the mount is KV version 2.
    async fn preflight(&self) -> Result<(), StoreError>;

    /// Whether the token may do what a run does, checked before it touches
    /// anything: read and write each of `paths` (the consumers' paths), and write
    /// and delete under `staging_prefix`. `Unauthorized` names what is missing. A
    /// store with no policies to ask (the in-memory one) allows everything.
    async fn check_access(&self, paths: &[String], staging_prefix: &str) -> Result<(), StoreError> {
        let _ = (paths, staging_prefix);
        Ok(())
    }
}

/// What went wrong talking to the store. Every message names the path (or the
/// server) and says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The entry's current version is not the one the write named: someone changed
    /// it out of band. `path` includes the mount (`secret/app/db`).
    #[error(
        "`{path}` is no longer at version {expected}: it was changed outside this rotation, so rekey did not overwrite it; find out who changed it and why, then plan again"
    )]
    CasConflict { path: String, expected: u64 },
    /// 401 or 403: a wrong, expired or revoked token, or a policy that does not allow
    /// the operation. Not worth retrying with the same token.
    #[error("{0}")]
    Unauthorized(String),
    /// The server could not be reached or could not answer now (connection refused,
    /// timeout, sealed, 5xx, rate limited). Worth retrying later.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: a bad path or mount, a misconfigured client, an answer rekey
    /// cannot read. Retrying will not help.
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether the same call may succeed later without anyone changing anything; the
    /// engine retries only these (with its own backoff and budget).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_transient() {
        assert!(StoreError::Unavailable("x".into()).is_transient());
        assert!(!StoreError::Unauthorized("x".into()).is_transient());
        assert!(!StoreError::Invalid("x".into()).is_transient());
        assert!(
            !StoreError::CasConflict {
                path: "secret/a".into(),
                expected: 3
            }
            .is_transient()
        );
    }

    #[test]
    fn a_cas_conflict_names_the_path_and_the_version() {
        let message = StoreError::CasConflict {
            path: "secret/app/db".into(),
            expected: 3,
        }
        .to_string();
        assert!(
            message.contains("`secret/app/db`") && message.contains("version 3"),
            "{message}"
        );
    }
}
