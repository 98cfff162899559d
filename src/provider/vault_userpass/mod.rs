//! `vault_userpass`: userpass passwords on OpenBao or Vault (single kind). The
//! password is set in place with the admin token and verified by logging in.

pub mod client;
pub mod config;

use super::admin::Admin;
use super::vault_http::VaultHttp;
use super::{Provider, ProviderError, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use client::UserPass;
use indexmap::IndexMap;

pub struct VaultUserPass {
    vault: VaultHttp,
}

impl VaultUserPass {
    pub fn new(
        settings: &IndexMap<String, serde_json::Value>,
        admin: Option<&Admin>,
    ) -> Result<VaultUserPass, ProviderError> {
        Ok(VaultUserPass {
            vault: VaultHttp::new("vault_userpass", settings, config::DEFAULT_MOUNT, admin)?,
        })
    }
}

#[async_trait]
impl Provider for VaultUserPass {
    /// Read-only: the user exists, and the admin token may set its password.
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        let user = config::username(&target)?;
        UserPass {
            vault: &self.vault,
            user: &user,
        }
        .exists()
        .await?;
        let path = self.vault.auth_path(&format!("users/{user}/password"));
        if !self.vault.can(&path, "update").await? {
            return Err(ProviderError::Fatal(format!(
                "vault_userpass: the admin token from {} may not set the password of `{user}` (needs `update` on {path})",
                self.vault.origin
            )));
        }
        Ok(())
    }

    async fn change(&self, target: Target<'_>, new: &Secret) -> Result<(), ProviderError> {
        let user = config::username(&target)?;
        UserPass {
            vault: &self.vault,
            user: &user,
        }
        .set_password(new)
        .await?;
        tracing::info!(credential = %target.credential, user = %user, "Set a new password.");
        Ok(())
    }

    async fn verify(
        &self,
        target: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let _ = key_id;
        let user = config::username(&target)?;
        UserPass {
            vault: &self.vault,
            user: &user,
        }
        .login(secret)
        .await
    }
}
