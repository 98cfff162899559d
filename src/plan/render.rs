//! Plan output: text for people, JSON for machines (stable, see docs/plan-json.md),
//! Markdown for pull-request comments.

use super::Plan;
use crate::playbook::Mode;
use crate::playbook::rate::format_duration;
use std::fmt::Write;
use std::time::Duration;

fn eta(seconds: f64) -> String {
    format_duration(Duration::from_secs_f64(seconds.max(0.0)))
}

fn mode_line(plan: &Plan) -> String {
    let p = &plan.playbook;
    let mut s = format!("{}", p.name);
    let mut parts = Vec::new();
    if let Some(id) = &p.incident_id {
        parts.push(id.clone());
    }
    parts.push(match p.mode {
        Mode::Breach => "breach mode".to_owned(),
        Mode::Routine => "routine mode".to_owned(),
    });
    if !p.compromised.is_empty() {
        parts.push(format!("compromised: {}", p.compromised.join(", ")));
    }
    let _ = write!(s, " ({})", parts.join(", "));
    s
}

fn selection_line(plan: &Plan) -> String {
    let s = &plan.selection;
    let mut filters = Vec::new();
    for (flag, values) in [("--compromised", &s.compromised), ("--tag", &s.tags), ("--only", &s.only)] {
        if !values.is_empty() {
            filters.push(format!("{flag} {}", values.join(",")));
        }
    }
    let by = if filters.is_empty() { String::new() } else { format!(" by {}", filters.join(" ")) };
    format!("{} of {} credentials selected{by}", s.selected, s.total)
}

fn summary_line(plan: &Plan) -> String {
    let t = &plan.totals;
    let manual = if t.manual > 0 { format!(" + {} manual step{}", t.manual, if t.manual == 1 { "" } else { "s" }) } else { String::new() };
    format!(
        "{} wave{}, {} provider requests, {} Vault requests, ETA {}{manual}",
        t.waves,
        if t.waves == 1 { "" } else { "s" },
        t.provider_requests,
        t.vault_requests,
        eta(t.eta_seconds)
    )
}

pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Plan: {}", mode_line(plan));
    let _ = writeln!(out, "{}; {}.", selection_line(plan), summary_line(plan));
    if !plan.selection.unselected_dependencies.is_empty() {
        let _ = writeln!(out, "Not selected but depended on (not rotated by this run): {}", plan.selection.unselected_dependencies.join(", "));
    }
    let _ = writeln!(out, "Vault: {} (mount {}, staging {})", plan.vault.address, plan.vault.mount, plan.vault.staging_prefix);
    for wave in &plan.waves {
        let _ = writeln!(out, "\nWave {} ({} credential{}, ETA {})", wave.index, wave.credentials.len(), if wave.credentials.len() == 1 { "" } else { "s" }, eta(wave.eta_seconds));
        for c in &wave.credentials {
            let account = c.account.as_deref().map(|a| format!(" account {a}")).unwrap_or_default();
            let _ = writeln!(out, "  {} via {} ({}, {}){account} -> {}", c.id, c.provider, c.type_name, c.kind.as_str(), c.vault_path);
            let names: Vec<&str> = c.steps.iter().map(|s| s.name).collect();
            let _ = writeln!(out, "      {}", names.join(" > "));
            if let Some(op) = c.steps.iter().find(|s| s.name == "await_operator") {
                let _ = writeln!(out, "      {}", op.detail);
            }
        }
    }
    if !plan.providers.is_empty() {
        let _ = writeln!(out, "\nProviders");
        let rows: Vec<[String; 6]> = plan
            .providers
            .iter()
            .map(|p| {
                let origin = if p.rate_origin == crate::playbook::RateOrigin::ProviderDefault { " (default)" } else { "" };
                [p.instance.clone(), p.type_name.clone(), p.credentials.to_string(), p.requests.to_string(), format!("{}{origin}", p.rate_description), eta(p.eta_seconds)]
            })
            .collect();
        table(&mut out, ["instance", "type", "credentials", "requests", "rate limit", "ETA"], &rows);
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "\nwarning: {w}");
    }
    out
}

fn table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from(" ");
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(s, " {cell:<w$}");
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

pub fn json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).unwrap_or_else(|e| format!("{{\"error\": \"cannot serialise the plan: {e}\"}}")) + "\n"
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### rekey plan: {}\n", md_escape(&mode_line(plan)));
    let _ = writeln!(out, "**{}**; {}.\n", selection_line(plan), summary_line(plan));
    if !plan.selection.unselected_dependencies.is_empty() {
        let _ = writeln!(out, "> Not selected but depended on (not rotated by this run): {}\n", plan.selection.unselected_dependencies.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", "));
    }
    let _ = writeln!(out, "| wave | credential | provider | kind | Vault path | steps |");
    let _ = writeln!(out, "|---:|---|---|---|---|---|");
    for wave in &plan.waves {
        for c in &wave.credentials {
            let steps: Vec<&str> = c.steps.iter().map(|s| s.name).collect();
            let _ = writeln!(out, "| {} | `{}` | {} ({}) | {} | `{}` | {} |", wave.index, md_escape(&c.id), md_escape(&c.provider), md_escape(&c.type_name), c.kind.as_str(), md_escape(&c.vault_path), steps.join(" → "));
        }
    }
    if !plan.providers.is_empty() {
        let _ = writeln!(out, "\n| provider instance | type | credentials | requests | rate limit | ETA |");
        let _ = writeln!(out, "|---|---|---:|---:|---|---:|");
        for p in &plan.providers {
            let _ = writeln!(out, "| {} | {} | {} | {} | {} | {} |", md_escape(&p.instance), p.type_name, p.credentials, p.requests, p.rate_description, eta(p.eta_seconds));
        }
    }
    let manual: Vec<_> = plan.waves.iter().flat_map(|w| &w.credentials).filter(|c| c.steps.iter().any(|s| s.name == "await_operator")).collect();
    if !manual.is_empty() {
        let _ = writeln!(out, "\n<details><summary>{} manual step{}</summary>\n", manual.len(), if manual.len() == 1 { "" } else { "s" });
        for c in manual {
            if let Some(op) = c.steps.iter().find(|s| s.name == "await_operator") {
                let _ = writeln!(out, "- `{}`: {}", md_escape(&c.id), md_escape(op.detail.trim_start_matches("operator: ")));
            }
        }
        let _ = writeln!(out, "\n</details>");
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "\n> **warning:** {}", md_escape(w));
    }
    out
}
