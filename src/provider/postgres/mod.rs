//! `postgres`: a PostgreSQL role's password, changed in place (single kind).
//!
//! The change is `ALTER ROLE "account" PASSWORD '<SCRAM-SHA-256 verifier>'`: the
//! verifier is computed here (what psql's `\password` does), so the plain password
//! never travels to the server nor lands in its logs or `pg_stat_activity`, and the
//! key-derivation work is done by rekey instead of the database. ALTER ROLE takes no
//! bind parameter, so the verifier is quoted with `escape_literal` and the role name
//! with `escape_identifier`. Verify is a fresh TCP login as the role with the new
//! password: SQLSTATE 28P01 means the server refused it.

mod client;
mod config;

use super::admin::Admin;
use super::catalog::Kind;
use super::{Provider, ProviderError, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use client::{LoginError, PgClient};
use config::PgConfig;
use indexmap::IndexMap;
use postgres_protocol::escape::{escape_identifier, escape_literal};

pub struct Postgres {
    client: PgClient,
}

impl Postgres {
    pub fn new(
        instance: &str,
        settings: &IndexMap<String, serde_json::Value>,
        admin: Option<&Admin>,
    ) -> Result<Postgres, ProviderError> {
        Ok(Postgres {
            client: PgClient::new(PgConfig::parse(instance, settings, admin)?),
        })
    }

    fn account<'a>(&self, target: Target<'a>) -> Result<&'a str, ProviderError> {
        target.account.filter(|a| !a.is_empty()).ok_or_else(|| {
            ProviderError::Fatal(format!(
                "credential `{}` names no `account` (the PostgreSQL role)",
                target.credential
            ))
        })
    }

    /// The database the verify login opens: the credential's `verify_database`,
    /// else the instance's `database`.
    fn verify_database<'a>(&'a self, target: Target<'a>) -> &'a str {
        target
            .settings
            .get("verify_database")
            .and_then(|v| v.as_str())
            .unwrap_or(&self.client.cfg.database)
    }

    /// `rolcanlogin` of `role`, or an error saying it does not exist.
    async fn role_can_login(&self, role: &str) -> Result<bool, ProviderError> {
        let admin = self.client.admin().await?;
        let row = admin
            .query_opt(
                "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await;
        let row = match row {
            Ok(r) => {
                self.client.release(admin);
                r
            }
            Err(e) => return Err(self.client.classify(&e, "reading pg_roles")),
        };
        match row {
            Some(r) => Ok(r.get(0)),
            None => Err(ProviderError::Fatal(format!(
                "PostgreSQL at {}: the role `{role}` does not exist; create it or fix the credential's `account`",
                self.client.cfg.address()
            ))),
        }
    }
}

#[async_trait]
impl Provider for Postgres {
    fn kind(&self) -> Kind {
        Kind::Single
    }

    /// Admin login works, the admin may change passwords, the role exists and can log in.
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        let role = self.account(target)?;
        let admin = self.client.admin().await?;
        let may = admin
            .query_one(
                "SELECT rolsuper OR rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| self.client.classify(&e, "reading the admin role"))?;
        self.client.release(admin);
        if !may.get::<_, bool>(0) {
            return Err(ProviderError::Fatal(format!(
                "PostgreSQL at {}: the admin role `{}` may not change passwords; grant it CREATEROLE",
                self.client.cfg.address(),
                self.client.cfg.admin_user
            )));
        }
        if !self.role_can_login(role).await? {
            return Err(ProviderError::Fatal(format!(
                "PostgreSQL at {}: the role `{role}` cannot log in (NOLOGIN), so its password cannot be verified; ALTER ROLE {role} LOGIN or drop the credential",
                self.client.cfg.address()
            )));
        }
        Ok(())
    }

    async fn change(&self, target: Target<'_>, new: &Secret) -> Result<(), ProviderError> {
        let role = self.account(target)?.to_owned();
        // The SCRAM key derivation (4096 HMAC rounds) is CPU work: keep it off the
        // async workers so other rotations' I/O goes on meanwhile.
        let secret = new.clone();
        let verifier = tokio::task::spawn_blocking(move || {
            zeroize::Zeroizing::new(postgres_protocol::password::scram_sha_256(
                secret.expose().as_bytes(),
            ))
        })
        .await
        .map_err(|_| ProviderError::Fatal("computing the SCRAM verifier failed".into()))?;
        let statement = zeroize::Zeroizing::new(format!(
            "ALTER ROLE {} PASSWORD {}",
            escape_identifier(&role),
            escape_literal(&verifier)
        ));
        let admin = self.client.admin().await?;
        match admin.batch_execute(&statement).await {
            Ok(()) => {
                self.client.release(admin);
                Ok(())
            }
            Err(e) => Err(self
                .client
                .classify(&e, &format!("changing the password of `{role}`"))),
        }
    }

    async fn verify(
        &self,
        target: Target<'_>,
        _key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let role = self.account(target)?;
        match self
            .client
            .login(role, secret, self.verify_database(target))
            .await
        {
            Ok(_session) => Ok(true),
            Err(LoginError::Rejected) => Ok(false),
            Err(LoginError::Other(e)) => Err(e),
        }
    }
}
