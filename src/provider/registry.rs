//! From a playbook's provider instance to the implementation that drives it. The
//! only place that names concrete providers.

use super::catalog::Kind;
use super::{Provider, ProviderError};
use crate::playbook::ProviderInstance;
use std::sync::Arc;

/// Builds the provider for `instance`, or says why this build cannot run it.
pub fn build(instance: &ProviderInstance) -> Result<Arc<dyn Provider>, ProviderError> {
    match instance.type_name.as_str() {
        "sandbox" => Ok(Arc::new(super::sandbox::Sandbox::from_settings(
            Kind::Dual,
            &instance.settings,
        )?)),
        "sandbox_password" => Ok(Arc::new(super::sandbox::Sandbox::from_settings(
            Kind::Single,
            &instance.settings,
        )?)),
        other => Err(ProviderError::Fatal(format!(
            "provider type `{other}` (instance `{}`) cannot rotate credentials in this build yet; `rekey providers` lists what can",
            instance.name
        ))),
    }
}
