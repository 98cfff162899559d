//! `rekey report`: the inventory of a playbook. For every selected credential:
//! its age (`super::age_of`), its `max_age` and whether it is overdue, its last
//! rotation as the journal recorded it (run id, time, Vault version), and the
//! keys live at the provider. Rendered as text, JSON, Markdown or CSV.

use crate::plan::age::{self, Age, Verdict};
use crate::playbook::Playbook;
use crate::provider::{Provider, Target};
use crate::store::SecretStore;
use indexmap::IndexMap;
use serde::Serialize;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

/// Version of the JSON report; bumped only on incompatible changes.
pub const REPORT_FORMAT_VERSION: u32 = 1;

/// The inventory.
#[derive(Debug, Serialize)]
pub struct Report {
    pub format_version: u32,
    pub playbook: String,
    /// When the ages were judged (RFC 3339).
    pub generated_at: String,
    pub credentials: Vec<Row>,
    pub totals: Totals,
    /// Why the last rotations are missing, when they are (no journal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_note: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub credentials: usize,
    /// Older than their max_age.
    pub overdue: usize,
    /// With a max_age, of unknown age (due, since rekey cannot tell).
    pub unknown_age: usize,
}

/// One credential.
#[derive(Debug, Serialize)]
pub struct Row {
    pub id: String,
    pub provider: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub account: Option<String>,
    pub vault_path: String,
    pub max_age_seconds: Option<u64>,
    pub age_seconds: Option<u64>,
    pub age: Age,
    /// `ok`, `overdue`, `unknown_age` (due), or `no_policy` (no max_age).
    pub status: Status,
    pub last_rotation: Option<LastRotation>,
    /// The keys the provider lists for the account (dual kinds).
    pub keys: Keys,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Overdue,
    UnknownAge,
    NoPolicy,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Overdue => "OVERDUE",
            Status::UnknownAge => "unknown age (due)",
            Status::NoPolicy => "no max_age",
        }
    }
}

/// A rotation the journal recorded.
#[derive(Clone, Debug, Serialize)]
pub struct LastRotation {
    pub run_id: String,
    pub at: String,
    pub vault_version: Option<u64>,
    pub key_id: Option<String>,
}

/// What the provider says about the account's keys.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Keys {
    Listed { keys: Vec<LiveKey> },
    NotListed { why: String },
}

#[derive(Debug, Serialize)]
pub struct LiveKey {
    pub id: String,
    pub active: bool,
    pub created_at: Option<String>,
}

impl Report {
    /// Whether any credential is due: overdue, or of unknown age under a max_age.
    pub fn has_due(&self) -> bool {
        self.totals.overdue + self.totals.unknown_age > 0
    }
}

/// Gathers the inventory of `indices`: ages from Vault and the providers, the
/// keys each provider lists, the rotations `rotations` (from the journal) says.
pub async fn gather(
    store: &dyn SecretStore,
    providers: &IndexMap<String, Arc<dyn Provider>>,
    unavailable: &IndexMap<String, String>,
    playbook: &Playbook,
    indices: &[usize],
    max_age: Option<Duration>,
    rotations: &IndexMap<String, LastRotation>,
) -> Report {
    let now = age::now();
    let ages = super::ages(store, providers, playbook, indices).await;
    // The keys each provider lists, as many lookups at once as the ages (one at
    // a time made `report` on 10,000 credentials take a minute).
    let mut listed: rustc_hash::FxHashMap<usize, Keys> = {
        use futures::StreamExt;
        futures::stream::iter(indices.iter().copied())
            .map(|i| async move {
                (
                    i,
                    keys_of(providers, unavailable, &playbook.credentials[i]).await,
                )
            })
            .buffer_unordered(super::LOOKUPS_IN_FLIGHT)
            .collect()
            .await
    };
    let mut rows = Vec::new();
    let mut totals = Totals::default();
    for &i in indices {
        let c = &playbook.credentials[i];
        let a = ages
            .get(&i)
            .cloned()
            .unwrap_or_else(|| Age::unknown("not looked up", 0));
        let limit = age::effective(c.max_age, max_age);
        let status = match limit {
            None => Status::NoPolicy,
            Some(_) if a.rotated_at.is_none() => Status::UnknownAge,
            Some(l) if age::judge(&a, l, now) == Verdict::Due => Status::Overdue,
            Some(_) => Status::Ok,
        };
        match status {
            Status::Overdue => totals.overdue += 1,
            Status::UnknownAge => totals.unknown_age += 1,
            _ => {}
        }
        let keys = listed.remove(&i).unwrap_or(Keys::NotListed {
            why: "not looked up".into(),
        });
        rows.push(Row {
            id: c.id.clone(),
            provider: c.provider.clone(),
            type_name: c.type_name.clone(),
            account: c.account.clone(),
            vault_path: c.vault_path.clone(),
            max_age_seconds: limit.map(|l| l.as_secs()),
            age_seconds: a.at(now).map(|d| d.as_secs()),
            age: a,
            status,
            last_rotation: rotations.get(&c.id).cloned(),
            keys,
        });
    }
    totals.credentials = rows.len();
    Report {
        format_version: REPORT_FORMAT_VERSION,
        playbook: playbook.name.clone(),
        generated_at: age::timestamp(now),
        credentials: rows,
        totals,
        journal_note: None,
    }
}

/// The latest rotation of each credential of playbook `name` in `journal`.
pub fn last_rotations(
    journal: &crate::journal::Journal,
    name: &str,
) -> Result<IndexMap<String, LastRotation>, crate::journal::JournalError> {
    let mut found: IndexMap<String, LastRotation> = IndexMap::new();
    // Newest run first: the first rotation seen of a credential is its latest.
    for run in journal
        .runs()?
        .into_iter()
        .filter(|r| r.playbook_name == name)
    {
        for row in journal.states(&run.id)? {
            if row.state != crate::journal::CredentialState::Rotated
                || found.contains_key(&row.credential)
            {
                continue;
            }
            found.insert(
                row.credential.clone(),
                LastRotation {
                    run_id: run.id.to_string(),
                    at: row.updated_at.clone(),
                    vault_version: row.detail.get("version").and_then(|v| v.as_u64()),
                    key_id: row
                        .detail
                        .get("key_id")
                        .and_then(|v| v.as_str())
                        .map(str::to_owned),
                },
            );
        }
    }
    Ok(found)
}

fn age_text(r: &Row) -> String {
    match r.age_seconds {
        Some(s) => age::human(Duration::from_secs(s)),
        None => "unknown".into(),
    }
}

fn max_age_text(r: &Row) -> String {
    r.max_age_seconds
        .map(|s| age::human(Duration::from_secs(s)))
        .unwrap_or_else(|| "-".into())
}

fn last_text(r: &Row) -> String {
    match &r.last_rotation {
        Some(l) => format!("{} (run {})", l.at, l.run_id),
        None => "not in the journal".into(),
    }
}

fn keys_text(r: &Row) -> String {
    match &r.keys {
        Keys::Listed { keys } if keys.is_empty() => "none".into(),
        Keys::Listed { keys } => keys
            .iter()
            .map(|k| {
                if k.active {
                    k.id.clone()
                } else {
                    format!("{} (inactive)", k.id)
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        Keys::NotListed { why } => format!("not listed: {why}"),
    }
}

fn totals_line(report: &Report) -> String {
    format!(
        "{} credential(s): {} overdue, {} of unknown age",
        report.totals.credentials, report.totals.overdue, report.totals.unknown_age
    )
}

pub fn text(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "Report: {} at {}; {}.",
        report.playbook,
        report.generated_at,
        totals_line(report)
    )?;
    if let Some(note) = &report.journal_note {
        writeln!(out, "{note}")?;
    }
    for r in &report.credentials {
        writeln!(
            out,
            "\n  {} via {} ({}) -> {}",
            r.id, r.provider, r.type_name, r.vault_path
        )?;
        writeln!(
            out,
            "      {}: age {} of max {}; {}",
            r.status.as_str(),
            age_text(r),
            max_age_text(r),
            r.age.detail
        )?;
        writeln!(out, "      last rotation: {}", last_text(r))?;
        writeln!(out, "      keys at the provider: {}", keys_text(r))?;
    }
    Ok(())
}

pub fn json(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out, "### rekey report: {}\n", md(&report.playbook))?;
    writeln!(
        out,
        "**{}** (at {}).\n",
        totals_line(report),
        report.generated_at
    )?;
    if let Some(note) = &report.journal_note {
        writeln!(out, "> {}\n", md(note))?;
    }
    writeln!(
        out,
        "| credential | status | age | max age | last rotation | keys at the provider |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for r in &report.credentials {
        writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} |",
            md(&r.id),
            r.status.as_str(),
            age_text(r),
            max_age_text(r),
            md(&last_text(r)),
            md(&keys_text(r))
        )?;
    }
    Ok(())
}

/// A CSV field (RFC 4180 quoting).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub fn csv(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "credential,provider,type,vault_path,status,age_seconds,max_age_seconds,age_source,last_rotation_run,last_rotation_at,active_keys,inactive_keys"
    )?;
    for r in &report.credentials {
        let (active, inactive) = match &r.keys {
            Keys::Listed { keys } => (
                keys.iter()
                    .filter(|k| k.active)
                    .map(|k| k.id.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                keys.iter()
                    .filter(|k| !k.active)
                    .map(|k| k.id.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            Keys::NotListed { .. } => (String::new(), String::new()),
        };
        let fields = [
            r.id.clone(),
            r.provider.clone(),
            r.type_name.clone(),
            r.vault_path.clone(),
            serde_json::to_value(r.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            r.age_seconds.map(|s| s.to_string()).unwrap_or_default(),
            r.max_age_seconds.map(|s| s.to_string()).unwrap_or_default(),
            serde_json::to_value(r.age.source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            r.last_rotation
                .as_ref()
                .map(|l| l.run_id.clone())
                .unwrap_or_default(),
            r.last_rotation
                .as_ref()
                .map(|l| l.at.clone())
                .unwrap_or_default(),
            active,
            inactive,
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

/// What the provider of credential `c` lists for its account (dual kinds).
async fn keys_of(
    providers: &IndexMap<String, Arc<dyn Provider>>,
    unavailable: &IndexMap<String, String>,
    c: &crate::playbook::Credential,
) -> Keys {
    match (providers.get(&c.provider), unavailable.get(&c.provider)) {
        _ if c.kind == crate::catalog::Kind::Manual => Keys::NotListed {
            why: "manual step".into(),
        },
        (Some(p), _) if p.lists_keys() && c.kind == crate::catalog::Kind::Dual => {
            let target = Target {
                credential: &c.id,
                account: c.account.as_deref(),
                settings: &c.settings,
            };
            match p.list(target).await {
                Ok(keys) => Keys::Listed {
                    keys: keys
                        .into_iter()
                        .map(|k| LiveKey {
                            id: k.id,
                            active: k.active,
                            created_at: k.created_at.map(age::timestamp),
                        })
                        .collect(),
                },
                Err(e) => Keys::NotListed { why: e.to_string() },
            }
        }
        (Some(_), _) => Keys::NotListed {
            why: "the provider lists no keys (a password changed in place)".into(),
        },
        (None, Some(why)) => Keys::NotListed { why: why.clone() },
        (None, None) => Keys::NotListed {
            why: "provider instance not set up".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
