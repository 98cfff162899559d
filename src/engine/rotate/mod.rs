//! One credential through the rotation protocol (DESIGN.md's, summarised in
//! ARCHITECTURE.md). Each entry point returns the credential's `Outcome`; `Err`
//! only for the journal failing (then nothing can be recorded safely and the run
//! stops). One file per protocol: `dual.rs`, `single.rs`, `manual.rs`; resume's
//! `reconcile.rs`; `rollback.rs`; the step machinery in `ctx.rs`; the vocabulary
//! in `step.rs`.

mod ctx;
mod dual;
mod lock;
mod manual;
mod reconcile;
mod rollback;
mod sessions;
mod single;
mod sinks;
mod vault;

pub(crate) use dual::OldKeys;
pub use dual::keys_to_retire;
pub(super) use rollback::roll_back;

use super::{Engine, EngineError, Outcome};
use crate::protocol::Checkpoint;
use crate::provider::catalog::Kind;
use ctx::Ctx;

pub(super) async fn rotate(
    engine: &Engine,
    run: &str,
    index: usize,
) -> Result<Outcome, EngineError> {
    let credential = &engine.playbook.credentials[index];
    let provider = match engine.providers.get(&credential.provider).cloned() {
        Some(p) => p,
        None if credential.kind == Kind::Manual => manual::no_provider(),
        None => {
            return Ok(Outcome::Skipped {
                reason: format!(
                    "provider instance `{}` cannot run in this build",
                    credential.provider
                ),
            });
        }
    };
    let holder = engine.holder.clone();
    // The lease outlives the grace period: the old key is retired at its end.
    if !engine.journal(|j| {
        j.lease(
            run,
            &credential.id,
            &holder,
            engine.tuning.lease + credential.grace,
        )
    })? {
        return Ok(Outcome::Skipped {
            reason: "another rekey process holds this credential".into(),
        });
    }
    let ctx = Ctx::new(engine, run, index, provider, true);
    // The lock every rekey process sees, whatever its journal.
    let release = |engine: &Engine| engine.journal(|j| j.release(run, &credential.id, &holder));
    match ctx.take_lock().await? {
        Ok(lock::Taken::Held(version)) => {
            *ctx.locked.lock().map_err(super::poisoned)? = Some(version);
        }
        Ok(lock::Taken::Busy(outcome)) => {
            release(engine)?;
            return Ok(outcome);
        }
        Err(f) => {
            release(engine)?;
            return Ok(ctx.nothing_changed("cannot take the credential's lock in Vault", &f));
        }
    }
    let outcome = match credential.kind {
        Kind::Dual => ctx.dual().await?,
        Kind::Single => ctx.single().await?,
        Kind::Manual => ctx.manual().await?,
    };
    // In its grace period the old key is still to retire: lease and lock stay
    // (both last the grace period) until `retire` ends it.
    if !engine.retiring_later(index) {
        ctx.release_lock().await?;
        release(engine)?;
    }
    Ok(outcome)
}

/// After a crash: brings one credential of run `run` to a known state from what
/// the journal says it was doing and what the world really holds (provider keys,
/// Vault versions, the staging entry), then finishes or restarts its rotation.
pub(super) async fn resume(
    engine: &Engine,
    run: &str,
    index: usize,
    last: Option<&crate::journal::CredentialRow>,
) -> Result<Outcome, EngineError> {
    let credential = &engine.playbook.credentials[index];
    {
        // The process that held the lease is gone (this is a resume): take it over.
        // Before anything else: a manual step, which has no provider, takes the
        // lease again in `rotate`.
        let journal = engine.journal.lock().map_err(super::poisoned)?;
        // A holder on another host (a shared journal's runner) is left to its
        // lease's expiry.
        if let Some((_, holder)) = journal.lease_holder(&credential.id)?
            && crate::journal::holder_gone(&holder)
        {
            journal.break_lease(&credential.id, &holder)?;
        }
    }
    let Some(provider) = engine.providers.get(&credential.provider).cloned() else {
        return rotate(engine, run, index).await;
    };
    let ctx = Ctx::new(engine, run, index, provider, false);
    // The dead process's lock names this run: taken over. Another run's lock means
    // another process works on the credential now: leave it to that one.
    match ctx.take_lock().await? {
        Ok(lock::Taken::Held(_)) => {}
        Ok(lock::Taken::Busy(outcome)) => return Ok(outcome),
        Err(f) => {
            return Ok(Outcome::Quarantined {
                resumable: f.transient(),
                reason: format!(
                    "cannot take the credential's lock in Vault to resume: {}",
                    f.message
                ),
                action: "run `rekey resume` again once Vault answers".into(),
            });
        }
    }
    let checkpoint = last
        .map(|r| Checkpoint::from_detail(&r.detail))
        .unwrap_or_default();
    let reconciled = match credential.kind {
        Kind::Dual => ctx.reconcile_dual(&checkpoint).await?,
        Kind::Single => ctx.reconcile_single(&checkpoint).await?,
        Kind::Manual => None,
    };
    match reconciled {
        Some(outcome) => {
            if !engine.retiring_later(index) {
                ctx.release_lock().await?;
            }
            Ok(outcome)
        }
        // Nothing was half done (or it was undone): rotate from the start (which
        // takes the lock over again: it names this run).
        None => rotate(engine, run, index).await,
    }
}

/// Retires the old key of a credential whose grace period is over.
pub(super) async fn retire(
    engine: &Engine,
    run: &str,
    r: &super::Retirement,
) -> Result<Outcome, EngineError> {
    let credential = &engine.playbook.credentials[r.index];
    let Some(provider) = engine.providers.get(&credential.provider).cloned() else {
        return Ok(Outcome::Rotated {
            key_id: Some(r.new_key.clone()),
            version: r.version,
        });
    };
    let ctx = Ctx::new(engine, run, r.index, provider, false);
    let outcome = ctx.retire(&r.old, &r.new_key, r.version, None).await?;
    ctx.release_lock().await?;
    engine.journal(|j| j.release(run, &credential.id, &engine.holder))?;
    Ok(ctx.with_sinks(outcome, r.sink_failures.clone()))
}

/// Removes one entry a run left in Vault (see `engine::tidy`); the attempt is
/// journaled like the step it repeats.
pub(super) async fn tidy(
    engine: &Engine,
    run: &str,
    leftover: &super::tidy::Leftover,
) -> Result<(), EngineError> {
    let Some(index) = engine
        .playbook
        .credentials
        .iter()
        .position(|c| c.id == leftover.credential)
    else {
        return Ok(());
    };
    let credential = &engine.playbook.credentials[index];
    let provider = match engine.providers.get(&credential.provider).cloned() {
        Some(p) => p,
        None => manual::no_provider(),
    };
    let ctx = Ctx::new(engine, run, index, provider, false);
    match leftover.kind {
        "staging" if leftover.path == ctx.staging_path() => ctx.clear_staging().await,
        "lock" if leftover.path == ctx.lock_path() => ctx.tidy_lock().await,
        _ => Ok(()),
    }
}
