//! `postgres_alternating`: two PostgreSQL roles that take turns (dual kind), the
//! "alternating users" strategy of HashiCorp Vault's and AWS Secrets Manager's
//! database rotations. Consumers read the user name and the password from Vault;
//! while they use one role, rekey sets a fresh password on the other, verifies
//! it, promotes it (user name included, through `Issued::fields`), then retires
//! the role they used before.
//!
//! The key id is the role name, so `list` always shows the same two keys. Which
//! role to change cannot come from Vault (the engine does not hand the current
//! key id to `create`): it comes from the marks rekey leaves on the roles with
//! `COMMENT ON ROLE`, in the same implicit transaction as the password change:
//! - `rekey:<run>:<credential> <n>`: the role rekey last issued a password to;
//! - `rekey-retired <n>`: a role whose password rekey replaced with one nobody
//!   keeps.
//!
//! `<n>` is a stamp (milliseconds since the Unix epoch, always above the other
//! role's), so the newer of two marks is known even across clock skew. The role
//! to change is, in order: one carrying this very tag (an earlier attempt of the
//! same rotation), a retired one, the one without a mark when the other has one,
//! and before any rotation the second role (`alternate_role`: consumers are
//! expected to use `account` until rekey first rotates). Two issue marks are
//! ambiguous and refused. See `choose`.
//!
//! Retiring (`deactivate`, `revoke`) never drops the role nor makes it NOLOGIN:
//! it is used again on the next rotation. It sets a random password that is
//! discarded at once and marks the role retired, so the old (maybe stolen)
//! password stops working; sessions already open with it stay open (end them
//! with `pg_terminate_backend` in breach mode). To the engine a retired role is
//! a deleted key: `list` leaves it out, so the quota step finds no stray to
//! delete, resume does not retire it again and `rekey rollback` rolls forward
//! only (its old password is gone).
//!
//! One guard stands in for what the engine cannot see: `deactivate`, which the
//! engine calls only to retire the old key after a promotion, refuses a role
//! that holds the newest issue mark (it is the one just promoted: Vault's
//! `key_id` disagreed with the marks), and the `revoke` that follows is refused
//! too, so the run quarantines the credential instead of killing the password it
//! just stored.

use super::client::PgClient;
use super::config::PgConfig;
use super::{
    account, alter_password, check_role_can_login, role_missing, terminate_by_hand, verify_database,
};
use crate::provider::admin::Admin;
use crate::provider::{Issued, KeyInfo, Provider, ProviderError, SessionsEnded, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use indexmap::IndexMap;
use postgres_protocol::escape::{escape_identifier, escape_literal};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// The credential setting naming the second role.
const ALTERNATE: &str = "alternate_role";
/// Start of the comment on a retired role.
const RETIRED: &str = "rekey-retired";
/// Start of every tag the engine passes to `create`.
const TAG_PREFIX: &str = "rekey:";
/// New passwords: the playbook's default policy (the credential's `password`
/// policy reaches single kinds only).
const PASSWORD_LEN: usize = 32;
const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

pub struct PostgresAlternating {
    client: PgClient,
    /// `(credential, role)` pairs whose retirement `deactivate` refused: the
    /// `revoke` the engine sends next is refused as well.
    refused: Mutex<HashSet<(String, String)>>,
}

/// What rekey's comment on a role says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mark {
    /// No comment of rekey's (a role never rotated, or a comment of someone else's).
    None,
    /// rekey issued the role a password under `tag`.
    Issued { tag: String, stamp: u64 },
    /// rekey scrambled the role's password.
    Retired { stamp: u64 },
}

impl Mark {
    fn parse(comment: Option<&str>) -> Mark {
        let Some(c) = comment else {
            return Mark::None;
        };
        if let Some(rest) = c.strip_prefix(RETIRED) {
            return Mark::Retired {
                stamp: rest.trim().parse().unwrap_or(0),
            };
        }
        if !c.starts_with(TAG_PREFIX) {
            return Mark::None;
        }
        match c.rsplit_once(' ') {
            Some((tag, stamp)) if stamp.parse::<u64>().is_ok() => Mark::Issued {
                tag: tag.to_owned(),
                stamp: stamp.parse().unwrap_or(0),
            },
            _ => Mark::Issued {
                tag: c.to_owned(),
                stamp: 0,
            },
        }
    }

    fn tag(&self) -> Option<&str> {
        match self {
            Mark::Issued { tag, .. } => Some(tag),
            _ => None,
        }
    }

    fn stamp(&self) -> u64 {
        match self {
            Mark::None => 0,
            Mark::Issued { stamp, .. } | Mark::Retired { stamp } => *stamp,
        }
    }
}

/// One of the two roles as the server has it.
#[derive(Debug, Clone)]
struct RoleState {
    can_login: bool,
    mark: Mark,
}

/// Which of the two roles (`[account, alternate_role]`) `create` changes, from
/// their marks; `Err` says why it cannot tell. `tag` is this rotation's.
fn choose(tag: &str, marks: [&Mark; 2]) -> Result<usize, String> {
    // An earlier attempt of this same rotation (its answer lost): never the role
    // consumers use, since a rotation's tag is new.
    if let Some(i) = (0..2).find(|&i| marks[i].tag() == Some(tag)) {
        return Ok(i);
    }
    match marks {
        [Mark::Retired { .. }, Mark::Retired { .. }] => Ok(1),
        [Mark::Retired { .. }, _] => Ok(0),
        [_, Mark::Retired { .. }] => Ok(1),
        [Mark::Issued { .. }, Mark::None] => Ok(1),
        [Mark::None, Mark::Issued { .. }] => Ok(0),
        [Mark::None, Mark::None] => Ok(1),
        [Mark::Issued { .. }, Mark::Issued { .. }] => Err(
            "both roles carry rekey's issue mark, so rekey cannot tell which one consumers use (a rotation whose old role was not retired, or one interrupted and not resumed)".into(),
        ),
    }
}

/// Whether role `i` holds the newest issue mark: the role rekey gave a password
/// to last, which consumers are (or are about to be) using.
fn issued_last(marks: [&Mark; 2], i: usize) -> bool {
    match (marks[i], marks[1 - i]) {
        (Mark::Issued { stamp: mine, .. }, Mark::Issued { stamp: other, .. }) => mine > other,
        (Mark::Issued { .. }, _) => true,
        _ => false,
    }
}

/// A stamp above both roles' and, clocks permitting, the current time.
fn next_stamp(marks: [&Mark; 2]) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    marks
        .iter()
        .map(|m| m.stamp().saturating_add(1))
        .fold(now, u64::max)
}

/// The credential's two roles, `[account, alternate_role]`.
fn roles<'a>(target: Target<'a>) -> Result<[&'a str; 2], ProviderError> {
    let first = account(target)?;
    let second = target
        .settings
        .get(ALTERNATE)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ProviderError::Fatal(format!(
                "credential `{}` names no `{ALTERNATE}` (the second PostgreSQL role, in its `settings`)",
                target.credential
            ))
        })?;
    if first == second {
        return Err(ProviderError::Fatal(format!(
            "credential `{}`: `account` and `{ALTERNATE}` are the same role `{first}`; alternating needs two roles",
            target.credential
        )));
    }
    Ok([first, second])
}

/// Position of `key_id` among the credential's roles.
fn index_of(target: Target<'_>, roles: [&str; 2], key_id: &str) -> Result<usize, ProviderError> {
    roles.iter().position(|r| *r == key_id).ok_or_else(|| {
        ProviderError::Fatal(format!(
            "`{key_id}` is neither of credential `{}`'s roles (`{}`, `{}`)",
            target.credential, roles[0], roles[1]
        ))
    })
}

fn marks(states: &[RoleState; 2]) -> [&Mark; 2] {
    [&states[0].mark, &states[1].mark]
}

impl PostgresAlternating {
    pub fn new(
        instance: &str,
        settings: &IndexMap<String, serde_json::Value>,
        admin: Option<&Admin>,
    ) -> Result<PostgresAlternating, ProviderError> {
        Ok(PostgresAlternating {
            client: PgClient::new(PgConfig::parse(
                "postgres_alternating",
                instance,
                settings,
                admin,
            )?),
            refused: Mutex::new(HashSet::new()),
        })
    }

    fn fatal(&self, message: impl std::fmt::Display) -> ProviderError {
        ProviderError::Fatal(format!(
            "PostgreSQL at {}: {message}",
            self.client.cfg.address()
        ))
    }

    /// Both roles' login flag and mark; an error naming a role that does not exist.
    async fn states(&self, roles: [&str; 2]) -> Result<[RoleState; 2], ProviderError> {
        let admin = self.client.admin().await?;
        let names = vec![roles[0], roles[1]];
        let rows = admin
            .query(
                "SELECT rolname, rolcanlogin, pg_catalog.shobj_description(oid, 'pg_authid') FROM pg_catalog.pg_roles WHERE rolname = ANY($1)",
                &[&names],
            )
            .await
            .map_err(|e| self.client.classify(&e, "reading pg_roles"))?;
        self.client.release(admin);
        let state = |role: &str, setting: &str| {
            rows.iter()
                .find(|r| r.get::<_, &str>(0) == role)
                .map(|r| RoleState {
                    can_login: r.get(1),
                    mark: Mark::parse(r.get::<_, Option<&str>>(2)),
                })
                .ok_or_else(|| role_missing(&self.client, role, setting))
        };
        Ok([state(roles[0], "account")?, state(roles[1], ALTERNATE)?])
    }

    /// Sets `secret` as `role`'s password and `mark` as its comment, in one
    /// transaction; `what` names the change in errors.
    async fn set_password_and_mark(
        &self,
        role: &str,
        secret: &Secret,
        mark: &str,
        what: &str,
    ) -> Result<(), ProviderError> {
        let statement = Zeroizing::new(format!(
            "{}; COMMENT ON ROLE {} IS {}",
            *alter_password(role, secret).await?,
            escape_identifier(role),
            escape_literal(mark)
        ));
        self.client
            .execute(&statement, &format!("{what} `{role}`"))
            .await
    }

    /// Sets a random password that is discarded at once and marks the role
    /// retired: the role stays, its old password is dead.
    async fn retire(&self, role: &str, stamp: u64) -> Result<(), ProviderError> {
        let throwaway = Secret::generate(PASSWORD_LEN, ALPHABET);
        let mark = format!("{RETIRED} {stamp}");
        self.set_password_and_mark(role, &throwaway, &mark, "retiring the password of")
            .await
    }

    fn refusal(&self, target: Target<'_>, role: &str) -> ProviderError {
        self.fatal(format!(
            "not retiring `{role}` of credential `{cred}`: it holds the password rekey issued last, most likely the one just promoted, yet Vault's `key_id` named it as the old role (was the Vault entry changed by hand, or seeded with `{ALTERNATE}` before the first rotation?); do not retire `{role}` by hand: its password is the one in Vault; the other role still has its old password: run rekey again for `{cred}` (it moves consumers to the other role with a new password, then retires `{role}`)",
            cred = target.credential
        ))
    }
}

#[async_trait]
impl Provider for PostgresAlternating {
    /// Create changes the password of the role not in use: the two roles are
    /// always there.
    fn reuses_keys(&self) -> bool {
        true
    }

    /// Admin login works and may change passwords; both roles exist, differ and
    /// can log in; their marks say which one the next rotation changes.
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        let roles = roles(target)?;
        self.client.check_admin_may_change_passwords().await?;
        check_role_can_login(&self.client, roles[0], "account").await?;
        check_role_can_login(&self.client, roles[1], ALTERNATE).await?;
        let states = self.states(roles).await?;
        choose("", marks(&states)).map_err(|m| self.fatal(m))?;
        Ok(())
    }

    /// The roles that are not retired (a retired role is a deleted key).
    async fn list(&self, target: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        let roles = roles(target)?;
        let states = self.states(roles).await?;
        Ok(roles
            .iter()
            .zip(states)
            .filter(|(_, s)| !matches!(s.mark, Mark::Retired { .. }))
            .map(|(role, s)| KeyInfo {
                id: (*role).to_owned(),
                active: s.can_login,
                created_at: match &s.mark {
                    Mark::Issued { stamp, .. } if *stamp > 0 => Some(stamp / 1000),
                    _ => None,
                },
                tag: s.mark.tag().map(str::to_owned),
            })
            .collect())
    }

    async fn create(&self, target: Target<'_>, tag: &str) -> Result<Issued, ProviderError> {
        let roles = roles(target)?;
        let states = self.states(roles).await?;
        let role = roles[choose(tag, marks(&states)).map_err(|m| self.fatal(m))?];
        let stamp = next_stamp(marks(&states));
        let secret = Secret::generate(PASSWORD_LEN, ALPHABET);
        let mark = format!("{tag} {stamp}");
        if let Err(e) = self
            .set_password_and_mark(role, &secret, &mark, "setting a new password on")
            .await
        {
            // The answer may have been lost after the change committed: leave no
            // password behind that nobody will learn of (the role is not the one
            // consumers use, so retiring it is safe).
            let _ = self.retire(role, stamp + 1).await;
            return Err(e);
        }
        tracing::info!(credential = %target.credential, role, "Set a new password on the role consumers do not use.");
        let fields = BTreeMap::from([
            ("username".to_owned(), role.to_owned()),
            ("account".to_owned(), role.to_owned()),
        ]);
        Ok(Issued {
            key_id: role.to_owned(),
            secret,
            fields,
        })
    }

    async fn verify(
        &self,
        target: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let roles = roles(target)?;
        let role = key_id.ok_or_else(|| {
            ProviderError::Fatal(format!(
                "verify of credential `{}` names no role",
                target.credential
            ))
        })?;
        index_of(target, roles, role)?;
        self.client
            .password_works(role, secret, verify_database(&self.client.cfg, target))
            .await
    }

    /// Retires the old role (the engine calls this only after a promotion),
    /// unless it holds the newest issue mark: see the module comment.
    async fn deactivate(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let roles = roles(target)?;
        let i = index_of(target, roles, key_id)?;
        let states = self.states(roles).await?;
        if issued_last(marks(&states), i) {
            self.refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((target.credential.to_owned(), key_id.to_owned()));
            return Err(self.refusal(target, key_id));
        }
        self.retire(key_id, next_stamp(marks(&states))).await?;
        tracing::info!(credential = %target.credential, role = key_id, "Retired the role's password.");
        Ok(())
    }

    /// Retires a role (the old one, a new one rolled back, an orphan); a role
    /// already retired is left alone.
    async fn revoke(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let roles = roles(target)?;
        let i = index_of(target, roles, key_id)?;
        if self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(target.credential.to_owned(), key_id.to_owned()))
        {
            return Err(self.refusal(target, key_id));
        }
        let states = self.states(roles).await?;
        if matches!(states[i].mark, Mark::Retired { .. }) {
            return Ok(());
        }
        self.retire(key_id, next_stamp(marks(&states))).await?;
        tracing::info!(credential = %target.credential, role = key_id, "Retired the role's password.");
        Ok(())
    }

    fn has_sessions(&self) -> bool {
        true
    }

    /// `pg_terminate_backend` for the backends of the retired role(s), never the
    /// role consumers moved to.
    async fn end_sessions(
        &self,
        target: Target<'_>,
        retired: &[&str],
    ) -> Result<SessionsEnded, ProviderError> {
        let roles = roles(target)?;
        for role in retired {
            index_of(target, roles, role)?;
        }
        if retired.is_empty() {
            return Ok(SessionsEnded::Unsupported {
                reason: "no role was retired, so no session was opened with a dead password".into(),
            });
        }
        let count = self.client.terminate_backends(retired).await?;
        Ok(SessionsEnded::Ended { count })
    }

    fn end_sessions_by_hand(&self, target: Target<'_>, retired: &[&str]) -> String {
        if retired.is_empty() {
            let [first, second] = roles(target).unwrap_or_default();
            return format!(
                "once the role consumers no longer use (`{first}` or `{second}`) is retired, end its sessions as a superuser or a member of pg_signal_backend: SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '<that role>'"
            );
        }
        terminate_by_hand(retired)
    }

    async fn preflight_end_sessions(
        &self,
        target: Target<'_>,
    ) -> Result<Option<String>, ProviderError> {
        let roles = roles(target)?;
        self.client.check_admin_may_end_sessions(roles[1]).await?;
        self.client
            .check_admin_may_end_sessions(roles[0])
            .await
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(tag: &str, stamp: u64) -> Mark {
        Mark::Issued {
            tag: tag.into(),
            stamp,
        }
    }

    #[test]
    fn marks_parse_from_comments() {
        assert_eq!(Mark::parse(None), Mark::None);
        assert_eq!(Mark::parse(Some("billing app")), Mark::None);
        assert_eq!(
            Mark::parse(Some("rekey:r-20260101-0000-abcd:db 1767225600123")),
            issued("rekey:r-20260101-0000-abcd:db", 1767225600123)
        );
        assert_eq!(Mark::parse(Some("rekey:r-1:db")), issued("rekey:r-1:db", 0));
        assert_eq!(
            Mark::parse(Some("rekey-retired 42")),
            Mark::Retired { stamp: 42 }
        );
        assert_eq!(
            Mark::parse(Some("rekey-retired")),
            Mark::Retired { stamp: 0 }
        );
    }

    #[test]
    fn create_changes_the_role_consumers_do_not_use() {
        let none = Mark::None;
        let retired = Mark::Retired { stamp: 5 };
        let old = issued("rekey:r-1:db", 3);
        let this = issued("rekey:r-2:db", 4);
        let tag = "rekey:r-2:db";
        // Before any rotation consumers use `account`: the second role changes.
        assert_eq!(choose(tag, [&none, &none]), Ok(1));
        // The role rekey issued last is in use; the other one changes.
        assert_eq!(choose(tag, [&old, &none]), Ok(1));
        assert_eq!(choose(tag, [&none, &old]), Ok(0));
        // A retired role is never the one in use.
        assert_eq!(choose(tag, [&retired, &old]), Ok(0));
        assert_eq!(choose(tag, [&old, &retired]), Ok(1));
        assert_eq!(choose(tag, [&retired, &none]), Ok(0));
        assert_eq!(choose(tag, [&retired, &retired]), Ok(1));
        // An earlier attempt of this rotation is taken up again.
        assert_eq!(choose(tag, [&this, &old]), Ok(0));
        assert_eq!(choose(tag, [&old, &this]), Ok(1));
        // Two issue marks of other rotations: refused.
        assert!(choose("rekey:r-3:db", [&old, &this]).is_err());
    }

    #[test]
    fn the_role_issued_last_is_never_retired() {
        let none = Mark::None;
        let retired = Mark::Retired { stamp: 9 };
        let older = issued("rekey:r-1:db", 3);
        let newer = issued("rekey:r-2:db", 4);
        assert!(issued_last([&newer, &older], 0));
        assert!(!issued_last([&newer, &older], 1));
        assert!(issued_last([&none, &older], 1));
        assert!(!issued_last([&none, &older], 0));
        assert!(!issued_last([&retired, &newer], 0));
        assert!(!issued_last([&none, &none], 0));
    }

    #[test]
    fn stamps_only_go_up() {
        let far = issued("rekey:r-1:db", u64::MAX / 2);
        assert_eq!(next_stamp([&far, &Mark::None]), u64::MAX / 2 + 1);
        assert!(next_stamp([&Mark::None, &Mark::None]) > 1_700_000_000_000);
    }
}
