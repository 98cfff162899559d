//! The userpass endpoints rekey calls (OpenBao and Vault share them):
//! `users/<name>` (read), `users/<name>/password` (update) and `login/<name>`.

use crate::provider::ProviderError;
use crate::provider::vault_http::{As, VaultHttp};
use crate::secret::Secret;
use serde_json::json;

pub struct UserPass<'a> {
    pub vault: &'a VaultHttp,
    pub user: &'a str,
}

impl UserPass<'_> {
    fn missing(
        &self,
        status: u16,
        what: &str,
        reply: &crate::provider::vault_http::Reply,
    ) -> ProviderError {
        if status == 404 {
            return ProviderError::Fatal(format!(
                "vault_userpass: user `{}` does not exist at auth/{} (HTTP 404); check the credential's `account` and the `mount` setting",
                self.user, self.vault.config.mount
            ));
        }
        self.vault.refused(what, reply)
    }

    /// Fails unless the user exists (read with the admin token).
    pub async fn exists(&self) -> Result<(), ProviderError> {
        let path = self.vault.auth_path(&format!("users/{}", self.user));
        let reply = self.vault.request("GET", &path, None, As::Admin).await?;
        if reply.ok() {
            return Ok(());
        }
        Err(self.missing(reply.status, "reading the user", &reply))
    }

    /// Sets the user's password. The server creates no user here: for an unknown
    /// one it answers a bare 500, so a failure is followed by an existence check
    /// that turns it into an error saying what to fix.
    pub async fn set_password(&self, password: &Secret) -> Result<(), ProviderError> {
        let path = self
            .vault
            .auth_path(&format!("users/{}/password", self.user));
        let result = self
            .vault
            .request(
                "POST",
                &path,
                Some(&json!({ "password": password.expose() })),
                As::Admin,
            )
            .await;
        match result {
            Ok(reply) if reply.ok() => Ok(()),
            Ok(reply) => {
                self.exists().await?;
                Err(self.missing(reply.status, "setting the password", &reply))
            }
            Err(e) => {
                if let Err(missing @ ProviderError::Fatal(_)) = self.exists().await {
                    return Err(missing);
                }
                Err(e)
            }
        }
    }

    /// Logs in with `password`; the login's token is revoked at once.
    pub async fn login(&self, password: &Secret) -> Result<bool, ProviderError> {
        let path = self.vault.auth_path(&format!("login/{}", self.user));
        let reply = self
            .vault
            .request(
                "POST",
                &path,
                Some(&json!({ "password": password.expose() })),
                As::Anonymous,
            )
            .await?;
        if reply.ok() {
            self.vault.revoke_login_token(&reply).await;
            return Ok(true);
        }
        // 400: wrong password; 403: refused (bound CIDRs).
        if matches!(reply.status, 400 | 401 | 403) {
            return Ok(false);
        }
        Err(ProviderError::Fatal(format!(
            "vault_userpass: login answered HTTP {}",
            reply.status
        )))
    }
}
