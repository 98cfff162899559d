//! Plans: which credentials a run would rotate (`select`), in what order (`order`),
//! what each step costs and how long it should take (`estimate`), rendered as text,
//! JSON or Markdown (`render`). Offline and pure: no network I/O.

pub mod estimate;
pub mod order;
pub mod render;
pub mod select;

use crate::playbook::rate::Rate;
use crate::playbook::{Mode, Playbook, RateOrigin};
use crate::provider::catalog::Kind;
use serde::Serialize;

/// Version of the JSON plan format; bumped only on incompatible changes.
pub const PLAN_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Plan {
    pub format_version: u32,
    pub playbook: PlaybookInfo,
    pub selection: select::SelectionSummary,
    /// Credentials grouped in dependency waves: every credential of a wave depends
    /// only on credentials of earlier waves.
    pub waves: Vec<Wave>,
    pub providers: Vec<ProviderPlan>,
    pub vault: VaultPlan,
    pub totals: Totals,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PlaybookInfo {
    pub file: String,
    pub name: String,
    pub incident_id: Option<String>,
    pub mode: Mode,
    pub compromised: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Wave {
    pub index: usize,
    pub eta_seconds: f64,
    pub credentials: Vec<CredentialPlan>,
}

#[derive(Debug, Serialize)]
pub struct CredentialPlan {
    pub id: String,
    pub provider: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub kind: Kind,
    pub account: Option<String>,
    pub vault_path: String,
    pub tags: Vec<String>,
    pub depends_on: Vec<String>,
    pub steps: Vec<Step>,
    pub provider_requests: u32,
    pub vault_requests: u32,
    pub grace_seconds: f64,
    /// Line of the credential in the playbook.
    pub line: usize,
}

#[derive(Debug, Serialize, Clone)]
pub struct Step {
    pub name: &'static str,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct ProviderPlan {
    pub instance: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub kind: Kind,
    pub credentials: usize,
    pub requests: u64,
    pub rate: Rate,
    pub rate_description: String,
    pub rate_origin: RateOrigin,
    pub concurrency: u32,
    /// Time this instance's requests need at its rate and concurrency, all waves.
    pub eta_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct VaultPlan {
    pub address: String,
    pub mount: String,
    pub staging_prefix: String,
    pub requests: u64,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    pub credentials: usize,
    pub waves: usize,
    pub provider_requests: u64,
    pub vault_requests: u64,
    /// Credentials that wait for an operator; not counted in the ETA.
    pub manual: usize,
    /// Expected duration of the automated work, grace periods included.
    pub eta_seconds: f64,
    /// Whether the plan has anything to do (drives `--detailed-exitcode`).
    pub has_work: bool,
}

/// Builds the plan of `playbook` for the selected credentials.
pub fn build(file: &str, playbook: &Playbook, selection: &select::Selection) -> Plan {
    let selected = select::apply(playbook, selection);
    let waves_ix = order::waves(playbook, &selected.indices);
    let waves: Vec<Wave> = waves_ix
        .iter()
        .enumerate()
        .map(|(i, ids)| Wave {
            index: i + 1,
            eta_seconds: 0.0,
            credentials: ids.iter().map(|&ix| estimate::credential_plan(playbook, &playbook.credentials[ix])).collect(),
        })
        .collect();
    let mut plan = Plan {
        format_version: PLAN_FORMAT_VERSION,
        playbook: PlaybookInfo {
            file: file.to_owned(),
            name: playbook.name.clone(),
            incident_id: playbook.incident.id.clone(),
            mode: playbook.incident.mode,
            compromised: playbook.incident.compromised.clone(),
        },
        selection: selected.summary,
        waves,
        providers: Vec::new(),
        vault: VaultPlan {
            address: playbook.vault.address.clone(),
            mount: playbook.vault.mount.clone(),
            staging_prefix: playbook.vault.staging_prefix.clone(),
            requests: 0,
        },
        totals: Totals { credentials: 0, waves: 0, provider_requests: 0, vault_requests: 0, manual: 0, eta_seconds: 0.0, has_work: false },
        warnings: playbook.warnings.iter().map(|w| w.message.clone()).collect(),
    };
    estimate::fill(playbook, &mut plan);
    plan
}
