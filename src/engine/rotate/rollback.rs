//! `rekey rollback`: undoes one rotated credential of a routine-mode run.

use super::ctx::Ctx;
use crate::engine::{Engine, EngineError, Outcome};
use crate::protocol::{Checkpoint, Step};
use crate::provider::catalog::Kind;
use serde_json::json;

/// Undoes one rotated credential of a routine-mode run: the previous value goes
/// back to the consumers' path (check-and-set on the version rekey wrote), and for
/// single kinds to the provider; a dual key is only restored while the old key
/// still exists (during its grace period); after that, roll forward only.
pub(crate) async fn roll_back(
    engine: &Engine,
    run: &str,
    index: usize,
    rotated_version: u64,
    checkpoint: &Checkpoint,
) -> Result<Outcome, EngineError> {
    let credential = &engine.playbook.credentials[index];
    let Some(provider) = engine.providers.get(&credential.provider).cloned() else {
        return Ok(Outcome::Skipped {
            reason: format!(
                "provider instance `{}` cannot run in this build",
                credential.provider
            ),
        });
    };
    let ctx = Ctx::new(engine, run, index, provider.clone(), false);
    // Rolling back touches the provider and Vault like a rotation: under the lock.
    match ctx.take_lock().await? {
        Ok(super::lock::Taken::Held(_)) => {}
        Ok(super::lock::Taken::Busy(outcome)) => return Ok(outcome),
        Err(f) => {
            return Ok(Outcome::Skipped {
                reason: format!("cannot take the credential's lock in Vault: {}", f.message),
            });
        }
    }
    let outcome = roll_back_locked(&ctx, provider, rotated_version, checkpoint).await;
    ctx.release_lock().await?;
    outcome
}

async fn roll_back_locked(
    ctx: &Ctx<'_>,
    provider: std::sync::Arc<dyn crate::provider::Provider>,
    rotated_version: u64,
    checkpoint: &Checkpoint,
) -> Result<Outcome, EngineError> {
    let engine = ctx.engine;
    let credential = ctx.credential;
    let target = ctx.target();
    let id = &credential.id;
    let current = match ctx.read_current().await? {
        Ok(c) => c,
        Err(f) => {
            return Ok(Outcome::Skipped {
                reason: format!("cannot read {}: {}", credential.vault_path, f.message),
            });
        }
    };
    if current.version != rotated_version {
        return Ok(Outcome::Skipped {
            reason: format!(
                "{} changed since the run (version {} now, {} then); not rolled back",
                credential.vault_path, current.version, rotated_version
            ),
        });
    }
    let store = engine.store.clone();
    let path = credential.vault_path.clone();
    let previous = match ctx
        .step(
            Step::ReadPrevious,
            json!({ "path": path, "version": rotated_version.saturating_sub(1) }),
            || {
                let store = store.clone();
                let path = path.clone();
                async move {
                    store
                        .read_version(&path, rotated_version.saturating_sub(1))
                        .await
                }
            },
        )
        .await?
    {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Ok(Outcome::Skipped {
                reason: "there is no previous value to restore".into(),
            });
        }
        Err(f) => {
            return Ok(Outcome::Skipped {
                reason: format!("cannot read the previous value: {}", f.message),
            });
        }
    };
    match credential.kind {
        Kind::Single => {
            if let Err(f) = ctx
                .pstep(
                    Step::RestoreChange,
                    json!({ "fingerprint": ctx.fingerprint(&previous) }),
                    || provider.change(target, &previous),
                )
                .await?
            {
                return Ok(Outcome::Skipped {
                    reason: format!("could not set the previous password again: {}", f.message),
                });
            }
            let fields = ctx.fields(None);
            match ctx
                .promote(
                    &previous,
                    &fields,
                    current.version,
                    &current.custom_metadata,
                )
                .await?
            {
                Ok(v) => {
                    let failed = ctx.propagate(&previous).await?;
                    Ok(sinks_rolled_back(
                        format!("previous value restored (Vault version {v})"),
                        failed,
                    ))
                }
                Err(f) => Ok(Outcome::Quarantined {
                    resumable: false,
                    reason: format!(
                        "the previous password is set again at the provider, but Vault could not be updated: {}",
                        f.message
                    ),
                    action: format!(
                        "write Vault version {} of {} back by hand",
                        rotated_version.saturating_sub(1),
                        credential.vault_path
                    ),
                }),
            }
        }
        Kind::Dual => {
            let old = checkpoint.old_key_id.clone();
            let new = current.fields.get("key_id").cloned();
            let keys = match ctx
                .pstep(Step::List, json!({ "rollback": true }), || {
                    provider.list(target)
                })
                .await?
            {
                Ok(k) => k,
                Err(f) => {
                    return Ok(Outcome::Skipped {
                        reason: format!("cannot list keys: {}", f.message),
                    });
                }
            };
            let Some(old) = old.filter(|o| keys.iter().any(|k| &k.id == o && k.active)) else {
                return Ok(Outcome::Skipped {
                    reason: format!(
                        "the old key of `{id}` is already retired; roll forward only (run rekey again)"
                    ),
                });
            };
            let fields = ctx.fields(Some(&old));
            match ctx
                .promote(
                    &previous,
                    &fields,
                    current.version,
                    &current.custom_metadata,
                )
                .await?
            {
                Ok(v) => {
                    if let Some(new) = new {
                        let _ = ctx
                            .pstep(Step::RevokeNew, json!({ "key_id": new }), || {
                                provider.revoke(target, &new)
                            })
                            .await?;
                    }
                    let failed = ctx.propagate(&previous).await?;
                    Ok(sinks_rolled_back(
                        format!("old key {old} restored (Vault version {v})"),
                        failed,
                    ))
                }
                Err(f) => Ok(Outcome::Skipped {
                    reason: format!("could not write the old key back: {}", f.message),
                }),
            }
        }
        Kind::Manual => Ok(Outcome::Skipped {
            reason: "manual steps are rolled back by hand".into(),
        }),
    }
}

/// A rollback whose sinks could not all be given the previous value back.
fn sinks_rolled_back(reason: String, failed: Vec<String>) -> Outcome {
    if failed.is_empty() {
        return Outcome::RolledBack { reason };
    }
    Outcome::Quarantined {
        resumable: false,
        action: format!(
            "write the previous value to the failed sinks by hand: {}",
            failed.join("; ")
        ),
        reason: format!(
            "{reason}, but {} sink(s) still hold the newer value",
            failed.len()
        ),
    }
}
