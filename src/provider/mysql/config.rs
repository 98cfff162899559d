//! Settings of a `mysql` instance (MySQL or MariaDB): the instance's `settings`
//! and the admin credential's fields, read once when the instance is built.

use crate::provider::ProviderError;
use crate::provider::admin::Admin;
use crate::secret::Secret;
use indexmap::IndexMap;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MysqlConfig {
    pub host: String,
    pub port: u16,
    pub connect_timeout: Duration,
    pub admin_user: String,
    pub admin_password: Secret,
    pub admin_origin: String,
}

impl MysqlConfig {
    pub fn parse(
        instance: &str,
        settings: &IndexMap<String, Value>,
        admin: Option<&Admin>,
    ) -> Result<MysqlConfig, ProviderError> {
        let s = super::super::settings::Settings::new("mysql", instance, settings);
        let fatal = |m: String| s.fatal(m);
        let text = |k: &str| s.text(k);
        let host = s.host()?;
        let port = s.port(3306)?;
        match text("tls").as_deref().unwrap_or("required") {
            "disabled" => {}
            other => {
                return Err(fatal(format!(
                    "`tls: {other}` is not supported by this build (no TLS client for MySQL is compiled in); connect over a trusted network or loopback with `tls: disabled`, or through a TLS tunnel"
                )));
            }
        }
        let connect_timeout = s.duration("connect_timeout", Duration::from_secs(10))?;
        let admin = admin.ok_or_else(|| {
            fatal("needs an admin credential (`admin: { vault_path: ... }` or `admin: { env: ... }`) with `username` and `password` fields".into())
        })?;
        Ok(MysqlConfig {
            host,
            port,
            connect_timeout,
            admin_user: admin.require(&["username", "user"])?.expose().to_owned(),
            admin_password: admin.require(&["password", "value"])?.clone(),
            admin_origin: admin.origin.clone(),
        })
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}
