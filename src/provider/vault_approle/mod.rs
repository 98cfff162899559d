//! `vault_approle`: AppRole secret-ids on OpenBao or Vault (dual kind). A new
//! secret-id is issued for the role (tagged in its metadata), verified by logging
//! in with the role-id, and the old one destroyed by its accessor. The key id rekey
//! records is the secret-id's accessor.

pub mod client;
pub mod config;

use super::admin::Admin;
use super::vault_http::VaultHttp;
use super::{Issued, KeyInfo, Provider, ProviderError, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use client::AppRole;
use indexmap::IndexMap;

pub struct VaultAppRole {
    vault: VaultHttp,
}

impl VaultAppRole {
    pub fn new(
        settings: &IndexMap<String, serde_json::Value>,
        admin: Option<&Admin>,
    ) -> Result<VaultAppRole, ProviderError> {
        Ok(VaultAppRole {
            vault: VaultHttp::new("vault_approle", settings, config::DEFAULT_MOUNT, admin)?,
        })
    }

    fn app<'a>(&'a self, target: &Target<'a>) -> Result<AppRole<'a>, ProviderError> {
        Ok(AppRole {
            vault: &self.vault,
            role: config::role(target)?,
        })
    }
}

#[async_trait]
impl Provider for VaultAppRole {
    /// Read-only: the role exists (its role-id reads with the admin token), and
    /// the token may issue and destroy secret-ids.
    async fn preflight(&self, target: Target<'_>) -> Result<(), ProviderError> {
        let app = self.app(&target)?;
        app.role_id().await?;
        for (rest, what) in [
            ("secret-id", "issue secret-ids"),
            ("secret-id-accessor/destroy", "destroy secret-ids"),
        ] {
            let path = self.vault.auth_path(&format!("role/{}/{rest}", app.role));
            if !self.vault.can(&path, "update").await? {
                return Err(ProviderError::Fatal(format!(
                    "vault_approle: the admin token from {} may not {what} for role `{}` (needs `update` on {path})",
                    self.vault.origin, app.role
                )));
            }
        }
        Ok(())
    }

    async fn list(&self, target: Target<'_>) -> Result<Vec<KeyInfo>, ProviderError> {
        let app = self.app(&target)?;
        Ok(client::describe_all(&app)
            .await?
            .into_iter()
            .map(|s| KeyInfo {
                id: s.accessor,
                active: true,
                created_at: s.created_at,
                tag: s.tag,
            })
            .collect())
    }

    async fn create(&self, target: Target<'_>, tag: &str) -> Result<Issued, ProviderError> {
        let app = self.app(&target)?;
        let (accessor, secret) = app.create(tag).await?;
        tracing::info!(credential = %target.credential, role = app.role, key_id = %accessor, "Issued a secret-id.");
        Ok(Issued::new(accessor, secret))
    }

    async fn verify(
        &self,
        target: Target<'_>,
        key_id: Option<&str>,
        secret: &Secret,
    ) -> Result<bool, ProviderError> {
        let _ = key_id;
        let app = self.app(&target)?;
        let role_id = app.role_id().await?;
        app.login(&role_id, secret).await
    }

    async fn revoke(&self, target: Target<'_>, key_id: &str) -> Result<(), ProviderError> {
        self.app(&target)?.destroy(key_id).await
    }
}
