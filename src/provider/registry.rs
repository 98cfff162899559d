//! From a playbook's provider instance to the implementation that drives it. The
//! only place that names concrete providers.

use super::admin::Admin;
use super::{Provider, ProviderError};
use crate::catalog::{Catalog, Kind, ProviderType};
use crate::playbook::ProviderInstance;
use std::sync::Arc;

/// Whether this build can rotate credentials of `type_name`.
pub fn supports(type_name: &str, catalog: &Catalog) -> bool {
    matches!(
        type_name,
        "sandbox"
            | "sandbox_password"
            | "aws_iam"
            | "vault_approle"
            | "vault_userpass"
            | "ldap"
            | "ssh"
            | "postgres"
            | "postgres_alternating"
            | "mysql"
            | "redis"
            | "exec"
    ) || http_type(type_name, catalog).is_some()
}

/// The catalog entry of `type_name` when it has a declarative HTTP definition.
fn http_type<'c>(type_name: &str, catalog: &'c Catalog) -> Option<&'c ProviderType> {
    catalog.get(type_name).filter(|t| t.http.is_some())
}

/// Builds the provider for `instance` with its resolved admin credential (when the
/// playbook names one), or says why it cannot. Building connects to nothing:
/// providers connect on first use.
pub fn build(
    instance: &ProviderInstance,
    catalog: &Catalog,
    admin: Option<Admin>,
) -> Result<Arc<dyn Provider>, ProviderError> {
    match instance.type_name.as_str() {
        "sandbox" => Ok(Arc::new(
            super::sandbox::Sandbox::from_settings(Kind::Dual, &instance.settings)?
                .with_admin(admin),
        )),
        "sandbox_password" => Ok(Arc::new(
            super::sandbox::Sandbox::from_settings(Kind::Single, &instance.settings)?
                .with_admin(admin),
        )),
        "aws_iam" => Ok(Arc::new(super::aws_iam::AwsIam::new(
            &instance.settings,
            admin.as_ref(),
        )?)),
        "vault_approle" => Ok(Arc::new(super::vault_approle::VaultAppRole::new(
            &instance.settings,
            admin.as_ref(),
        )?)),
        "vault_userpass" => Ok(Arc::new(super::vault_userpass::VaultUserPass::new(
            &instance.settings,
            admin.as_ref(),
        )?)),
        "ldap" => Ok(Arc::new(super::ldap::LdapProvider::from_settings(
            &instance.name,
            &instance.settings,
            admin,
        )?)),
        "ssh" => Ok(Arc::new(super::ssh::SshProvider::from_settings(
            &instance.name,
            &instance.settings,
            admin,
        )?)),
        other if http_type(other, catalog).is_some() => {
            Ok(Arc::new(super::http::HttpProvider::build(
                instance,
                http_type(other, catalog).expect("checked by the guard"),
                admin,
            )?))
        }
        "postgres" => Ok(Arc::new(super::postgres::Postgres::new(
            &instance.name,
            &instance.settings,
            admin.as_ref(),
        )?)),
        "postgres_alternating" => Ok(Arc::new(super::postgres::PostgresAlternating::new(
            &instance.name,
            &instance.settings,
            admin.as_ref(),
        )?)),
        "mysql" => Ok(Arc::new(super::mysql::Mysql::new(
            &instance.name,
            &instance.settings,
            admin.as_ref(),
        )?)),
        "redis" => Ok(Arc::new(super::redis::Redis::new(
            &instance.name,
            &instance.settings,
            admin.as_ref(),
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
