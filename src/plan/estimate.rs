//! The steps a credential's rotation takes, what they cost in requests, and how long
//! the run should take given each instance's rate limit and concurrency.
//!
//! The ETA model, per dependency wave: an instance with `n` credentials of `r`
//! requests each needs `max(0, n·r − burst) / rate` seconds by its rate limit and
//! `ceil(n / concurrency) · r · latency` by its concurrency; the slower bound wins.
//! Instances work in parallel, waves one after another, and the run ends when the
//! longest grace period after the last promotion is over. Manual steps wait for a
//! person and are left out.

use super::{CredentialPlan, Plan, ProviderPlan, Step};
use crate::playbook::rate::format_duration;
use crate::playbook::{Credential, Mode, Playbook};
use crate::provider::catalog::Kind;
use indexmap::IndexMap;
use std::time::Duration;

/// Vault requests per rotation: read the current version, stage, promote, write
/// custom metadata, clear the staging entry.
pub const VAULT_REQUESTS_PER_CREDENTIAL: u32 = 5;
/// Typical duration of one Vault request, for the ETA.
pub const VAULT_LATENCY: Duration = Duration::from_millis(5);

fn step(name: &'static str, detail: impl Into<String>) -> Step {
    Step { name, detail: detail.into() }
}

pub fn credential_plan(playbook: &Playbook, c: &Credential) -> CredentialPlan {
    let instance = playbook.providers.get(&c.provider);
    let requests = instance.map(|p| p.requests.clone()).unwrap_or_default();
    let staging = format!("{}/{}/{}", playbook.vault.mount, playbook.vault.staging_prefix, c.id);
    let target = format!("{}/{}", playbook.vault.mount, c.vault_path);
    let account = c.account.as_deref().unwrap_or("the account");
    let breach = playbook.incident.mode == Mode::Breach;
    let mut steps = vec![step("lock", format!("take the journal lease on `{}`", c.id))];
    match c.kind {
        Kind::Dual => {
            if requests.list > 0 {
                steps.push(step("check_quota", format!("list {account}'s keys at {}; delete an inactive stray if the quota is full, never the current key", c.provider)));
            }
            steps.push(step("create", format!("create a new key for {account} at {}", c.provider)));
            steps.push(step("stage", format!("store it at once in Vault {staging}")));
            if c.verify {
                steps.push(step("verify", "authenticate with the new key (with backoff)"));
            }
            steps.push(step("promote", format!("write {target} with check-and-set on the version read now")));
            steps.push(if c.grace.is_zero() {
                step("grace", if breach { "none: breach mode retires the old key at once" } else { "none" })
            } else {
                step("grace", format!("keep the old key working for {}", format_duration(c.grace)))
            });
            if requests.deactivate > 0 {
                steps.push(step("deactivate", "deactivate the old key"));
            }
            steps.push(step("revoke", "delete the old key"));
        }
        Kind::Single => {
            steps.push(step("generate", format!("generate a new password ({} characters)", c.password.length)));
            steps.push(step("stage", format!("write it to Vault {staging} before the change (write-ahead)")));
            steps.push(step("change", format!("change {account}'s password at {}", c.provider)));
            if c.verify {
                steps.push(step("verify", "log in with the new password; if that fails, test the old one"));
            }
            steps.push(step("promote", format!("write {target} with check-and-set on the version read now")));
            steps.push(step("clear_staging", "delete the staging entry"));
        }
        Kind::Manual => {
            let first = c.instructions.as_deref().unwrap_or("").lines().next().unwrap_or("").trim().to_owned();
            steps.push(step("await_operator", format!("operator: {first}")));
            steps.push(step("stage", format!("store the value the operator gives in Vault {staging}")));
            steps.push(step("promote", format!("write {target} with check-and-set on the version read now")));
            steps.push(step("clear_staging", "delete the staging entry"));
        }
    }
    CredentialPlan {
        id: c.id.clone(),
        provider: c.provider.clone(),
        type_name: c.type_name.clone(),
        kind: c.kind,
        account: c.account.clone(),
        vault_path: c.vault_path.clone(),
        tags: c.tags.clone(),
        depends_on: c.depends_on.clone(),
        steps,
        provider_requests: requests.total(c.verify),
        vault_requests: VAULT_REQUESTS_PER_CREDENTIAL,
        grace_seconds: c.grace.as_secs_f64(),
        line: c.line,
    }
}

/// Fills the per-provider table, wave ETAs and totals.
pub fn fill(playbook: &Playbook, plan: &mut Plan) {
    let global = playbook.defaults.concurrency.max(1) as f64;
    // instance -> (credentials, requests, seconds)
    let mut per_instance: IndexMap<String, (usize, u64, f64)> = IndexMap::new();
    let mut total_eta = 0.0;
    let mut max_grace: f64 = 0.0;
    let mut manual = 0;
    for wave in &mut plan.waves {
        let mut groups: IndexMap<&str, Vec<&CredentialPlan>> = IndexMap::new();
        for c in &wave.credentials {
            groups.entry(c.provider.as_str()).or_default().push(c);
            if c.kind == Kind::Manual {
                manual += 1;
            } else {
                max_grace = max_grace.max(c.grace_seconds);
            }
        }
        let mut wave_eta: f64 = 0.0;
        let mut automated = 0usize;
        let mut work_seconds = 0.0;
        for (name, creds) in &groups {
            let Some(inst) = playbook.providers.get(*name) else { continue };
            let n = creds.len();
            let requests: u64 = creds.iter().map(|c| c.provider_requests as u64).sum();
            let entry = per_instance.entry(name.to_string()).or_insert((0, 0, 0.0));
            entry.0 += n;
            entry.1 += requests;
            if inst.kind == Kind::Manual {
                continue;
            }
            automated += n;
            let per_credential = |c: &&CredentialPlan| c.provider_requests as f64 * inst.latency.as_secs_f64() + c.vault_requests as f64 * VAULT_LATENCY.as_secs_f64();
            let busy: f64 = creds.iter().map(per_credential).sum();
            work_seconds += busy;
            let rate_bound = (requests as f64 - inst.rate.burst as f64).max(0.0) / inst.rate.per_second;
            let slots = (inst.concurrency as f64).min(global).max(1.0);
            let concurrency_bound = (n as f64 / slots).ceil() * (busy / n as f64);
            let seconds = rate_bound.max(concurrency_bound);
            entry.2 += seconds;
            wave_eta = wave_eta.max(seconds);
        }
        // The global cap bounds the wave too, whatever the instances allow.
        if automated > 0 {
            wave_eta = wave_eta.max((automated as f64 / global).ceil() * (work_seconds / automated as f64));
        }
        wave.eta_seconds = round(wave_eta);
        total_eta += wave_eta;
    }
    let mut provider_requests = 0;
    for (name, (credentials, requests, seconds)) in per_instance {
        let Some(inst) = playbook.providers.get(&name) else { continue };
        provider_requests += requests;
        plan.providers.push(ProviderPlan {
            instance: name,
            type_name: inst.type_name.clone(),
            kind: inst.kind,
            credentials,
            requests,
            rate: inst.rate,
            rate_description: inst.rate.describe(),
            rate_origin: inst.rate_origin,
            concurrency: inst.concurrency,
            eta_seconds: round(seconds),
        });
    }
    let credentials: usize = plan.waves.iter().map(|w| w.credentials.len()).sum();
    let vault_requests: u64 = plan.waves.iter().flat_map(|w| &w.credentials).map(|c| c.vault_requests as u64).sum();
    plan.vault.requests = vault_requests;
    plan.totals = super::Totals {
        credentials,
        waves: plan.waves.len(),
        provider_requests,
        vault_requests,
        manual,
        eta_seconds: round(total_eta + max_grace),
        has_work: credentials > 0,
    };
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
