//! The Vault side of a rotation: the consumers' path (read, promote with
//! check-and-set, custom metadata) and the staging entry (the write-ahead log).

use super::ctx::{Ctx, Failure};
use crate::engine::EngineError;
use crate::protocol::Step;
use crate::secret::Secret;
use crate::store::{Entry, StoreError};
use serde_json::json;
use std::collections::BTreeMap;

impl Ctx<'_> {
    pub(super) async fn read_current(&self) -> Result<Result<Entry, Failure>, EngineError> {
        let store = self.engine.store.clone();
        let path = self.credential.vault_path.clone();
        self.vstep(Step::ReadCurrent, json!({ "path": path }), || {
            let store = store.clone();
            let path = path.clone();
            async move { store.read(&path).await }
        })
        .await
    }

    pub(super) async fn stage(
        &self,
        secret: &Secret,
        fields: &BTreeMap<String, String>,
    ) -> Result<Result<u64, Failure>, EngineError> {
        let store = self.engine.store.clone();
        let path = self.staging_path();
        self.vstep(
            Step::Stage,
            json!({ "path": path, "fingerprint": self.fingerprint(secret), "fields": fields }),
            || {
                let store = store.clone();
                let path = path.clone();
                async move {
                    // The path is this run's own and new, so one write usually does;
                    // a leftover from an earlier attempt of this run is overwritten.
                    match store.write_cas(&path, secret, fields, 0).await {
                        Err(StoreError::CasConflict { .. }) => {
                            let current = store.read(&path).await?.version;
                            store.write_cas(&path, secret, fields, current).await
                        }
                        other => other,
                    }
                }
            },
        )
        .await
    }

    pub(super) async fn clear_staging(&self) -> Result<(), EngineError> {
        let store = self.engine.store.clone();
        let path = self.staging_path();
        let result = self
            .step(Step::ClearStaging, json!({ "path": path }), || {
                let store = store.clone();
                let path = path.clone();
                async move { store.delete_all(&path).await }
            })
            .await?;
        if let Err(f) = result {
            // The value is promoted; a leftover staging entry is tidied by resume.
            tracing::warn!(credential = %self.credential.id, "Could not clear the staging entry: {}", f.message);
        }
        Ok(())
    }

    /// Writes the consumers' path with check-and-set on the version read before
    /// the change, then its custom metadata unless `seen` (what the read found)
    /// already says it.
    pub(super) async fn promote(
        &self,
        secret: &Secret,
        fields: &BTreeMap<String, String>,
        cas: u64,
        seen: &BTreeMap<String, String>,
    ) -> Result<Result<u64, Failure>, EngineError> {
        let store = self.engine.store.clone();
        let path = self.credential.vault_path.clone();
        let result = self
            .vstep(
                Step::Promote,
                json!({ "path": path, "cas": cas, "fingerprint": self.fingerprint(secret) }),
                || {
                    let store = store.clone();
                    let path = path.clone();
                    async move { store.write_cas(&path, secret, fields, cas).await }
                },
            )
            .await?;
        if let Ok(version) = &result {
            self.engine.note_promoted(self.index);
            // Which rekey credential owns the path. When it rotated, and in which
            // run, Vault's own version timestamps and the audit trail say; keys
            // that stay the same from one rotation to the next are written once,
            // not on every rotation.
            let mut meta = BTreeMap::new();
            meta.insert(
                "rekey_provider".to_owned(),
                self.credential.provider.clone(),
            );
            meta.insert("rekey_credential".to_owned(), self.credential.id.clone());
            meta.insert(
                "rekey_playbook".to_owned(),
                self.engine.playbook.name.clone(),
            );
            if meta.iter().all(|(k, v)| seen.get(k) == Some(v)) {
                return Ok(result);
            }
            let meta_result = self
                .vstep(
                    Step::SetMetadata,
                    json!({ "path": path, "version": version }),
                    || {
                        let store = store.clone();
                        let path = path.clone();
                        let meta = meta.clone();
                        async move { store.set_metadata(&path, &meta).await }
                    },
                )
                .await?;
            if let Err(f) = meta_result {
                tracing::warn!(credential = %self.credential.id, "Promoted, but custom metadata could not be written: {}", f.message);
            }
        }
        Ok(result)
    }

    pub(super) fn fields(&self, key_id: Option<&str>) -> BTreeMap<String, String> {
        let mut fields = BTreeMap::new();
        if let Some(k) = key_id {
            fields.insert("key_id".to_owned(), k.to_owned());
        }
        if let Some(a) = &self.credential.account {
            fields.insert("account".to_owned(), a.clone());
        }
        fields
    }

    /// The staging entry of this run's attempt, as `resume` finds it.
    pub(super) async fn read_staging(&self) -> Result<Result<Entry, Failure>, EngineError> {
        let store = self.engine.store.clone();
        let path = self.staging_path();
        self.vstep(Step::ReadStaging, json!({ "path": path }), || {
            let store = store.clone();
            let path = path.clone();
            async move { store.read(&path).await }
        })
        .await
    }
}
