//! From a playbook's provider instance to the implementation that drives it. The
//! only place that maps provider types to their code: the declarative HTTP driver
//! for a type with an HTTP definition, else the native provider its name
//! (`catalog::Native`) stands for.

use super::admin::Admin;
use super::{Provider, ProviderError};
use crate::catalog::{Catalog, Kind, Native};
use crate::playbook::ProviderInstance;
use std::sync::Arc;

/// Builds the provider for `instance` with its resolved admin credential (when the
/// playbook names one), or says why it cannot. Building connects to nothing:
/// providers connect on first use.
pub fn build(
    instance: &ProviderInstance,
    catalog: &Catalog,
    admin: Option<Admin>,
) -> Result<Arc<dyn Provider>, ProviderError> {
    if let Some(t) = catalog
        .get(&instance.type_name)
        .filter(|t| t.http.is_some())
    {
        return Ok(Arc::new(super::http::HttpProvider::build(
            instance, t, admin,
        )?));
    }
    let Ok(native) = instance.type_name.parse::<Native>() else {
        return Err(ProviderError::Fatal(format!(
            "provider type `{}` (instance `{}`) cannot rotate credentials in this build yet; `rekey providers` lists what can",
            instance.type_name, instance.name
        )));
    };
    let name = &instance.name;
    let settings = &instance.settings;
    let provider: Arc<dyn Provider> = match native {
        Native::Sandbox => Arc::new(
            super::sandbox::Sandbox::from_settings(Kind::Dual, settings)?.with_admin(admin),
        ),
        Native::SandboxPassword => Arc::new(
            super::sandbox::Sandbox::from_settings(Kind::Single, settings)?.with_admin(admin),
        ),
        Native::Exec => Arc::new(super::exec::Exec::from_settings(name, settings, admin)?),
        Native::AwsIam => Arc::new(super::aws_iam::AwsIam::new(settings, admin.as_ref())?),
        Native::VaultApprole => Arc::new(super::vault_approle::VaultAppRole::new(
            settings,
            admin.as_ref(),
        )?),
        Native::VaultUserpass => Arc::new(super::vault_userpass::VaultUserPass::new(
            settings,
            admin.as_ref(),
        )?),
        Native::Ldap => Arc::new(super::ldap::LdapProvider::from_settings(
            name, settings, admin,
        )?),
        Native::Ssh => Arc::new(super::ssh::SshProvider::from_settings(
            name, settings, admin,
        )?),
        Native::Postgres => Arc::new(super::postgres::Postgres::new(
            name,
            settings,
            admin.as_ref(),
        )?),
        Native::PostgresAlternating => Arc::new(super::postgres::PostgresAlternating::new(
            name,
            settings,
            admin.as_ref(),
        )?),
        Native::Mysql => Arc::new(super::mysql::Mysql::new(name, settings, admin.as_ref())?),
        Native::Redis => Arc::new(super::redis::Redis::new(name, settings, admin.as_ref())?),
    };
    Ok(provider)
}
