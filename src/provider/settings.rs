//! Reading a native provider instance's settings: the same text, host, port and
//! duration rules for every provider, with errors prefixed by the instance.

use super::ProviderError;
use indexmap::IndexMap;
use serde_json::Value;
use std::time::Duration;

pub struct Settings<'a> {
    /// `"<type> instance `<name>`"`, the prefix of every error.
    what: String,
    settings: &'a IndexMap<String, Value>,
}

impl<'a> Settings<'a> {
    pub fn new(type_name: &str, instance: &str, settings: &'a IndexMap<String, Value>) -> Self {
        Settings {
            what: format!("{type_name} instance `{instance}`"),
            settings,
        }
    }

    /// A fatal error about this instance's settings.
    pub fn fatal(&self, message: impl std::fmt::Display) -> ProviderError {
        ProviderError::Fatal(format!("{}: {message}", self.what))
    }

    /// A setting as text (strings, numbers and booleans as written).
    pub fn text(&self, key: &str) -> Option<String> {
        match self.settings.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The required, non-empty `host`.
    pub fn host(&self) -> Result<String, ProviderError> {
        self.text("host")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| self.fatal("the setting `host` is required"))
    }

    /// `port`, or `default` when unset.
    pub fn port(&self, default: u16) -> Result<u16, ProviderError> {
        match self.text("port") {
            None => Ok(default),
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| self.fatal(format!("`port: {p}` is not a TCP port"))),
        }
    }

    /// A duration setting (`10s`), or `default` when unset.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, ProviderError> {
        match self.text(key) {
            None => Ok(default),
            Some(t) => crate::doc::rate::parse_duration(&t).map_err(|m| self.fatal(m)),
        }
    }
}

/// A text setting of instance or credential `settings`, trimmed; `None` when absent,
/// not a string, or blank.
pub fn text<'a>(settings: &'a IndexMap<String, Value>, key: &str) -> Option<&'a str> {
    settings
        .get(key)
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A duration setting (`10s`) of `settings`, or `default` when unset; the error
/// names the key.
pub fn duration_or(
    settings: &IndexMap<String, Value>,
    key: &str,
    default: Duration,
) -> Result<Duration, String> {
    match text(settings, key) {
        Some(t) => crate::doc::rate::parse_duration(t).map_err(|e| format!("`{key}`: {e}")),
        None => Ok(default),
    }
}
