//! Plans: which credentials a run would rotate (`select`), in what order (`order`),
//! what each step costs and how long it should take (`estimate`), rendered as text,
//! JSON or Markdown (`render`). Offline and pure: no network I/O.

pub mod estimate;
pub mod order;
pub mod render;
pub mod select;

use crate::catalog::Kind;
use crate::doc::rate::Rate;
use crate::playbook::{Mode, Playbook, RateOrigin};
use serde::Serialize;

/// Version of the JSON plan format; bumped only on incompatible changes.
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// A plan borrows from the playbook it describes: a 100,000-credential plan must
/// not copy every id and path again.
#[derive(Debug, Serialize)]
pub struct Plan<'a> {
    pub format_version: u32,
    pub playbook: PlaybookInfo<'a>,
    pub selection: select::SelectionSummary,
    /// Credentials grouped in dependency waves: every credential of a wave depends
    /// only on credentials of earlier waves.
    pub waves: Vec<Wave<'a>>,
    pub providers: Vec<ProviderPlan<'a>>,
    pub vault: VaultPlan<'a>,
    pub totals: Totals,
    pub warnings: Vec<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct PlaybookInfo<'a> {
    pub file: &'a str,
    pub name: &'a str,
    pub incident_id: Option<&'a str>,
    pub mode: Mode,
    pub compromised: &'a [String],
}

#[derive(Debug, Serialize)]
pub struct Wave<'a> {
    pub index: usize,
    pub eta_seconds: f64,
    pub credentials: Vec<CredentialPlan<'a>>,
}

/// One credential's rotation. `steps` are names from a fixed vocabulary
/// (docs/plan-json.md); the staging entry is `<mount>/<staging_prefix>/<id>`.
#[derive(Debug, Serialize)]
pub struct CredentialPlan<'a> {
    pub id: &'a str,
    pub provider: &'a str,
    #[serde(rename = "type")]
    pub type_name: &'a str,
    pub kind: Kind,
    pub account: Option<&'a str>,
    pub vault_path: &'a str,
    pub tags: &'a [String],
    pub depends_on: &'a [String],
    pub steps: Vec<crate::protocol::PlannedStep>,
    pub provider_requests: u32,
    pub vault_requests: u32,
    pub verify: bool,
    pub grace_seconds: f64,
    /// Dual kinds: which old keys the rotation retires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retires: Option<estimate::Retires<'a>>,
    /// For manual steps: what the operator must do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<&'a str>,
    /// Line of the credential in the playbook.
    pub line: usize,
}

#[derive(Debug, Serialize)]
pub struct ProviderPlan<'a> {
    pub instance: &'a str,
    #[serde(rename = "type")]
    pub type_name: &'a str,
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
pub struct VaultPlan<'a> {
    pub address: &'a str,
    pub mount: &'a str,
    pub staging_prefix: &'a str,
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
pub fn build<'a>(file: &'a str, playbook: &'a Playbook, selection: &select::Selection) -> Plan<'a> {
    let selected = select::apply(playbook, selection);
    let waves_ix = order::waves(playbook, &selected.indices);
    let waves: Vec<Wave<'a>> = waves_ix
        .iter()
        .enumerate()
        .map(|(i, ids)| Wave {
            index: i + 1,
            eta_seconds: 0.0,
            credentials: ids
                .iter()
                .map(|&ix| estimate::credential_plan(playbook, &playbook.credentials[ix]))
                .collect(),
        })
        .collect();
    let mut plan = Plan {
        format_version: PLAN_FORMAT_VERSION,
        playbook: PlaybookInfo {
            file,
            name: &playbook.name,
            incident_id: playbook.incident.id.as_deref(),
            mode: playbook.incident.mode,
            compromised: &playbook.incident.compromised,
        },
        selection: selected.summary,
        waves,
        providers: Vec::new(),
        vault: VaultPlan {
            address: &playbook.vault.address,
            mount: &playbook.vault.mount,
            staging_prefix: &playbook.vault.staging_prefix,
            requests: 0,
        },
        totals: Totals {
            credentials: 0,
            waves: 0,
            provider_requests: 0,
            vault_requests: 0,
            manual: 0,
            eta_seconds: 0.0,
            has_work: false,
        },
        warnings: playbook
            .warnings
            .iter()
            .map(|w| w.message.as_str())
            .collect(),
    };
    estimate::fill(playbook, &mut plan);
    plan
}
