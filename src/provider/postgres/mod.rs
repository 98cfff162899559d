//! `postgres`: a PostgreSQL role's password, changed in place (single kind), and
//! `postgres_alternating` (`alternating.rs`): two roles taking turns (dual kind).
//!
//! The change is `ALTER ROLE "account" PASSWORD '<SCRAM-SHA-256 verifier>'`: the
//! verifier is computed here (what psql's `\password` does), so the plain password
//! never travels to the server nor lands in its logs or `pg_stat_activity`. (The server
//! still runs one key derivation per change: PostgreSQL checks that the verifier is
//! not that of an empty password, about 8 ms of its CPU here.) ALTER ROLE takes no
//! bind parameter, so the verifier is quoted with `escape_literal` and the role name
//! with `escape_identifier`. Verify is a fresh TCP login as the role with the new
//! password: SQLSTATE 28P01 means the server refused it.

mod alternating;
mod client;
mod config;

pub use alternating::PostgresAlternating;

use super::admin::Admin;
use super::{Provider, ProviderError, SessionsEnded, Target};
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
/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677, as
/// psql's `\password` and postgres-protocol build it): 4096 iterations of PBKDF2
/// over a random 16-byte salt, then StoredKey and ServerKey. The key derivation
/// runs on aws-lc. A password SASLprep could change (anything but printable
/// ASCII) goes through postgres-protocol, which applies it.
fn scram_verifier(password: &str) -> Zeroizing<String> {
    use aws_lc_rs::{digest, hmac, pbkdf2};
    use base64::Engine;
    const ITERATIONS: u32 = 4096;
    if !password.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Zeroizing::new(postgres_protocol::password::scram_sha_256(
            password.as_bytes(),
        ));
    }
    let salt: [u8; 16] = rand::random();
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(ITERATIONS).expect("not zero"),
        &salt,
        password.as_bytes(),
        &mut salted[..],
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted[..]);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    Zeroizing::new(format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key.as_ref()),
        b64.encode(server_key.as_ref())
    ))
}

async fn alter_password(role: &str, secret: &Secret) -> Result<Zeroizing<String>, ProviderError> {
    // The SCRAM key derivation (4096 HMAC rounds) is CPU work: keep it off the
    // async workers so other rotations' I/O goes on meanwhile.
    let secret = secret.clone();
    let verifier = tokio::task::spawn_blocking(move || scram_verifier(secret.expose()))
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

/// The statement a human runs to end `roles`' sessions.
fn terminate_by_hand(roles: &[&str]) -> String {
    let list: Vec<String> = roles.iter().map(|r| escape_literal(r)).collect();
    format!(
        "as a superuser or a member of pg_signal_backend: SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ({})",
        list.join(", ")
    )
}

#[async_trait]
impl Provider for Postgres {
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

    fn has_sessions(&self) -> bool {
        true
    }

    /// `pg_terminate_backend` for every backend of the role but rekey's own.
    async fn end_sessions(
        &self,
        target: Target<'_>,
        _retired: &[&str],
    ) -> Result<SessionsEnded, ProviderError> {
        let role = account(target)?;
        let count = self.client.terminate_backends(&[role]).await?;
        Ok(SessionsEnded::Ended { count })
    }

    fn end_sessions_by_hand(&self, target: Target<'_>, _retired: &[&str]) -> String {
        terminate_by_hand(&[target.account.unwrap_or_default()])
    }

    async fn preflight_end_sessions(
        &self,
        target: Target<'_>,
    ) -> Result<Option<String>, ProviderError> {
        let role = account(target)?;
        self.client
            .check_admin_may_end_sessions(role)
            .await
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::scram_verifier;
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    use sha2::Digest;

    /// Recomputes the verifier's keys from its salt with the plain RFC 5802
    /// definitions (hmac + sha2), so the fast path cannot drift from the format.
    #[test]
    fn the_scram_verifier_matches_the_rfc_definition() {
        type HmacSha256 = hmac::Hmac<sha2::Sha256>;
        let b64 = base64::engine::general_purpose::STANDARD;
        for password in ["correct horse", "Zq9$x!~"] {
            let verifier = scram_verifier(password);
            let rest = verifier.strip_prefix("SCRAM-SHA-256$4096:").unwrap();
            let (salt, keys) = rest.split_once('$').unwrap();
            let (stored, server) = keys.split_once(':').unwrap();
            let salt = b64.decode(salt).unwrap();
            assert_eq!(salt.len(), 16);
            // Hi(password, salt, 4096)
            let mac = |key: &[u8], data: &[u8]| {
                let mut m = HmacSha256::new_from_slice(key).unwrap();
                m.update(data);
                m.finalize().into_bytes().to_vec()
            };
            let mut u = mac(
                password.as_bytes(),
                &[salt.as_slice(), &[0, 0, 0, 1]].concat(),
            );
            let mut salted = u.clone();
            for _ in 1..4096 {
                u = mac(password.as_bytes(), &u);
                salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
            }
            let client_key = mac(&salted, b"Client Key");
            assert_eq!(
                b64.decode(stored).unwrap(),
                sha2::Sha256::digest(&client_key).to_vec()
            );
            assert_eq!(b64.decode(server).unwrap(), mac(&salted, b"Server Key"));
        }
        // Two verifiers of one password differ (fresh salt).
        assert_ne!(*scram_verifier("same"), *scram_verifier("same"));
    }
}
