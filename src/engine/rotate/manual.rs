//! Manual steps: the operator changes the credential by hand and gives rekey the
//! new value (or, for revoke-only steps, a confirmation). From there the protocol
//! is the single kind's: stage in Vault, verify when the definition can, promote
//! with check-and-set, clear staging. Without an operator the credential waits as
//! `awaiting operator` and `rekey resume` finishes it.

use super::ctx::Ctx;
use crate::engine::{EngineError, Outcome};
use crate::journal::CredentialState;
use crate::protocol::{Checkpoint, Step};
use crate::provider::manual::{Answer, Request};
use crate::provider::{Provider, ProviderError, Target};
use crate::secret::Secret;
use async_trait::async_trait;
use serde_json::json;
use std::sync::Arc;

/// Stands in for a provider: a manual step has none to call. Verifying through
/// it is refused, so a step is never reported verified when it was not.
pub(super) struct NoProvider;

#[async_trait]
impl Provider for NoProvider {
    async fn preflight(&self, _: Target<'_>) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn verify(
        &self,
        _: Target<'_>,
        _: Option<&str>,
        _: &Secret,
    ) -> Result<bool, ProviderError> {
        Err(ProviderError::Fatal(
            "a manual step has no way to verify its value".into(),
        ))
    }
}

pub(super) fn no_provider() -> Arc<dyn Provider> {
    Arc::new(NoProvider)
}

impl Ctx<'_> {
    pub(super) async fn manual(&self) -> Result<Outcome, EngineError> {
        let id = &self.credential.id;
        let instructions = self.credential.instructions.clone().unwrap_or_default();
        let waiting = || Outcome::AwaitingOperator {
            instructions: instructions.clone(),
        };
        let confirm_only = self
            .credential
            .settings
            .get("confirm_only")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let current = match self.read_current().await? {
            Ok(c) => c,
            Err(f) => {
                let what = format!("cannot read {}", self.credential.vault_path);
                return Ok(self.nothing_changed(&what, &f));
            }
        };

        // A value the operator gave before an interruption is in staging: use it
        // rather than ask again (the console may already have retired the old key).
        let staged = match self.read_staging().await? {
            Ok(e) => e.value,
            Err(_) => None,
        };
        let value = match staged {
            Some(v) if !confirm_only => {
                tracing::info!(credential = %id, "Using the value the operator gave before the interruption.");
                v
            }
            _ => {
                let request = Request {
                    credential: id.clone(),
                    instructions: instructions.clone(),
                    vault_path: self.credential.vault_path.clone(),
                    confirm_only,
                };
                let operator = self.engine.operator.clone();
                let interactive = operator.interactive();
                if interactive {
                    self.engine.progress.operator_prompt(true);
                }
                let answer = tokio::task::spawn_blocking(move || operator.ask(&request))
                    .await
                    .unwrap_or(Answer::Unavailable);
                if interactive {
                    self.engine.progress.operator_prompt(false);
                }
                match answer {
                    Answer::Unavailable => {
                        tracing::info!(credential = %id, "Manual step waits for an operator; `rekey resume` finishes it.");
                        return Ok(waiting());
                    }
                    Answer::Confirmed => {
                        // Nothing changes in Vault; the record says who did what.
                        let intent = self.engine.journal(|j| {
                            j.intent(
                                self.run,
                                id,
                                Step::OperatorConfirmed.as_str(),
                                &json!({ "confirm_only": true }),
                            )
                        })?;
                        self.engine.journal(|j| {
                            j.outcome(intent, crate::journal::Outcome::Ok, &json!({}))
                        })?;
                        return Ok(Outcome::Rotated {
                            key_id: None,
                            version: current.version,
                        });
                    }
                    Answer::Value(v) => {
                        let fields = self.fields(None);
                        if let Err(f) = self.stage(&v, &fields).await? {
                            // Not stored anywhere yet: the step waits, and the
                            // operator gives the value again once Vault answers.
                            tracing::warn!(credential = %id, "The value could not be staged in Vault; give it again with `rekey resume`: {}", f.message);
                            return Ok(Outcome::AwaitingOperator {
                                instructions: format!(
                                    "(the value given last could not be stored in Vault: {}) {instructions}",
                                    f.message
                                ),
                            });
                        }
                        v
                    }
                }
            }
        };
        self.state(
            CredentialState::Staged,
            &Checkpoint {
                fingerprint: Some(self.fingerprint(&value)),
                vault_version: Some(current.version),
                ..Checkpoint::default()
            },
        )?;

        if self.credential.verify
            && let Some(verifier) = self.verifier()
        {
            let target = self.target();
            let verified = self
                .pstep(Step::Verify, json!({ "manual": true }), || {
                    verifier.verify(target, None, &value)
                })
                .await?;
            if !matches!(verified, Ok(true)) {
                let why = match verified {
                    Err(f) => f.message,
                    _ => "the provider refused it".into(),
                };
                // The operator may have mistyped: the value is dropped and the
                // step waits for the right one.
                tracing::warn!(credential = %id, "The value given did not verify; the step waits for another: {why}");
                self.clear_staging().await?;
                return Ok(Outcome::AwaitingOperator {
                    instructions: format!(
                        "(the value given last did not verify: {why}) {instructions}"
                    ),
                });
            }
        }

        let fields = self.fields(None);
        match self
            .promote(&value, &fields, current.version, &current.custom_metadata)
            .await?
        {
            Ok(version) => self.finish_single(&value, version).await,
            Err(f) => Ok(Outcome::Quarantined {
                resumable: false,
                reason: if f.conflict {
                    format!(
                        "{} was changed by someone else while the manual step was done; rekey never overwrites that",
                        self.credential.vault_path
                    )
                } else {
                    format!(
                        "could not promote the value the operator gave: {}",
                        f.message
                    )
                },
                action: format!(
                    "the value is in Vault at {}/{}; copy it to {} once you know why the write failed",
                    self.engine.playbook.vault.mount,
                    self.staging_path(),
                    self.credential.vault_path
                ),
            }),
        }
    }

    /// The provider instance named by the credential's `verify_with` setting,
    /// when the playbook names one: the way a manual step is verified.
    fn verifier(&self) -> Option<Arc<dyn Provider>> {
        let name = self.credential.settings.get("verify_with")?.as_str()?;
        self.engine.providers.get(name).cloned()
    }
}
