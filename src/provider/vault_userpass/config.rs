//! Settings of a `vault_userpass` instance and of its credentials.

use crate::provider::vault_approle::config::path_safe;
use crate::provider::{ProviderError, Target};

/// Where the userpass auth method is mounted unless `settings.mount` says otherwise.
pub const DEFAULT_MOUNT: &str = "userpass";

/// The user whose password a credential rotates: its `account`. The server
/// lowercases user names, so rekey does too.
pub fn username(target: &Target<'_>) -> Result<String, ProviderError> {
    let user = target
        .account
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ProviderError::Fatal(format!(
                "credential `{}` names no userpass user; set `account: <username>`",
                target.credential
            ))
        })?;
    if !path_safe(user) {
        return Err(ProviderError::Fatal(format!(
            "credential `{}`: `{user}` is not a userpass user name (letters, digits, - _ . @)",
            target.credential
        )));
    }
    Ok(user.to_lowercase())
}
