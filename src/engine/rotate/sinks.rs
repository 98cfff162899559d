//! Propagation: after promotion the value is pushed to the credential's sinks
//! (other Vault paths, files, GitHub Actions secrets), each as its own journaled
//! step (intent before, outcome after, transient errors retried).
//!
//! A sink that still fails does not undo the rotation: the new value is promoted
//! and the consumers' path is right; in breach mode keeping the old credential
//! alive for a sink would be worse. The credential ends **quarantined** instead of
//! rotated, naming every sink that failed and where to copy the value from. The
//! same runs on `rekey rollback` with the previous value, so sinks follow the
//! consumers' path back.

use super::ctx::Ctx;
use crate::engine::{EngineError, Outcome};
use crate::playbook::Sink;
use crate::protocol::Step;
use crate::provider::ProviderError;
use crate::secret::Secret;
use crate::sink::{file, github};
use serde_json::json;
use std::collections::BTreeMap;

impl Ctx<'_> {
    /// Pushes `value` to every sink, in order; returns one line per sink that
    /// failed (no value in it).
    pub(super) async fn propagate(&self, value: &Secret) -> Result<Vec<String>, EngineError> {
        let mut failed = Vec::new();
        for sink in &self.credential.sinks {
            let name = sink.describe();
            let detail = json!({ "sink": name, "fingerprint": self.fingerprint(value) });
            let result = match sink {
                Sink::Vault { path } => {
                    let store = self.engine.store.clone();
                    self.step(Step::Sink, detail, || {
                        let store = store.clone();
                        async move {
                            // Check-and-set on the version just read: a concurrent
                            // writer makes this fail rather than be overwritten.
                            let current = store.read(path).await?;
                            if current.value.as_ref() == Some(value) {
                                return Ok(current.version);
                            }
                            store
                                .write_cas(path, value, &BTreeMap::new(), current.version)
                                .await
                        }
                    })
                    .await?
                    .map(|_| ())
                }
                Sink::File { path, reload } => {
                    let written = self
                        .step(Step::Sink, detail, || file::write(path, value))
                        .await?;
                    match (written, reload.first()) {
                        (Ok(()), Some(program)) => {
                            self.step(
                                Step::SinkReload,
                                json!({ "sink": name, "program": program }),
                                || file::reload(reload),
                            )
                            .await?
                        }
                        (other, _) => other,
                    }
                }
                Sink::Github {
                    base_url,
                    repository,
                    environment,
                    secret_name,
                    token,
                } => {
                    let store = self.engine.store.clone();
                    let target = github::Target {
                        base_url,
                        repository,
                        environment: environment.as_deref(),
                        secret_name,
                    };
                    let target = &target;
                    self.step(Step::Sink, detail, || {
                        let store = store.clone();
                        async move {
                            let admin = crate::provider::admin::resolve(token, &*store)
                                .await
                                .map_err(ProviderError::Fatal)?;
                            let token = admin.require(&["token", "value"])?;
                            github::put_secret(target, token, value).await
                        }
                    })
                    .await?
                }
            };
            if let Err(f) = result {
                tracing::warn!(credential = %self.credential.id, sink = %name, "Sink failed: {}", f.message);
                failed.push(format!("{name}: {}", f.message));
            }
        }
        Ok(failed)
    }

    /// `outcome` after sinks ran: a rotation whose sinks failed is quarantined.
    /// A value promoted to the consumers' path as version `version` (single kinds
    /// and manual steps): pushed to the sinks, the staging entry cleared.
    pub(super) async fn finish_single(
        &self,
        value: &Secret,
        version: u64,
    ) -> Result<Outcome, EngineError> {
        let sink_failures = self.propagate(value).await?;
        self.clear_staging().await?;
        Ok(self.with_sinks(
            Outcome::Rotated {
                key_id: None,
                version,
            },
            sink_failures,
        ))
    }

    pub(super) fn with_sinks(&self, outcome: Outcome, failed: Vec<String>) -> Outcome {
        match outcome {
            Outcome::Rotated { version, .. } if !failed.is_empty() => Outcome::Quarantined {
                resumable: false,
                reason: format!(
                    "rotated and promoted (Vault version {version}), but {} sink(s) failed: {}",
                    failed.len(),
                    failed.join("; ")
                ),
                action: format!(
                    "copy the value from Vault {}/{} (version {version}) to the failed sinks by hand, or fix them and run rekey again for `{}`",
                    self.engine.playbook.vault.mount,
                    self.credential.vault_path,
                    self.credential.id
                ),
            },
            other => other,
        }
    }
}
