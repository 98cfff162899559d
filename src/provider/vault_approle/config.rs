//! Settings of a `vault_approle` instance and of its credentials.

use crate::provider::{ProviderError, Target};

/// Where the AppRole auth method is mounted unless `settings.mount` says otherwise.
pub const DEFAULT_MOUNT: &str = "approle";

/// A role or user name that can go into a URL path as it is.
pub fn path_safe(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// The role whose secret-ids a credential rotates: `settings.role_name`, or the
/// credential's `account` when the setting is absent.
pub fn role<'t>(target: &Target<'t>) -> Result<&'t str, ProviderError> {
    let role = target
        .settings
        .get("role_name")
        .and_then(|v| v.as_str())
        .or(target.account)
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ProviderError::Fatal(format!(
                "credential `{}` names no AppRole role; add `settings: {{ role_name: <role> }}`",
                target.credential
            ))
        })?;
    if !path_safe(role) {
        return Err(ProviderError::Fatal(format!(
            "credential `{}`: `{role}` is not an AppRole role name (letters, digits, - _ . @)",
            target.credential
        )));
    }
    Ok(role)
}
