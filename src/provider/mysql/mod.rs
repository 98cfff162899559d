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
use super::{Provider, ProviderError, SessionsEnded, Target};
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

/// ER_NO_SUCH_THREAD: the connection ended before KILL reached it.
const NO_SUCH_THREAD: u16 = 1094;
/// ER_KILL_DENIED_ERROR: not allowed to kill another account's connection.
const KILL_DENIED: u16 = 1095;
/// How long ended connections may take to leave the process list.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Mysql {
    /// The global privileges of the admin session's account, by name (`PROCESS`,
    /// `SUPER`, `CONNECTION ADMIN`...), as information_schema.USER_PRIVILEGES lists
    /// them (privileges granted through roles are not seen).
    async fn admin_privileges(&self, conn: &mut Conn) -> Result<Vec<String>, ProviderError> {
        let current: Option<String> = conn
            .query_first("SELECT CURRENT_USER()")
            .await
            .map_err(|e| self.client.classify(&e, "reading CURRENT_USER()"))?;
        let current = current.unwrap_or_default();
        let (user, host) = current.rsplit_once('@').unwrap_or((&current, ""));
        let grantee = format!("'{}'@'{}'", user.replace('\'', "''"), host);
        conn.exec(
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ?",
            (grantee,),
        )
        .await
        .map_err(|e| self.client.classify(&e, "reading the admin's privileges"))
    }

    /// Fails unless the admin may see every connection (PROCESS: without it
    /// PROCESSLIST shows only its own, and ending sessions would find none).
    async fn check_may_see_sessions(&self, conn: &mut Conn) -> Result<Vec<String>, ProviderError> {
        let privileges = self.admin_privileges(conn).await?;
        if !privileges.iter().any(|p| p == "PROCESS") {
            return Err(ProviderError::Fatal(format!(
                "MySQL at {}: the admin account `{}` lacks the PROCESS privilege, so it cannot see other accounts' connections to end them in breach mode; GRANT PROCESS, CONNECTION ADMIN ON *.* (MySQL 8: PROCESS and CONNECTION_ADMIN), or set `end_sessions: false` on the instance",
                self.client.cfg.address(),
                self.client.cfg.admin_user
            )));
        }
        Ok(privileges)
    }

    /// Ids of `user`'s connections (every host part), rekey's own left out.
    async fn connections(
        &self,
        conn: &mut Conn,
        user: &str,
        among: Option<&[u64]>,
    ) -> Result<Vec<u64>, ProviderError> {
        let ids: Vec<u64> = conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()",
                (user,),
            )
            .await
            .map_err(|e| self.client.classify(&e, "reading the process list"))?;
        Ok(match among {
            Some(among) => ids.into_iter().filter(|i| among.contains(i)).collect(),
            None => ids,
        })
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

    fn has_sessions(&self) -> bool {
        true
    }

    /// `KILL CONNECTION` for each connection of the user (every host part) in
    /// information_schema.PROCESSLIST, never rekey's own; then waits until they
    /// have left the list.
    async fn end_sessions(
        &self,
        target: Target<'_>,
        _retired: &[&str],
    ) -> Result<SessionsEnded, ProviderError> {
        let user = self.account(target)?;
        let mut conn = self.client.admin().await?;
        self.check_may_see_sessions(&mut conn).await?;
        let ids = self.connections(&mut conn, user, None).await?;
        let at = self.client.cfg.address();
        let mut count = 0;
        for id in &ids {
            match conn.query_drop(format!("KILL CONNECTION {id}")).await {
                Ok(()) => count += 1,
                Err(mysql_async::Error::Server(e)) if e.code == NO_SUCH_THREAD => {}
                Err(mysql_async::Error::Server(e)) if e.code == KILL_DENIED => {
                    return Err(ProviderError::Fatal(format!(
                        "MySQL at {at}: the admin account `{}` may not end `{user}`'s connections; GRANT CONNECTION ADMIN ON *.* (MySQL 8: CONNECTION_ADMIN; or SUPER) (error {KILL_DENIED})",
                        self.client.cfg.admin_user
                    )));
                }
                Err(e) => {
                    return Err(self
                        .client
                        .classify(&e, &format!("ending connection {id} of `{user}`")));
                }
            }
        }
        // A killed connection leaves the list once its thread notices.
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        loop {
            let left = self.connections(&mut conn, user, Some(&ids)).await?;
            if left.is_empty() {
                return Ok(SessionsEnded::Ended { count });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProviderError::Transient(format!(
                    "MySQL at {at}: {} connection(s) of `{user}` had not ended yet",
                    left.len()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn end_sessions_by_hand(&self, target: Target<'_>, _retired: &[&str]) -> String {
        let user = quote(target.account.unwrap_or_default(), true);
        format!(
            "as an account with PROCESS and CONNECTION ADMIN (or SUPER): KILL CONNECTION <id> for each id of SELECT ID FROM information_schema.PROCESSLIST WHERE USER = {user} (MariaDB: KILL CONNECTION USER {user})"
        )
    }

    async fn preflight_end_sessions(
        &self,
        target: Target<'_>,
    ) -> Result<Option<String>, ProviderError> {
        self.account(target)?;
        let mut conn = self.client.admin().await?;
        let privileges = self.check_may_see_sessions(&mut conn).await?;
        let admin = &self.client.cfg.admin_user;
        match ["SUPER", "CONNECTION ADMIN", "CONNECTION_ADMIN"]
            .iter()
            .find(|p| privileges.iter().any(|q| q == *p))
        {
            Some(p) => Ok(Some(format!(
                "the admin account `{admin}` has PROCESS and {p}: it may end other accounts' connections"
            ))),
            None => Ok(Some(format!(
                "the admin account `{admin}` has PROCESS; KILL also needs CONNECTION ADMIN, CONNECTION_ADMIN or SUPER, which it holds through a role or not at all (a refused KILL quarantines the credential)"
            ))),
        }
    }
}
