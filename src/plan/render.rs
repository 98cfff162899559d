//! Plan output: text for people, JSON for machines (stable, see docs/plan-json.md),
//! Markdown for pull-request comments. Each writes straight to the output, so a
//! 100,000-credential plan is never held as one string.

use super::Plan;
use crate::doc::rate::format_duration;
use crate::playbook::{Mode, RateOrigin};
use std::io::{self, Write};
use std::time::Duration;

fn eta(seconds: f64) -> String {
    // Estimates beyond a century say so instead of overflowing a Duration.
    const CENTURY: f64 = 100.0 * 365.0 * 86400.0;
    if seconds.is_nan() || seconds >= CENTURY {
        return "more than 100 years".to_owned();
    }
    format_duration(Duration::from_secs_f64(seconds.max(0.0)))
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn mode_line(plan: &Plan) -> String {
    let p = &plan.playbook;
    let mut parts: Vec<String> = Vec::new();
    if let Some(id) = p.incident_id {
        parts.push(id.to_owned());
    }
    parts.push(match p.mode {
        Mode::Breach => "breach mode".to_owned(),
        Mode::Routine => "routine mode".to_owned(),
    });
    if !p.compromised.is_empty() {
        parts.push(format!("compromised: {}", p.compromised.join(", ")));
    }
    format!("{} ({})", p.name, parts.join(", "))
}

fn selection_line(plan: &Plan) -> String {
    let s = &plan.selection;
    let mut filters = Vec::new();
    for (flag, values) in [
        ("--compromised", &s.compromised),
        ("--tag", &s.tags),
        ("--only", &s.only),
    ] {
        if !values.is_empty() {
            filters.push(format!("{flag} {}", values.join(",")));
        }
    }
    let by = if filters.is_empty() {
        String::new()
    } else {
        format!(" by {}", filters.join(" "))
    };
    format!(
        "{} of {} selected{by}",
        s.selected,
        plural(s.total, "credential")
    )
}

fn summary_line(plan: &Plan) -> String {
    let t = &plan.totals;
    let manual = if t.manual > 0 {
        format!(" + {}", plural(t.manual, "manual step"))
    } else {
        String::new()
    };
    let not_due = if t.not_due > 0 {
        format!(", {} not due", t.not_due)
    } else {
        String::new()
    };
    format!(
        "{}, {} provider requests, {} Vault requests, ETA {}{manual}{not_due}",
        plural(t.waves, "wave"),
        t.provider_requests,
        t.vault_requests,
        eta(t.eta_seconds)
    )
}

/// The critical path, `sep` between credentials (a long chain shows its ends),
/// or `None` when nothing is selected.
fn critical_line(plan: &Plan, sep: &str, quote: &str) -> Option<String> {
    let path = &plan.critical_path.credentials;
    if path.is_empty() {
        return None;
    }
    let q = |id: &&str| format!("{quote}{id}{quote}");
    let shown = if path.len() > 8 {
        let head: Vec<String> = path[..4].iter().map(q).collect();
        let tail: Vec<String> = path[path.len() - 3..].iter().map(q).collect();
        format!(
            "{}{sep}... {} more ...{sep}{}",
            head.join(sep),
            path.len() - 7,
            tail.join(sep)
        )
    } else {
        path.iter().map(q).collect::<Vec<_>>().join(sep)
    };
    Some(format!(
        "Critical path ({}, {}): {shown}",
        plural(path.len(), "credential"),
        eta(plan.critical_path.seconds)
    ))
}

pub fn text(plan: &Plan, out: &mut dyn Write) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 16, out);
    writeln!(out, "Plan: {}", mode_line(plan))?;
    writeln!(out, "{}; {}.", selection_line(plan), summary_line(plan))?;
    if let Some(line) = critical_line(plan, " > ", "") {
        writeln!(out, "{line}")?;
    }
    if !plan.selection.unselected_dependencies.is_empty() {
        writeln!(
            out,
            "Not selected but depended on (not rotated by this run): {}",
            plan.selection.unselected_dependencies.join(", ")
        )?;
    }
    writeln!(
        out,
        "Vault: {} (mount {}, staging {})",
        plan.vault.address, plan.vault.mount, plan.vault.staging_prefix
    )?;
    for wave in &plan.waves {
        writeln!(
            out,
            "\nWave {} ({}, ETA {})",
            wave.index,
            plural(wave.credentials.len(), "credential"),
            eta(wave.eta_seconds)
        )?;
        for c in &wave.credentials {
            let account = c
                .account
                .map(|a| format!(" account {a}"))
                .unwrap_or_default();
            writeln!(
                out,
                "  {} via {} ({}, {}){account} -> {}",
                c.id,
                c.provider,
                c.type_name,
                c.kind.as_str(),
                c.vault_path
            )?;
            writeln!(out, "      {}", join_steps(&c.steps, " > "))?;
            if let Some(max_age) = c.max_age_seconds {
                writeln!(
                    out,
                    "      {}",
                    super::age::describe(c.age, Duration::from_secs(max_age), plan.now)
                )?;
            }
            if let Some(r) = &c.retires {
                writeln!(out, "      retires: {}", retires_text(r, c.account))?;
            }
            if let Some(instructions) = c.instructions {
                writeln!(
                    out,
                    "      operator: {}",
                    instructions
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                )?;
            }
        }
    }
    if !plan.not_due.is_empty() {
        writeln!(
            out,
            "\nNot due ({}, younger than their max age: not rotated)",
            plan.not_due.len()
        )?;
        for n in &plan.not_due {
            writeln!(
                out,
                "  {} -> {}: {}",
                n.id,
                n.vault_path,
                super::age::describe(
                    Some(n.age),
                    Duration::from_secs(n.max_age_seconds),
                    plan.now
                )
            )?;
        }
    }
    if !plan.providers.is_empty() {
        writeln!(out, "\nProviders")?;
        let rows: Vec<[String; 6]> = plan
            .providers
            .iter()
            .map(|p| {
                let origin = if p.rate_origin == RateOrigin::ProviderDefault {
                    " (default)"
                } else {
                    ""
                };
                [
                    p.instance.to_owned(),
                    p.type_name.to_owned(),
                    p.credentials.to_string(),
                    p.requests.to_string(),
                    format!("{}{origin}", p.rate_description),
                    eta(p.eta_seconds),
                ]
            })
            .collect();
        table(
            &mut out,
            [
                "instance",
                "type",
                "credentials",
                "requests",
                "rate limit",
                "ETA",
            ],
            &rows,
        )?;
    }
    for w in &plan.warnings {
        writeln!(out, "\nwarning: {w}")?;
    }
    out.flush()
}

fn table<const N: usize>(
    out: &mut dyn Write,
    header: [&str; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from(" ");
        for (cell, w) in cells.iter().zip(&widths) {
            s.push_str(&format!(" {cell:<w$}"));
        }
        s.trim_end().to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

pub fn json(plan: &Plan, out: &mut dyn Write) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 16, out);
    // Compact: the JSON is for machines (a 100,000-credential plan is a third
    // smaller and faster to write); `jq .` pretty-prints it for people.
    serde_json::to_writer(&mut out, plan)?;
    writeln!(out)?;
    out.flush()
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(plan: &Plan, out: &mut dyn Write) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 16, out);
    writeln!(out, "### rekey plan: {}\n", md_escape(&mode_line(plan)))?;
    writeln!(
        out,
        "**{}**; {}.\n",
        selection_line(plan),
        summary_line(plan)
    )?;
    if let Some(line) = critical_line(plan, " → ", "`") {
        writeln!(out, "{}\n", md_escape(&line))?;
    }
    if !plan.selection.unselected_dependencies.is_empty() {
        let deps: Vec<String> = plan
            .selection
            .unselected_dependencies
            .iter()
            .map(|d| format!("`{d}`"))
            .collect();
        writeln!(
            out,
            "> Not selected but depended on (not rotated by this run): {}\n",
            deps.join(", ")
        )?;
    }
    writeln!(
        out,
        "| wave | credential | provider | kind | Vault path | steps |"
    )?;
    writeln!(out, "|---:|---|---|---|---|---|")?;
    for wave in &plan.waves {
        for c in &wave.credentials {
            writeln!(
                out,
                "| {} | `{}` | {} ({}) | {} | `{}` | {} |",
                wave.index,
                md_escape(c.id),
                md_escape(c.provider),
                md_escape(c.type_name),
                c.kind.as_str(),
                md_escape(c.vault_path),
                join_steps(&c.steps, " → ")
            )?;
        }
    }
    if !plan.providers.is_empty() {
        writeln!(
            out,
            "\n| provider instance | type | credentials | requests | rate limit | ETA |"
        )?;
        writeln!(out, "|---|---|---:|---:|---|---:|")?;
        for p in &plan.providers {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                md_escape(p.instance),
                p.type_name,
                p.credentials,
                p.requests,
                p.rate_description,
                eta(p.eta_seconds)
            )?;
        }
    }
    let aged: Vec<_> = plan
        .waves
        .iter()
        .flat_map(|w| &w.credentials)
        .filter_map(|c| Some((c.id, c.max_age_seconds?, c.age)))
        .collect();
    if !aged.is_empty() || !plan.not_due.is_empty() {
        writeln!(out, "\n| credential | max age | age |")?;
        writeln!(out, "|---|---|---|")?;
        for (id, max_age, age) in aged {
            let max_age = Duration::from_secs(max_age);
            writeln!(
                out,
                "| `{}` | {} | {} |",
                md_escape(id),
                super::age::human(max_age),
                md_escape(&super::age::describe(age, max_age, plan.now))
            )?;
        }
        for n in &plan.not_due {
            let max_age = Duration::from_secs(n.max_age_seconds);
            writeln!(
                out,
                "| `{}` | {} | {} |",
                md_escape(n.id),
                super::age::human(max_age),
                md_escape(&super::age::describe(Some(n.age), max_age, plan.now))
            )?;
        }
    }
    let manual: Vec<_> = plan
        .waves
        .iter()
        .flat_map(|w| &w.credentials)
        .filter(|c| c.instructions.is_some())
        .collect();
    if !manual.is_empty() {
        writeln!(
            out,
            "\n<details><summary>{}</summary>\n",
            plural(manual.len(), "manual step")
        )?;
        for c in manual {
            let text = c
                .instructions
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            writeln!(out, "- `{}`: {}", md_escape(c.id), md_escape(&text))?;
        }
        writeln!(out, "\n</details>")?;
    }
    for w in &plan.warnings {
        writeln!(out, "\n> **warning:** {}", md_escape(w))?;
    }
    out.flush()
}

fn join_steps(steps: &[crate::protocol::PlannedStep], sep: &str) -> String {
    steps
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(sep)
}

/// The retirement rule in words.
fn retires_text(r: &super::estimate::Retires<'_>, account: Option<&str>) -> String {
    let account = account
        .map(|a| format!(" of account {a}"))
        .unwrap_or_default();
    let mut text = match r.rule {
        "every_existing_key" => format!(
            "every key{account} that exists before the run (breach mode; `plan --live` lists them)"
        ),
        _ => "the key Vault names (routine mode)".to_owned(),
    };
    if !r.keep.is_empty() {
        text += &format!(", except kept {}", r.keep.join(", "));
    }
    if r.may_include_admin_key {
        text += "; CAUTION: the admin credential's own key is one of them if it belongs to this account: list its id under `keep:` to keep rekey's access";
    }
    text
}
