//! `redis`: a Redis ACL user's password (dual kind). A Redis user may hold several
//! passwords at once: `ACL SETUSER u >new` adds one beside the old, so consumers
//! move over while both work, and `ACL SETUSER u !<sha256>` removes one later.
//!
//! Key ids: Redis keeps only the SHA-256 of each password (`ACL GETUSER` lists the
//! hashes) and no name or date. The key id is the first 16 hex digits of that
//! hash: not secret (the passwords rekey generates carry 256 bits of entropy, so a
//! hash prefix reveals nothing usable), stable, and enough to address one password
//! for `list` and `revoke`. Verify is `AUTH user new` on a fresh connection.
//!
//! Tags: resume recognises the keys a run created by their tag, and Redis keeps
//! no name nor date per password. So rekey records `key id, creation time, tag` as
//! key patterns of a companion ACL user `rekey-tags:<user>` that is disabled
//! (`off`) and may run no command (`-@all`): it grants nothing, lives and persists
//! with the other ACL rules, and disappears when its last entry is removed. The
//! tag is recorded before the password is added, so a crash in between leaves at
//! worst a tag without a password, which `list` ignores.

mod client;
mod config;

use super::admin::Admin;
use super::{Issued, KeyInfo, Provider, ProviderError, SessionsEnded, Target};
use crate::secret::Secret;
use ::redis::Value;
use async_trait::async_trait;
use client::{AuthError, RedisClient};
use config::{Persist, RedisConfig};
use indexmap::IndexMap;
use sha2::{Digest, Sha256};

/// Hex digits of the password's SHA-256 used as its key id.
const KEY_ID_LEN: usize = 16;
/// Generated passwords: 43 characters of 62 is 256 bits.
const PASSWORD_LEN: usize = 43;
const ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

pub struct Redis {
    client: RedisClient,
}

/// The key id of `secret`: the first 16 hex digits of its SHA-256, as Redis
/// shows it in `ACL GETUSER`.
pub fn key_id(secret: &Secret) -> String {
    let mut id = hex::encode(Sha256::digest(secret.expose().as_bytes()));
    id.truncate(KEY_ID_LEN);
    id
}

impl Redis {
    pub fn new(
        instance: &str,
        settings: &IndexMap<String, serde_json::Value>,
        admin: Option<&Admin>,
    ) -> Result<Redis, ProviderError> {
        Ok(Redis {
            client: RedisClient::new(RedisConfig::parse(instance, settings, admin)?),
        })
    }

    fn account<'a>(&self, target: Target<'a>) -> Result<&'a str, ProviderError> {
        target.account.filter(|a| !a.is_empty()).ok_or_else(|| {
            ProviderError::Fatal(format!(
                "credential `{}` names no `account` (the Redis ACL user)",
                target.credential
            ))
        })
    }

    /// The SHA-256 hashes (hex) of the user's passwords, or a fatal error when the
    /// user does not exist (`ACL SETUSER` would silently create it).
    async fn password_hashes(&self, user: &str) -> Result<Vec<String>, ProviderError> {
        let mut cmd = ::redis::cmd("ACL");
        cmd.arg("GETUSER").arg(user);
        let answer = self.client.query(&cmd, "ACL GETUSER").await?;
        let fields = match answer {
            Value::Nil => {
                return Err(ProviderError::Fatal(format!(
                    "Redis at {}: the ACL user `{user}` does not exist; create it (ACL SETUSER) or fix the credential's `account`",
                    self.client.cfg.address()
                )));
            }
            other => fields(other),
        };
        Ok(fields
            .into_iter()
            .find(|(k, _)| k == "passwords")
            .map(|(_, v)| match v {
                Value::Array(a) | Value::Set(a) => a.iter().filter_map(text).collect(),
                _ => Vec::new(),
            })
            .unwrap_or_default())
    }

    async fn setuser(&self, user: &str, rule: &str, what: &str) -> Result<(), ProviderError> {
        let mut cmd = ::redis::cmd("ACL");
        cmd.arg("SETUSER").arg(user).arg(rule);
        self.client.query(&cmd, what).await.map(|_| ())
    }

    /// Makes ACL changes survive a restart, as the `persist` setting says.
    async fn persist(&self) -> Result<(), ProviderError> {
        let cmd = match self.client.cfg.persist {
            Persist::None => return Ok(()),
            Persist::AclSave => {
                let mut c = ::redis::cmd("ACL");
                c.arg("SAVE");
                c
            }
            Persist::ConfigRewrite => {
                let mut c = ::redis::cmd("CONFIG");
                c.arg("REWRITE");
                c
            }
        };
        self.client.query(&cmd, "persisting the ACL change").await.map(|_| ()).map_err(|e| {
            ProviderError::Fatal(format!(
                "{e}; the change is live but would not survive a restart: configure an aclfile (persist: acl_save) or set `persist` to config_rewrite or none"
            ))
        })
    }
}

/// The companion ACL user holding the tags of `user`'s passwords.
fn tag_user(user: &str) -> String {
    format!("rekey-tags:{user}")
}

/// Prefix of the key patterns that record a tag.
const TAG_PATTERN: &str = "rekey-tag:";

impl Redis {
    /// `key id -> (created_at, tag)` recorded for `user`.
    async fn tags(&self, user: &str) -> Result<Vec<(String, u64, String)>, ProviderError> {
        let mut cmd = ::redis::cmd("ACL");
        cmd.arg("GETUSER").arg(tag_user(user));
        let answer = self.client.query(&cmd, "ACL GETUSER (tags)").await?;
        let fields = fields(answer);
        let patterns: Vec<String> = match fields
            .into_iter()
            .find(|(k, _)| k == "keys")
            .map(|(_, v)| v)
        {
            Some(Value::Array(a)) => a.iter().filter_map(text).collect(),
            Some(v) => text(&v)
                .map(|t| t.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(patterns
            .iter()
            .filter_map(|p| {
                let rest = p.split_once('~')?.1.strip_prefix(TAG_PATTERN)?;
                let (id, rest) = rest.split_once(':')?;
                let (created, tag) = rest.split_once(':')?;
                Some((id.to_owned(), created.parse().ok()?, tag.to_owned()))
            })
            .collect())
    }

    async fn record_tag(&self, user: &str, key_id: &str, tag: &str) -> Result<(), ProviderError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Key patterns end at whitespace; a tag never holds any, but be safe.
        let tag: String = tag
            .chars()
            .map(|c| if c.is_whitespace() { '_' } else { c })
            .collect();
        let mut cmd = ::redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(tag_user(user))
            .arg("off")
            .arg("-@all")
            .arg("resetchannels")
            .arg(format!("~{TAG_PATTERN}{key_id}:{now}:{tag}"));
        self.client
            .query(&cmd, "ACL SETUSER (record tag)")
            .await
            .map(|_| ())
    }

    async fn forget_tag(&self, user: &str, key_id: &str) -> Result<(), ProviderError> {
        let tags = self.tags(user).await?;
        if !tags.iter().any(|(id, _, _)| id == key_id) {
            return Ok(());
        }
        let keep: Vec<String> = tags
            .iter()
            .filter(|(id, _, _)| id != key_id)
            .map(|(id, created, tag)| format!("~{TAG_PATTERN}{id}:{created}:{tag}"))
            .collect();
        let mut cmd = ::redis::cmd("ACL");
        if keep.is_empty() {
            cmd.arg("DELUSER").arg(tag_user(user));
        } else {
            cmd.arg("SETUSER")
                .arg(tag_user(user))
                .arg("resetkeys")
                .arg(keep);
        }
        self.client
            .query(&cmd, "ACL SETUSER (forget tag)")
            .await
            .map(|_| ())
    }
}

/// The field/value pairs of an ACL GETUSER answer (RESP2 flat array or RESP3 map).
fn fields(answer: Value) -> Vec<(String, Value)> {
    match answer {
        Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(k, v)| Some((text(&k)?, v)))
            .collect(),
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|p| Some((text(p.first()?)?, p.get(1)?.clone())))
            .collect(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[async_trait]
impl Provider for Redis {
    /// Admin login works, the user exists, and ACL changes can be persisted.
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        let user = self.account(target)?;
        self.password_hashes(user).await?;
        if self.client.cfg.persist == Persist::AclSave {
            let mut cmd = ::redis::cmd("CONFIG");
            cmd.arg("GET").arg("aclfile");
            let answer = self.client.query(&cmd, "CONFIG GET aclfile").await?;
            let configured = match &answer {
                Value::Array(a) => a.get(1).and_then(text).is_some_and(|f| !f.is_empty()),
                Value::Map(m) => m
                    .first()
                    .and_then(|(_, v)| text(v))
                    .is_some_and(|f| !f.is_empty()),
                _ => false,
            };
            if !configured {
                return Err(ProviderError::Fatal(format!(
                    "Redis at {}: `persist: acl_save` but the server has no aclfile, so ACL SAVE would fail; configure one, or set `persist: config_rewrite` (users in redis.conf) or `persist: none`",
                    self.client.cfg.address()
                )));
            }
        }
        Ok(())
    }

    /// Every password of the user, by key id, with the tag and creation time rekey
    /// recorded for the ones it created.
    async fn list(&self, target: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        let user = self.account(target)?;
        let hashes = self.password_hashes(user).await?;
        let tags = self.tags(user).await?;
        Ok(hashes
            .into_iter()
            .map(|h| {
                let id: String = h.chars().take(KEY_ID_LEN).collect();
                let recorded = tags.iter().find(|(t, _, _)| *t == id);
                KeyInfo {
                    active: true,
                    created_at: recorded.map(|r| r.1),
                    tag: recorded.map(|r| r.2.clone()),
                    id,
                }
            })
            .collect())
    }

    async fn create(&self, target: Target<'_>, tag: &str) -> Result<Issued, ProviderError> {
        let user = self.account(target)?;
        // ACL SETUSER creates a missing user: make sure it exists first.
        self.password_hashes(user).await?;
        let secret = Secret::generate(PASSWORD_LEN, ALPHABET);
        let id = key_id(&secret);
        self.record_tag(user, &id, tag).await?;
        let rule = zeroize::Zeroizing::new(format!(">{}", secret.expose()));
        self.setuser(user, &rule, "ACL SETUSER (add password)")
            .await?;
        if let Err(e) = self.persist().await {
            // Do not leave a password behind that the caller will never learn of.
            let hash = hex::encode(Sha256::digest(secret.expose().as_bytes()));
            let _ = self
                .setuser(user, &format!("!{hash}"), "ACL SETUSER (undo)")
                .await;
            return Err(e);
        }
        Ok(Issued::new(id, secret))
    }

    async fn verify(
        &self,
        target: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let user = self.account(target)?;
        if key_id.is_some_and(|k| k != self::key_id(secret)) {
            return Ok(false);
        }
        match self.client.login(user, secret).await {
            Ok(()) => Ok(true),
            Err(AuthError::Rejected) => Ok(false),
            Err(AuthError::Other(e)) => Err(e),
        }
    }

    /// Removes the password whose hash starts with `key_id`; a password already
    /// gone is not an error (revoke is retried and resumed).
    async fn revoke(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        let user = self.account(target)?;
        let hashes = self.password_hashes(user).await?;
        let matching: Vec<&String> = hashes.iter().filter(|h| h.starts_with(key_id)).collect();
        match matching.as_slice() {
            // Gone already, perhaps by a revoke that stopped before persisting
            // it: persisted again, or a restart would bring the password back.
            [] => {
                self.forget_tag(user, key_id).await?;
                self.persist().await
            }
            [hash] => {
                self.setuser(user, &format!("!{hash}"), "ACL SETUSER (remove password)")
                    .await?;
                self.forget_tag(user, key_id).await?;
                self.persist().await
            }
            _ => Err(ProviderError::Fatal(format!(
                "Redis at {}: key id {key_id} matches several passwords of `{user}`; remove the right one by hand (ACL SETUSER {user} !<sha256>)",
                self.client.cfg.address()
            ))),
        }
    }

    fn has_sessions(&self) -> bool {
        true
    }

    /// `CLIENT KILL USER u`: every connection authenticated as the user (Redis
    /// cannot tell which password a connection used), rekey's own spared
    /// (SKIPME, the default). Called once the old passwords are removed.
    async fn end_sessions(
        &self,
        target: Target<'_>,
        _retired: &[&str],
    ) -> Result<SessionsEnded, ProviderError> {
        let user = self.account(target)?;
        let mut cmd = ::redis::cmd("CLIENT");
        cmd.arg("KILL")
            .arg("USER")
            .arg(user)
            .arg("SKIPME")
            .arg("yes");
        match self.client.query(&cmd, "CLIENT KILL USER").await? {
            Value::Int(n) => Ok(SessionsEnded::Ended {
                count: u64::try_from(n).unwrap_or(0),
            }),
            _ => Err(ProviderError::Fatal(format!(
                "Redis at {}: CLIENT KILL USER: unexpected answer",
                self.client.cfg.address()
            ))),
        }
    }

    fn end_sessions_by_hand(&self, target: Target<'_>, _retired: &[&str]) -> String {
        format!(
            "as a user allowed +client|kill: CLIENT KILL USER {}",
            target.account.unwrap_or_default()
        )
    }

    /// `ACL DRYRUN` (Redis 7): may the admin user run CLIENT KILL?
    async fn preflight_end_sessions(
        &self,
        target: Target<'_>,
    ) -> Result<Option<String>, ProviderError> {
        let user = self.account(target)?;
        let admin = self.client.cfg.admin_user.as_deref().unwrap_or("default");
        let mut cmd = ::redis::cmd("ACL");
        cmd.arg("DRYRUN")
            .arg(admin)
            .arg("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(user);
        match self.client.query(&cmd, "ACL DRYRUN").await {
            Ok(Value::Okay) => Ok(Some(format!(
                "the admin user `{admin}` may run CLIENT KILL"
            ))),
            Ok(Value::SimpleString(s)) if s == "OK" => Ok(Some(format!(
                "the admin user `{admin}` may run CLIENT KILL"
            ))),
            Ok(_) => Err(ProviderError::Fatal(format!(
                "Redis at {}: the admin user `{admin}` may not run CLIENT KILL, which breach mode uses to end `{user}`'s connections; grant it +client|kill, or set `end_sessions: false` on the instance",
                self.client.cfg.address()
            ))),
            // Before Redis 7 there is no ACL DRYRUN (an ERR answer): nothing to check with.
            Err(ProviderError::Fatal(m)) if m.ends_with("answered ERR") => Ok(Some(
                "this server cannot tell (no ACL DRYRUN before Redis 7); the admin needs +client|kill".into(),
            )),
            Err(e) => Err(e),
        }
    }
}
