//! `postgres`: a PostgreSQL role's password, changed in place (single kind), and
//! `postgres_alternating` (`alternating.rs`): two roles taking turns (dual kind).
//!
//! The change is `ALTER ROLE "account" PASSWORD '<SCRAM-SHA-256 verifier>'`: the
//! verifier is computed here (what psql's `\password` does), so the plain password
//! never travels to the server nor lands in its logs or `pg_stat_activity`, and the
//! key-derivation work is done by rekey instead of the database. ALTER ROLE takes no
//! bind parameter, so the verifier is quoted with `escape_literal` and the role name
//! with `escape_identifier`. Verify is a fresh TCP login as the role with the new
//! password: SQLSTATE 28P01 means the server refused it.

mod alternating;
mod client;
mod config;

pub use alternating::PostgresAlternating;

use super::admin::Admin;
use super::catalog::Kind;
use super::{Provider, ProviderError, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use client::PgClient;
use config::PgConfig;
use indexmap::IndexMap;
use postgres_protocol::escape::{escape_identifier, escape_literal};
use zeroize::Zeroizing;

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
            client: PgClient::new(PgConfig::parse("postgres", instance, settings, admin)?),
        })
    }
}

/// The credential's `account` (the PostgreSQL role).
fn account<'a>(target: Target<'a>) -> Result<&'a str, ProviderError> {
    target.account.filter(|a| !a.is_empty()).ok_or_else(|| {
        ProviderError::Fatal(format!(
            "credential `{}` names no `account` (the PostgreSQL role)",
            target.credential
        ))
    })
}

/// The database the verify login opens: the credential's `verify_database`,
/// else the instance's `database`.
fn verify_database<'a>(cfg: &'a PgConfig, target: Target<'a>) -> &'a str {
    target
        .settings
        .get("verify_database")
        .and_then(|v| v.as_str())
        .unwrap_or(&cfg.database)
}

/// `ALTER ROLE "role" PASSWORD '<SCRAM-SHA-256 verifier of secret>'`.
async fn alter_password(role: &str, secret: &Secret) -> Result<Zeroizing<String>, ProviderError> {
    // The SCRAM key derivation (4096 HMAC rounds) is CPU work: keep it off the
    // async workers so other rotations' I/O goes on meanwhile.
    let secret = secret.clone();
    let verifier = tokio::task::spawn_blocking(move || {
        Zeroizing::new(postgres_protocol::password::scram_sha_256(
            secret.expose().as_bytes(),
        ))
    })
    .await
    .map_err(|_| ProviderError::Fatal("computing the SCRAM verifier failed".into()))?;
    Ok(Zeroizing::new(format!(
        "ALTER ROLE {} PASSWORD {}",
        escape_identifier(role),
        escape_literal(&verifier)
    )))
}

/// The error for a role that does not exist; `setting` is where the credential
/// names it (`account`, `alternate_role`).
fn role_missing(client: &PgClient, role: &str, setting: &str) -> ProviderError {
    ProviderError::Fatal(format!(
        "PostgreSQL at {}: the role `{role}` does not exist; create it or fix the credential's `{setting}`",
        client.cfg.address()
    ))
}

/// Fails unless `role` exists and can log in (its password could not be verified);
/// `setting` is where the credential names it.
async fn check_role_can_login(
    client: &PgClient,
    role: &str,
    setting: &str,
) -> Result<(), ProviderError> {
    let admin = client.admin().await?;
    let row = admin
        .query_opt(
            "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(|e| client.classify(&e, "reading pg_roles"))?;
    client.release(admin);
    match row {
        Some(r) if r.get::<_, bool>(0) => Ok(()),
        Some(_) => Err(ProviderError::Fatal(format!(
            "PostgreSQL at {}: the role `{role}` cannot log in (NOLOGIN), so its password cannot be verified; ALTER ROLE {role} LOGIN or drop the credential",
            client.cfg.address()
        ))),
        None => Err(role_missing(client, role, setting)),
    }
}

#[async_trait]
impl Provider for Postgres {
    fn kind(&self) -> Kind {
        Kind::Single
    }

    /// Admin login works, the admin may change passwords, the role exists and can log in.
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        let role = account(target)?;
        self.client.check_admin_may_change_passwords().await?;
        check_role_can_login(&self.client, role, "account").await
    }

    async fn change(&self, target: Target<'_>, new: &Secret) -> Result<(), ProviderError> {
        let role = account(target)?;
        let statement = alter_password(role, new).await?;
        self.client
            .execute(&statement, &format!("changing the password of `{role}`"))
            .await
    }

    async fn verify(
        &self,
        target: Target<'_>,
        _key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let role = account(target)?;
        self.client
            .password_works(role, secret, verify_database(&self.client.cfg, target))
            .await
    }
}
