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
        let fatal = |m: String| ProviderError::Fatal(format!("redis instance `{instance}`: {m}"));
        let text = |k: &str| match settings.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        };
        let host = text("host")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| fatal("the setting `host` is required".into()))?;
        let port = match text("port") {
            None => 6379,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| fatal(format!("`port: {p}` is not a TCP port")))?,
        };
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
        let timeout = match text("timeout") {
            None => Duration::from_secs(10),
            Some(t) => crate::playbook::rate::parse_duration(&t).map_err(fatal)?,
        };
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
