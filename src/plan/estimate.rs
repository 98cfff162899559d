//! The steps a credential's rotation takes, what they cost in requests, and how long
//! the run should take given each instance's rate limit and concurrency.
//!
//! The ETA model follows the engine's scheduler, which starts each credential as
//! soon as its own dependencies allow: the run takes at least its **critical path**
//! (the longest chain of dependencies, each credential costing its requests at
//! the instance's typical latency plus its Vault requests) and at least what each
//! instance needs for all of its credentials: `max(0, n·r − burst) / rate` by its
//! rate limit, `ceil(n / concurrency) · r · latency` by its concurrency (and the
//! same for the run's global concurrency). The slowest of these bounds wins, then
//! the longest grace period is added. A wave's ETA is the same bound for the
//! wave's credentials alone. Manual steps wait for a person and are left out.
use super::{CredentialPlan, CriticalPath, Plan, ProviderPlan};
use crate::catalog::Kind;
use crate::playbook::{Credential, Playbook};
use crate::protocol::PlannedStep;
use indexmap::IndexMap;
use rustc_hash::FxBuildHasher;
use std::time::Duration;

/// Vault requests per rotation: take the credential's lock, read the current
/// version, stage, promote, write custom metadata, clear the staging entry,
/// release the lock.
pub const VAULT_REQUESTS_PER_CREDENTIAL: u32 = 7;
/// Typical duration of one Vault request, for the ETA.
pub const VAULT_LATENCY: Duration = Duration::from_millis(5);

/// The steps of one rotation, as the engine takes them (`PlannedStep`, the
/// vocabulary of docs/plan-json.md). `ends_sessions`: breach mode ends the
/// sessions opened with the old credential.
pub fn steps(
    c: &Credential,
    deactivates: bool,
    lists: bool,
    ends_sessions: bool,
) -> Vec<PlannedStep> {
    use PlannedStep as S;
    let mut steps = vec![S::Lock];
    match c.kind {
        Kind::Dual => {
            if lists {
                steps.push(S::CheckQuota);
            }
            steps.extend([S::Create, S::Stage]);
            if c.verify {
                steps.push(S::Verify);
            }
            steps.push(S::Promote);
            // Breach mode has no grace period: the old keys go at once.
            if !c.grace.is_zero() {
                steps.push(S::Grace);
            }
            if deactivates {
                steps.push(S::Deactivate);
            }
            steps.push(S::Revoke);
            if ends_sessions {
                steps.push(S::EndSessions);
            }
            steps.push(S::ClearStaging);
        }
        Kind::Single => {
            steps.extend([S::Generate, S::Stage, S::Change]);
            if c.verify {
                steps.push(S::Verify);
            }
            steps.extend([S::Promote, S::ClearStaging]);
        }
        Kind::Manual => steps.extend([S::AwaitOperator, S::Stage, S::Promote, S::ClearStaging]),
    }
    // Sinks receive the value right after promotion.
    if !c.sinks.is_empty()
        && let Some(at) = steps.iter().position(|s| *s == S::Promote)
    {
        steps.insert(at + 1, S::Propagate);
    }
    // Single kinds end them right after promotion, before the sinks.
    if ends_sessions
        && c.kind == Kind::Single
        && let Some(at) = steps.iter().position(|s| *s == S::Promote)
    {
        steps.insert(at + 1, S::EndSessions);
    }
    steps
}

/// Which old keys a dual rotation retires (docs/playbook.md), as the plan says it.
#[derive(Debug, serde::Serialize)]
pub struct Retires<'a> {
    /// `every_existing_key` (breach mode) or `key_vault_names` (routine mode).
    pub rule: &'static str,
    /// Key ids the playbook keeps.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub keep: &'a [String],
    /// Breach mode on a type whose admin credential is itself a key of the account
    /// (Datadog, SendGrid, a Twilio Main key): the admin's own key is retired too
    /// unless `keep` names it, and the calls after it lose access.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub may_include_admin_key: bool,
}

pub fn retires<'a>(playbook: &Playbook, c: &'a Credential) -> Option<Retires<'a>> {
    let breach = playbook.incident.mode == crate::playbook::Mode::Breach;
    (c.kind == Kind::Dual).then(|| Retires {
        rule: if breach {
            "every_existing_key"
        } else {
            "key_vault_names"
        },
        keep: &c.keep,
        may_include_admin_key: breach
            && playbook
                .providers
                .get(&c.provider)
                .is_some_and(|p| p.admin_key_listed),
    })
}

pub fn credential_plan<'a>(playbook: &'a Playbook, c: &'a Credential) -> CredentialPlan<'a> {
    let instance = playbook.providers.get(&c.provider);
    let requests = instance.map(|p| &p.requests);
    let ends_sessions = playbook.incident.mode == crate::playbook::Mode::Breach
        && instance.is_some_and(|p| p.requests.end_sessions > 0 && p.ends_sessions());
    CredentialPlan {
        id: &c.id,
        provider: &c.provider,
        type_name: &c.type_name,
        kind: c.kind,
        account: c.account.as_deref(),
        vault_path: &c.vault_path,
        tags: &c.tags,
        depends_on: &c.depends_on,
        steps: steps(
            c,
            requests.is_some_and(|r| r.deactivate > 0),
            requests.is_some_and(|r| r.list > 0),
            ends_sessions,
        ),
        provider_requests: requests
            .map(|r| r.total(c.verify) + if ends_sessions { r.end_sessions } else { 0 })
            .unwrap_or(0),
        // A Vault sink reads the path, then writes it.
        vault_requests: VAULT_REQUESTS_PER_CREDENTIAL
            + 2 * c
                .sinks
                .iter()
                .filter(|s| matches!(s, crate::playbook::Sink::Vault { .. }))
                .count() as u32,
        verify: c.verify,
        grace_seconds: c.grace.as_secs_f64(),
        retires: retires(playbook, c),
        instructions: if c.kind == Kind::Manual {
            c.instructions.as_deref()
        } else {
            None
        },
        max_age_seconds: None,
        age: None,
        line: c.line,
    }
}

/// Estimated seconds of one credential's own rotation: its provider requests at
/// the instance's latency and its Vault requests, one after another (manual
/// steps wait for a person and count only their Vault requests).
pub fn rotation_seconds(playbook: &Playbook, c: &Credential) -> f64 {
    own_seconds(playbook, &credential_plan(playbook, c))
}

fn own_seconds(playbook: &Playbook, c: &CredentialPlan) -> f64 {
    let latency = playbook
        .providers
        .get(c.provider)
        .filter(|p| p.kind != Kind::Manual)
        .map_or(0.0, |p| p.latency.as_secs_f64());
    c.provider_requests as f64 * latency + c.vault_requests as f64 * VAULT_LATENCY.as_secs_f64()
}

/// Fills the per-provider table, wave ETAs and totals.
pub fn fill<'a>(playbook: &'a Playbook, plan: &mut Plan<'a>) {
    let global = playbook.defaults.concurrency.max(1) as f64;
    // instance -> (credentials, requests, seconds)
    let mut per_instance: IndexMap<&'a str, (usize, u64, f64), FxBuildHasher> = IndexMap::default();
    let mut run_work = 0.0;
    let mut run_automated = 0usize;
    let mut max_grace: f64 = 0.0;
    let mut manual = 0;
    for wave in &mut plan.waves {
        let mut groups: IndexMap<&'a str, Vec<&CredentialPlan<'a>>, FxBuildHasher> =
            IndexMap::default();
        for c in &wave.credentials {
            groups.entry(c.provider).or_default().push(c);
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
            let Some(inst) = playbook.providers.get(*name) else {
                continue;
            };
            let n = creds.len();
            let requests: u64 = creds.iter().map(|c| c.provider_requests as u64).sum();
            let entry = per_instance.entry(*name).or_insert((0, 0, 0.0));
            entry.0 += n;
            entry.1 += requests;
            if inst.kind == Kind::Manual {
                continue;
            }
            automated += n;
            let busy: f64 = creds.iter().map(|c| busy_seconds(inst, c)).sum();
            entry.2 += busy;
            work_seconds += busy;
            let seconds = instance_bound(inst, n, requests, busy, global);
            wave_eta = wave_eta.max(seconds);
        }
        // The global cap bounds the wave too, whatever the instances allow.
        wave_eta = wave_eta.max(global_bound(automated, work_seconds, global));
        wave.eta_seconds = round(wave_eta);
        run_work += work_seconds;
        run_automated += automated;
    }
    let critical = critical_path(playbook, plan);
    let mut total_eta = critical
        .seconds
        .max(global_bound(run_automated, run_work, global));
    let mut provider_requests = 0;
    for (name, (credentials, requests, busy)) in per_instance {
        let Some(inst) = playbook.providers.get(name) else {
            continue;
        };
        provider_requests += requests;
        let seconds = if inst.kind == Kind::Manual {
            0.0
        } else {
            instance_bound(inst, credentials, requests, busy, global)
        };
        total_eta = total_eta.max(seconds);
        plan.providers.push(ProviderPlan {
            instance: &inst.name,
            type_name: &inst.type_name,
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
    let vault_requests: u64 = plan
        .waves
        .iter()
        .flat_map(|w| &w.credentials)
        .map(|c| c.vault_requests as u64)
        .sum();
    plan.vault.requests = vault_requests;
    plan.totals = super::Totals {
        credentials,
        waves: plan.waves.len(),
        provider_requests,
        vault_requests,
        manual,
        eta_seconds: round(total_eta + max_grace),
        has_work: credentials > 0,
        not_due: plan.not_due.len(),
    };
    plan.critical_path = critical;
}

/// Seconds one credential keeps its instance busy: its provider requests at the
/// typical latency, its Vault requests.
fn busy_seconds(inst: &crate::playbook::ProviderInstance, c: &CredentialPlan) -> f64 {
    c.provider_requests as f64 * inst.latency.as_secs_f64()
        + c.vault_requests as f64 * VAULT_LATENCY.as_secs_f64()
}

/// How long an instance needs for `n` credentials (`requests` in all, `busy`
/// seconds of work): the slower of its rate limit and its concurrency.
fn instance_bound(
    inst: &crate::playbook::ProviderInstance,
    n: usize,
    requests: u64,
    busy: f64,
    global: f64,
) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let rate_bound = (requests as f64 - inst.rate.burst as f64).max(0.0) / inst.rate.per_second;
    let slots = (inst.concurrency as f64).min(global).max(1.0);
    let concurrency_bound = (n as f64 / slots).ceil() * (busy / n as f64);
    rate_bound.max(concurrency_bound)
}

/// How long the run's global concurrency needs for `automated` credentials of
/// `work` seconds in all.
fn global_bound(automated: usize, work: f64, global: f64) -> f64 {
    if automated == 0 {
        return 0.0;
    }
    (automated as f64 / global).ceil() * (work / automated as f64)
}

/// The longest chain of selected dependencies, each credential costing
/// [`rotation_seconds`]: no schedule finishes sooner.
fn critical_path<'a>(playbook: &'a Playbook, plan: &Plan<'a>) -> CriticalPath<'a> {
    // Waves are a topological order: each dependency is seen before its dependents.
    let mut finish: rustc_hash::FxHashMap<&'a str, (f64, Option<&'a str>)> =
        rustc_hash::FxHashMap::default();
    let mut end: Option<(&'a str, f64)> = None;
    for c in plan.waves.iter().flat_map(|w| &w.credentials) {
        let before = c
            .depends_on
            .iter()
            .filter_map(|d| finish.get(d.as_str()).map(|(t, _)| (d.as_str(), *t)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let own = own_seconds(playbook, c);
        let at = before.map_or(0.0, |(_, t)| t) + own;
        finish.insert(c.id, (at, before.map(|(d, _)| d)));
        if end.is_none_or(|(_, t)| at > t) {
            end = Some((c.id, at));
        }
    }
    let Some((last, seconds)) = end else {
        return CriticalPath::default();
    };
    let mut credentials = vec![last];
    let mut at = last;
    while let Some(&(_, Some(prev))) = finish.get(at) {
        credentials.push(prev);
        at = prev;
    }
    credentials.reverse();
    CriticalPath {
        credentials,
        seconds: round(seconds),
    }
}

/// Milliseconds precision, and always finite (JSON has no infinity).
fn round(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1000.0).round() / 1000.0
    } else {
        f64::MAX
    }
}
