//! `ldap`: a directory user's password, changed with the Password Modify extended
//! operation (RFC 3062) sent by the admin for the user's DN, and verified with a
//! simple bind as that DN. Single kind: the directory keeps one password.
//!
//! The entry: `<user_attribute>=<account>,<base_dn>` (the account is escaped as an
//! RDN value), or the credential's `dn` setting when the entry lives elsewhere.
//! The admin: the bind DN from the admin credential's `bind_dn` field (or the
//! instance's `bind_dn` setting), its password from the `password` field (or
//! `value`). Every operation opens its own connection: binds change a
//! connection's identity, and a rotation makes only a few calls.
//!
//! TLS: `ldaps://` URLs, and StartTLS on `ldap://` URLs unless `starttls: false`,
//! both with rustls; server certificates are always verified, against the system's
//! trust store or, when `ca_file` is set, against the CA certificates in that file
//! only. A server that refuses StartTLS is an error, never a fallback to plain
//! text. `starttls: false` sends passwords in the clear and is meant for loopback
//! test servers only; rekey warns when it is used.

use super::admin::Admin;
use super::settings::text;
use super::{Provider, ProviderError, SessionsEnded, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use indexmap::IndexMap;
use ldap3::exop::PasswordModify;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope};
use std::sync::Arc;
use std::time::Duration;

/// LDAP result codes rekey tells apart (RFC 4511, appendix A).
mod rc {
    pub const NO_SUCH_OBJECT: u32 = 32;
    pub const INVALID_CREDENTIALS: u32 = 49;
    pub const INSUFFICIENT_ACCESS: u32 = 50;
    pub const BUSY: u32 = 51;
    pub const UNAVAILABLE: u32 = 52;
    pub const CONSTRAINT_VIOLATION: u32 = 19;
}

pub struct LdapProvider {
    url: String,
    base_dn: String,
    user_attribute: String,
    starttls: bool,
    timeout: Duration,
    /// Trust only these CAs (from `ca_file`) instead of the system's store.
    tls: Option<Arc<rustls::ClientConfig>>,
    bind_dn: String,
    password: Secret,
    /// Where the admin credential came from, for error messages.
    admin_origin: String,
}

/// A boolean setting; playbooks may interpolate it as a string.
fn flag(settings: &IndexMap<String, serde_json::Value>, key: &str) -> Option<bool> {
    match settings.get(key)? {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl LdapProvider {
    /// Reads the instance's settings and admin credential; connects to nothing.
    pub fn from_settings(
        instance: &str,
        settings: &IndexMap<String, serde_json::Value>,
        admin: Option<Admin>,
    ) -> Result<LdapProvider, ProviderError> {
        let fatal = |m: String| ProviderError::Fatal(format!("ldap instance `{instance}`: {m}"));
        let url = text(settings, "url")
            .ok_or_else(|| {
                fatal("the `url` setting is missing (e.g. ldaps://ldap.example.com)".into())
            })?
            .to_owned();
        let ldaps = url.starts_with("ldaps://");
        if !ldaps && !url.starts_with("ldap://") {
            return Err(fatal(format!(
                "`url` must start with ldaps:// or ldap:// (got `{url}`)"
            )));
        }
        let base_dn = text(settings, "base_dn").unwrap_or_default().to_owned();
        let user_attribute = text(settings, "user_attribute").unwrap_or("uid").to_owned();
        let starttls = match settings.get("starttls") {
            None => true,
            Some(_) => flag(settings, "starttls")
                .ok_or_else(|| fatal("`starttls` must be true or false".into()))?,
        };
        let timeout = super::settings::duration_or(settings, "timeout", Duration::from_secs(10))
            .map_err(fatal)?;
        let tls = match text(settings, "ca_file") {
            Some(path) => Some(tls_config(path).map_err(fatal)?),
            None => None,
        };
        let admin = admin.ok_or_else(|| {
            fatal("needs an admin credential (`admin: { vault_path: ... }` with fields bind_dn and password)".into())
        })?;
        let bind_dn = match admin.get("bind_dn").or_else(|| admin.get("username")) {
            Some(dn) => dn.expose().to_owned(),
            None => text(settings, "bind_dn").map(str::to_owned).ok_or_else(|| {
                fatal(format!(
                    "no bind DN: add a `bind_dn` field to the admin credential from {} or a `bind_dn` setting",
                    admin.origin
                ))
            })?,
        };
        let password = admin.require(&["password", "value"])?.clone();
        if !ldaps && !starttls {
            tracing::warn!(instance, url = %url, "starttls is off: passwords cross the network in the clear; use it only with a loopback test server.");
        }
        Ok(LdapProvider {
            url,
            base_dn,
            user_attribute,
            starttls: starttls && !ldaps,
            timeout,
            tls,
            bind_dn,
            password,
            admin_origin: admin.origin,
        })
    }

    /// The entry the credential is about.
    fn dn(&self, target: Target<'_>) -> Result<String, ProviderError> {
        if let Some(dn) = text(target.settings, "dn") {
            return Ok(dn.to_owned());
        }
        let account = target.account.filter(|a| !a.is_empty()).ok_or_else(|| {
            ProviderError::Fatal(format!(
                "credential `{}` names no account (the value of {} in {}) and no `dn` setting",
                target.credential, self.user_attribute, self.base_dn
            ))
        })?;
        if self.base_dn.is_empty() {
            return Err(ProviderError::Fatal(format!(
                "credential `{}`: set `base_dn` on the instance or `dn` on the credential",
                target.credential
            )));
        }
        Ok(format!(
            "{}={},{}",
            self.user_attribute,
            ldap3::dn_escape(account),
            self.base_dn
        ))
    }

    /// A fresh connection (TLS as configured), driven in the background.
    async fn connect(&self) -> Result<Ldap, ProviderError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.starttls);
        if let Some(config) = &self.tls {
            settings = settings.set_config(config.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| self.connect_error(&e))?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.timeout);
        Ok(ldap)
    }

    /// A connection bound as the admin.
    async fn admin(&self) -> Result<Ldap, ProviderError> {
        let mut ldap = self.connect().await?;
        let result = ldap
            .simple_bind(&self.bind_dn, self.password.expose())
            .await
            .map_err(|e| self.failed("admin bind", &e))?;
        match result.rc {
            0 => Ok(ldap),
            rc::INVALID_CREDENTIALS => Err(ProviderError::Fatal(format!(
                "{}: the admin bind as `{}` was refused (invalidCredentials): check the bind DN and password in the admin credential from {}",
                self.url, self.bind_dn, self.admin_origin
            ))),
            _ => Err(self.result_error("admin bind", &result, "")),
        }
    }

    /// Why a connection could not be set up: the server refused StartTLS, the TLS
    /// handshake failed (both fatal: retrying will not help, and rekey never falls
    /// back to plain text), or it could not be reached (transient).
    fn connect_error(&self, e: &LdapError) -> ProviderError {
        match e {
            LdapError::LdapResult { result } => ProviderError::Fatal(format!(
                "{}: the server refused StartTLS (LDAP result {}); enable TLS on the server or use an ldaps:// URL (`starttls: false` only for a loopback test server)",
                self.url, result.rc
            )),
            LdapError::Io { source } if source.kind() == std::io::ErrorKind::InvalidData => {
                ProviderError::Fatal(format!(
                    "{}: TLS handshake failed ({source}); set `ca_file` to the CA that signed the server's certificate (rekey never skips verification)",
                    self.url
                ))
            }
            LdapError::Rustls { .. } | LdapError::DNSName { .. } => ProviderError::Fatal(format!(
                "{}: TLS setup failed ({}); check the host name in `url` and `ca_file`",
                self.url,
                describe(e)
            )),
            _ => ProviderError::Transient(format!(
                "cannot reach the LDAP server {}: {}; check the `url` setting and that the server is up",
                self.url,
                describe(e)
            )),
        }
    }

    /// An error of the connection or protocol (not an LDAP result code).
    fn failed(&self, what: &str, e: &LdapError) -> ProviderError {
        match e {
            LdapError::LdapResult { result } => self.result_error(what, result, ""),
            _ => ProviderError::Transient(format!("{}: {what} failed: {}", self.url, describe(e))),
        }
    }

    /// An LDAP result code, classified. The server's diagnostic text is included:
    /// it never echoes the request's values.
    fn result_error(&self, what: &str, r: &LdapResult, dn: &str) -> ProviderError {
        let detail = if r.text.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.text)
        };
        let message = format!(
            "{}: {what} failed with LDAP result {}{detail}",
            self.url, r.rc
        );
        match r.rc {
            rc::BUSY | rc::UNAVAILABLE => ProviderError::Transient(message),
            rc::NO_SUCH_OBJECT => ProviderError::Fatal(format!(
                "{}: no entry `{dn}` (noSuchObject): check the credential's account, the `base_dn` and `user_attribute` settings, or set its `dn`",
                self.url
            )),
            rc::INSUFFICIENT_ACCESS => ProviderError::Fatal(format!(
                "{message}: `{}` may not change that password; grant it write access to userPassword",
                self.bind_dn
            )),
            rc::CONSTRAINT_VIOLATION => ProviderError::Fatal(format!(
                "{message}: the server's password policy refused the new value; adjust the credential's `password` policy"
            )),
            _ => ProviderError::Fatal(message),
        }
    }

    /// Does the entry exist? Read as the admin, attributes not needed.
    async fn entry_exists(&self, ldap: &mut Ldap, dn: &str) -> Result<bool, ProviderError> {
        match ldap
            .search(dn, Scope::Base, "(objectClass=*)", vec!["1.1"])
            .await
        {
            Ok(result) => match result.1.rc {
                0 => Ok(!result.0.is_empty()),
                rc::NO_SUCH_OBJECT => Ok(false),
                _ => Err(self.result_error("search", &result.1, dn)),
            },
            Err(e) => Err(self.failed("search", &e)),
        }
    }
}

/// A rustls configuration trusting exactly the CA certificates in `path` (PEM).
fn tls_config(path: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("`ca_file` {path}: cannot read PEM certificates ({e})"))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("`ca_file` {path} holds no usable CA certificate"));
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// An ldap3 error in words, without anything a request carried.
fn describe(e: &LdapError) -> String {
    match e {
        LdapError::Io { source } => source.to_string(),
        LdapError::Timeout { .. } => "timed out".into(),
        LdapError::LdapResult { result } => format!("LDAP result {}", result.rc),
        other => other.to_string(),
    }
}

#[async_trait]
impl Provider for LdapProvider {
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        let dn = self.dn(target)?;
        let mut ldap = self.admin().await?;
        let exists = self.entry_exists(&mut ldap, &dn).await;
        let _ = ldap.unbind().await;
        if !exists? {
            return Err(ProviderError::Fatal(format!(
                "{}: no entry `{dn}`: check the credential's account, the `base_dn` and `user_attribute` settings, or set its `dn`",
                self.url
            )));
        }
        Ok(())
    }

    async fn change(&self, target: Target<'_>, new: &Secret) -> Result<(), ProviderError> {
        let dn = self.dn(target)?;
        let mut ldap = self.admin().await?;
        let result = ldap
            .extended(PasswordModify {
                user_id: Some(&dn),
                old_pass: None,
                new_pass: Some(new.expose()),
            })
            .await
            .map_err(|e| self.failed("Password Modify", &e));
        let _ = ldap.unbind().await;
        let result = result?;
        if result.1.rc != 0 {
            return Err(self.result_error("Password Modify", &result.1, &dn));
        }
        tracing::debug!(credential = target.credential, dn = %dn, "Password changed.");
        Ok(())
    }

    async fn verify(
        &self,
        target: Target<'_>,
        _key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        // An empty password would be an unauthenticated bind, which "succeeds".
        if secret.is_empty() {
            return Ok(false);
        }
        let dn = self.dn(target)?;
        let mut ldap = self.connect().await?;
        let result = ldap
            .simple_bind(&dn, secret.expose())
            .await
            .map_err(|e| self.failed("bind", &e));
        let _ = ldap.unbind().await;
        let result = result?;
        match result.rc {
            0 => Ok(true),
            rc::INVALID_CREDENTIALS => Ok(false),
            _ => Err(self.result_error("bind as the user", &result, &dn)),
        }
    }

    fn has_sessions(&self) -> bool {
        true
    }

    /// LDAP (RFC 4511) has no operation that ends another client's bind, and a
    /// client cannot tell slapd to drop connections (cn=Monitor is read-only):
    /// a connection bound with the old password keeps its identity until it
    /// unbinds or the server closes it.
    async fn end_sessions(
        &self,
        _target: Target<'_>,
        _retired: &[&str],
    ) -> Result<SessionsEnded, ProviderError> {
        Ok(SessionsEnded::Unsupported {
            reason: "LDAP has no operation to end another client's bind, and a client cannot make slapd drop connections: connections already bound with the old password stay bound".into(),
        })
    }

    fn end_sessions_by_hand(&self, target: Target<'_>, _retired: &[&str]) -> String {
        let dn = self
            .dn(target)
            .unwrap_or_else(|_| target.account.unwrap_or_default().to_owned());
        format!(
            "restart the directory server(s) behind {} to drop the connections bound as `{dn}` (or let its idle timeout close them: slapd's `idletimeout`)",
            self.url
        )
    }
}
