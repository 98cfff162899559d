//! `mysql`: a MySQL or MariaDB account's password, changed in place (single kind).
//!
//! An account is `'user'@'host'`; one user name under several host parts is several
//! accounts with separate passwords, and a login from 127.0.0.1 may match
//! `'u'@'localhost'` rather than `'u'@'%'`. So every host part of the user (those
//! found in `mysql.user`, or the credential's `hosts`) is changed in one
//! `ALTER USER` statement, which the server applies to all of them or none.
//! Verify is a fresh TCP login with the new password (error 1045 = refused).

mod client;
mod config;

use super::admin::Admin;
use super::{Provider, ProviderError, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use client::{LoginError, MysqlClient, quote};
use config::MysqlConfig;
use indexmap::IndexMap;
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

pub struct Mysql {
    client: MysqlClient,
}

impl Mysql {
    pub fn new(
        instance: &str,
        settings: &IndexMap<String, serde_json::Value>,
        admin: Option<&Admin>,
    ) -> Result<Mysql, ProviderError> {
        Ok(Mysql {
            client: MysqlClient::new(MysqlConfig::parse(instance, settings, admin)?),
        })
    }

    fn account<'a>(&self, target: Target<'a>) -> Result<&'a str, ProviderError> {
        target.account.filter(|a| !a.is_empty()).ok_or_else(|| {
            ProviderError::Fatal(format!(
                "credential `{}` names no `account` (the MySQL user name)",
                target.credential
            ))
        })
    }

    /// The host parts to change: the credential's `hosts` (each must exist), else
    /// every host part the server has for the user. Never empty.
    async fn hosts(
        &self,
        conn: &mut Conn,
        user: &str,
        target: Target<'_>,
    ) -> Result<Vec<String>, ProviderError> {
        let found: Vec<String> = conn
            .exec("SELECT Host FROM mysql.user WHERE User = ?", (user,))
            .await
            .map_err(|e| self.client.classify(&e, "reading mysql.user"))?;
        let at = self.client.cfg.address();
        let wanted: Option<Vec<String>> = target.settings.get("hosts").and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            })
        });
        match wanted {
            None if found.is_empty() => Err(ProviderError::Fatal(format!(
                "MySQL at {at}: no account for the user `{user}` (no row in mysql.user); create it or fix the credential's `account`"
            ))),
            None => Ok(found),
            Some(wanted) => {
                let missing: Vec<&String> = wanted.iter().filter(|h| !found.contains(h)).collect();
                if !missing.is_empty() || wanted.is_empty() {
                    return Err(ProviderError::Fatal(format!(
                        "MySQL at {at}: the account(s) {} do not exist (the server has {}); fix the credential's `hosts`",
                        missing
                            .iter()
                            .map(|h| format!("'{user}'@'{h}'"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        if found.is_empty() {
                            "none for this user".to_owned()
                        } else {
                            found
                                .iter()
                                .map(|h| format!("'{user}'@'{h}'"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    )));
                }
                Ok(wanted)
            }
        }
    }
}

#[async_trait]
impl Provider for Mysql {
    /// Admin login works and the account (every host part asked for) exists.
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        let user = self.account(target)?;
        let mut conn = self.client.admin().await?;
        self.hosts(&mut conn, user, target).await.map(|_| ())
    }

    async fn change(&self, target: Target<'_>, new: &Secret) -> Result<(), ProviderError> {
        let user = self.account(target)?;
        let mut conn = self.client.admin().await?;
        let hosts = self.hosts(&mut conn, user, target).await?;
        // Backslashes are the one character whose meaning depends on the session.
        let mut escapes = true;
        if new.expose().contains('\\')
            || user.contains('\\')
            || hosts.iter().any(|h| h.contains('\\'))
        {
            let mode: Option<String> = conn
                .query_first("SELECT @@SESSION.sql_mode")
                .await
                .map_err(|e| self.client.classify(&e, "reading sql_mode"))?;
            escapes = !mode.unwrap_or_default().contains("NO_BACKSLASH_ESCAPES");
        }
        let password = zeroize::Zeroizing::new(quote(new.expose(), escapes));
        let mut statement = zeroize::Zeroizing::new(String::from("ALTER USER "));
        for (i, host) in hosts.iter().enumerate() {
            if i > 0 {
                statement.push_str(", ");
            }
            statement.push_str(&quote(user, escapes));
            statement.push('@');
            statement.push_str(&quote(host, escapes));
            statement.push_str(" IDENTIFIED BY ");
            statement.push_str(&password);
        }
        conn.query_drop(statement.as_str()).await.map_err(|e| {
            self.client
                .classify(&e, &format!("changing the password of `{user}`"))
        })
    }

    async fn verify(
        &self,
        target: Target<'_>,
        _key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let user = self.account(target)?;
        match self.client.login(user, secret).await {
            Ok(conn) => {
                let _ = conn.disconnect().await;
                Ok(true)
            }
            Err(LoginError::Rejected) => Ok(false),
            Err(LoginError::Other(e)) => Err(e),
        }
    }
}
