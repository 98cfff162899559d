//! Per-credential timelines from a trail, for an incident report: text for people,
//! JSON for tools, CSV for spreadsheets.
//!
//! Invariant: the trail is untrusted input (it may have been tampered with): every
//! field is read as optional, terminal control characters are escaped in text,
//! and CSV cells that a spreadsheet would run as a formula are quoted as text.

use serde::Serialize;
use serde_json::{Map, Value};
use std::io::{self, Write};

/// One line of the trail, as the report shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub ts: String,
    pub run: String,
    pub actor: String,
    pub event: String,
    pub credential: Option<String>,
    pub provider: Option<String>,
    pub action: String,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub key_ids: Vec<(String, String)>,
    pub vault_path: Option<String>,
    pub vault_version: Option<u64>,
    pub secret_hmac: Option<String>,
}

fn text(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

impl Entry {
    pub fn from_line(map: &Map<String, Value>) -> Entry {
        let actor = match map.get("actor") {
            Some(Value::Object(a)) => {
                let user = text(a, "user").unwrap_or_default();
                match text(a, "vault_display_name").or_else(|| text(a, "vault_entity_id")) {
                    Some(v) => format!("{user} (vault: {v})"),
                    None => user,
                }
            }
            _ => String::new(),
        };
        let key_ids = match map.get("key_ids") {
            Some(Value::Object(k)) => k
                .iter()
                .map(|(name, v)| {
                    (
                        name.clone(),
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        let error = map.get("error").map(|e| {
            let kind = e.get("kind").and_then(Value::as_str).unwrap_or("error");
            let message = e.get("message").and_then(Value::as_str).unwrap_or("");
            format!("{kind}: {message}")
        });
        Entry {
            seq: map.get("seq").and_then(Value::as_u64).unwrap_or(0),
            ts: text(map, "ts").unwrap_or_default(),
            run: text(map, "run").unwrap_or_default(),
            actor,
            event: text(map, "event").unwrap_or_default(),
            credential: text(map, "credential"),
            provider: text(map, "provider"),
            action: text(map, "action").unwrap_or_default(),
            outcome: text(map, "outcome"),
            error,
            key_ids,
            vault_path: text(map, "vault_path"),
            vault_version: map.get("vault_version").and_then(Value::as_u64),
            secret_hmac: text(map, "secret_hmac"),
        }
    }
}

/// What to keep.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub credentials: Vec<String>,
    pub runs: Vec<String>,
}

impl Filter {
    pub fn keeps(&self, e: &Entry) -> bool {
        (self.runs.is_empty() || self.runs.contains(&e.run))
            && (self.credentials.is_empty()
                || e.credential
                    .as_ref()
                    .is_some_and(|c| self.credentials.contains(c)))
    }
}

/// Terminal-safe: control characters (escape sequences) are shown escaped.
fn clean(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.escape_debug().to_string()
    } else {
        s.to_owned()
    }
}

fn describe(e: &Entry) -> String {
    let mut parts = Vec::new();
    match (&e.outcome, e.event.as_str()) {
        (Some(o), _) => parts.push(o.clone()),
        (None, "intent") => parts.push("started".into()),
        _ => {}
    }
    if let Some(err) = &e.error {
        parts.push(err.clone());
    }
    for (name, id) in &e.key_ids {
        parts.push(if name == "key" {
            format!("key {id}")
        } else {
            format!("{name} key {id}")
        });
    }
    if let Some(p) = &e.vault_path {
        match e.vault_version {
            Some(v) => parts.push(format!("vault {p} v{v}")),
            None => parts.push(format!("vault {p}")),
        }
    }
    if let Some(h) = &e.secret_hmac {
        let short = h.get(..super::HMAC_PREFIX.len() + 16).unwrap_or(h);
        parts.push(format!("secret {short}…"));
    }
    clean(&parts.join(", "))
}

/// Text: run events, then one section per credential in order of first appearance.
pub fn write_text(entries: &[Entry], out: &mut dyn Write) -> io::Result<()> {
    let runs: Vec<&Entry> = entries.iter().filter(|e| e.credential.is_none()).collect();
    if !runs.is_empty() {
        writeln!(out, "Runs")?;
        for e in runs {
            writeln!(
                out,
                "  #{:<5} {}  {}  {} {}  by {}",
                e.seq,
                clean(&e.ts),
                clean(&e.run),
                clean(&e.action),
                clean(e.outcome.as_deref().unwrap_or("")),
                clean(&e.actor)
            )?;
        }
    }
    let mut order: indexmap::IndexMap<&str, Vec<&Entry>> = indexmap::IndexMap::new();
    for e in entries {
        if let Some(c) = &e.credential {
            order.entry(c.as_str()).or_default().push(e);
        }
    }
    for (credential, list) in order {
        let provider = list
            .iter()
            .find_map(|e| e.provider.as_deref())
            .unwrap_or("?");
        writeln!(
            out,
            "\n{} (provider {})",
            clean(credential),
            clean(provider)
        )?;
        for e in list {
            writeln!(
                out,
                "  #{:<5} {}  {}  {:<7} {:<20} {}  by {}",
                e.seq,
                clean(&e.ts),
                clean(&e.run),
                clean(&e.event),
                clean(&e.action),
                describe(e),
                clean(&e.actor)
            )?;
        }
    }
    Ok(())
}

/// JSON: `{ "entries": [...] }` with the same fields as the CSV.
pub fn write_json(
    entries: &[Entry],
    verdict: &super::Verdict,
    out: &mut dyn Write,
) -> io::Result<()> {
    let body = serde_json::json!({
        "verified": verdict.ok(),
        "problem": verdict.problem,
        "lines": verdict.lines,
        "last_sha256": verdict.last,
        "entries": entries.iter().map(|e| serde_json::json!({
            "seq": e.seq, "ts": e.ts, "run": e.run, "actor": e.actor, "event": e.event,
            "credential": e.credential, "provider": e.provider, "action": e.action,
            "outcome": e.outcome, "error": e.error,
            "key_ids": e.key_ids.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>(),
            "vault_path": e.vault_path, "vault_version": e.vault_version, "secret_hmac": e.secret_hmac,
        })).collect::<Vec<_>>(),
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&body)?)
}

/// One CSV cell (RFC 4180 quoting). A cell a spreadsheet would evaluate
/// (`=`, `+`, `-`, `@`, tab, CR) gets a leading `'` so it stays text.
fn cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

pub fn write_csv(entries: &[Entry], out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "seq,ts,run,actor,credential,provider,event,action,outcome,error,key_ids,vault_path,vault_version,secret_hmac"
    )?;
    for e in entries {
        let keys = e
            .key_ids
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let row = [
            e.seq.to_string(),
            e.ts.clone(),
            e.run.clone(),
            e.actor.clone(),
            e.credential.clone().unwrap_or_default(),
            e.provider.clone().unwrap_or_default(),
            e.event.clone(),
            e.action.clone(),
            e.outcome.clone().unwrap_or_default(),
            e.error.clone().unwrap_or_default(),
            keys,
            e.vault_path.clone().unwrap_or_default(),
            e.vault_version.map(|v| v.to_string()).unwrap_or_default(),
            e.secret_hmac.clone().unwrap_or_default(),
        ];
        writeln!(
            out,
            "{}",
            row.iter().map(|c| cell(c)).collect::<Vec<_>>().join(",")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_stay_text() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(cell("-1,2"), "\"'-1,2\"");
    }
}
