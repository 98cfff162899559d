//! Plans: which credentials a run would rotate (`select`), in what order (`order`),
//! what each step costs and how long it should take (`estimate`), rendered as text,
//! JSON or Markdown (`render`). Offline and pure: no network I/O.

pub mod age;
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
    /// The longest chain of dependencies: the run takes at least this long.
    pub critical_path: CriticalPath<'a>,
    pub warnings: Vec<&'a str>,
    /// Selected credentials left out because they are younger than their
    /// `max_age` (known only when ages were looked up: `--live`, `run`).
    pub not_due: Vec<NotDue<'a>>,
    /// When ages are judged (seconds since the Unix epoch).
    #[serde(skip)]
    pub now: u64,
}

/// A selected credential younger than its `max_age`: not rotated.
#[derive(Debug, Serialize)]
pub struct NotDue<'a> {
    pub id: &'a str,
    pub provider: &'a str,
    pub vault_path: &'a str,
    pub max_age_seconds: u64,
    pub age_seconds: u64,
    pub age: &'a age::Age,
}

/// What `max_age` needs to choose: the command line's `--max-age` (which
/// overrides the playbook's) and, once looked up, each credential's age by
/// index. Without ages (an offline plan) nothing is left out, and each
/// credential with a `max_age` says its age is unknown until `--live`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hygiene<'a> {
    pub max_age: Option<std::time::Duration>,
    pub ages: Option<&'a rustc_hash::FxHashMap<usize, age::Age>>,
    /// Seconds since the Unix epoch the ages are judged at.
    pub now: u64,
}

impl Hygiene<'_> {
    /// Whether credential `c` is left out as not due.
    pub fn not_due(&self, c: &crate::playbook::Credential) -> bool {
        let (Some(ages), Some(max_age)) = (self.ages, age::effective(c.max_age, self.max_age))
        else {
            return false;
        };
        ages.get(&c.index)
            .is_some_and(|a| age::judge(a, max_age, self.now) == age::Verdict::NotDue)
    }
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
    /// `max_age` (the command line's, else the playbook's), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
    /// The age found (`--live`), which makes the credential due; absent offline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age: Option<&'a age::Age>,
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

/// The longest chain of selected dependencies, first to last, and its estimated
/// seconds (see `estimate`).
#[derive(Debug, Default, Serialize)]
pub struct CriticalPath<'a> {
    pub credentials: Vec<&'a str>,
    pub seconds: f64,
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
    /// Selected credentials left out as younger than their `max_age`.
    pub not_due: usize,
}

/// Builds the plan of `playbook` for the selected credentials.
pub fn build<'a>(file: &'a str, playbook: &'a Playbook, selection: &select::Selection) -> Plan<'a> {
    build_with(file, playbook, selection, Hygiene::default())
}

/// [`build`], leaving out what is not due under `hygiene`.
pub fn build_with<'a>(
    file: &'a str,
    playbook: &'a Playbook,
    selection: &select::Selection,
    hygiene: Hygiene<'a>,
) -> Plan<'a> {
    let mut selected = select::apply(playbook, selection);
    let mut not_due = Vec::new();
    if hygiene.ages.is_some() {
        selected.indices.retain(|&i| {
            let c = &playbook.credentials[i];
            if !hygiene.not_due(c) {
                return true;
            }
            if let (Some(ages), Some(max_age)) =
                (hygiene.ages, age::effective(c.max_age, hygiene.max_age))
                && let Some(a) = ages.get(&i)
            {
                not_due.push(NotDue {
                    id: &c.id,
                    provider: &c.provider,
                    vault_path: &c.vault_path,
                    max_age_seconds: max_age.as_secs(),
                    age_seconds: a.at(hygiene.now).unwrap_or_default().as_secs(),
                    age: a,
                });
            }
            false
        });
    }
    let waves_ix = order::waves(playbook, &selected.indices);
    let waves: Vec<Wave<'a>> = waves_ix
        .iter()
        .enumerate()
        .map(|(i, ids)| Wave {
            index: i + 1,
            eta_seconds: 0.0,
            credentials: ids
                .iter()
                .map(|&ix| {
                    let c = &playbook.credentials[ix];
                    let mut p = estimate::credential_plan(playbook, c);
                    if let Some(max_age) = age::effective(c.max_age, hygiene.max_age) {
                        p.max_age_seconds = Some(max_age.as_secs());
                        p.age = hygiene.ages.and_then(|a| a.get(&ix));
                    }
                    p
                })
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
            not_due: 0,
        },
        critical_path: CriticalPath::default(),
        warnings: playbook
            .warnings
            .iter()
            .map(|w| w.message.as_str())
            .collect(),
        not_due,
        now: hygiene.now,
    };
    estimate::fill(playbook, &mut plan);
    plan
}
