//! The HTTP client the Vault/OpenBao auth-method providers share (`vault_approle`,
//! `vault_userpass`): settings, the admin token, JSON requests, and the
//! classification of answers. Messages are built from statuses and rekey's own
//! context: Vault error bodies may echo request fields.

use super::ProviderError;
use super::admin::Admin;
use crate::secret::Secret;
use indexmap::IndexMap;
use serde_json::Value;
use std::time::Duration;

/// Where the server is and which auth mount the provider manages.
#[derive(Debug, Clone)]
pub struct VaultConfig {
    pub address: url::Url,
    pub mount: String,
    pub namespace: Option<String>,
}

impl VaultConfig {
    /// `address` (required), `mount` (default `default_mount`), `namespace`.
    pub fn from_settings(
        type_name: &str,
        settings: &IndexMap<String, Value>,
        default_mount: &str,
    ) -> Result<VaultConfig, ProviderError> {
        let text = |k: &str| {
            settings
                .get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let address = text("address").ok_or_else(|| {
            ProviderError::Fatal(format!(
                "{type_name} needs the server address: add `settings: {{ address: https://bao.example.com:8200 }}`"
            ))
        })?;
        let address = crate::net::parse_endpoint(address).map_err(|why| {
            ProviderError::Fatal(format!(
                "{type_name} setting `address` (`{address}`): {why}"
            ))
        })?;
        let mount = text("mount")
            .unwrap_or(default_mount)
            .trim_matches('/')
            .to_owned();
        if mount.is_empty() || mount.split('/').any(|s| s.is_empty() || s == "..") {
            return Err(ProviderError::Fatal(format!(
                "{type_name} setting `mount` is not a mount path: `{mount}`"
            )));
        }
        Ok(VaultConfig {
            address,
            mount,
            namespace: text("namespace").map(str::to_owned),
        })
    }
}

/// Which token a request carries.
#[derive(Clone, Copy)]
pub enum As<'a> {
    /// The instance's admin token.
    Admin,
    /// A token a login just returned.
    Token(&'a Secret),
    /// None: login endpoints.
    Anonymous,
}

/// The outcome of one request: the status and, when there was one, the JSON body.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

pub struct VaultHttp {
    pub config: VaultConfig,
    http: reqwest::Client,
    token: Secret,
    /// Where the admin token came from, for error messages.
    pub origin: String,
    type_name: &'static str,
}

impl VaultHttp {
    pub fn new(
        type_name: &'static str,
        settings: &IndexMap<String, Value>,
        default_mount: &str,
        admin: Option<&Admin>,
    ) -> Result<VaultHttp, ProviderError> {
        let config = VaultConfig::from_settings(type_name, settings, default_mount)?;
        let admin = admin.ok_or_else(|| {
            ProviderError::Fatal(format!(
                "{type_name} needs an admin token: add `admin: {{ vault_path: ... }}` (field `token`) or `admin: {{ env: VAR }}`"
            ))
        })?;
        let token = admin.require(&["token", "value"])?.clone();
        let mut builder = reqwest::Client::builder()
            .redirect(crate::net::redirect_policy())
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10));
        if let Some(path) = settings.get("ca_file").and_then(Value::as_str) {
            let pem = std::fs::read(path).map_err(|e| {
                ProviderError::Fatal(format!("{type_name}: cannot read ca_file {path}: {e}"))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|_| {
                ProviderError::Fatal(format!(
                    "{type_name}: ca_file {path} holds no PEM certificate"
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| {
            ProviderError::Fatal(format!("{type_name}: cannot set up an HTTP client: {e}"))
        })?;
        Ok(VaultHttp {
            config,
            http,
            token,
            origin: admin.origin.clone(),
            type_name,
        })
    }

    /// `auth/<mount>/<rest>`.
    pub fn auth_path(&self, rest: &str) -> String {
        format!("auth/{}/{rest}", self.config.mount)
    }

    /// Sends `method` to `/v1/<path>` with the token `auth` says.
    /// Network failures and 5xx are transient, 429 a rate limit; any other status
    /// is returned for the caller to interpret.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        auth: As<'_>,
    ) -> Result<Reply, ProviderError> {
        let url = format!(
            "{}/v1/{path}",
            self.config.address.as_str().trim_end_matches('/')
        );
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ProviderError::Fatal(format!("bad HTTP method {method}")))?;
        let mut request = self.http.request(method.clone(), &url);
        match auth {
            As::Admin => request = request.header("X-Vault-Token", self.token.expose()),
            As::Token(t) => request = request.header("X-Vault-Token", t.expose()),
            As::Anonymous => {}
        }
        if let Some(ns) = &self.config.namespace {
            request = request.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            request = request
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let where_ = format!("{} {method} /v1/{path}", self.type_name);
        let response = request.send().await.map_err(|e| {
            ProviderError::Transient(format!(
                "{where_}: cannot reach {} ({}); check the address and that the server is up",
                self.config.address,
                if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                }
            ))
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response
            .bytes()
            .await
            .map_err(|_| ProviderError::Transient(format!("{where_}: the answer was cut off")))?;
        if status == 429 {
            return Err(ProviderError::RateLimited {
                retry_after,
                message: format!("{where_}: 429 (a rate-limit quota is set on the server)"),
            });
        }
        if status >= 500 {
            return Err(ProviderError::Transient(format!("{where_}: HTTP {status}")));
        }
        if (300..400).contains(&status) {
            return Err(ProviderError::Fatal(format!(
                "{where_}: the server answered with a redirect (HTTP {status}) to another address; rekey does not send the admin token there: set `address` to the server that answers (a standby redirects to the active node)"
            )));
        }
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    /// The fatal error for an admin call that did not succeed, saying what to do.
    pub fn refused(&self, what: &str, reply: &Reply) -> ProviderError {
        let message = match reply.status {
            401 | 403 => format!(
                "{}: the admin token from {} was refused ({}: HTTP {}); check the token, and that its policy allows {what}",
                self.type_name, self.origin, what, reply.status
            ),
            404 => format!(
                "{}: {what} not found (HTTP 404); check the mount `{}`{} and the name",
                self.type_name,
                self.config.mount,
                self.config
                    .namespace
                    .as_deref()
                    .map(|n| format!(" in namespace `{n}`"))
                    .unwrap_or_default()
            ),
            s => format!("{}: {what} failed (HTTP {s})", self.type_name),
        };
        ProviderError::Fatal(message)
    }

    /// Revokes the token a verify login created, so verification leaves nothing
    /// behind. A failure only costs a token that expires on its own.
    pub async fn revoke_login_token(&self, reply: &Reply) {
        let Some(token) = reply.body["auth"]["client_token"].as_str() else {
            return;
        };
        let token = Secret::new(token);
        if let Err(e) = self
            .request("POST", "auth/token/revoke-self", None, As::Token(&token))
            .await
        {
            tracing::warn!("Could not revoke the token of the verify login: {e}");
        }
    }

    /// Whether the admin token may use `capability` on `path`, asked with
    /// `sys/capabilities-self` (read-only, for preflight). `Ok(false)` names no
    /// reason: the caller says what the capability is for.
    pub async fn can(&self, path: &str, capability: &str) -> Result<bool, ProviderError> {
        let reply = self
            .request(
                "POST",
                "sys/capabilities-self",
                Some(&serde_json::json!({ "paths": [path] })),
                As::Admin,
            )
            .await?;
        if !reply.ok() {
            return Err(self.refused("a capability check (sys/capabilities-self)", &reply));
        }
        let caps = reply.body[path]
            .as_array()
            .or_else(|| reply.body["data"][path].as_array())
            .or_else(|| reply.body["capabilities"].as_array());
        Ok(caps.is_some_and(|c| {
            c.iter()
                .filter_map(Value::as_str)
                .any(|c| c == "root" || c == capability)
        }))
    }
}
