//! Settings of a `redis` instance: the instance's `settings` and the optional admin
//! credential's fields, read once when the instance is built.

use crate::provider::ProviderError;
use crate::provider::admin::Admin;
use crate::secret::Secret;
use indexmap::IndexMap;
use serde_json::Value;
use std::time::Duration;

/// How ACL changes are made to survive a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// `ACL SAVE`: users live in an aclfile.
    AclSave,
    /// `CONFIG REWRITE`: users live in redis.conf.
    ConfigRewrite,
    /// Nothing: the server's users are managed elsewhere, or live in memory only.
    None,
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub persist: Persist,
    pub timeout: Duration,
    pub admin_user: Option<String>,
    pub admin_password: Option<Secret>,
    pub admin_origin: String,
}

impl RedisConfig {
    pub fn parse(
        instance: &str,
        settings: &IndexMap<String, Value>,
        admin: Option<&Admin>,
    ) -> Result<RedisConfig, ProviderError> {
        let s = super::super::settings::Settings::new("redis", instance, settings);
        let fatal = |m: String| s.fatal(m);
        let text = |k: &str| s.text(k);
        let host = s.host()?;
        let port = s.port(6379)?;
        if text("tls").as_deref().is_some_and(|t| t != "false") {
            return Err(fatal(
                "`tls: true` is not supported by this build (no TLS client for Redis is compiled in); use a TLS tunnel (stunnel, spiped) or, on loopback only, `tls: false`".into(),
            ));
        }
        let persist = match text("persist").as_deref().unwrap_or("acl_save") {
            "acl_save" => Persist::AclSave,
            "config_rewrite" => Persist::ConfigRewrite,
            "none" => Persist::None,
            other => {
                return Err(fatal(format!(
                    "unknown `persist: {other}`; use acl_save, config_rewrite or none"
                )));
            }
        };
        let timeout = s.duration("timeout", Duration::from_secs(10))?;
        let (admin_user, admin_password, admin_origin) = match admin {
            Some(a) => (
                a.get("username")
                    .or_else(|| a.get("user"))
                    .map(|s| s.expose().to_owned()),
                a.get("password").or_else(|| a.get("value")).cloned(),
                a.origin.clone(),
            ),
            None => (
                None,
                None,
                "no admin credential (the `default` user)".into(),
            ),
        };
        Ok(RedisConfig {
            host,
            port,
            persist,
            timeout,
            admin_user,
            admin_password,
            admin_origin,
        })
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}
