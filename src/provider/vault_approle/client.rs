//! The AppRole endpoints rekey calls (OpenBao and Vault share them):
//! `role/<role>/role-id`, `role/<role>/secret-id` (create, LIST),
//! `role/<role>/secret-id-accessor/{lookup,destroy}` and `login`.

use crate::provider::ProviderError;
use crate::provider::vault_http::{As, Reply, VaultHttp};
use crate::secret::Secret;
use serde_json::json;

/// The metadata key holding rekey's tag on a secret-id it issued.
pub const TAG_KEY: &str = "rekey_tag";

/// A secret-id as its accessor lookup describes it.
pub struct SecretIdInfo {
    pub accessor: String,
    pub tag: Option<String>,
    pub created_at: Option<u64>,
}

pub struct AppRole<'a> {
    pub vault: &'a VaultHttp,
    pub role: &'a str,
}

impl AppRole<'_> {
    fn path(&self, rest: &str) -> String {
        self.vault.auth_path(&format!("role/{}/{rest}", self.role))
    }

    fn role_missing(&self, reply: &Reply, what: &str) -> ProviderError {
        if reply.status == 404 {
            return ProviderError::Fatal(format!(
                "vault_approle: role `{}` does not exist at auth/{} (HTTP 404); check `role_name` and the `mount` setting",
                self.role, self.vault.config.mount
            ));
        }
        self.vault.refused(what, reply)
    }

    /// The role's role-id: an identifier, not a secret, needed to log in.
    pub async fn role_id(&self) -> Result<String, ProviderError> {
        let reply = self
            .vault
            .request("GET", &self.path("role-id"), None, As::Admin)
            .await?;
        if !reply.ok() {
            return Err(self.role_missing(&reply, "reading the role-id"));
        }
        reply.body["data"]["role_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                ProviderError::Fatal("vault_approle: the role-id answer has no role_id".into())
            })
    }

    /// Issues a secret-id carrying `tag` in its metadata: (accessor, secret-id).
    pub async fn create(&self, tag: &str) -> Result<(String, Secret), ProviderError> {
        let metadata = json!({ TAG_KEY: tag }).to_string();
        let reply = self
            .vault
            .request(
                "POST",
                &self.path("secret-id"),
                Some(&json!({ "metadata": metadata })),
                As::Admin,
            )
            .await?;
        if !reply.ok() {
            return Err(self.role_missing(&reply, "creating a secret-id"));
        }
        let data = &reply.body["data"];
        match (
            data["secret_id_accessor"].as_str(),
            data["secret_id"].as_str(),
        ) {
            (Some(a), Some(s)) => Ok((a.to_owned(), Secret::new(s))),
            _ => {
                // Issued but unusable (its value is unknown): destroy what carries
                // this tag, so no secret-id is left that the engine does not know.
                for info in describe_all(self).await? {
                    if info.tag.as_deref() == Some(tag) {
                        self.destroy(&info.accessor).await?;
                    }
                }
                Err(ProviderError::Transient(
                    "vault_approle: the secret-id answer had no secret_id or accessor; the secret-id was destroyed".into(),
                ))
            }
        }
    }

    /// Logs in with `role_id` and `secret_id`; the login's token is revoked at once.
    pub async fn login(&self, role_id: &str, secret_id: &Secret) -> Result<bool, ProviderError> {
        let reply = self
            .vault
            .request(
                "POST",
                &self.vault.auth_path("login"),
                Some(&json!({ "role_id": role_id, "secret_id": secret_id.expose() })),
                As::Anonymous,
            )
            .await?;
        if reply.ok() {
            self.vault.revoke_login_token(&reply).await;
            return Ok(true);
        }
        // 400: invalid secret-id; 403: refused (bound CIDRs, namespace).
        if matches!(reply.status, 400 | 401 | 403) {
            return Ok(false);
        }
        Err(ProviderError::Fatal(format!(
            "vault_approle: login answered HTTP {}",
            reply.status
        )))
    }

    /// Accessors of the role's secret-ids.
    pub async fn accessors(&self) -> Result<Vec<String>, ProviderError> {
        let reply = self
            .vault
            .request("LIST", &self.path("secret-id"), None, As::Admin)
            .await?;
        if matches!(reply.status, 400 | 404) {
            // 404: no secret-id at all; 400: no such role. Reading the role-id
            // tells them apart and fails with the right message.
            self.role_id().await?;
            if reply.status == 404 {
                return Ok(Vec::new());
            }
        }
        if !reply.ok() {
            return Err(self.role_missing(&reply, "listing secret-ids"));
        }
        Ok(reply.body["data"]["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// What the server knows of a secret-id; `None` when it is gone.
    pub async fn lookup(&self, accessor: &str) -> Result<Option<SecretIdInfo>, ProviderError> {
        let reply = self
            .vault
            .request(
                "POST",
                &self.path("secret-id-accessor/lookup"),
                Some(&json!({ "secret_id_accessor": accessor })),
                As::Admin,
            )
            .await?;
        if reply.status == 404 || (reply.ok() && reply.body["data"].is_null()) {
            return Ok(None);
        }
        if !reply.ok() {
            return Err(self.role_missing(&reply, "looking up a secret-id accessor"));
        }
        let data = &reply.body["data"];
        Ok(Some(SecretIdInfo {
            accessor: accessor.to_owned(),
            tag: data["metadata"][TAG_KEY].as_str().map(str::to_owned),
            created_at: data["creation_time"].as_str().and_then(parse_time),
        }))
    }

    /// Destroys a secret-id by accessor; one already gone counts as destroyed.
    pub async fn destroy(&self, accessor: &str) -> Result<(), ProviderError> {
        if self.lookup(accessor).await?.is_none() {
            return Ok(());
        }
        let reply = self
            .vault
            .request(
                "POST",
                &self.path("secret-id-accessor/destroy"),
                Some(&json!({ "secret_id_accessor": accessor })),
                As::Admin,
            )
            .await?;
        if reply.ok() || reply.status == 404 {
            return Ok(());
        }
        Err(self.role_missing(&reply, "destroying a secret-id"))
    }
}

/// Seconds since the epoch of Vault's RFC 3339 times (nanoseconds, an offset).
fn parse_time(text: &str) -> Option<u64> {
    let t = text.trim();
    // Drop the offset: Vault writes UTC or local time; a few hours off do not
    // matter for telling old keys from new ones, and UTC is the usual case.
    let base = t
        .rfind(['+', 'Z'])
        .filter(|i| *i > 10)
        .map(|i| &t[..i])
        .or_else(|| t.rfind('-').filter(|i| *i > 10).map(|i| &t[..i]))
        .unwrap_or(t);
    humantime::parse_rfc3339_weak(base)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

/// The role's secret-ids listed with what rekey needs (see `lookup`).
pub async fn describe_all(app: &AppRole<'_>) -> Result<Vec<SecretIdInfo>, ProviderError> {
    let mut out = Vec::new();
    for accessor in app.accessors().await? {
        if let Some(info) = app.lookup(&accessor).await? {
            out.push(info);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn vault_times_parse() {
        assert_eq!(
            super::parse_time("1970-01-01T00:01:00.123456789Z"),
            Some(60)
        );
        assert_eq!(super::parse_time("1970-01-01T00:01:00.5+00:00"), Some(60));
        assert_eq!(super::parse_time("junk"), None);
    }
}
