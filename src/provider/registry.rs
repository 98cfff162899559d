//! From a playbook's provider instance to the implementation that drives it. The
//! only place that names concrete providers.

use super::admin::Admin;
use super::catalog::Kind;
use super::{Provider, ProviderError};
use crate::playbook::ProviderInstance;
use std::sync::Arc;

/// Whether this build can rotate credentials of `type_name`.
pub fn supports(type_name: &str) -> bool {
    matches!(type_name, "sandbox" | "sandbox_password" | "exec")
}

/// Builds the provider for `instance` with its resolved admin credential (when the
/// playbook names one), or says why it cannot. Building connects to nothing:
/// providers connect on first use.
pub fn build(
    instance: &ProviderInstance,
    admin: Option<Admin>,
) -> Result<Arc<dyn Provider>, ProviderError> {
    let _ = &admin;
    match instance.type_name.as_str() {
        "sandbox" => Ok(Arc::new(super::sandbox::Sandbox::from_settings(
            Kind::Dual,
            &instance.settings,
        )?)),
        "sandbox_password" => Ok(Arc::new(super::sandbox::Sandbox::from_settings(
            Kind::Single,
            &instance.settings,
        )?)),
        "exec" => Ok(Arc::new(super::exec::Exec::from_settings(
            &instance.name,
            &instance.settings,
            admin,
        )?)),
        other => Err(ProviderError::Fatal(format!(
            "provider type `{other}` (instance `{}`) cannot rotate credentials in this build yet; `rekey providers` lists what can",
            instance.name
        ))),
    }
}
