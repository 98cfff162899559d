//! Settings of a `postgres` instance, read once when the instance is built: the
//! instance's `settings` from the playbook and the admin credential's fields.

use crate::provider::ProviderError;
use crate::provider::admin::Admin;
use crate::secret::Secret;
use indexmap::IndexMap;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// How the connection is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP: only for loopback or a network you trust.
    Disable,
    /// TLS with the server certificate checked against the system roots (and
    /// `ca_file` when given) and the host name.
    VerifyFull { ca_file: Option<PathBuf> },
}

#[derive(Debug, Clone)]
pub struct PgConfig {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub ssl: SslMode,
    pub connect_timeout: Duration,
    pub admin_user: String,
    pub admin_password: Secret,
    /// Where the admin credential came from, for error messages.
    pub admin_origin: String,
}

impl PgConfig {
    /// `type_name` (`postgres`, `postgres_alternating`) prefixes errors.
    pub fn parse(
        type_name: &str,
        instance: &str,
        settings: &IndexMap<String, Value>,
        admin: Option<&Admin>,
    ) -> Result<PgConfig, ProviderError> {
        let s = super::super::settings::Settings::new(type_name, instance, settings);
        let fatal = |m: String| s.fatal(m);
        let text = |k: &str| s.text(k);
        let host = s.host()?;
        let port = s.port(5432)?;
        let database = text("database").unwrap_or_else(|| "postgres".into());
        let ca_file = text("ca_file").map(PathBuf::from);
        let ssl = match text("sslmode").as_deref().unwrap_or("verify-full") {
            "disable" => SslMode::Disable,
            "verify-full" => SslMode::VerifyFull { ca_file },
            "require" | "prefer" | "allow" | "verify-ca" => {
                return Err(fatal(format!(
                    "`sslmode: {}` is not supported: it would accept a server certificate without checking it; use `verify-full` (with `ca_file` for a private CA) or, on loopback only, `disable`",
                    text("sslmode").unwrap_or_default()
                )));
            }
            other => {
                return Err(fatal(format!(
                    "unknown `sslmode: {other}`; use `verify-full` or `disable`"
                )));
            }
        };
        let connect_timeout = s.duration("connect_timeout", Duration::from_secs(10))?;
        let admin = admin.ok_or_else(|| {
            fatal("needs an admin credential (`admin: { vault_path: ... }` or `admin: { env: ... }`) with `username` and `password` fields".into())
        })?;
        let admin_user = admin.require(&["username", "user"])?.expose().to_owned();
        let admin_password = admin.require(&["password", "value"])?.clone();
        Ok(PgConfig {
            host,
            port,
            database,
            ssl,
            connect_timeout,
            admin_user,
            admin_password,
            admin_origin: admin.origin.clone(),
        })
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}
