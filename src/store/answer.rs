//! How [`VaultStore`](super::VaultStore) reads Vault's answers, as pure functions
//! over the bytes or the types vaultrs parses them into, so that fuzzing
//! (`fuzz/fuzz_targets/vault_answer.rs`) and the property tests
//! (`tests/it/answer_props.rs`) reach every reader without a server.
//!
//! KV reads go through vaultrs, which parses a body into `EndpointResult<T>` with
//! `serde_json::from_slice` and keeps its `data` (`vaultrs::api::exec_with_result`);
//! [`read_answer`] and [`metadata_answer`] do exactly that, then what `read` does
//! with the result. The other three answers are read by rekey itself.
//!
//! Invariant: nothing here puts a value from an answer into a message except field
//! names and the kind of a JSON value (never a value: the entry's fields may be
//! secret).

use super::Entry;
use crate::secret::Secret;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use vaultrs::api::EndpointResult;
use vaultrs::api::kv2::responses::{ReadSecretMetadataResponse, ReadSecretResponse};

/// Why an answer could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Unread {
    /// Not the JSON of the expected shape (a proxy's page, a truncated body, another
    /// server): described by the store with its address, never quoted.
    Unreadable,
    /// A KV version whose data rekey cannot carry across a rotation.
    BadEntry(BadEntry),
}

/// A version's data that is not an object of string fields.
#[derive(Debug, PartialEq, Eq)]
pub enum BadEntry {
    NotAnObject,
    /// Field `key` holds a JSON value of this kind ("a number", "a list", ...).
    NotAString {
        key: String,
        kind: &'static str,
    },
}

impl BadEntry {
    /// The message for the operator, or `None` when the answer is simply unreadable.
    /// Only the field's name and the value's kind are named: the field may be secret.
    pub fn message(&self, target: &str, version: u64) -> Option<String> {
        match self {
            BadEntry::NotAnObject => None,
            BadEntry::NotAString { key, kind } => Some(format!(
                "field `{key}` of `{target}` (version {version}) is {kind}, not a string: rekey writes the whole entry back when it rotates and only carries string fields across; store it as a string"
            )),
        }
    }
}

/// The body of a 200 answer to `GET <mount>/data/<path>` (the latest version, or
/// `?version=N`), as `read` and `read_version` see it.
pub fn read_answer(body: &[u8]) -> Result<Entry, Unread> {
    let answer = serde_json::from_slice::<EndpointResult<ReadSecretResponse>>(body)
        .ok()
        .and_then(|r| r.data)
        .ok_or(Unread::Unreadable)?;
    entry_from_data(
        answer.data,
        answer.metadata.version,
        answer.metadata.custom_metadata,
    )
    .map_err(Unread::BadEntry)
}

/// Builds an [`Entry`] from a version's data, taking strings out of the JSON without
/// copying them (the value goes straight into a `Secret`).
pub fn entry_from_data(
    data: Value,
    version: u64,
    custom_metadata: Option<HashMap<String, String>>,
) -> Result<Entry, BadEntry> {
    let Value::Object(data) = data else {
        return Err(BadEntry::NotAnObject);
    };
    let mut entry = Entry {
        version,
        value: None,
        fields: BTreeMap::new(),
        custom_metadata: custom_metadata.unwrap_or_default().into_iter().collect(),
    };
    for (key, field) in data {
        match (key.as_str(), field) {
            ("value", Value::String(value)) => entry.value = Some(Secret::new(value)),
            ("value", Value::Null) => {}
            (_, Value::String(field)) => {
                entry.fields.insert(key, field);
            }
            (_, other) => {
                return Err(BadEntry::NotAString {
                    key,
                    kind: json_kind(&other),
                });
            }
        }
    }
    Ok(entry)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The body of a 200 answer to `GET <mount>/metadata/<path>`, read after the data
/// read answered 404 for a deleted version: `Some` entry (its version number, no
/// value) when the current version is soft-deleted or destroyed, `None` when it is
/// live (a write landed in between; `read` reads again).
pub fn metadata_answer(body: &[u8]) -> Result<Option<Entry>, Unread> {
    let metadata = serde_json::from_slice::<EndpointResult<ReadSecretMetadataResponse>>(body)
        .ok()
        .and_then(|r| r.data)
        .ok_or(Unread::Unreadable)?;
    Ok(deleted_latest(metadata))
}

/// See [`metadata_answer`].
pub fn deleted_latest(metadata: ReadSecretMetadataResponse) -> Option<Entry> {
    let current = metadata.versions.get(&metadata.current_version.to_string());
    current
        .is_some_and(|v| v.destroyed || !v.deletion_time.is_empty())
        .then(|| Entry {
            version: metadata.current_version,
            value: None,
            fields: BTreeMap::new(),
            custom_metadata: metadata
                .custom_metadata
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
}

/// What the mount check reads from `sys/internal/ui/mounts/<mount>`.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mount's path, without its trailing `/`.
    pub path: String,
    /// The engine type (`kv` for a KV mount).
    pub kind: String,
    /// The KV version: `options.version`, "1" when unset (as Vault reads it).
    pub version: String,
}

/// The body of a 200 answer to `GET sys/internal/ui/mounts/<mount>`.
pub fn mount_answer(body: &[u8]) -> Option<Mount> {
    #[derive(Deserialize)]
    struct Answer {
        data: MountInfo,
    }
    #[derive(Deserialize)]
    struct MountInfo {
        #[serde(rename = "type")]
        kind: String,
        path: String,
        #[serde(default)]
        options: Option<HashMap<String, String>>,
    }
    let info = serde_json::from_slice::<Answer>(body).ok()?.data;
    let version = info
        .options
        .as_ref()
        .and_then(|o| o.get("version"))
        .map_or("1", String::as_str)
        .to_owned();
    Some(Mount {
        path: info.path.trim_end_matches('/').to_owned(),
        kind: info.kind,
        version,
    })
}

/// The server's version from a `sys/health` answer, for the log.
pub fn health_version(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("version")?
        .as_str()
        .map(str::to_owned)
}

/// The token's entity id and display name from a `auth/token/lookup-self` answer
/// (empty strings count as absent). Only those two fields are read: the answer also
/// holds the token.
pub fn identity_answer(body: &[u8]) -> Option<(Option<String>, Option<String>)> {
    #[derive(Deserialize)]
    struct Data {
        entity_id: Option<String>,
        display_name: Option<String>,
    }
    #[derive(Deserialize)]
    struct Answer {
        data: Data,
    }
    let parsed: Answer = serde_json::from_slice(body).ok()?;
    let keep = |s: Option<String>| s.filter(|s| !s.is_empty());
    Some((keep(parsed.data.entity_id), keep(parsed.data.display_name)))
}
