//! Periodic hygiene: credential ages (`ages`), the inventory `rekey report`
//! prints (`inventory`), and the watch on retired keys (`watch`). These read
//! Vault and ask providers; `plan::age` judges what they find, offline.
//!
//! Invariant: nothing here changes anything: Vault metadata and entries are
//! read, providers are asked only `list` and `last_used`.

pub mod inventory;
pub mod watch;

use crate::plan::age::{Age, AgeSource};
use crate::playbook::{Credential, Playbook};
use crate::provider::{Provider, Target};
use crate::store::SecretStore;
use indexmap::IndexMap;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// How many credentials' ages are looked up at once.
pub(crate) const LOOKUPS_IN_FLIGHT: usize = 8;

/// The custom metadata key rekey writes on each path it promotes, naming the
/// credential (`engine/rotate/vault.rs`).
pub const REKEY_CREDENTIAL: &str = "rekey_credential";

/// The ages of `indices` (credentials of `playbook`), looked up concurrently.
/// `providers` holds the instances that could be built (a credential whose
/// instance is missing gets an age from Vault only).
pub async fn ages(
    store: &dyn SecretStore,
    providers: &IndexMap<String, Arc<dyn Provider>>,
    playbook: &Playbook,
    indices: &[usize],
) -> FxHashMap<usize, Age> {
    use futures::StreamExt;
    futures::stream::iter(indices.iter().copied())
        .map(|i| async move {
            let c = &playbook.credentials[i];
            (
                i,
                age_of(store, providers.get(&c.provider).map(Arc::as_ref), c).await,
            )
        })
        .buffer_unordered(LOOKUPS_IN_FLIGHT)
        .collect()
        .await
}

/// One credential's age (see `plan::age` for the order of the sources).
pub async fn age_of(
    store: &dyn SecretStore,
    provider: Option<&dyn Provider>,
    c: &Credential,
) -> Age {
    let meta = match store.metadata(&c.vault_path).await {
        Ok(m) => m,
        Err(e) => return Age::unknown(format!("Vault: {e}"), 0),
    };
    let version = meta.current_version;
    if version == 0 {
        return Age::unknown(format!("no Vault entry at `{}` yet", c.vault_path), 0);
    }
    let written_by_rekey = meta
        .custom_metadata
        .get(REKEY_CREDENTIAL)
        .map(String::as_str)
        == Some(c.id.as_str());
    if written_by_rekey
        && !meta.current_deleted
        && let Some(created) = meta.current_created
    {
        return Age {
            rotated_at: Some(created),
            source: AgeSource::VaultMetadata,
            detail: format!(
                "Vault version {version} of `{}` written by rekey {}",
                c.vault_path,
                crate::plan::age::timestamp(created)
            ),
            vault_version: version,
            key_id: None,
        };
    }
    // Not a version rekey wrote: the provider's word on the key Vault names.
    let why_not_vault = if written_by_rekey {
        "its current version is deleted"
    } else {
        "rekey did not write it"
    };
    let key_id = match store.read(&c.vault_path).await {
        Ok(entry) => entry.fields.get("key_id").cloned(),
        Err(e) => {
            return Age::unknown(
                format!(
                    "Vault version {version} ({why_not_vault}); its key id cannot be read: {e}"
                ),
                version,
            );
        }
    };
    let Some(key_id) = key_id else {
        return Age::unknown(
            format!(
                "Vault version {version} of `{}` ({why_not_vault}) names no key id for the provider to date",
                c.vault_path
            ),
            version,
        );
    };
    let Some(provider) = provider.filter(|p| p.lists_keys()) else {
        return Age {
            key_id: Some(key_id.clone()),
            ..Age::unknown(
                format!(
                    "Vault names key {key_id} ({why_not_vault}), and provider instance `{}` cannot list keys here",
                    c.provider
                ),
                version,
            )
        };
    };
    let target = Target {
        credential: &c.id,
        account: c.account.as_deref(),
        settings: &c.settings,
    };
    let unknown = |detail: String| Age {
        key_id: Some(key_id.clone()),
        ..Age::unknown(detail, version)
    };
    match provider.list(target).await {
        Ok(keys) => match keys.iter().find(|k| k.id == key_id) {
            Some(k) => match k.created_at {
                Some(created) => Age {
                    rotated_at: Some(created),
                    source: AgeSource::Provider,
                    detail: format!(
                        "key {key_id} created {} at `{}`",
                        crate::plan::age::timestamp(created),
                        c.provider
                    ),
                    vault_version: version,
                    key_id: Some(key_id.clone()),
                },
                None => unknown(format!(
                    "`{}` lists key {key_id} without a creation date",
                    c.provider
                )),
            },
            None => unknown(format!(
                "Vault names key {key_id}, which `{}` does not list",
                c.provider
            )),
        },
        Err(e) => unknown(format!("`{}` could not list keys: {e}", c.provider)),
    }
}
