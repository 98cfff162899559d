//! The exec plugin wire format, version 1 (docs/exec-protocol.md): one JSON object
//! per line, tagged by `type`. Messages of a kind this rekey does not know parse as
//! `Unknown` and are skipped, so a newer plugin can add kinds without breaking it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Protocol versions this rekey speaks, newest first.
pub const VERSIONS: &[u32] = &[1];

/// A message from the plugin.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromPlugin {
    /// The answer to rekey's hello: the version the plugin chose.
    Hello {
        protocol_version: u32,
        #[serde(default)]
        name: Option<String>,
    },
    /// The answer to request `id`: `result` on success, `error` otherwise.
    Response {
        id: u64,
        #[serde(default)]
        result: Option<Value>,
        #[serde(default)]
        error: Option<WireError>,
    },
    /// Any other `type`: skipped (with a debug log line).
    #[serde(other)]
    Unknown,
}

/// An error the plugin reports, classified like every provider error.
#[derive(Debug, Deserialize)]
pub struct WireError {
    pub kind: ErrorKind,
    #[serde(default)]
    pub message: String,
    /// For `rate_limited`: how long to wait, when the system said.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Transient,
    RateLimited,
    Fatal,
    /// A kind this rekey does not know: treated as fatal (never retried blindly).
    #[serde(other)]
    Unknown,
}

/// rekey's hello: the versions it speaks and, when the playbook names one, the
/// provider's admin credential (secrets travel only inside the protocol).
#[derive(Debug, Serialize)]
pub struct Hello<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub protocol_versions: &'static [u32],
    pub rekey_version: &'static str,
    pub instance: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<std::collections::BTreeMap<&'a str, &'a str>>,
}

/// The result of `create`.
#[derive(Debug, Deserialize)]
pub struct Created {
    pub key_id: String,
    pub secret: String,
}

/// The result of `list`.
#[derive(Debug, Deserialize)]
pub struct Listed {
    pub keys: Vec<ListedKey>,
}

#[derive(Debug, Deserialize)]
pub struct ListedKey {
    pub id: String,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub created_at: Option<u64>,
    #[serde(default)]
    pub tag: Option<String>,
}

fn yes() -> bool {
    true
}

/// The result of `verify`.
#[derive(Debug, Deserialize)]
pub struct Verified {
    pub valid: bool,
}

/// What was wrong with a plugin's JSON text, in rekey's words only: the error kind,
/// the field names and the expected types of rekey's own message types. serde's
/// data errors also quote the value they met (`invalid type: string "…"`), which
/// may be a secret (a plugin that put its new key where a boolean goes): that part
/// is never kept.
pub fn describe_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => "not JSON".into(),
        Category::Io => "unreadable".into(),
        Category::Data => {
            let text = e.to_string();
            let text = text.split(" at line ").next().unwrap_or(&text);
            // serde writes the value it met before the last `, expected `; the value
            // may itself hold `, expected ` (found by fuzzing), so split at the last.
            let (what, expected) = match text.rsplit_once(", expected ") {
                Some((what, expected)) => (what, Some(expected)),
                None => (text, None),
            };
            // `missing field `key_id``, `duplicate field `id``: names from rekey's
            // own types. Anything else is cut where serde starts quoting the input.
            let what =
                if what.starts_with("missing field `") || what.starts_with("duplicate field `") {
                    what
                } else {
                    what.split(['`', '"', ':'])
                        .next()
                        .unwrap_or_default()
                        .trim_end()
                };
            match expected {
                Some(expected) => format!("{what}, expected {expected}"),
                None => what.to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_message_and_error_kinds_parse_as_fallbacks() {
        let m: FromPlugin = serde_json::from_str(r#"{"type":"progress","percent":50}"#).unwrap();
        assert!(matches!(m, FromPlugin::Unknown));
        let m: FromPlugin = serde_json::from_str(
            r#"{"type":"response","id":3,"error":{"kind":"meltdown","message":"x"},"extra":1}"#,
        )
        .unwrap();
        match m {
            FromPlugin::Response {
                id: 3,
                error: Some(e),
                ..
            } => assert!(matches!(e.kind, ErrorKind::Unknown)),
            other => panic!("{other:?}"),
        }
        assert!(serde_json::from_str::<FromPlugin>(r#"{"no_type":1}"#).is_err());
    }
}
